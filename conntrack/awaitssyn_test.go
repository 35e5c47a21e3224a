package conntrack_test

import (
	"testing"
	"time"

	ct "tcpd/conntrack"
)

// TestAwaitsSYN checks which SYN a 4-tuple's entry still waits for the
// netstack to see: its own, until a handler claims it, and no other.
func TestAwaitsSYN(t *testing.T) {
	tab, _ := newTable(ct.Config{})
	syn := ct.Segment{Flags: ct.FlagSYN, Seq: cISS}
	if tab.AwaitsSYN(tuple, cISS) {
		t.Fatal("AwaitsSYN with no entry: true, want false")
	}
	if a := tab.Segment(ct.FromClient, tuple, syn); a.Kind != ct.ActionOpen {
		t.Fatalf("SYN: %v, want ActionOpen", a.Kind)
	}
	if !tab.AwaitsSYN(tuple, cISS) {
		t.Fatal("AwaitsSYN of the entry's own SYN: false, want true")
	}
	if tab.AwaitsSYN(tuple, cISS+70000) {
		t.Fatal("AwaitsSYN of another ISN: true, want false")
	}
	if id, _ := tab.Claim(tuple, cISS); id == 0 {
		t.Fatal("Claim: 0")
	}
	if tab.AwaitsSYN(tuple, cISS) {
		t.Fatal("AwaitsSYN once a handler has claimed the entry: true, want false")
	}

	// The client resets and opens the 4-tuple again with a new ISN: the
	// first connection's SYN is stale, the new one awaited.
	tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagRST, Seq: cISS + 1})
	if tab.AwaitsSYN(tuple, cISS) {
		t.Fatal("AwaitsSYN after the client's reset: true, want false")
	}
	next := uint32(cISS + 70000)
	if a := tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagSYN, Seq: next}); a.Kind != ct.ActionOpen {
		t.Fatalf("the next connection's SYN: %v, want ActionOpen", a.Kind)
	}
	if tab.AwaitsSYN(tuple, cISS) {
		t.Fatal("AwaitsSYN of the reset connection's SYN while the next one waits: true, want false")
	}
	if !tab.AwaitsSYN(tuple, next) {
		t.Fatal("AwaitsSYN of the next connection's SYN: false, want true")
	}
	// Past the handshake: nothing is awaited.
	id, _ := tab.Claim(tuple, next)
	tab.Segment(ct.ToClient, tuple, ct.Segment{Flags: ct.FlagSYN | ct.FlagACK, Seq: tISS, Ack: next + 1})
	tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagACK, Seq: next + 1, Ack: tISS + 1})
	if id == 0 || tab.AwaitsSYN(tuple, next) {
		t.Fatalf("AwaitsSYN once established (claimed %d): true, want false", id)
	}
}

