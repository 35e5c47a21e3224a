package stack

import (
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// rawV4 builds an IPv4 packet of protocol proto carrying payload.
func rawV4(src, dst netip.Addr, proto uint8, payload []byte) []byte {
	pkt := make([]byte, header.IPv4MinimumSize+len(payload))
	ip := header.IPv4(pkt)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(pkt)), TTL: 64, Protocol: proto,
		SrcAddr: tcpip.AddrFrom4(src.As4()), DstAddr: tcpip.AddrFrom4(dst.As4())})
	ip.SetChecksum(^ip.CalculateChecksum())
	copy(pkt[header.IPv4MinimumSize:], payload)
	return pkt
}

// rawV6 builds an IPv6 packet whose next header is next, carrying payload.
func rawV6(src, dst netip.Addr, next uint8, payload []byte) []byte {
	pkt := make([]byte, header.IPv6MinimumSize+len(payload))
	header.IPv6(pkt).Encode(&header.IPv6Fields{PayloadLength: uint16(len(payload)),
		TransportProtocol: tcpip.TransportProtocolNumber(next), HopLimit: 1,
		SrcAddr: tcpip.AddrFrom16(src.As16()), DstAddr: tcpip.AddrFrom16(dst.As16())})
	copy(pkt[header.IPv6MinimumSize:], payload)
	return pkt
}

// icmpv4 is an ICMPv4 message of the given type with a valid checksum.
func icmpv4(typ byte) []byte {
	m := make([]byte, 8+28)
	m[0] = typ
	c := ^checksum.Checksum(m, 0)
	m[2], m[3] = byte(c>>8), byte(c)
	return m
}

// noDrop stands for "not dropped" among the drop reasons.
const noDrop = NumDropReasons

// TestDropReasons feeds the link what a TUN may carry besides clients' TCP
// and checks where each packet lands: the kernel's own link-scoped chatter
// is ignored, not counted as a drop (and certainly not as a spoofed source),
// a client's UDP is not_tcp, and an ICMP error from a client is judged by
// what it quotes (TestCheckICMP has the rest, TestForgedICMPLeavesConnectionsAlone
// one that reaches the netstack).
func TestDropReasons(t *testing.T) {
	var (
		ll      = netip.MustParseAddr("fe80::5c3a:f1a2")
		v6any   = netip.IPv6Unspecified()
		mldv2   = netip.MustParseAddr("ff02::16")
		routers = netip.MustParseAddr("ff02::2")
		igmp    = netip.MustParseAddr("224.0.0.22")
		outside = netip.MustParseAddr("203.0.113.7")
		client6 = netip.MustParseAddr("fd64::2") // the harness serves 100.64.0.0/10 only
	)
	// The MLDv2 report a forwarding kernel sends for ff02::2: a hop-by-hop
	// header with router alert, then ICMPv6 type 143.
	mld := []byte{58, 0, 5, 2, 0, 0, 1, 0, 143, 0, 0, 0, 0, 0, 0, 1, 4, 0, 0, 0}
	mld = append(mld, routers.AsSlice()...)
	udp := []byte{0x30, 0x39, 0x00, 0x35, 0, 8, 0, 0}
	cases := []struct {
		name string
		pkt  []byte
		want DropReason
	}{
		{"MLDv2 report from a link-local address", rawV6(ll, mldv2, 0, mld), noDrop},
		{"router solicitation from ::", rawV6(v6any, routers, 58, []byte{133, 0, 0, 0, 0, 0, 0, 0}), noDrop},
		{"neighbour solicitation to a solicited-node group", rawV6(ll, netip.MustParseAddr("ff02::1:ff00:1"), 58, make([]byte, 24)), noDrop},
		{"IGMP from a client to 224.0.0.22", rawV4(clientAddr, igmp, 2, make([]byte, 8)), noDrop},
		{"limited broadcast from a client", rawV4(clientAddr, netip.AddrFrom4([4]byte{255, 255, 255, 255}), 17, udp), noDrop},
		{"UDP from a client", rawV4(clientAddr, dstAddr, 17, udp), DropNotTCP},
		{"ICMP echo from a client", rawV4(clientAddr, dstAddr, 1, icmpv4(8)), DropNotTCP},
		{"GRE from a client", rawV4(clientAddr, dstAddr, 47, make([]byte, 8)), DropNotTCP},
		{"ICMP unreachable from a client quoting no TCP segment", rawV4(clientAddr, dstAddr, 1, icmpv4(3)), DropNotTCP},
		{"ICMP unreachable from a client quoting a segment of no connection", icmpError(clientAddr, 3, 1, 0,
			netip.AddrPortFrom(dstAddr, 80), netip.AddrPortFrom(clientAddr, 40000), 1), DropICMPOutOfWindow},
		{"TCP from outside the clients", buildV4(netip.AddrPortFrom(outside, 1234), netip.AddrPortFrom(dstAddr, 80), header.TCPFlagSyn, 1, 0, 0), DropSpoofedSource},
		{"UDP from outside the clients", rawV4(outside, dstAddr, 17, udp), DropSpoofedSource},
		{"IPv6 UDP from outside the clients", rawV6(client6, netip.MustParseAddr("2001:db8::1"), 17, udp), DropSpoofedSource},
	}
	h := newHarness(t, Config{}, clientAddr)
	st := h.s.Stats()
	total := func() (n uint64) {
		for i := range st.Dropped {
			n += st.Drops(DropReason(i))
		}
		return n
	}
	// Each case is followed by a truncated packet, dropped as malformed:
	// the packet loop takes one packet after the other, so once that drop
	// is counted the case's packet has been dealt with whole (its count on
	// the TUN comes before its drop).
	sentinel := []byte{0x45}
	for _, c := range cases {
		before := total()
		var was uint64
		if c.want != noDrop {
			was = st.Drops(c.want)
		}
		malformed := st.Drops(DropMalformed)
		h.inject <- c.pkt
		h.inject <- sentinel
		waitFor(t, c.name+" and the packet after it dealt with", func() bool { return st.Drops(DropMalformed) > malformed })
		before++ // the sentinel's
		switch {
		case c.want == noDrop && total() != before:
			t.Errorf("%s: dropped (drops went from %d to %d), want it handed to the netstack", c.name, before, total())
		case c.want != noDrop && st.Drops(c.want) != was+1:
			for r := range st.Dropped {
				if n := st.Drops(DropReason(r)); n != 0 {
					t.Logf("%s: %d", DropReason(r), n)
				}
			}
			t.Errorf("%s: %s drops %d, want %d", c.name, c.want, st.Drops(c.want), was+1)
		}
	}
}

