package stack

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"tcpd/conntrack"
)

// icmpError builds an ICMP error from src with type typ, code code and the
// four bytes after the checksum info, quoting the IP header and first eight
// bytes of a TCP segment from quotedSrc to quotedDst with sequence number
// seq, with every checksum right.
func icmpError(src netip.Addr, typ, code uint8, info uint32, quotedSrc, quotedDst netip.AddrPort, seq uint32) []byte {
	var q []byte
	proto := header.ICMPv4ProtocolNumber
	if src.Is4() {
		q = buildV4(quotedSrc, quotedDst, header.TCPFlagAck, seq, 1, 0)[:header.IPv4MinimumSize+8]
	} else {
		q = buildV6(quotedSrc, quotedDst, header.TCPFlagAck, seq, 1, 0)[:header.IPv6MinimumSize+8]
		proto = header.ICMPv6ProtocolNumber
	}
	body := make([]byte, icmpHeader+len(q))
	body[0], body[1] = typ, code
	binary.BigEndian.PutUint32(body[4:8], info)
	copy(body[icmpHeader:], q)
	return ipPacket(src, quotedSrc.Addr(), proto, body, false)
}

// behind puts an empty extension header of kind kind (8 bytes: a
// fragment header says offset 0, no more fragments) in front of an IPv6
// packet's next header.
func behind(kind byte, pkt []byte) []byte {
	out := make([]byte, len(pkt)+8)
	copy(out, pkt[:ipv6Header])
	out[ipv6Header] = pkt[6]
	copy(out[ipv6Header+8:], pkt[ipv6Header:])
	out[6] = kind
	binary.BigEndian.PutUint16(out[4:6], uint16(len(out)-ipv6Header))
	return out
}

// withHopByHop puts an empty hop-by-hop options header in front of an IPv6
// packet's transport header.
func withHopByHop(pkt []byte) []byte {
	out := make([]byte, len(pkt)+8)
	copy(out, pkt[:ipv6Header])
	out[ipv6Header] = pkt[6] // next header
	out[ipv6Header+2] = 1    // PadN filling the rest
	out[ipv6Header+3] = 4
	copy(out[ipv6Header+8:], pkt[ipv6Header:])
	out[6] = 0
	binary.BigEndian.PutUint16(out[4:6], uint16(len(out)-ipv6Header))
	return out
}

