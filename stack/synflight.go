package stack

import (
	"sync"
	"sync/atomic"

	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

// synFlight holds the SYNs the netstack's forwarder has a request in flight
// for, by 4-tuple, each with its sequence number: the forwarder's
// ForwarderRequest does not tell its handler which SYN it was made from, and
// the handler must claim only the conntrack entry that SYN opened
// (Table.Claim), not whatever entry of the 4-tuple waits for a handler.
//
// forwardSYN adds a SYN before the forwarder sees it, and the handler
// removes it after completing the request, which is when the forwarder
// forgets its own. So every 4-tuple the forwarder has in flight is here,
// from a moment before until a moment after. forwardSYN drops, as the
// forwarder would, a SYN whose 4-tuple is here or that would take this set
// past the forwarder's cap; hence the forwarder never drops a SYN this set
// took: each entry here has its request. And no later SYN of the 4-tuple
// replaces an entry while its handler runs (it is dropped, as the
// forwarder drops it), so the number a handler reads is its own SYN's.
// Between the forwarder forgetting a request and the handler removing it
// here, a SYN of the 4-tuple is dropped that the forwarder would have
// taken: the client retransmits it.
//
// The set is bounded by the forwarder's cap (Config.MaxInFlight). A SYN
// costs one lock of a shard, so that the packet loops of a multi-queue TUN
// adding SYNs at once seldom meet; the maps keep their room once grown, so
// nothing allocates per SYN in steady state, and they hold at most the
// cap's worth of entries in all.
type synFlight struct {
	// max is the forwarder's cap on requests in flight.
	max    int64
	n      atomic.Int64
	shards [synShards]synShard
}

// synShards spreads the set over locks of its own, so that packet loops
// adding SYNs at once seldom meet.
const synShards = 32

type synShard struct {
	mu  sync.Mutex
	seq map[gvstack.TransportEndpointID]uint32
	_   [cacheLine]byte
}

// synAdd is add's verdict.
type synAdd uint8

const (
	// synAdded: the SYN is in flight now; hand it to the forwarder.
	synAdded synAdd = iota
	// synBusy: a request for the 4-tuple is in flight already. The
	// forwarder would ignore the SYN; the client retransmits it.
	synBusy
	// synFull: as many requests as the forwarder allows are in flight.
	synFull
)

func newSynFlight(max int) *synFlight {
	f := &synFlight{max: int64(max)}
	for i := range f.shards {
		f.shards[i].seq = make(map[gvstack.TransportEndpointID]uint32)
	}
	return f
}

// shard returns id's shard. Client ports spread the 4-tuples well enough:
// a flood that aims at one shard only waits on its lock, and the set stays
// bounded all the same.
func (f *synFlight) shard(id gvstack.TransportEndpointID) *synShard {
	return &f.shards[(id.RemotePort^id.LocalPort)%synShards]
}

// add records that the SYN with sequence number seq for id is to be
// handed to the forwarder, unless the forwarder would drop it.
func (f *synFlight) add(id gvstack.TransportEndpointID, seq uint32) synAdd {
	sh := f.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if _, ok := sh.seq[id]; ok {
		return synBusy
	}
	if f.n.Add(1) > f.max {
		f.n.Add(-1)
		return synFull
	}
	sh.seq[id] = seq
	return synAdded
}

// seq returns the sequence number of the SYN in flight for id.
func (f *synFlight) seq(id gvstack.TransportEndpointID) (uint32, bool) {
	sh := f.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	seq, ok := sh.seq[id]
	return seq, ok
}

// remove forgets the SYN in flight for id.
func (f *synFlight) remove(id gvstack.TransportEndpointID) {
	sh := f.shard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if _, ok := sh.seq[id]; ok {
		delete(sh.seq, id)
		f.n.Add(-1)
	}
}
