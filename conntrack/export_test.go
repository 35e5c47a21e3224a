package conntrack

import "net/netip"

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
