package stack

import (
	"net"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// ipPacket builds an IPv4 or IPv6 packet around the transport bytes l4 and
// fills in every checksum the way a correct sender would; frag sets IPv4's
// more-fragments flag.
func ipPacket(src, dst netip.Addr, proto tcpip.TransportProtocolNumber, l4 []byte, frag bool) []byte {
	var pkt []byte
	s, d := tcpip.AddrFromSlice(src.AsSlice()), tcpip.AddrFromSlice(dst.AsSlice())
	if src.Is4() {
		pkt = make([]byte, header.IPv4MinimumSize+len(l4))
		ip := header.IPv4(pkt)
		f := &header.IPv4Fields{TotalLength: uint16(len(pkt)), TTL: 64, Protocol: uint8(proto), SrcAddr: s, DstAddr: d}
		if frag {
			f.Flags = header.IPv4FlagMoreFragments
		}
		ip.Encode(f)
		ip.SetChecksum(^ip.CalculateChecksum())
	} else {
		pkt = make([]byte, header.IPv6MinimumSize+len(l4))
		header.IPv6(pkt).Encode(&header.IPv6Fields{PayloadLength: uint16(len(l4)), TransportProtocol: proto, HopLimit: 64, SrcAddr: s, DstAddr: d})
	}
	body := pkt[len(pkt)-len(l4):]
	copy(body, l4)
	var at int
	var xsum uint16
	switch proto {
	case header.TCPProtocolNumber:
		at = header.TCPChecksumOffset
		xsum = header.PseudoHeaderChecksum(proto, s, d, uint16(len(l4)))
	case header.UDPProtocolNumber:
		at = 6
		xsum = header.PseudoHeaderChecksum(proto, s, d, uint16(len(l4)))
	case header.ICMPv4ProtocolNumber:
		at = 2
	case header.ICMPv6ProtocolNumber:
		at = 2
		xsum = header.PseudoHeaderChecksum(proto, s, d, uint16(len(l4)))
	default:
		return pkt
	}
	if len(body) < at+2 {
		return pkt // too short to carry a checksum
	}
	body[at], body[at+1] = 0, 0
	c := ^checksum.Checksum(body, xsum)
	body[at], body[at+1] = byte(c>>8), byte(c)
	return pkt
}

// corrupt flips a payload bit of the last byte, which every transport
// checksum covers.
func corrupt(pkt []byte) []byte {
	pkt[len(pkt)-1] ^= 0x40
	return pkt
}

func TestVerifyChecksums(t *testing.T) {
	c4, d4 := netip.MustParseAddr("100.64.1.2"), netip.MustParseAddr("198.18.1.2")
	c6, d6 := netip.MustParseAddr("fd64::2"), netip.MustParseAddr("2001:db8::2")
	tcp := func(payload int) []byte {
		b := make([]byte, header.TCPMinimumSize+payload)
		header.TCP(b).Encode(&header.TCPFields{SrcPort: 40000, DstPort: 80, SeqNum: 1, DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagAck})
		for i := header.TCPMinimumSize; i < len(b); i++ {
			b[i] = byte(i)
		}
		return b
	}
	udp := func() []byte {
		b := make([]byte, header.UDPMinimumSize+5)
		header.UDP(b).Encode(&header.UDPFields{SrcPort: 5353, DstPort: 53, Length: uint16(len(b))})
		copy(b[header.UDPMinimumSize:], "hello")
		return b
	}
	icmp := func() []byte { return []byte{8, 0, 0, 0, 0, 1, 0, 1, 'p', 'i', 'n', 'g'} }
	noUDPChecksum := func(src, dst netip.Addr) []byte {
		p := ipPacket(src, dst, header.UDPProtocolNumber, udp(), false)
		l4 := p[len(p)-len(udp()):]
		l4[6], l4[7] = 0, 0
		return p
	}
	badIPHeader := ipPacket(c4, d4, header.TCPProtocolNumber, tcp(10), false)
	badIPHeader[8]-- // TTL, covered by the header checksum only
	cases := []struct {
		name string
		pkt  []byte
		want csumVerdict
	}{
		{"tcp v4", ipPacket(c4, d4, header.TCPProtocolNumber, tcp(100), false), csumValid},
		{"tcp v4 bad", corrupt(ipPacket(c4, d4, header.TCPProtocolNumber, tcp(100), false)), csumBad},
		{"tcp v6", ipPacket(c6, d6, header.TCPProtocolNumber, tcp(100), false), csumValid},
		{"tcp v6 bad", corrupt(ipPacket(c6, d6, header.TCPProtocolNumber, tcp(100), false)), csumBad},
		{"ipv4 header bad", badIPHeader, csumBad},
		{"udp v4", ipPacket(c4, d4, header.UDPProtocolNumber, udp(), false), csumValid},
		{"udp v4 bad", corrupt(ipPacket(c4, d4, header.UDPProtocolNumber, udp(), false)), csumBad},
		{"udp v4 without checksum", noUDPChecksum(c4, d4), csumValid},
		{"udp v6", ipPacket(c6, d6, header.UDPProtocolNumber, udp(), false), csumValid},
		{"udp v6 bad", corrupt(ipPacket(c6, d6, header.UDPProtocolNumber, udp(), false)), csumBad},
		{"udp v6 without checksum", noUDPChecksum(c6, d6), csumBad},
		{"icmp", ipPacket(c4, d4, header.ICMPv4ProtocolNumber, icmp(), false), csumValid},
		{"icmp bad", corrupt(ipPacket(c4, d4, header.ICMPv4ProtocolNumber, icmp(), false)), csumBad},
		{"icmpv6", ipPacket(c6, d6, header.ICMPv6ProtocolNumber, icmp(), false), csumValid},
		{"icmpv6 bad", corrupt(ipPacket(c6, d6, header.ICMPv6ProtocolNumber, icmp(), false)), csumBad},
		{"icmpv6 over ipv4", ipPacket(c4, d4, header.ICMPv6ProtocolNumber, icmp(), false), csumUnverifiable},
		{"tcp v4 fragment", ipPacket(c4, d4, header.TCPProtocolNumber, tcp(100), true), csumUnverifiable},
		{"gre", ipPacket(c4, d4, 47, make([]byte, 8), false), csumUnverifiable},
		{"ipv6 fragment header", ipPacket(c6, d6, 44, make([]byte, 8), false), csumUnverifiable},
		{"tcp header cut short", ipPacket(c4, d4, header.TCPProtocolNumber, tcp(0)[:12], false), csumBad},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := verifyChecksums(tc.pkt); got != tc.want {
				t.Errorf("verdict %d, want %d", got, tc.want)
			}
		})
	}
}