// TestTruncatedIsMalformed checks that a packet shorter than its IP length
// field says, as a packet longer than the TUN's read buffer arrives, is
// dropped as malformed, not as a bad checksum.
func TestTruncatedIsMalformed(t *testing.T) {
	from, to := netip.AddrPortFrom(clientAddr, 40000), netip.AddrPortFrom(dstAddr, 80)
	badIHL := buildV4(from, to, header.TCPFlagSyn, 1, 0, 0)
	badIHL[0] = 0x44 // a header of 16 bytes
	cases := []struct {
		name string
		pkt  []byte
	}{
		{"IPv4 cut short of its total length", buildV4(from, to, header.TCPFlagAck, 1, 1, 100)[:80]},
		{"IPv4 with a header length under 20 bytes", badIHL},
		{"IPv6 cut short of its payload length", buildV6(netip.AddrPortFrom(netip.MustParseAddr("fd64::2"), 40000),
			netip.AddrPortFrom(netip.MustParseAddr("2001:db8::1"), 80), header.TCPFlagAck, 1, 1, 100)[:90]},
	}
	h := newHarness(t, Config{}, clientAddr)
	st := h.s.Stats()
	udp := rawV4(clientAddr, dstAddr, 17, []byte{0x30, 0x39, 0x00, 0x35, 0, 8, 0, 0})
	for _, c := range cases {
		malformed, bad, notTCP := st.Drops(DropMalformed), st.Drops(DropBadChecksum), st.Drops(DropNotTCP)
		h.inject <- c.pkt
		// The packet loop takes one packet after the other: once the UDP
		// packet's drop is counted, the case's has been dealt with.
		h.inject <- udp
		waitFor(t, c.name+" and the packet after it dealt with", func() bool { return st.Drops(DropNotTCP) > notTCP })
		if st.Drops(DropMalformed) != malformed+1 || st.Drops(DropBadChecksum) != bad {
			t.Errorf("%s: malformed %d -> %d, bad_checksum %d -> %d; want one more malformed",
				c.name, malformed, st.Drops(DropMalformed), bad, st.Drops(DropBadChecksum))
		}
	}
}
