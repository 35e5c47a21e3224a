package stack

import (
	"context"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"tcpd/conntrack"
)

// FuzzInbound writes arbitrary sequences of TCP segments into tcpd's TUN
// from two client addresses (one per family), with sequence and
// acknowledgment numbers near the ones a real exchange uses, so that the
// whole inbound path runs on them: the packet loop, conntrack, the SYN
// holds, TIME_WAIT's replies, the netstack, the handler's dial and the
// relay to a real upstream. After each input, tcpd must not have panicked
// (a handler's panic is recovered and counted; any other ends the fuzzer),
// no state may be counted below zero, and a real client must still connect
// and have a byte echoed. Built once per fuzzing process, the stack keeps
// what earlier inputs left (TIME_WAIT, half-open and idle connections,
// each bounded by a short timeout), as a gateway's does.
func FuzzInbound(f *testing.F) {
	// Records of 5 bytes: flags (bits 0-5) and what the payload bytes
	// are (bits 6-7), seq and ack offsets, window, and a byte of port
	// (bit 0), family (bit 1) and payload length (bits 3-7). A
	// connection's first payload byte tells the destination what to do
	// (fuzzUpstream).
	f.Add([]byte{
		0x02, 0, 0, 0, 0, // SYN
		0x10, 1, 1, 255, 0, // ACK of the SYN-ACK
		0x18, 1, 1, 255, 5 << 3, // 5 bytes
		0x11, 6, 1, 255, 0, // FIN
		0x10, 7, 2, 255, 0, // ACK of tcpd's FIN
	})
	f.Add([]byte{0x02, 0, 0, 0, 2, 0x02, 0, 0, 0, 2, 0x14, 1, 1, 0, 2, 0x02, 50, 0, 0, 2})
	f.Add([]byte{0x02, 0, 0, 0, 0, 0x10, 1, 1, 0, 0, 0x18, 1, 1, 0, 31 << 3, 0x04, 1, 0, 0, 0})
	f.Add([]byte{0x02, 0, 0, 0, 1, 0x10, 1, 1, 1, 1, 0x11, 1, 1, 1, 1, 0x10, 2, 2, 1, 1, 0x02, 99, 0, 1, 1})
	for mode := byte(1); mode < 4; mode++ { // each of the destination's ways to end
		f.Add([]byte{0x02, 0, 0, 0, 0, 0x10, 1, 1, 255, 0, mode<<6 | 0x18, 1, 1, 255, 8 << 3, 0x10, 9, 1, 255, 0, 0x10, 9, 2, 255, 0})
	}

	h := newHarness(f, Config{
		Clients:     []netip.Prefix{clientNet, netip.MustParsePrefix("fd64::/64")},
		MaxInFlight: 64,
		Tunables: Tunables{
			TimeWait: time.Second, HandshakeTimeout: time.Second, HalfCloseTimeout: time.Second,
			IdleTimeout: 2 * time.Second, MaxConnections: 256,
		},
	}, clientAddr)
	h.listen(f, fuzzUpstream)
	fz := &inboundFuzz{h: h, iss: map[netip.AddrPort]uint32{}, acked: map[netip.AddrPort]uint32{}}
	h.observeOut(fz.observe)

	f.Fuzz(func(t *testing.T, data []byte) {
		fz.run(t, data)
	})
}

// inboundFuzz is FuzzInbound's state across inputs.
type inboundFuzz struct {
	h *harness
	// next picks each input's client ports, so that one input's
	// connections do not start where another's left off (they may, after
	// the ports wrap: a 4-tuple reused).
	next uint16

	mu sync.Mutex
	// iss is tcpd's ISN in its last SYN-ACK to each client address and
	// port, acked the last acknowledgment number it sent; synAcks counts
	// the SYN-ACKs.
	iss, acked map[netip.AddrPort]uint32
	synAcks    int
	// out counts the segments tcpd sent to the fuzzer's clients.
	out int
}

var (
	fuzzClient4 = netip.MustParseAddr("100.64.9.9")
	fuzzClient6 = netip.MustParseAddr("fd64::9:9")
	fuzzDst4    = netip.AddrPortFrom(dstAddr, 80)
	fuzzDst6    = netip.MustParseAddrPort("[2001:db8::2]:443")
)

const fuzzISS = 0x7000_0000

func (fz *inboundFuzz) observe(p []byte) {
	_, to, seg, ok := parseTCP(p)
	if !ok || (to.Addr() != fuzzClient4 && to.Addr() != fuzzClient6) {
		return
	}
	fz.mu.Lock()
	defer fz.mu.Unlock()
	fz.out++
	if seg.Flags&(conntrack.FlagSYN|conntrack.FlagACK) == conntrack.FlagSYN|conntrack.FlagACK {
		fz.iss[to] = seg.Seq
		fz.synAcks++
	}
	if seg.Flags&conntrack.FlagACK != 0 {
		fz.acked[to] = seg.Ack
	}
}