// TestClaimOwnSYN checks that a handler claims only the entry its own SYN
// opened: not one another ISN opened (a stale copy of the 4-tuple's last
// SYN must not take the client's next connection), not one claimed
// already, and that it can tell those from a 4-tuple with no entry.
func TestClaimOwnSYN(t *testing.T) {
	next := uint32(cISS + 70000)
	cases := []struct {
		name string
		// segs run before the claim, from the client.
		segs      []ct.Segment
		claims    int // claims of seq before the one checked
		seq       uint32
		wantID    bool
		wantStale bool
	}{
		{name: "no entry", seq: cISS},
		{name: "its own SYN's entry", segs: []ct.Segment{{Flags: ct.FlagSYN, Seq: cISS}}, seq: cISS, wantID: true},
		{name: "its own SYN retransmitted", segs: []ct.Segment{{Flags: ct.FlagSYN, Seq: cISS}, {Flags: ct.FlagSYN, Seq: cISS}}, seq: cISS, wantID: true},
		{name: "an entry another ISN opened", segs: []ct.Segment{{Flags: ct.FlagSYN, Seq: next}}, seq: cISS, wantStale: true},
		{name: "the next connection's entry after a reset", segs: []ct.Segment{
			{Flags: ct.FlagSYN, Seq: cISS}, {Flags: ct.FlagRST, Seq: cISS + 1}, {Flags: ct.FlagSYN, Seq: next},
		}, seq: cISS, wantStale: true},
		{name: "an entry claimed already", segs: []ct.Segment{{Flags: ct.FlagSYN, Seq: cISS}}, claims: 1, seq: cISS, wantStale: true},
		// The client gave its first SYN up before anything answered it
		// and sent one with a new ISN: the entry is the new SYN's.
		{name: "the client's new SYN before anything answered", segs: []ct.Segment{
			{Flags: ct.FlagSYN, Seq: cISS}, {Flags: ct.FlagSYN, Seq: next},
		}, seq: next, wantID: true},
		{name: "the SYN the client gave up", segs: []ct.Segment{
			{Flags: ct.FlagSYN, Seq: cISS}, {Flags: ct.FlagSYN, Seq: next},
		}, seq: cISS, wantStale: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tab, _ := newTable(ct.Config{})
			for _, s := range c.segs {
				tab.Segment(ct.FromClient, tuple, s)
			}
			for range c.claims {
				if id, _ := tab.Claim(tuple, c.seq); id == 0 {
					t.Fatal("first claim: 0")
				}
			}
			id, stale := tab.Claim(tuple, c.seq)
			if (id != 0) != c.wantID || stale != c.wantStale {
				t.Fatalf("Claim(seq %d) = %d, stale %v; want an ID %v, stale %v", c.seq, id, stale, c.wantID, c.wantStale)
			}
			if c.wantStale && len(c.segs) > 0 {
				// The entry the stale claim found is left as it was:
				// still awaited by its own SYN unless claimed before.
				last := c.segs[len(c.segs)-1].Seq
				if got, want := tab.AwaitsSYN(tuple, last), c.claims == 0; got != want {
					t.Fatalf("after the refused claim, AwaitsSYN of the entry's own SYN = %v, want %v", got, want)
				}
			}
		})
	}
}

// TestNewISNAfterAnswer checks that a SYN with a new ISN takes a 4-tuple's
// entry only while nothing has answered the one that opened it: once a
// handler has claimed the entry, or tcpd's SYN-ACK has crossed the TUN,
// the entry stays the first SYN's.
func TestNewISNAfterAnswer(t *testing.T) {
	next := uint32(cISS + 70000)
	t.Run("claimed", func(t *testing.T) {
		tab, _ := newTable(ct.Config{})
		tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagSYN, Seq: cISS})
		id, _ := tab.Claim(tuple, cISS)
		if id == 0 {
			t.Fatal("Claim of the first SYN: 0")
		}
		tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagSYN, Seq: next})
		if id2, stale := tab.Claim(tuple, next); id2 != 0 || !stale {
			t.Fatalf("Claim of the new ISN after the first was claimed = %d, stale %v; want 0, stale", id2, stale)
		}
		snap := tab.Conns(nil)
		if len(snap) != 1 || snap[0].ID != id {
			t.Fatalf("connections %+v, want the first one only", snap)
		}
	})
	t.Run("answered", func(t *testing.T) {
		tab, _ := newTable(ct.Config{})
		tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagSYN, Seq: cISS})
		tab.Segment(ct.ToClient, tuple, ct.Segment{Flags: ct.FlagSYN | ct.FlagACK, Seq: tISS, Ack: cISS + 1, Wnd: testWnd})
		tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagSYN, Seq: next})
		if id, stale := tab.Claim(tuple, next); id != 0 || !stale {
			t.Fatalf("Claim of the new ISN after tcpd's SYN-ACK = %d, stale %v; want 0, stale", id, stale)
		}
		if id, _ := tab.Claim(tuple, cISS); id == 0 {
			t.Fatal("Claim of the answered SYN: 0")
		}
	})
}