func TestCheckICMP(t *testing.T) {
	c4, d4 := netip.MustParseAddrPort("100.64.1.2:40000"), netip.MustParseAddrPort("198.18.1.2:80")
	c6, d6 := netip.MustParseAddrPort("[fd64::2]:40000"), netip.MustParseAddrPort("[2001:db8::2]:443")
	const seq = 5000
	inFlight := func(tu conntrack.Tuple, s uint32) bool {
		return (tu == conntrack.Tuple{Client: c4, Dst: d4} || tu == conntrack.Tuple{Client: c6, Dst: d6}) && s == seq
	}
	const (
		unreach4, fragNeeded = 3, 4
		unreach6, ptb6       = 1, 2
	)
	udpQuote := func() []byte {
		p := icmpError(c4.Addr(), unreach4, 3, 0, d4, c4, seq)
		p[header.IPv4MinimumSize+icmpHeader+9] = uint8(header.UDPProtocolNumber)
		return p
	}
	fragmented := func() []byte {
		p := icmpError(c4.Addr(), unreach4, 3, 0, d4, c4, seq)
		p[6] |= 0x20 // more fragments
		return p
	}
	echoBehindHopByHop := func() []byte {
		p := withHopByHop(ipPacket(c6.Addr(), d6.Addr(), header.ICMPv6ProtocolNumber, make([]byte, 8), false))
		p[ipv6Header+8] = 128 // echo request
		return p
	}
	for _, tc := range []struct {
		name     string
		pkt      []byte
		inFlight func(conntrack.Tuple, uint32) bool
		want     DropReason
		mtu      uint16 // an IPv4 fragmentation needed's MTU after the check
	}{
		{"v4 unreachable in flight", icmpError(c4.Addr(), unreach4, 1, 0, d4, c4, seq), inFlight, noDrop, 0},
		{"v4 unreachable, sequence number not in flight", icmpError(c4.Addr(), unreach4, 1, 0, d4, c4, seq+1), inFlight, DropICMPOutOfWindow, 0},
		{"v4 unreachable for another connection", icmpError(c4.Addr(), unreach4, 1, 0, d4, netip.AddrPortFrom(c4.Addr(), 40001), seq), inFlight, DropICMPOutOfWindow, 0},
		{"v4 fragmentation needed, MTU 1400 kept", icmpError(c4.Addr(), unreach4, fragNeeded, 1400, d4, c4, seq), inFlight, noDrop, 1400},
		{"v4 fragmentation needed, MTU 0 raised to 552", icmpError(c4.Addr(), unreach4, fragNeeded, 0, d4, c4, seq), inFlight, noDrop, 552},
		{"v4 fragmentation needed, MTU 68 raised to 552", icmpError(c4.Addr(), unreach4, fragNeeded, 68, d4, c4, seq), inFlight, noDrop, 552},
		{"v4 fragmentation needed not in flight", icmpError(c4.Addr(), unreach4, fragNeeded, 0, d4, c4, 1), inFlight, DropICMPOutOfWindow, 0},
		{"v4 error quoting UDP", udpQuote(), inFlight, DropNotTCP, 0},
		{"v4 error in fragments", fragmented(), inFlight, DropUnverifiable, 0},
		{"v4 error, tcpd tracks nothing", icmpError(c4.Addr(), unreach4, 1, 0, d4, c4, 1), nil, noDrop, 0},
		{"v6 packet too big 1280", icmpError(c6.Addr(), ptb6, 0, 1280, d6, c6, seq), inFlight, noDrop, 0},
		{"v6 packet too big 1000", icmpError(c6.Addr(), ptb6, 0, 1000, d6, c6, seq), inFlight, DropICMPMTUTooSmall, 0},
		{"v6 packet too big not in flight", icmpError(c6.Addr(), ptb6, 0, 1280, d6, c6, seq-1), inFlight, DropICMPOutOfWindow, 0},
		{"v6 unreachable behind a hop-by-hop header", withHopByHop(icmpError(c6.Addr(), unreach6, 4, 0, d6, c6, 1)), inFlight, DropICMPOutOfWindow, 0},
		{"v6 echo behind a hop-by-hop header", echoBehindHopByHop(), inFlight, DropNotTCP, 0},
		{"v6 packet too big behind hop-by-hop and an experimental header", behind(0, behind(253, icmpError(c6.Addr(), ptb6, 0, 100, d6, c6, 1))), inFlight, DropNotTCP, 0},
		{"v6 packet too big behind an atomic fragment", behind(44, icmpError(c6.Addr(), ptb6, 0, 100, d6, c6, 1)), inFlight, DropUnverifiable, 0},
		{"v6 packet too big behind an atomic fragment and options", behind(44, behind(60, icmpError(c6.Addr(), ptb6, 0, 100, d6, c6, 1))), inFlight, DropUnverifiable, 0},
		{"v6 TCP behind an atomic fragment", behind(44, buildV6(c6, d6, header.TCPFlagAck, 1, 1, 0)), inFlight, noDrop, 0},
		{"v4 TCP", buildV4(c4, d4, header.TCPFlagAck, 1, 1, 0), inFlight, noDrop, 0},
		{"v6 TCP behind a hop-by-hop header", withHopByHop(buildV6(c6, d6, header.TCPFlagAck, 1, 1, 0)), inFlight, noDrop, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := checkICMP(tc.pkt, tc.inFlight)
			if ok {
				got = noDrop
			}
			if got != tc.want {
				t.Fatalf("verdict %v, want %v", got, tc.want)
			}
			if tc.mtu != 0 {
				icmp := tc.pkt[header.IPv4MinimumSize:]
				if got := binary.BigEndian.Uint16(icmp[6:8]); got != tc.mtu {
					t.Errorf("MTU %d after the check, want %d", got, tc.mtu)
				}
				if v := verifyChecksums(tc.pkt); v != csumValid {
					t.Errorf("checksum verdict %d after the check, want valid", v)
				}
			}
		})
	}
}

