package stack

import (
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"tcpd/conntrack"
)

// buildV4 returns an IPv4 TCP packet with the given flags and payload.
func buildV4(src, dst netip.AddrPort, flags header.TCPFlags, seq, ack uint32, payload int) []byte {
	pkt := make([]byte, header.IPv4MinimumSize+header.TCPMinimumSize+payload)
	ip := header.IPv4(pkt)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(pkt)), TTL: 64, Protocol: uint8(header.TCPProtocolNumber),
		SrcAddr: tcpip.AddrFrom4(src.Addr().As4()), DstAddr: tcpip.AddrFrom4(dst.Addr().As4())})
	header.TCP(pkt[header.IPv4MinimumSize:]).Encode(&header.TCPFields{SrcPort: src.Port(), DstPort: dst.Port(),
		SeqNum: seq, AckNum: ack, DataOffset: header.TCPMinimumSize, Flags: flags})
	return pkt
}

func buildV6(src, dst netip.AddrPort, flags header.TCPFlags, seq, ack uint32, payload int) []byte {
	pkt := make([]byte, header.IPv6MinimumSize+header.TCPMinimumSize+payload)
	header.IPv6(pkt).Encode(&header.IPv6Fields{PayloadLength: uint16(header.TCPMinimumSize + payload),
		TransportProtocol: header.TCPProtocolNumber, HopLimit: 64,
		SrcAddr: tcpip.AddrFrom16(src.Addr().As16()), DstAddr: tcpip.AddrFrom16(dst.Addr().As16())})
	header.TCP(pkt[header.IPv6MinimumSize:]).Encode(&header.TCPFields{SrcPort: src.Port(), DstPort: dst.Port(),
		SeqNum: seq, AckNum: ack, DataOffset: header.TCPMinimumSize, Flags: flags})
	return pkt
}

// withOptions returns the IPv4 packet pkt, whose TCP header has none,
// with opts (a multiple of 4 bytes) as its TCP options.
func withOptions(pkt, opts []byte) []byte {
	out := append(append(append([]byte(nil), pkt[:header.IPv4MinimumSize+header.TCPMinimumSize]...), opts...), pkt[header.IPv4MinimumSize+header.TCPMinimumSize:]...)
	header.IPv4(out).SetTotalLength(uint16(len(out)))
	out[header.IPv4MinimumSize+12] = byte((header.TCPMinimumSize + len(opts)) / 4 << 4)
	return out
}

func TestParseTCP(t *testing.T) {
	c4, d4 := netip.MustParseAddrPort("100.64.1.2:40000"), netip.MustParseAddrPort("198.18.1.2:80")
	c6, d6 := netip.MustParseAddrPort("[fd64::2]:40000"), netip.MustParseAddrPort("[2001:db8:1::2]:443")
	for _, tc := range []struct {
		name     string
		pkt      []byte
		src, dst netip.AddrPort
		seg      conntrack.Segment
	}{
		{"v4 SYN", buildV4(c4, d4, header.TCPFlagSyn, 7, 0, 0), c4, d4, conntrack.Segment{Flags: conntrack.FlagSYN, Seq: 7}},
		{"v4 data", buildV4(d4, c4, header.TCPFlagAck|header.TCPFlagPsh, 9, 8, 100), d4, c4,
			conntrack.Segment{Flags: conntrack.FlagACK | conntrack.FlagPSH, Seq: 9, Ack: 8, Len: 100}},
		{"v6 FIN", buildV6(c6, d6, header.TCPFlagFin|header.TCPFlagAck, 1, 2, 3), c6, d6,
			conntrack.Segment{Flags: conntrack.FlagFIN | conntrack.FlagACK, Seq: 1, Ack: 2, Len: 3}},
	} {
		src, dst, seg, ok := parseTCP(tc.pkt)
		if !ok || src != tc.src || dst != tc.dst || seg != tc.seg {
			t.Errorf("%s: parseTCP = %v %v %+v %v", tc.name, src, dst, seg, ok)
		}
	}

	// A SYN's options: MSS, window scale and timestamps, as Linux sends
	// them; the window scale is read from a SYN only.
	opts := []byte{2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 9, 0, 0, 0, 0, 1, 3, 3, 7}
	for _, flags := range []header.TCPFlags{header.TCPFlagSyn, header.TCPFlagSyn | header.TCPFlagAck, header.TCPFlagAck} {
		pkt := withOptions(buildV4(c4, d4, flags, 7, 0, 0), opts)
		want := conntrack.Segment{Flags: uint8(flags), Seq: 7, TS: true, TSVal: 9}
		if flags&header.TCPFlagSyn != 0 {
			want.MSS, want.WS, want.WScale = 1460, true, 7
		}
		if _, _, seg, ok := parseTCP(pkt); !ok || seg != want {
			t.Errorf("flags %v with options: parseTCP = %+v %v, want %+v", flags, seg, ok, want)
		}
	}

	good := buildV4(c4, d4, header.TCPFlagSyn, 7, 0, 10)
	bad := map[string]func([]byte){
		"truncated IP header":  func(p []byte) { copy(p, p[:10]) },
		"IHL below 5":          func(p []byte) { p[0] = 0x44 },
		"total length too big": func(p []byte) { p[2], p[3] = 0xff, 0xff },
		"later fragment":       func(p []byte) { p[7] = 1 },
		"more fragments":       func(p []byte) { p[6] = 0x20 },
		"UDP":                  func(p []byte) { p[9] = 17 },
		"TCP offset past end":  func(p []byte) { p[20+12] = 0xf0 },
		"TCP offset below 5":   func(p []byte) { p[20+12] = 0x40 },
		"version 5":            func(p []byte) { p[0] = 0x55 },
	}
	for name, mutate := range bad {
		p := append([]byte(nil), good...)
		mutate(p)
		if name == "truncated IP header" {
			p = p[:10]
		}
		if _, _, _, ok := parseTCP(p); ok {
			t.Errorf("%s: parsed", name)
		}
	}
}

