package stack

import (
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"tcpd/conntrack"
)

// TestStaleSYN: a SYN that reaches the netstack a second time after its
// connection has ended — a copy reuseSYN kept and delivered late, or a
// forwarder request whose goroutine started late — while the client's next
// connection on the 4-tuple waits for its own SYN, must leave that
// connection alone: no dial, no SYN-ACK for the old ISN, no RST, the next
// connection's entry still unclaimed; and the next SYN, when it comes, is
// served. The handler used to claim whatever entry of the 4-tuple waited
// in SYN_RCVD, and answered the old ISN on the next connection's entry,
// which the client refused.
func TestStaleSYN(t *testing.T) {
	h := newHarness(t, Config{}, clientAddr)
	h.listen(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	// A client address the test's own client stack does not hold: the
	// test writes its segments and reads tcpd's.
	ghost := netip.MustParseAddrPort("100.64.1.99:40000")
	dst := netip.AddrPortFrom(dstAddr, 80)
	tu := conntrack.Tuple{Client: ghost, Dst: dst}
	const oldISS, nextISS = 1000, 900000

	var (
		mu sync.Mutex
		// synAcks counts the SYN-ACKs tcpd sent the ghost, by the client
		// ISN they acknowledge; iss is tcpd's ISN in the last of them.
		synAcks = map[uint32]int{}
		iss     uint32
		rsts    int
	)
	h.observeOut(func(p []byte) {
		_, to, seg, ok := parseTCP(p)
		if !ok || to != ghost {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		switch {
		case seg.Flags&(conntrack.FlagSYN|conntrack.FlagACK) == conntrack.FlagSYN|conntrack.FlagACK:
			synAcks[seg.Ack-1]++
			iss = seg.Seq
		case seg.Flags&conntrack.FlagRST != 0:
			rsts++
		}
	})
	seen := func(isn uint32) int {
		mu.Lock()
		defer mu.Unlock()
		return synAcks[isn]
	}
	send := func(flags header.TCPFlags, seq, ack uint32) {
		h.inject <- withChecksums(buildV4(ghost, dst, flags, seq, ack, 0))
	}

	// The first connection opens, and the client resets it.
	send(header.TCPFlagSyn, oldISS, 0)
	waitFor(t, "the SYN-ACK for the first connection", func() bool { return seen(oldISS) == 1 })
	mu.Lock()
	ack := iss + 1
	mu.Unlock()
	send(header.TCPFlagAck, oldISS+1, ack)
	waitFor(t, "the first connection's relay", func() bool { return h.s.Stats().Active.Load() == 1 })
	send(header.TCPFlagRst|header.TCPFlagAck, oldISS+1, ack)
	id := gvstack.TransportEndpointID{LocalAddress: tcpipAddr(dst.Addr()), LocalPort: dst.Port(),
		RemoteAddress: tcpipAddr(ghost.Addr()), RemotePort: ghost.Port()}
	waitFor(t, "the first connection to be gone", func() bool {
		return h.s.Snapshot().Live == 0 && h.s.Stats().Active.Load() == 0 &&
			h.s.ns.FindTransportEndpoint(header.IPv4ProtocolNumber, tcp.ProtocolNumber, id, nicID) == nil
	})
	mu.Lock()
	rsts = 0
	mu.Unlock()

	// The client's next SYN has opened the 4-tuple's next entry, and
	// waits to reach the netstack, as a SYN reuseSYN keeps does.
	if a := h.s.table.Segment(conntrack.FromClient, tu, conntrack.Segment{Flags: conntrack.FlagSYN, Seq: nextISS}); a.Kind != conntrack.ActionOpen {
		t.Fatalf("the next connection's SYN: %v, want ActionOpen", a.Kind)
	}
	// The first connection's SYN reaches the netstack again, checked and
	// tracked long ago.
	h.s.link.dispatch(header.IPv4ProtocolNumber, withChecksums(buildV4(ghost, dst, header.TCPFlagSyn, oldISS, 0, 0)))
	waitFor(t, "the stale SYN's handler", func() bool {
		return h.s.Stats().Drops(DropStaleSYN) > 0 || len(h.dialedAddrs()) > 1 || seen(oldISS) > 1
	})
	if n := len(h.dialedAddrs()); n != 1 {
		t.Errorf("%d dials, want 1: the stale SYN was dialled", n)
	}
	if !h.s.table.AwaitsSYN(tu, nextISS) {
		t.Error("the next connection's entry no longer awaits its SYN: the stale SYN's handler took it")
	}
	if n := h.s.Stats().Drops(DropStaleSYN); n != 1 {
		t.Errorf("%d stale SYNs counted, want 1", n)
	}

	// The next connection's SYN reaches the netstack and is served.
	h.s.link.dispatch(header.IPv4ProtocolNumber, withChecksums(buildV4(ghost, dst, header.TCPFlagSyn, nextISS, 0, 0)))
	waitFor(t, "the SYN-ACK for the next connection", func() bool { return seen(nextISS) == 1 })
	mu.Lock()
	ack = iss + 1
	stale, reset := synAcks[oldISS], rsts
	mu.Unlock()
	if stale != 1 {
		t.Errorf("%d SYN-ACKs for the first connection's ISN, want 1: the stale SYN was answered", stale)
	}
	if reset != 0 {
		t.Errorf("%d RSTs to the client since the first connection ended, want none", reset)
	}
	send(header.TCPFlagAck, nextISS+1, ack)
	waitFor(t, "the next connection's relay", func() bool { return h.s.Stats().Connections[ResultRelayed].Load() == 2 })
	send(header.TCPFlagRst|header.TCPFlagAck, nextISS+1, ack)
	waitFor(t, "the next connection to be gone", func() bool { return h.s.Snapshot().Live == 0 && h.s.Stats().Active.Load() == 0 })
}
