package conntrack

import (
	"sync"
	"sync/atomic"
)

// Each client's count of handshakes (entries whose tcpd end is in
// SYN-RECEIVED), which caps the SYNs a client may have open, is exact
// without a table-wide lock: the counts live in shards of their own, by a
// hash of the client's address, one record per client. A record's count is
// an atomic that reserve raises by compare-and-swap only below the cap, so
// the common SYN, from a client seen in the last second, takes its client
// shard's lock only to read the map: SYNs of different clients, and of the
// same client, never wait for each other. The shard's write lock is taken
// to add a client's record, and by Tick to drop the records whose count is
// zero. A table shard changes a count while it holds the entry's lock and
// the state that the count follows, so a count is never behind its
// entries; a client shard's lock is taken after a table shard's, never
// before, and SynRecvFrom (tests only) takes only it.

// numClientShards is how many shards the client records are split into:
// as many as the table's, for the same reason (shard.go).
const numClientShards = numShards

// clientShard holds the records of the clients whose address hashes to it,
// keyed by the address in its 16-byte form (key.client). Client shards are
// not kept on cache lines of their own: at numClientShards of them, two
// loops rarely want neighbours, and a shared line costs a miss, not a wait.
type clientShard struct {
	// mu guards the map, not the records' counts: the read lock to find a
	// record and change its count, the write lock to add or drop records.
	// A record is dropped only under the write lock with its count at zero,
	// so a count changed under the read lock is never lost with its record.
	mu   sync.RWMutex
	recs map[[16]byte]*clientRecord
	peak int
}

// clientRecord is one client's count of open handshakes.
type clientRecord struct {
	synRecv atomic.Int32
}

// take counts one more handshake if fewer than limit are open (limit 0: no
// limit), and reports whether it did.
func (r *clientRecord) take(limit int) bool {
	for {
		n := r.synRecv.Load()
		if limit > 0 && int(n) >= limit {
			return false
		}
		if r.synRecv.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// reserve counts one more handshake for client if it has fewer than limit
// open (limit 0: no limit), and reports whether it did, and whether it
// added the client's record (which Tick is then to visit).
func (c *clientShard) reserve(client [16]byte, limit int) (ok, added bool) {
	c.mu.RLock()
	if r := c.recs[client]; r != nil {
		ok := r.take(limit)
		c.mu.RUnlock()
		return ok, false
	}
	c.mu.RUnlock()
	// The write lock is held only to add the record, allocated before.
	fresh := &clientRecord{}
	c.mu.Lock()
	r := c.recs[client]
	if r == nil {
		if c.recs == nil {
			c.recs = map[[16]byte]*clientRecord{}
		}
		r = fresh
		c.recs[client] = r
		c.peak = max(c.peak, len(c.recs))
		added = true
	}
	ok = r.take(limit)
	c.mu.Unlock()
	return ok, added
}

// release counts one handshake less for client, which has one open: its
// record is there, since only a count of zero is dropped. A release
// without its reserve would be a bug of the table's; it must not stop the
// packet loop that runs it, so a missing record is let be.
func (c *clientShard) release(client [16]byte) {
	c.mu.RLock()
	if r := c.recs[client]; r != nil {
		r.synRecv.Add(-1)
	}
	c.mu.RUnlock()
}

// clientMapsAbove is the size below which a client shard's map is never
// rebuilt: a map that never held more is a few hundred bytes.
const clientMapsAbove = 16

// compact drops the records of clients with no handshake open, and the
// map once it is empty or rebuilds it once it holds a quarter of its peak:
// Go's maps never give back the memory of the most they held. A client's
// next SYN adds its record again under the write lock: a client that opens
// connections steadily takes it once a tick, not twice a connection.
// It reports whether records remain.
func (c *clientShard) compact() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for client, r := range c.recs {
		if r.synRecv.Load() <= 0 {
			delete(c.recs, client)
		}
	}
	switch {
	case len(c.recs) == 0:
		c.recs, c.peak = nil, 0
	case c.peak >= clientMapsAbove && len(c.recs)*4 <= c.peak:
		c.recs = compacted(c.recs)
		c.peak = len(c.recs)
	}
	return c.recs != nil
}
