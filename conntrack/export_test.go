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
