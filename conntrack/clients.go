package conntrack

import "sync"

// Each client's count of handshakes (entries whose tcpd end is in
// SYN-RECEIVED), which caps the SYNs a client may have open, is exact
// without a table-wide lock: the counts live in shards of their own, by a
// hash of the client's address, each with its own lock. A table shard
// changes a count while it holds its own lock and the state that the count
// follows, so a count is never behind its entries; a client shard's lock is
// taken after a table shard's, never before, and SynRecvFrom takes only it.

// clientShard holds the handshake counts of the clients whose address
// hashes to it, keyed by the address in its 16-byte form (key.client).
type clientShard struct {
	mu      sync.RWMutex
	synRecv map[[16]byte]int32
	peak    int
	_       [cacheLine]byte
}

// reserve counts one more handshake for client if it has fewer than limit
// open (limit 0: no limit), and reports whether it did.
func (c *clientShard) reserve(client [16]byte, limit int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.synRecv[client]
	if limit > 0 && int(n) >= limit {
		return false
	}
	c.synRecv[client] = n + 1
	c.peak = max(c.peak, len(c.synRecv))
	return true
}

// add counts one more handshake for client, whatever the limit: a state
// the table corrects to, not a SYN it may refuse.
func (c *clientShard) add(client [16]byte) {
	c.mu.Lock()
	c.synRecv[client]++
	c.peak = max(c.peak, len(c.synRecv))
	c.mu.Unlock()
}

// release counts one handshake less for client.
func (c *clientShard) release(client [16]byte) {
	c.mu.Lock()
	if n := c.synRecv[client] - 1; n > 0 {
		c.synRecv[client] = n
	} else {
		delete(c.synRecv, client)
	}
	c.mu.Unlock()
}

func (c *clientShard) count(client [16]byte) int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return int(c.synRecv[client])
}

// clientMapsAbove is the size below which a client shard's map is never
// rebuilt: numShards of them hold a few hundred KiB at most.
const clientMapsAbove = 64

// compact rebuilds the map once it holds a quarter of its peak: Go's maps
// never give back the memory of the most they held.
func (c *clientShard) compact() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.peak >= clientMapsAbove && len(c.synRecv)*4 <= c.peak {
		c.synRecv = compacted(c.synRecv)
		c.peak = len(c.synRecv)
	}
}