// TestNewISNKeepsCounts checks that a SYN with a new ISN that restarts the
// client's end counts the move: the client's own SYN-ACK (what only a
// broken or hostile client sends, tcpd having sent it no SYN) had taken its
// end to SYN-RECEIVED, and the restart takes it back to SYN-SENT. Left
// uncounted, SYN-RECEIVED kept a client end for good and SYN-SENT's count
// went below zero when the end left it (the fuzzer's find).
func TestNewISNKeepsCounts(t *testing.T) {
	tab, _ := newTable(ct.Config{})
	next := uint32(cISS + 70000)
	tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagSYN, Seq: cISS})
	tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagSYN | ct.FlagACK, Seq: cISS, Ack: tISS + 1})
	if c := tab.Conns(nil); len(c) != 1 || c[0].ClientState != ct.StateSynRecv {
		t.Fatalf("after the client's SYN-ACK: %+v, want one connection, the client's end in syn_recv", c)
	}
	// It opens the handshake as a first SYN would: the link holds it
	// while an earlier connection's endpoint lingers, as it holds those.
	if a := tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagSYN, Seq: next}); a.Kind != ct.ActionOpen {
		t.Fatalf("the SYN with a new ISN: %v, want ActionOpen", a.Kind)
	}
	c := tab.Conns(nil)
	if len(c) != 1 || c[0].ClientState != ct.StateSynSent {
		t.Fatalf("after the SYN with a new ISN: %+v, want one connection, the client's end in syn_sent", c)
	}
	snap := tab.Snapshot()
	if snap.ClientStates[ct.StateSynSent] != 1 || snap.ClientStates[ct.StateSynRecv] != 0 {
		t.Fatalf("client ends counted syn_sent %d, syn_recv %d; want 1 and 0",
			int64(snap.ClientStates[ct.StateSynSent]), int64(snap.ClientStates[ct.StateSynRecv]))
	}
	// The handshake of the new SYN completes; every count follows it.
	if id, _ := tab.Claim(tuple, next); id == 0 {
		t.Fatal("Claim of the new SYN: 0")
	}
	tab.Segment(ct.ToClient, tuple, ct.Segment{Flags: ct.FlagSYN | ct.FlagACK, Seq: tISS, Ack: next + 1})
	tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagACK, Seq: next + 1, Ack: tISS + 1})
	snap = tab.Snapshot()
	for s := range ct.NumStates {
		want := uint64(0)
		if s == ct.StateEstablished {
			want = 1
		}
		if snap.States[s] != want || snap.ClientStates[s] != want {
			t.Errorf("state %v counted %d (tcpd) and %d (client), want %d", ct.State(s),
				int64(snap.States[s]), int64(snap.ClientStates[s]), want)
		}
	}
}

// TestOldIncarnationACKBeforeSYNACK checks that what the 4-tuple's last
// connection's endpoint sent after the client reset and reopened it (an
// ACK of the last data, which crosses the new SYN) touches neither end of
// the new entry, and that the client's answer to it (a RST from SYN-SENT
// whose sequence number is the ACK's acknowledgment number, RFC 9293
// 3.10.7.3) leaves the entry for its handler to claim.
func TestOldIncarnationACKBeforeSYNACK(t *testing.T) {
	tab, _ := newTable(ct.Config{})
	old := uint32(cISS + 1 + 5) // the last connection's SND.NXT after 5 bytes
	next := uint32(cISS + 70000)
	tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagSYN, Seq: cISS})
	tab.Claim(tuple, cISS)
	tab.Segment(ct.ToClient, tuple, ct.Segment{Flags: ct.FlagSYN | ct.FlagACK, Seq: tISS, Ack: cISS + 1, Wnd: testWnd})
	tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagACK, Seq: cISS + 1, Ack: tISS + 1})
	tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagACK, Seq: cISS + 1, Ack: tISS + 1, Len: 5})
	tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagRST | ct.FlagACK, Seq: old, Ack: tISS + 1})
	if a := tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagSYN, Seq: next}); a.Kind != ct.ActionOpen {
		t.Fatalf("the next connection's SYN: %v, want ActionOpen", a.Kind)
	}
	tab.Segment(ct.ToClient, tuple, ct.Segment{Flags: ct.FlagACK, Seq: tISS + 1, Ack: old, Wnd: 1000, TS: true, TSVal: 7, TSEcr: 9})
	tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagRST, Seq: old})
	id, stale := tab.Claim(tuple, next)
	if id == 0 || stale {
		t.Fatalf("Claim of the next connection's SYN after the old ACK and the client's RST: id %d, stale %v; want its entry", id, stale)
	}
	if snap := tab.Snapshot(); snap.Live != 1 || snap.States[ct.StateSynRecv] != 1 || snap.ClientStates[ct.StateSynSent] != 1 {
		t.Fatalf("%d entries, tcpd's ends %v, the client's %v; want one, SYN_RCVD and SYN_SENT", snap.Live, snap.States, snap.ClientStates)
	}
	// The handshake goes on as if the old ACK had never crossed: the
	// client's ACK without timestamps completes it.
	tab.Segment(ct.ToClient, tuple, ct.Segment{Flags: ct.FlagSYN | ct.FlagACK, Seq: tISS + 90000, Ack: next + 1, Wnd: testWnd})
	tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagACK, Seq: next + 1, Ack: tISS + 90001})
	if snap := tab.Snapshot(); snap.Live != 1 || snap.States[ct.StateEstablished] != 1 || snap.ClientStates[ct.StateEstablished] != 1 {
		t.Fatalf("after the handshake: %d entries, tcpd's ends %v, the client's %v; want one, both ESTABLISHED", snap.Live, snap.States, snap.ClientStates)
	}
}