func FuzzParseTCP(f *testing.F) {
	c4, d4 := netip.MustParseAddrPort("100.64.1.2:40000"), netip.MustParseAddrPort("198.18.1.2:80")
	c6, d6 := netip.MustParseAddrPort("[fd64::2]:40000"), netip.MustParseAddrPort("[2001:db8:1::2]:443")
	f.Add(buildV4(c4, d4, header.TCPFlagSyn, 7, 0, 0))
	f.Add(buildV6(c6, d6, header.TCPFlagAck, 7, 9, 20))
	f.Add([]byte{0x45})
	f.Add([]byte{0x60, 0, 0, 0, 0, 0, 6})
	f.Fuzz(func(t *testing.T, pkt []byte) {
		_, _, seg, ok := parseTCP(pkt)
		if !ok {
			return
		}
		if int(seg.Len) > len(pkt) {
			t.Fatalf("payload length %d exceeds the packet's %d bytes", seg.Len, len(pkt))
		}
		if seg.Flags&^0x1f != 0 {
			t.Fatalf("flags %#x outside FIN..ACK", seg.Flags)
		}
	})
}

// BenchmarkObserveSegment prices what the link endpoint adds to every packet
// it passes: parsing the TCP header and updating conntrack.
func BenchmarkObserveSegment(b *testing.B) {
	c4, d4 := netip.MustParseAddrPort("100.64.1.2:40000"), netip.MustParseAddrPort("198.18.1.2:80")
	tab := conntrack.New(conntrack.Config{})
	for _, p := range [][]byte{
		buildV4(c4, d4, header.TCPFlagSyn, 1000, 0, 0),
		buildV4(d4, c4, header.TCPFlagSyn|header.TCPFlagAck, 5000, 1001, 0),
		buildV4(c4, d4, header.TCPFlagAck, 1001, 5001, 0),
	} {
		src, dst, seg, _ := parseTCP(p)
		dir := conntrack.FromClient
		if src == d4 {
			dir, src, dst = conntrack.ToClient, dst, src
		}
		tab.Segment(dir, conntrack.Tuple{Client: src, Dst: dst}, seg)
	}
	pkt := buildV4(c4, d4, header.TCPFlagAck, 1001, 5001, 1448)
	b.ReportAllocs()
	for b.Loop() {
		src, dst, seg, ok := parseTCP(pkt)
		if !ok {
			b.Fatal("not parsed")
		}
		tab.Segment(conntrack.FromClient, conntrack.Tuple{Client: src, Dst: dst}, seg)
	}
}
