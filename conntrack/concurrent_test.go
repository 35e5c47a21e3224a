package conntrack_test

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ct "tcpd/conntrack"
)

// syncClock is a manual clock that several goroutines may read.
type syncClock struct{ ns atomic.Int64 }

var clockBase = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func (c *syncClock) now() time.Time          { return clockBase.Add(time.Duration(c.ns.Load())) }
func (c *syncClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// onLoops runs fn(w, i) for i in [0, perLoop) on each of loops goroutines
// w at once, as the packet loops of a multi-queue TUN call the table, and
// waits for them.
func onLoops(loops, perLoop int, fn func(w, i int)) {
	var wg sync.WaitGroup
	for w := range loops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perLoop {
				fn(w, i)
			}
		}()
	}
	wg.Wait()
}

// TestConcurrentConnections runs whole connections from 8 goroutines at
// once, as the packet loops of a multi-queue TUN do, on 64 client addresses
// they share, while the maintenance work (timers, reconcile, snapshots, the
// live table) runs beside them; then checks that every count, counter and
// per-client count adds up, and that the table empties. Run with -race.
func TestConcurrentConnections(t *testing.T) {
	const loops, perLoop = 8, 2000
	clk := &syncClock{}
	tab := ct.New(ct.Config{TimeWait: 10 * time.Second, TimeWaitLimit: new(loops * perLoop), Now: clk.now})
	stop := make(chan struct{})
	var maint sync.WaitGroup
	maint.Add(1)
	go func() {
		defer maint.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			tab.ExpireTimeWait()
			tab.Tick()
			for _, c := range tab.Conns(nil) {
				tab.Reconcile(c.ID, c.State)
			}
			tab.Snapshot()
		}
	}()
	onLoops(loops, perLoop, func(w, i int) {
		tu := ct.Tuple{
			Client: netip.AddrPortFrom(netip.AddrFrom4([4]byte{100, 64, 0, byte(i % 64)}), uint16(1024+w*perLoop+i)),
			Dst:    netip.MustParseAddrPort("198.18.1.2:443"),
		}
		lifecycle(tab, tu, i%2 == 0)
	})
	close(stop)
	maint.Wait()

	const n = loops * perLoop
	snap := tab.Snapshot()
	if snap.Opened != n || snap.Established != n || snap.TimeWaitEntered != n/2 || snap.Untracked != 0 || snap.Corrections != 0 {
		t.Fatalf("opened %d, established %d, TIME_WAIT %d, untracked %d, corrections %d; want %d, %d, %d, 0, 0",
			snap.Opened, snap.Established, snap.TimeWaitEntered, snap.Untracked, snap.Corrections, n, n, n/2)
	}
	if snap.Live != n/2 || snap.TimeWait != n/2 || snap.States[ct.StateTimeWait] != n/2 || snap.Relays != 0 {
		t.Fatalf("live %d, in TIME_WAIT %d (states say %d), relays %d; want %d, %d, %d, 0",
			snap.Live, snap.TimeWait, snap.States[ct.StateTimeWait], snap.Relays, n/2, n/2, n/2)
	}
	if snap.Handshake.Count != n || snap.Dial.Count != n || snap.Setup.Count != n {
		t.Fatalf("histograms: handshake %d, dial %d, setup %d; want %d each", snap.Handshake.Count, snap.Dial.Count, snap.Setup.Count, n)
	}
	for i := range 64 {
		if got := tab.SynRecvFrom(netip.AddrFrom4([4]byte{100, 64, 0, byte(i)})); got != 0 {
			t.Fatalf("client %d: %d handshakes counted open, want 0", i, got)
		}
	}
	clk.advance(10 * time.Second)
	if got := tab.ExpireTimeWait(); got != n/2 {
		t.Fatalf("expired %d, want %d", got, n/2)
	}
	snap = tab.Snapshot()
	if snap.Live != 0 || snap.TimeWait != 0 || snap.Closed != n || snap.TimeWaitDwell.Count != n/2 || snap.Lifetime.Count != n {
		t.Fatalf("after expiry: live %d, TIME_WAIT %d, removed %d, dwell %d, lifetime %d; want 0, 0, %d, %d, %d",
			snap.Live, snap.TimeWait, snap.Closed, snap.TimeWaitDwell.Count, snap.Lifetime.Count, n, n/2, n)
	}
	checkCounts(t, tab)
}