// TestForgedICMPLeavesConnectionsAlone: a "fragmentation needed" with MTU
// 0 from another client, quoting the connection with a sequence number
// that is not in flight, is dropped and counted, and tcpd's segments keep
// their size; one quoting the segment in flight lowers them, but not
// below what an MTU of 552 allows, where the netstack alone would go down
// to one byte per segment.
func TestForgedICMPLeavesConnectionsAlone(t *testing.T) {
	e := newEchoConn(t)
	full, _ := e.segmentSizes(t, 20000)
	if full < 1000 {
		t.Fatalf("segments of at most %d bytes before any ICMP error", full)
	}
	other := netip.MustParseAddr("100.64.9.9")
	sndNxt, _ := e.sequence()
	st := e.h.s.Stats()
	e.h.inject <- icmpError(other, 3, 4, 0, e.dst, e.client, sndNxt+100000)
	waitFor(t, "the forged error to be dropped", func() bool { return st.Drops(DropICMPOutOfWindow) == 1 })
	if largest, _ := e.segmentSizes(t, 20000); largest != full {
		t.Fatalf("after a forged fragmentation needed, segments of at most %d bytes, want %d", largest, full)
	}

	sndNxt, _ = e.sequence()
	e.h.inject <- icmpError(e.client.Addr(), 3, 4, 0, e.dst, e.client, sndNxt)
	var largest uint32
	waitFor(t, "the error in window to lower the MSS", func() bool {
		largest, _ = e.segmentSizes(t, 20000)
		return largest < full
	})
	if largest > icmpv4MinPMTU-40 || largest < 400 {
		t.Errorf("after fragmentation needed with MTU 0, segments of at most %d bytes, want 400..%d (MTU 552)", largest, icmpv4MinPMTU-40)
	}
	if n := st.Drops(DropICMPOutOfWindow); n != 1 {
		t.Errorf("icmp_out_of_window %d, want 1", n)
	}
}

// TestRouterICMPLowersMSS: a router past the gateway sends its "fragmentation
// needed" from its own address, outside the client prefixes. One about a
// segment tcpd has in flight to a client lowers the connection's segments,
// as it would on a path through Linux; one that quotes a segment out of
// window is dropped as out of window, one about another destination than a
// client, or any ICMP that is not an error, as spoofed. Before, all of them
// were dropped as spoofed, and a download through a narrow hop stalled.
func TestRouterICMPLowersMSS(t *testing.T) {
	e := newEchoConn(t)
	full, _ := e.segmentSizes(t, 20000)
	if full < 1000 {
		t.Fatalf("segments of at most %d bytes before any ICMP error", full)
	}
	router := netip.MustParseAddr("192.0.2.1")
	st := e.h.s.Stats()
	sndNxt, _ := e.sequence()
	stranger := netip.AddrPortFrom(netip.MustParseAddr("198.51.100.7"), e.client.Port())
	e.h.inject <- icmpError(router, 8, 0, 0, e.dst, e.client, sndNxt) // an echo request
	e.h.inject <- icmpError(router, 3, 4, 1000, e.dst, stranger, sndNxt)
	waitFor(t, "the router's echo request and its error about a stranger to be dropped as spoofed", func() bool {
		return st.Drops(DropSpoofedSource) == 2
	})
	e.h.inject <- icmpError(router, 3, 4, 1000, e.dst, e.client, sndNxt+100000)
	waitFor(t, "the router's error out of window to be dropped", func() bool { return st.Drops(DropICMPOutOfWindow) == 1 })
	if largest, _ := e.segmentSizes(t, 20000); largest != full {
		t.Fatalf("after errors that must change nothing, segments of at most %d bytes, want %d", largest, full)
	}

	sndNxt, _ = e.sequence()
	e.h.inject <- icmpError(router, 3, 4, 1000, e.dst, e.client, sndNxt)
	var largest uint32
	waitFor(t, "the router's error in window to lower the MSS", func() bool {
		largest, _ = e.segmentSizes(t, 20000)
		return largest < full
	})
	if largest > 1000-40 || largest < 900 {
		t.Errorf("after fragmentation needed with MTU 1000 from a router, segments of at most %d bytes, want 900..960", largest)
	}
	if n := st.Drops(DropSpoofedSource); n != 2 {
		t.Errorf("spoofed_source %d, want 2", n)
	}
}
