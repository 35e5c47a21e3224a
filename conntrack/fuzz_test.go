package conntrack_test

import (
	"net/netip"
	"testing"
	"time"

	ct "tcpd/conntrack"
)

// FuzzSegments feeds arbitrary segment sequences on two 4-tuples, with
// sequence numbers near the ones a real exchange would use so that the fuzzer
// reaches every state, and checks the table's invariants after each one.
func FuzzSegments(f *testing.F) {
	f.Add([]byte{0, 0x02, 0, 0, 0, 0, 1, 0x12, 0, 1, 0, 0, 0, 0x10, 1, 1, 0, 0})
	f.Add([]byte{0, 0x02, 0, 0, 0, 0, 1, 0x12, 0, 1, 0, 0, 0, 0x10, 1, 1, 0, 0, 1, 0x11, 1, 1, 0, 0, 0, 0x11, 1, 2, 0, 0, 1, 0x10, 2, 2, 0, 0})
	f.Add([]byte{0, 0x02, 0, 0, 0, 0, 0, 0x04, 1, 0, 0, 9, 0, 0x02, 200, 0, 0, 0})
	f.Fuzz(segmentsBody)
}

var fuzzTuples = []ct.Tuple{
	{Client: netip.MustParseAddrPort("100.64.1.2:40000"), Dst: netip.MustParseAddrPort("198.18.1.2:80")},
	{Client: netip.MustParseAddrPort("[fd64::2]:40000"), Dst: netip.MustParseAddrPort("[2001:db8::2]:443")},
}

func segmentsBody(t *testing.T, data []byte) {
	tuples := fuzzTuples
	if len(data) > 6*200 {
		data = data[:6*200] // invariants are checked per step; keep runs short
	}
	{
		clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
		tab := ct.New(ct.Config{TimeWait: 30 * time.Second, TimeWaitLimit: new(1), Unclaimed: 5 * time.Second, Now: clk.now})
		for step := 0; len(data) >= 6; step++ {
			b := data[:6]
			data = data[6:]
			dir := ct.Dir(b[0] & 1)
			tu := tuples[(b[0]>>1)&1]
			base := uint32(cISS)
			peer := uint32(tISS)
			if dir == ct.ToClient {
				base, peer = tISS, cISS
			}
			seg := ct.Segment{
				Flags: b[1] & 0x1f,
				Seq:   base + uint32(b[2]),
				Ack:   peer + uint32(b[3]),
				Len:   uint32(b[4] & 0x7),
			}
			if b[0]&4 != 0 {
				tab.Claim(tu, seg.Seq)
			}
			if b[0]&8 != 0 {
				id, _ := lookup(tab, tu)
				tab.Reconcile(id, ct.State(b[5]%uint8(ct.NumStates)))
			}
			tab.Segment(dir, tu, seg)
			clk.advance(time.Duration(b[5]) * 100 * time.Millisecond)
			if b[0]&16 != 0 {
				tab.Tick()
			}
			// The checks that list every connection cost a lock per
			// shard; every fourth step and the last, so that the fuzzer
			// runs more inputs. The counts are checked at every step.
			checkInvariants(t, tab, step%4 == 3 || len(data) < 6)
		}
		// No entry outlives its timers: after TIME_WAIT and the unclaimed
		// timeout, only claimed connections that are not in TIME_WAIT remain.
		clk.advance(31 * time.Second)
		tab.Tick()
		checkInvariants(t, tab, true)
		for _, c := range tab.Conns(nil) {
			if c.State == ct.StateTimeWait {
				t.Fatalf("entry %d outlived TIME_WAIT", c.ID)
			}
		}
	}
}

// checkInvariants checks the table's counts against each other and, with
// rows, against the connections it lists.
func checkInvariants(t *testing.T, tab *ct.Table, rows bool) {
	t.Helper()
	snap := tab.Snapshot()
	var a, b uint64
	for i := range ct.NumStates {
		if snap.States[i] > 1<<40 || snap.ClientStates[i] > 1<<40 {
			t.Fatalf("negative count in state %v", ct.State(i))
		}
		a += snap.States[i]
		b += snap.ClientStates[i]
	}
	if a != uint64(snap.Live) || b != uint64(snap.Live) {
		t.Fatalf("counts %d/%d do not add up to %d live", a, b, snap.Live)
	}
	if snap.TimeWait > snap.TimeWaitLimit || uint64(snap.TimeWait) != snap.States[ct.StateTimeWait] {
		t.Fatalf("time_wait %d (limit %d), states say %d", snap.TimeWait, snap.TimeWaitLimit, snap.States[ct.StateTimeWait])
	}
	if snap.States[ct.StateClosed] != 0 {
		t.Fatalf("%d entries kept with tcpd's end closed", snap.States[ct.StateClosed])
	}
	if !rows {
		return
	}
	var syn int
	for _, c := range tab.Conns(nil) {
		if c.State == ct.StateSynRecv {
			syn++
		}
	}
	perClient := 0
	for _, tu := range fuzzTuples {
		perClient += tab.SynRecvFrom(tu.Client.Addr())
	}
	if perClient != syn {
		t.Fatalf("per-client syn_recv counts add up to %d, the table holds %d", perClient, syn)
	}
	if got := len(tab.Conns(nil)); got != snap.Live {
		t.Fatalf("%d rows, %d live", got, snap.Live)
	}
}
