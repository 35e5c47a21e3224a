package conntrack_test

import (
	"fmt"
	"testing"
	"time"

	ct "tcpd/conntrack"
)

// TestStaleSYN checks which SYN that finds no entry conntrack takes for an
// old duplicate of the 4-tuple's last connection (ActionStale): one with
// that connection's ISN, once it got through its handshake and ended, for
// EndedLinger after its end. A new ISN opens the 4-tuple; so does the same
// ISN after the linger, or when the connection ended in its handshake (the
// client may still want it), and a stale SYN leaves nothing behind.
func TestStaleSYN(t *testing.T) {
	const q = 1 // the TUN queue every segment comes on
	next := uint32(cISS + 70000)
	cases := []struct {
		name string
		// established says the client ACKs tcpd's SYN-ACK before it resets.
		established bool
		// relay says a relay runs through the reset, released after wait.
		relay bool
		wait  time.Duration
		seq   uint32
		want  ct.ActionKind
	}{
		{"the reset connection's SYN again", true, false, 0, cISS, ct.ActionStale},
		{"the reset connection's SYN just before the linger ends", true, false, ct.EndedLinger - time.Millisecond, cISS, ct.ActionStale},
		{"the reset connection's SYN while its relay runs", true, true, 10 * ct.EndedLinger, cISS, ct.ActionStale},
		{"the reset connection's SYN after the linger", true, false, ct.EndedLinger, cISS, ct.ActionOpen},
		{"a new ISN", true, false, 0, next, ct.ActionOpen},
		{"the SYN of a handshake reset before the client's ACK", false, false, 0, cISS, ct.ActionOpen},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tab, clk := newTable(ct.Config{})
			seg := func(dir ct.Dir, fl string, seq, ack uint32) ct.Action {
				return tab.Segment(dir, tuple, ct.Segment{Flags: flags(fl), Seq: seq, Ack: ack, Wnd: 1000, Queue: q})
			}
			if a := seg(ct.FromClient, "S", cISS, 0); a.Kind != ct.ActionOpen {
				t.Fatalf("first SYN: %v, want ActionOpen", a.Kind)
			}
			id, _ := tab.Claim(tuple, cISS)
			seg(ct.ToClient, "SA", tISS, cISS+1)
			rst := uint32(cISS + 1)
			if c.established {
				seg(ct.FromClient, "A", cISS+1, tISS+1)
				if c.relay && !tab.Relaying(id) {
					t.Fatal("Relaying refused a live entry")
				}
				seg(ct.FromClient, "PA", cISS+1, tISS+1)
			}
			seg(ct.FromClient, "RA", rst, tISS+1)
			clk.advance(c.wait)
			if c.relay {
				tab.Released(id)
			}
			tab.ExpireTimeWait()
			before := tab.Snapshot()
			if before.Live != 0 {
				t.Fatalf("%d entries live after the reset, want 0", before.Live)
			}
			a := seg(ct.FromClient, "S", c.seq, 0)
			if a.Kind != c.want {
				t.Fatalf("SYN seq %d: %v, want %v", c.seq, a.Kind, c.want)
			}
			if c.want == ct.ActionStale {
				after := tab.Snapshot()
				if after.Live != 0 || after.Opened != before.Opened || after.ClientStates != before.ClientStates {
					t.Fatalf("the stale SYN left live %d, opened %d→%d: want nothing tracked", after.Live, before.Opened, after.Opened)
				}
				checkCounts(t, tab)
				// The client's next connection opens as ever.
				if a := seg(ct.FromClient, "S", next, 0); a.Kind != ct.ActionOpen {
					t.Fatalf("the next connection's SYN after a stale one: %v, want ActionOpen", a.Kind)
				}
			}
			checkCounts(t, tab)
		})
	}
}

// TestStaleSYNOnNextConnection: once the client's next connection has
// opened the 4-tuple, a SYN with the ISN of the connection before it is
// still an old duplicate, and must not reach the next one's handshake;
// that connection's own SYN, retransmitted, goes on as ever.
func TestStaleSYNOnNextConnection(t *testing.T) {
	const q = 1
	next := uint32(cISS + 70000)
	tab, _ := newTable(ct.Config{})
	seg := func(dir ct.Dir, fl string, seq, ack uint32) ct.Action {
		return tab.Segment(dir, tuple, ct.Segment{Flags: flags(fl), Seq: seq, Ack: ack, Wnd: 1000, Queue: q})
	}
	seg(ct.FromClient, "S", cISS, 0)
	tab.Claim(tuple, cISS)
	seg(ct.ToClient, "SA", tISS, cISS+1)
	seg(ct.FromClient, "A", cISS+1, tISS+1)
	seg(ct.FromClient, "RA", cISS+1, tISS+1)
	if a := seg(ct.FromClient, "S", next, 0); a.Kind != ct.ActionOpen {
		t.Fatalf("the next connection's SYN: %v, want ActionOpen", a.Kind)
	}
	before := tab.Snapshot()
	if a := seg(ct.FromClient, "S", cISS, 0); a.Kind != ct.ActionStale {
		t.Fatalf("the first connection's SYN again: %v, want ActionStale", a.Kind)
	}
	if after := tab.Snapshot(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("the stale SYN changed the snapshot:\n%+v\nwas\n%+v", after, before)
	}
	if !tab.AwaitsSYN(tuple, next) {
		t.Fatal("the next connection's entry no longer awaits its SYN")
	}
	if a := seg(ct.FromClient, "S", next, 0); a.Kind != ct.ActionNone {
		t.Fatalf("the next connection's SYN retransmitted: %v, want ActionNone", a.Kind)
	}
	if id, _ := tab.Claim(tuple, next); id == 0 {
		t.Fatal("the next connection's entry cannot be claimed")
	}
	checkCounts(t, tab)
}