// TestRejectReplies checks what tcpd answers for a client's segment whose
// acknowledgment no TCP takes: in SYN-RECEIVED, a RST at its acknowledgment
// number; in ESTABLISHED, for one acknowledging what tcpd never sent, the
// ACK the netstack would send, at most one each half second.
func TestRejectReplies(t *testing.T) {
	tab, clk := newTable(ct.Config{})
	seg := func(fl string, seq, ack, n uint32) ct.Segment {
		return ct.Segment{Flags: flags(fl), Seq: seq, Ack: ack, Len: n, Wnd: testWnd}
	}
	tab.Segment(ct.FromClient, tuple, seg("S", cISS, 0, 0))
	tab.Segment(ct.ToClient, tuple, seg("SA", tISS, cISS+1, 0))
	a := tab.Segment(ct.FromClient, tuple, seg("A", cISS+1, tISS+77, 0))
	if want := (ct.Reply{RST: true, Seq: tISS + 77}); a.Kind != ct.ActionReject || !a.Answer || a.Reply != want {
		t.Fatalf("ACK of tcpd's ISS+77 in SYN-RECEIVED: %v answer %v %+v, want a reject answered with %+v", a.Kind, a.Answer, a.Reply, want)
	}
	tab.Segment(ct.FromClient, tuple, seg("A", cISS+1, tISS+1, 0))
	tab.Segment(ct.ToClient, tuple, seg("PA", tISS+1, cISS+1, 10))
	want := ct.Reply{Seq: tISS + 11, Ack: cISS + 1, Wnd: testWnd}
	for i, tc := range []struct {
		after  time.Duration
		answer bool
	}{{0, true}, {100 * time.Millisecond, false}, {400 * time.Millisecond, true}} {
		clk.advance(tc.after)
		a := tab.Segment(ct.FromClient, tuple, seg("PA", cISS+1, tISS+12, 5))
		if a.Kind != ct.ActionReject || a.Answer != tc.answer || (tc.answer && a.Reply != want) {
			t.Fatalf("data acknowledging unsent data, %d: %v answer %v %+v; want a reject answered %v with %+v", i, a.Kind, a.Answer, a.Reply, tc.answer, want)
		}
	}
	if c := tab.Conns(nil)[0]; c.State != Est || c.ClientState != Est || c.BytesIn != 0 {
		t.Fatalf("tcpd %v, the client %v, %d bytes in; want both established and no bytes taken", c.State, c.ClientState, c.BytesIn)
	}
}

