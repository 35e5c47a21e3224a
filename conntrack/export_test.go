package conntrack

import (
	"math/bits"
	"net/netip"
)

// SynRecvFrom returns how many of client's connections tcpd holds in
// SYN-RECEIVED, for the tests: the link no longer asks (the table refuses
// a SYN over the cap itself).
func (t *Table) SynRecvFrom(client netip.Addr) int {
	a := client.As16()
	c := t.clientShardOf(a)
	c.mu.RLock()
	defer c.mu.RUnlock()
	if r := c.recs[a]; r != nil {
		return int(r.synRecv.Load())
	}
	return 0
}

// MaxEndedPerShard is how many ended connections' queues a shard
// remembers.
const MaxEndedPerShard = maxEndedPerShard

// ShardOf returns the index of the shard that tracks tu.
func (t *Table) ShardOf(tu Tuple) int {
	return t.shardOf(t.hash(keyOf(tu))).idx
}

// Marked returns how many shards each periodic pass would visit now:
// timed by expire, grown and clients by Tick's compaction.
func (t *Table) Marked() (timed, grown, clients int) {
	count := func(m *shardMarks) (n int) {
		for w := range m {
			n += bits.OnesCount64(m[w].Load())
		}
		return n
	}
	return count(&t.timed), count(&t.grown), count(&t.clientsGrown)
}
