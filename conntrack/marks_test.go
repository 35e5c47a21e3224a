package conntrack_test

import (
	"net/netip"
	"testing"
	"time"

	ct "tcpd/conntrack"
)

// TestPassesVisitMarkedShards: the periodic passes visit the shards with
// timed work (TIME_WAIT, unclaimed entries, ended records) or memory to
// give back, every such shard until its work is done, and once a burst of
// connections has ended and expired, none: an idle table costs a look at
// its marks, not at its 16,384 shards.
func TestPassesVisitMarkedShards(t *testing.T) {
	tab, clk := newTable(ct.Config{TimeWait: 30 * time.Second})
	if a, b, c := tab.Marked(); a+b+c != 0 {
		t.Fatalf("a new table has shards marked: timed %d, grown %d, clients %d", a, b, c)
	}
	const n = 3000
	tupleOf := func(i int) ct.Tuple {
		return ct.Tuple{
			Client: netip.AddrPortFrom(netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}), uint16(1024+i)),
			Dst:    netip.MustParseAddrPort("198.18.1.2:443"),
		}
	}
	shards := map[int]bool{}
	for i := range n {
		tu := tupleOf(i)
		shards[tab.ShardOf(tu)] = true
		steps := handshake
		if i%2 == 0 {
			steps = append(append([]step{}, handshake...), tcpdTimeWait...)
		}
		for _, st := range steps {
			tab.Segment(st.dir, tu, ct.Segment{Flags: flags(st.flags), Seq: st.seq, Ack: st.ack, Len: st.n, Queue: 1})
		}
		if i%2 == 1 {
			// Reset: the entry ends at once and leaves a record of its
			// queue behind.
			tab.Segment(ct.FromClient, tu, ct.Segment{Flags: ct.FlagRST, Seq: cISS + 1, Queue: 1})
		}
	}
	if snap := tab.Snapshot(); snap.TimeWait != n/2 || snap.Live != n/2 {
		t.Fatalf("%d in TIME_WAIT of %d live, want %d of %d", snap.TimeWait, snap.Live, n/2, n/2)
	}
	timed, grown, clients := tab.Marked()
	t.Logf("%d connections on %d shards: timed %d, grown %d, clients %d", n, len(shards), timed, grown, clients)
	if timed != len(shards) || grown != len(shards) {
		t.Errorf("timed %d and grown %d shards marked, want the %d shards the connections are on", timed, grown, len(shards))
	}
	if clients == 0 {
		t.Errorf("no client shard marked after %d clients' handshakes", n)
	}

	// Before TIME_WAIT runs out, every shard with an entry in it stays
	// marked, however often the passes visit it.
	clk.advance(10 * time.Second)
	for range 3 {
		tab.ExpireTimeWait()
		tab.Tick()
	}
	twShards := map[int]bool{}
	for i := 0; i < n; i += 2 {
		twShards[tab.ShardOf(tupleOf(i))] = true
	}
	if timed, _, _ := tab.Marked(); timed != len(twShards) {
		t.Errorf("%d shards marked timed with TIME_WAIT entries on %d", timed, len(twShards))
	}

	clk.advance(21 * time.Second)
	if got := tab.Tick(); got != n/2 {
		t.Fatalf("Tick removed %d entries after TIME_WAIT, want %d", got, n/2)
	}
	tab.Tick()
	if snap := tab.Snapshot(); snap.Live != 0 {
		t.Fatalf("%d entries left", snap.Live)
	}
	if a, b, c := tab.Marked(); a+b+c != 0 {
		t.Errorf("the idle table still has shards marked: timed %d, grown %d, clients %d", a, b, c)
	}
}

// BenchmarkIdlePasses is the periodic passes on a table with nothing in it
// (a second's worth: ten TIME_WAIT expiries and a Tick).
func BenchmarkIdlePasses(b *testing.B) {
	tab, _ := newTable(ct.Config{})
	for b.Loop() {
		for range 10 {
			tab.ExpireTimeWait()
		}
		tab.Tick()
	}
}
