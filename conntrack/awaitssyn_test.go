package conntrack_test

import (
	"testing"

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
	if id := tab.Claim(tuple); id == 0 {
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
	id := tab.Claim(tuple)
	tab.Segment(ct.ToClient, tuple, ct.Segment{Flags: ct.FlagSYN | ct.FlagACK, Seq: tISS, Ack: next + 1})
	tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagACK, Seq: next + 1, Ack: tISS + 1})
	if id == 0 || tab.AwaitsSYN(tuple, next) {
		t.Fatalf("AwaitsSYN once established (claimed %d): true, want false", id)
	}
}