// TestSynRecvCapExact sends SYNs from one client on 8 goroutines at once
// against a cap of 16 open handshakes: exactly 16 are tracked and the rest
// refused, however the goroutines interleave. As handshakes complete, room
// opens again; a SYN that would reuse a 4-tuple in TIME_WAIT is capped too,
// and leaves TIME_WAIT as it was.
func TestSynRecvCapExact(t *testing.T) {
	const limit, loops, perLoop = 16, 8, 100
	tab, _ := newTable(ct.Config{MaxSynRecvPerClient: limit})
	client := netip.MustParseAddr("100.64.9.9")
	tupleOf := func(port int) ct.Tuple {
		return ct.Tuple{Client: netip.AddrPortFrom(client, uint16(port)), Dst: netip.MustParseAddrPort("198.18.1.2:80")}
	}
	var refused atomic.Int64
	onLoops(loops, perLoop, func(w, i int) {
		if a := tab.Segment(ct.FromClient, tupleOf(10000+w*perLoop+i), ct.Segment{Flags: ct.FlagSYN, Seq: cISS}); a.Kind == ct.ActionRefuse {
			refused.Add(1)
		}
	})
	if got := tab.SynRecvFrom(client); got != limit || refused.Load() != loops*perLoop-limit || tab.Len() != limit {
		t.Fatalf("%d handshakes open, %d refused, %d entries; want %d, %d, %d", got, refused.Load(), tab.Len(), limit, loops*perLoop-limit, limit)
	}
	// Complete one handshake: one more SYN fits, the next does not.
	var open ct.Tuple
	for _, c := range tab.Conns(nil) {
		open = c.Tuple
		break
	}
	tab.Segment(ct.ToClient, open, ct.Segment{Flags: ct.FlagSYN | ct.FlagACK, Seq: tISS, Ack: cISS + 1})
	tab.Segment(ct.FromClient, open, ct.Segment{Flags: ct.FlagACK, Seq: cISS + 1, Ack: tISS + 1})
	if a := tab.Segment(ct.FromClient, tupleOf(20000), ct.Segment{Flags: ct.FlagSYN, Seq: cISS}); a.Kind != ct.ActionOpen {
		t.Fatalf("a SYN after a handshake completed: %v, want it tracked", a.Kind)
	}
	if a := tab.Segment(ct.FromClient, tupleOf(20001), ct.Segment{Flags: ct.FlagSYN, Seq: cISS}); a.Kind != ct.ActionRefuse {
		t.Fatalf("a SYN over the cap: %v, want refused", a.Kind)
	}
	// A retransmitted SYN of a handshake already open is not a new one.
	if a := tab.Segment(ct.FromClient, tupleOf(20000), ct.Segment{Flags: ct.FlagSYN, Seq: cISS}); a.Kind != ct.ActionNone {
		t.Fatalf("a retransmitted SYN at the cap: %v, want it passed on", a.Kind)
	}
	// The completed connection closes into TIME_WAIT; a new SYN on its
	// 4-tuple is refused while the client is at its cap, and TIME_WAIT
	// stays.
	for _, st := range []struct {
		dir ct.Dir
		seg ct.Segment
	}{
		{ct.ToClient, ct.Segment{Flags: ct.FlagFIN | ct.FlagACK, Seq: tISS + 1, Ack: cISS + 1}},
		{ct.FromClient, ct.Segment{Flags: ct.FlagFIN | ct.FlagACK, Seq: cISS + 1, Ack: tISS + 2}},
		{ct.ToClient, ct.Segment{Flags: ct.FlagACK, Seq: tISS + 2, Ack: cISS + 2}},
	} {
		tab.Segment(st.dir, open, st.seg)
	}
	if a := tab.Segment(ct.FromClient, open, ct.Segment{Flags: ct.FlagSYN, Seq: cISS + 100000}); a.Kind != ct.ActionRefuse {
		t.Fatalf("a reusing SYN over the cap: %v, want refused", a.Kind)
	}
	if snap := tab.Snapshot(); snap.TimeWait != 1 || snap.TimeWaitReused != 0 {
		t.Fatalf("after a refused reuse: %d in TIME_WAIT, %d reused; want 1, 0", snap.TimeWait, snap.TimeWaitReused)
	}
	checkCounts(t, tab)
}