func (fz *inboundFuzz) run(t *testing.T, data []byte) {
	h := fz.h
	if len(data) > 5*32 {
		data = data[:5*32]
	}
	base := 20000 + fz.next%40000
	fz.next += 2
	clients := map[netip.AddrPort]netip.AddrPort{} // client → destination
	before, _ := h.s.Stats().TUN(conntrack.FromClient)
	sent := uint64(0)
	for ; len(data) >= 5; data = data[5:] {
		b := data[:5]
		client, dst := netip.AddrPortFrom(fuzzClient4, base+uint16(b[4]&1)), fuzzDst4
		if b[4]&2 != 0 {
			client, dst = netip.AddrPortFrom(fuzzClient6, client.Port()), fuzzDst6
		}
		clients[client] = dst
		fz.mu.Lock()
		iss, synAcks := fz.iss[client], fz.synAcks
		fz.mu.Unlock()
		flags := header.TCPFlags(b[0] & 0x3f)
		h.inject <- fuzzSegment(client, dst, flags,
			fuzzISS+uint32(int8(b[1])), iss+uint32(int8(b[2])), uint16(b[3])<<8, int(b[4]>>3), b[0]>>6)
		sent++
		if flags&(header.TCPFlagSyn|header.TCPFlagAck|header.TCPFlagRst) == header.TCPFlagSyn {
			// The next segments acknowledge tcpd's ISN: give it the
			// time of a loopback dial to answer.
			for deadline := time.Now().Add(100 * time.Millisecond); time.Now().Before(deadline); {
				fz.mu.Lock()
				answered := fz.synAcks != synAcks
				fz.mu.Unlock()
				if answered {
					break
				}
				time.Sleep(50 * time.Microsecond)
			}
		}
	}
	// Let tcpd answer: the relay moves the bytes, the destination's
	// answers come back, until tcpd has sent the clients nothing for 2ms.
	fz.waitRead(t, before, sent)
	for deadline := time.Now().Add(100 * time.Millisecond); time.Now().Before(deadline); {
		fz.mu.Lock()
		out := fz.out
		fz.mu.Unlock()
		time.Sleep(2 * time.Millisecond)
		fz.mu.Lock()
		quiet := fz.out == out
		fz.mu.Unlock()
		if quiet {
			break
		}
	}
	// Reset what the input left open, where tcpd would take the RST: at
	// the sequence number it acknowledged last.
	for client, dst := range clients {
		fz.mu.Lock()
		ack, ok := fz.acked[client]
		fz.mu.Unlock()
		if ok {
			h.inject <- fuzzSegment(client, dst, header.TCPFlagRst, ack, 0, 0, 0, 0)
			sent++
		}
	}
	fz.waitRead(t, before, sent)

	if n := h.s.Stats().Panics.Load(); n != 0 {
		t.Fatalf("%d connection handlers panicked", n)
	}
	snap := h.s.Snapshot()
	for st := range conntrack.NumStates {
		if snap.States[st] > 1<<40 || snap.ClientStates[st] > 1<<40 {
			t.Fatalf("state %v counted below zero: tcpd's ends %d, clients' %d", conntrack.State(st),
				int64(snap.States[st]), int64(snap.ClientStates[st]))
		}
	}
	// A real client still gets through, and its byte comes back.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := h.client.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(dstAddr, 7))
	if err != nil {
		t.Fatalf("a real client's connect after the input: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	var echo [1]byte
	if _, err := c.Write([]byte{'x'}); err != nil {
		t.Fatalf("a real client's write after the input: %v", err)
	}
	if _, err := io.ReadFull(c, echo[:]); err != nil || echo[0] != 'x' {
		t.Fatalf("a real client's echo after the input: %q, %v", echo[:], err)
	}
}

// waitRead waits until tcpd's packet loops have read the sent packets
// written since they had read before.
func (fz *inboundFuzz) waitRead(t *testing.T, before, sent uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, _ := fz.h.s.Stats().TUN(conntrack.FromClient)
		if n >= before+sent {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("tcpd read %d of the input's %d packets in 10s", n-before, sent)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// fuzzUpstream is FuzzInbound's destination. The connection's first byte
// says what it does: 0 echoes (the real client's 'x' too), 1 echoes that
// byte and closes first (FIN) while it reads on, 2 resets, 3 stops reading
// (the relay's backpressure) for two seconds, then closes.
func fuzzUpstream(c net.Conn) {
	var first [1]byte
	if _, err := io.ReadFull(c, first[:]); err != nil {
		return
	}
	switch first[0] % 4 {
	case 0:
		c.Write(first[:])
		io.Copy(c, c)
	case 1:
		c.Write(first[:])
		c.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, c)
	case 2:
		c.(*net.TCPConn).SetLinger(0)
	case 3:
		time.Sleep(2 * time.Second)
	}
}

// fuzzSegment builds a TCP segment with valid checksums, of payload bytes
// each fill, from client to dst.
func fuzzSegment(client, dst netip.AddrPort, flags header.TCPFlags, seq, ack uint32, wnd uint16, payload int, fill byte) []byte {
	build, hdr := buildV4, header.IPv4MinimumSize
	if client.Addr().Is6() {
		build, hdr = buildV6, header.IPv6MinimumSize
	}
	pkt := build(client, dst, flags, seq, ack, payload)
	tcp := header.TCP(pkt[hdr:])
	for i := range payload {
		tcp[header.TCPMinimumSize+i] = fill
	}
	tcp.SetWindowSize(wnd)
	return withChecksums(pkt)
}
