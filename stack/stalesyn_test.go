package stack

import (
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"tcpd/conntrack"
)

// ghost is a client the test plays by hand: an address the harness's
// client stack does not hold, whose segments the test writes and whose
// SYN-ACKs and RSTs from tcpd it counts.
type ghost struct {
	h    *harness
	addr netip.AddrPort
	dst  netip.AddrPort
	mu   sync.Mutex
	// synAcks counts the SYN-ACKs tcpd sent, by the client ISN they
	// acknowledge; iss is tcpd's ISN in the last of them.
	synAcks map[uint32]int
	iss     uint32
	rsts    int
	// out counts every segment tcpd sent.
	out int
}

func newGhost(h *harness) *ghost {
	g := &ghost{h: h, addr: netip.MustParseAddrPort("100.64.1.99:40000"), dst: netip.AddrPortFrom(dstAddr, 80),
		synAcks: map[uint32]int{}}
	h.observeOut(func(p []byte) {
		_, to, seg, ok := parseTCP(p)
		if !ok || to != g.addr {
			return
		}
		g.mu.Lock()
		defer g.mu.Unlock()
		g.out++
		switch {
		case seg.Flags&(conntrack.FlagSYN|conntrack.FlagACK) == conntrack.FlagSYN|conntrack.FlagACK:
			g.synAcks[seg.Ack-1]++
			g.iss = seg.Seq
		case seg.Flags&conntrack.FlagRST != 0:
			g.rsts++
		}
	})
	return g
}

func (g *ghost) tuple() conntrack.Tuple { return conntrack.Tuple{Client: g.addr, Dst: g.dst} }

func (g *ghost) packet(flags header.TCPFlags, seq, ack uint32) []byte {
	return withChecksums(buildV4(g.addr, g.dst, flags, seq, ack, 0))
}

// send writes a segment into tcpd's TUN.
func (g *ghost) send(flags header.TCPFlags, seq, ack uint32) { g.h.inject <- g.packet(flags, seq, ack) }

// seen returns how many SYN-ACKs tcpd sent for the client ISN isn.
func (g *ghost) seen(isn uint32) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.synAcks[isn]
}

// resets returns how many RSTs tcpd has sent since the last call.
func (g *ghost) resets() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := g.rsts
	g.rsts = 0
	return n
}

// openAndReset opens a connection with ISN isn, relayed, then resets it
// and waits until tcpd holds nothing of it.
func (g *ghost) openAndReset(t *testing.T, isn uint32) {
	t.Helper()
	g.send(header.TCPFlagSyn, isn, 0)
	waitFor(t, "the SYN-ACK", func() bool { return g.seen(isn) == 1 })
	g.ackAndReset(t, isn)
}

// ackAndReset completes the handshake of the connection with ISN isn,
// whose SYN-ACK was the last, then resets it and waits until tcpd holds
// nothing of it.
func (g *ghost) ackAndReset(t *testing.T, isn uint32) {
	t.Helper()
	h := g.h
	before := h.s.Stats().Connections[ResultRelayed].Load()
	g.mu.Lock()
	ack := g.iss + 1
	g.mu.Unlock()
	g.send(header.TCPFlagAck, isn+1, ack)
	waitFor(t, "the relay", func() bool { return h.s.Stats().Connections[ResultRelayed].Load() == before+1 })
	g.send(header.TCPFlagRst|header.TCPFlagAck, isn+1, ack)
	id := gvstack.TransportEndpointID{LocalAddress: tcpipAddr(g.dst.Addr()), LocalPort: g.dst.Port(),
		RemoteAddress: tcpipAddr(g.addr.Addr()), RemotePort: g.addr.Port()}
	waitFor(t, "the connection to be gone", func() bool {
		return h.s.Snapshot().Live == 0 && h.s.Stats().Active.Load() == 0 &&
			h.s.ns.FindTransportEndpoint(header.IPv4ProtocolNumber, tcp.ProtocolNumber, id, nicID) == nil
	})
}

const oldISS, nextISS = 1000, 900000