// TestLinkDeliversOnlyVerified checks that what the link hands the netstack,
// which it tells that every checksum was verified, was verified: an ICMP
// error with a bad checksum and a TCP fragment never reach it. (A client's
// other non-TCP packets are dropped before any checksum, as not_tcp; ICMP
// errors pass, for the TCP connections they quote.)
func TestLinkDeliversOnlyVerified(t *testing.T) {
	h := newHarness(t, Config{}, clientAddr)
	h.listen(t, func(c net.Conn) {})
	// Destination unreachable, quoting an IPv4 header and 8 bytes.
	unreach := make([]byte, 8+header.IPv4MinimumSize+8)
	unreach[0] = 3
	syn := buildV4(netip.AddrPortFrom(clientAddr, 40000), netip.AddrPortFrom(dstAddr, 80), header.TCPFlagSyn, 1000, 0, 0)[header.IPv4MinimumSize:]
	quoted := append([]byte(nil), unreach...)
	copy(quoted[8:], buildV4(netip.AddrPortFrom(dstAddr, 80), netip.AddrPortFrom(clientAddr, 40000), header.TCPFlagAck, 1, 1, 0))

	before := h.s.NetstackStats().IPPacketsReceived
	h.inject <- corrupt(ipPacket(clientAddr, dstAddr, header.ICMPv4ProtocolNumber, unreach, false))
	h.inject <- ipPacket(clientAddr, dstAddr, header.TCPProtocolNumber, syn, true)
	st := h.s.Stats()
	waitFor(t, "both packets to be dropped", func() bool {
		return st.Drops(DropBadChecksum) == 1 && st.Drops(DropUnverifiable) == 1
	})
	// A good ICMP error on the same path gets past the checksums to the
	// check of what it quotes (icmp.go), which finds no such connection:
	// the bad one was dropped for its checksum, not there.
	h.inject <- ipPacket(clientAddr, dstAddr, header.ICMPv4ProtocolNumber, quoted, false)
	waitFor(t, "the good ICMP error to be judged", func() bool { return st.Drops(DropICMPOutOfWindow) == 1 })
	if n := h.s.NetstackStats().IPPacketsReceived; n != before {
		t.Errorf("the netstack received %d packets, want none", n-before)
	}
	if n := h.s.Snapshot().Opened; n != 0 {
		t.Errorf("the fragmented SYN opened %d tracked connections", n)
	}
}