// TestRejectOldACKAndScaledWindow: a client's segment that acknowledges
// less than SND.UNA - MAX.SND.WND is rejected as one that acknowledges
// unsent data is (RFC 5961 5.2), one within the window below SND.UNA (a
// reordered one) is not; and the ACK tcpd answers with carries the window
// tcpd last offered as a segment without SYN carries it: a SYN-ACK's
// window field is not scaled, and is shifted down for the answer.
func TestRejectOldACKAndScaledWindow(t *testing.T) {
	tab, _ := newTable(ct.Config{})
	seg := func(fl string, seq, ack, n uint32, wnd uint16) ct.Segment {
		return ct.Segment{Flags: flags(fl), Seq: seq, Ack: ack, Len: n, Wnd: wnd}
	}
	syn := seg("S", cISS, 0, 0, 64240)
	syn.WS, syn.WScale = true, 7
	synAck := seg("SA", tISS, cISS+1, 0, 29184)
	synAck.WS, synAck.WScale = true, 7
	tab.Segment(ct.FromClient, tuple, syn)
	tab.Segment(ct.ToClient, tuple, synAck)
	tab.Segment(ct.FromClient, tuple, seg("A", cISS+1, tISS+1, 0, 502)) // 502 << 7 = 64,256 bytes
	a := tab.Segment(ct.FromClient, tuple, seg("PA", cISS+1, tISS+2, 4, 502))
	if want := (ct.Reply{Seq: tISS + 1, Ack: cISS + 1, Wnd: 29184 >> 7}); a.Kind != ct.ActionReject || a.Reply != want {
		t.Fatalf("data acknowledging unsent data after the handshake: %v %+v, want a reject answered with %+v", a.Kind, a.Reply, want)
	}
	// tcpd sends 200,000 bytes, which the client acknowledges.
	tab.Segment(ct.ToClient, tuple, seg("PA", tISS+1, cISS+1, 200_000, 300))
	tab.Segment(ct.FromClient, tuple, seg("A", cISS+1, tISS+1+200_000, 0, 502))
	if a := tab.Segment(ct.FromClient, tuple, seg("PA", cISS+1, tISS+1+200_000-64_000, 3, 502)); a.Kind != ct.ActionNone {
		t.Fatalf("data with an ACK 64,000 below SND.UNA, inside the client's window: %v, want it taken", a.Kind)
	}
	if a := tab.Segment(ct.FromClient, tuple, seg("PA", cISS+4, tISS+1+200_000-70_000, 3, 502)); a.Kind != ct.ActionReject {
		t.Fatalf("data with an ACK 70,000 below SND.UNA, beyond the client's 64,256-byte window: %v, want a reject", a.Kind)
	}
	if c := tab.Conns(nil)[0]; c.BytesIn != 3 {
		t.Fatalf("%d bytes in, want the 3 of the segment taken", c.BytesIn)
	}
}

// TestUnanswered checks that a SYN the netstack dropped unanswered takes
// away the entry it opened, and nothing else: not the entry of another ISN,
// not one a handler has claimed.
func TestUnanswered(t *testing.T) {
	tab, _ := newTable(ct.Config{})
	tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagSYN, Seq: cISS})
	tab.Unanswered(tuple, cISS+70000)
	if tab.Len() != 1 || !tab.AwaitsSYN(tuple, cISS) {
		t.Fatalf("after another ISN's SYN was dropped: %d entries, want the one awaiting its own SYN", tab.Len())
	}
	tab.Unanswered(tuple, cISS)
	if n := tab.Len(); n != 0 {
		t.Fatalf("after its SYN was dropped unanswered: %d entries, want 0", n)
	}
	if s := tab.Snapshot(); s.States[ct.StateSynRecv] != 0 || s.ClientStates[ct.StateSynSent] != 0 {
		t.Errorf("state counts after the drop: tcpd SYN_RCVD %d, client SYN_SENT %d; want 0", s.States[ct.StateSynRecv], s.ClientStates[ct.StateSynSent])
	}
	// The client's retransmission opens it again; once claimed, a drop of
	// a copy of the SYN leaves it alone.
	tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagSYN, Seq: cISS})
	if id, _ := tab.Claim(tuple, cISS); id == 0 {
		t.Fatal("Claim after the retransmission: 0")
	}
	tab.Unanswered(tuple, cISS)
	if n := tab.Len(); n != 1 {
		t.Fatalf("a claimed entry after a copy of its SYN was dropped: %d entries, want 1", n)
	}
}