// TestStaleSYNAtLink: the client's SYN of a connection that got through
// its handshake and was reset reaches the TUN again — a retransmission the
// client sent just before the SYN-ACK reached it, delivered late — and
// must be dropped there: no dial, no SYN-ACK, no RST, no entry. It used to
// open the 4-tuple afresh: a connection to the destination the client
// never asked for, and a half-open endpoint that answered the client's
// next SYN on the 4-tuple with RST ("connection refused"); or, come during
// the next connection's handshake, it made the netstack give that
// handshake up. Either way the next connection is served.
func TestStaleSYNAtLink(t *testing.T) {
	for _, during := range []bool{false, true} {
		name := "the 4-tuple free"
		if during {
			name = "during the next connection's handshake"
		}
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, Config{}, clientAddr)
			h.listen(t, func(c net.Conn) { io.Copy(io.Discard, c) })
			g := newGhost(h)
			g.openAndReset(t, oldISS)
			g.resets()
			st := h.s.Stats()
			if during {
				g.send(header.TCPFlagSyn, nextISS, 0)
				waitFor(t, "the SYN-ACK for the next connection", func() bool { return g.seen(nextISS) == 1 })
			}

			live := h.s.Snapshot().Live
			g.send(header.TCPFlagSyn, oldISS, 0)
			waitFor(t, "the old SYN to be dropped or taken", func() bool {
				g.mu.Lock()
				rsts := g.rsts
				g.mu.Unlock()
				return st.Drops(DropStaleSYN) > 0 || h.s.Snapshot().Live > live || rsts > 0 ||
					st.Connections[ResultHandshakeFailed].Load() > 0
			})
			if n := st.Drops(DropStaleSYN); n != 1 {
				t.Errorf("%d stale SYNs counted, want 1", n)
			}
			if !during {
				g.send(header.TCPFlagSyn, nextISS, 0)
				waitFor(t, "the SYN-ACK for the next connection", func() bool { return g.seen(nextISS) == 1 })
			}
			// The next connection is served, and the old SYN was
			// answered never.
			g.ackAndReset(t, nextISS)
			if n := len(h.dialedAddrs()); n != 2 {
				t.Errorf("%d dials, want 2: the old SYN was dialled", n)
			}
			if n := g.seen(oldISS); n != 1 {
				t.Errorf("%d SYN-ACKs for the old ISN, want 1", n)
			}
			if n := g.resets(); n != 0 {
				t.Errorf("%d RSTs to the client, want none", n)
			}
		})
	}
}

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
	g := newGhost(h)
	tu := g.tuple()
	g.openAndReset(t, oldISS)
	g.resets()

	// The client's next SYN has opened the 4-tuple's next entry, and
	// waits to reach the netstack, as a SYN reuseSYN keeps does.
	if a := h.s.table.Segment(conntrack.FromClient, tu, conntrack.Segment{Flags: conntrack.FlagSYN, Seq: nextISS}); a.Kind != conntrack.ActionOpen {
		t.Fatalf("the next connection's SYN: %v, want ActionOpen", a.Kind)
	}
	// The first connection's SYN reaches the netstack again, checked and
	// tracked long ago.
	h.s.link.dispatch(header.IPv4ProtocolNumber, g.packet(header.TCPFlagSyn, oldISS, 0))
	waitFor(t, "the stale SYN's handler", func() bool {
		return h.s.Stats().Drops(DropStaleSYN) > 0 || len(h.dialedAddrs()) > 1 || g.seen(oldISS) > 1
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
	h.s.link.dispatch(header.IPv4ProtocolNumber, g.packet(header.TCPFlagSyn, nextISS, 0))
	waitFor(t, "the SYN-ACK for the next connection", func() bool { return g.seen(nextISS) == 1 })
	if n := g.seen(oldISS); n != 1 {
		t.Errorf("%d SYN-ACKs for the first connection's ISN, want 1: the stale SYN was answered", n)
	}
	if n := g.resets(); n != 0 {
		t.Errorf("%d RSTs to the client since the first connection ended, want none", n)
	}
	g.ackAndReset(t, nextISS)
}

// leaveEndpoint opens a connection with ISN oldISS, relayed, and resets it
// where conntrack alone sees the RST: the netstack keeps the endpoint, as
// when the client's RST is still queued for it. It returns the number the
// client's RST acknowledges, for the test to send it to the endpoint; the
// test's cleanup sends it too, so that a test that fails first does not
// leave the relay holding the upstream the listener's cleanup waits for.
func (g *ghost) leaveEndpoint(t *testing.T) (ack uint32) {
	t.Helper()
	h := g.h
	g.send(header.TCPFlagSyn, oldISS, 0)
	waitFor(t, "the SYN-ACK", func() bool { return g.seen(oldISS) == 1 })
	g.mu.Lock()
	ack = g.iss + 1
	g.mu.Unlock()
	g.send(header.TCPFlagAck, oldISS+1, ack)
	waitFor(t, "the relay", func() bool { return h.s.Stats().Connections[ResultRelayed].Load() == 1 })
	h.s.table.Segment(conntrack.FromClient, g.tuple(), conntrack.Segment{Flags: conntrack.FlagRST | conntrack.FlagACK, Seq: oldISS + 1, Ack: ack})
	t.Cleanup(func() { g.send(header.TCPFlagRst|header.TCPFlagAck, oldISS+1, ack) })
	return ack
}

// sentFrom returns a count of the segments tcpd sends the client from now.
func (g *ghost) sentFrom() func() int {
	g.mu.Lock()
	out := g.out
	g.mu.Unlock()
	return func() int {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.out - out
	}
}

// TestKeptSYNEndpointStays: a SYN that opens a 4-tuple while the netstack
// still holds the last connection's endpoint waits for it to leave; if it
// does not within reuseSYN's polls, the SYN is dropped and counted, never
// queued on that endpoint, which would answer it (with RST once the
// client's RST queued before it closes the endpoint: "connection refused",
// as a stalled machine made it happen). Here the endpoint stays because
// the client's RST reached conntrack alone.
func TestKeptSYNEndpointStays(t *testing.T) {
	h := newHarness(t, Config{}, clientAddr)
	h.listen(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	g := newGhost(h)
	st := h.s.Stats()
	ack := g.leaveEndpoint(t)
	sent := g.sentFrom()
	g.send(header.TCPFlagSyn, nextISS, 0)
	waitFor(t, "the SYN to be dropped or answered", func() bool {
		return st.Drops(DropReuseWait) > 0 || sent() > 0 || len(h.dialedAddrs()) > 1
	})
	if n := st.Drops(DropReuseWait); n != 1 {
		t.Errorf("%d SYNs dropped as reuse_wait, want 1", n)
	}
	if n := sent(); n != 0 {
		t.Errorf("tcpd sent the client %d segments after its SYN, want none: the SYN reached the old endpoint", n)
	}
	// The client's RST reaches the endpoint too: the old connection ends.
	g.send(header.TCPFlagRst|header.TCPFlagAck, oldISS+1, ack)
	waitFor(t, "the old connection to end", func() bool { return st.Active.Load() == 0 })
}

// TestRestartedSYNHeld checks that a SYN with a new ISN that takes an
// entry nothing has answered is held, as the SYN that opened it was, while
// the 4-tuple's last connection's endpoint lingers: handed on, it would
// reach that endpoint, which answers it (an ACK, then RST when it closes),
// and the client would be refused. Once the endpoint has gone, the new
// SYN, and not the one it replaced, is answered.
func TestRestartedSYNHeld(t *testing.T) {
	h := newHarness(t, Config{}, clientAddr)
	h.listen(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	g := newGhost(h)
	ack := g.leaveEndpoint(t)
	sent := g.sentFrom()
	// The next connection's SYN is held; the client gives it up and sends
	// one with another ISN, which takes the entry.
	g.send(header.TCPFlagSyn, nextISS, 0)
	waitFor(t, "the first SYN held", func() bool { return h.s.keeping(g.tuple(), nextISS) })
	const thirdISS = nextISS + 70000
	g.send(header.TCPFlagSyn, thirdISS, 0)
	waitFor(t, "the second SYN held", func() bool { return h.s.keeping(g.tuple(), thirdISS) })
	time.Sleep(20 * time.Millisecond)
	if n := sent(); n != 0 {
		t.Fatalf("tcpd sent the client %d segments after its SYNs, want none: a SYN reached the old endpoint", n)
	}
	// The client's RST reaches the endpoint too: the old connection ends,
	// and the SYN the entry waits for goes on.
	g.send(header.TCPFlagRst|header.TCPFlagAck, oldISS+1, ack)
	waitFor(t, "the SYN-ACK of the second SYN", func() bool { return g.seen(thirdISS) == 1 })
	if n := g.seen(nextISS); n != 0 {
		t.Errorf("%d SYN-ACKs for the SYN the client gave up, want 0", n)
	}
	if n := g.resets(); n != 0 {
		t.Errorf("tcpd sent the client %d RSTs, want 0", n)
	}
	// And it is relayed.
	g.ackAndReset(t, thirdISS)
}
