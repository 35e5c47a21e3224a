package stack

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"tcpd/conntrack"
)

func TestParseTCPWindowAndTimestamps(t *testing.T) {
	c4, d4 := netip.MustParseAddrPort("100.64.1.2:40000"), netip.MustParseAddrPort("198.18.1.2:80")
	// Linux's SYN options: MSS, SACK permitted, timestamps, NOP, window
	// scale.
	linuxSYN := []byte{2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0x30, 0x39, 0, 0, 0, 0, 1, 3, 3, 7}
	for _, tc := range []struct {
		name         string
		opts         []byte
		ts           bool
		tsval, tsecr uint32
	}{
		{"Linux SYN", linuxSYN, true, 12345, 0},
		{"NOP NOP TS", []byte{1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9}, true, 7, 9},
		{"no options", nil, false, 0, 0},
		{"end of options before TS", []byte{0, 0, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9}, false, 0, 0},
		{"zero length option", []byte{5, 0, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9}, false, 0, 0},
		{"option longer than the header", []byte{1, 1, 8, 10, 0, 0, 0, 7}, false, 0, 0},
		{"TS with a wrong length", []byte{8, 6, 0, 0, 0, 7, 1, 1}, false, 0, 0},
	} {
		opts := tc.opts
		for len(opts)%4 != 0 {
			opts = append(opts, 0)
		}
		pkt := buildV4(c4, d4, header.TCPFlagSyn, 7, 0, len(opts))
		tcp := pkt[header.IPv4MinimumSize:]
		// The options go between the fixed header and the payload.
		copy(tcp[header.TCPMinimumSize:], opts)
		tcp[12] = byte((header.TCPMinimumSize+len(opts))/4) << 4
		binary.BigEndian.PutUint16(tcp[14:16], 64240)
		_, _, seg, ok := parseTCP(pkt)
		if !ok {
			t.Errorf("%s: not parsed", tc.name)
			continue
		}
		if seg.Wnd != 64240 || seg.Len != 0 || seg.TS != tc.ts || seg.TSVal != tc.tsval || seg.TSEcr != tc.tsecr {
			t.Errorf("%s: segment %+v, want window 64240, no payload, TS %v %d %d", tc.name, seg, tc.ts, tc.tsval, tc.tsecr)
		}
	}
}

// TestTimeWaitACKPacket checks the ACKs tcpd builds for connections in
// TIME_WAIT: valid checksums, the fields conntrack asked for, and the
// header fields the netstack uses for its own (DF and ID 0, TTL or hop
// limit 64, options NOP NOP TS).
func TestTimeWaitACKPacket(t *testing.T) {
	for _, tc := range []struct {
		name string
		tu   conntrack.Tuple
		r    conntrack.Reply
	}{
		{"IPv4 with timestamps", conntrack.Tuple{Client: netip.MustParseAddrPort("100.64.1.2:40000"), Dst: netip.MustParseAddrPort("198.18.1.2:80")},
			conntrack.Reply{Seq: 5002, Ack: 1002, Wnd: 502, TS: true, TSVal: 0xfffffff0, TSEcr: 77}},
		{"IPv4 without", conntrack.Tuple{Client: netip.MustParseAddrPort("100.64.1.2:40000"), Dst: netip.MustParseAddrPort("198.18.1.2:80")},
			conntrack.Reply{Seq: 1, Ack: 2, Wnd: 65535}},
		{"IPv6 with timestamps", conntrack.Tuple{Client: netip.MustParseAddrPort("[fd64::2]:40000"), Dst: netip.MustParseAddrPort("[2001:db8::2]:443")},
			conntrack.Reply{Seq: 9, Ack: 10, Wnd: 1, TS: true, TSVal: 3, TSEcr: 4}},
		// A RST carries no ACK, window or options, whatever else the
		// reply says.
		{"IPv4 RST", conntrack.Tuple{Client: netip.MustParseAddrPort("100.64.1.2:40000"), Dst: netip.MustParseAddrPort("198.18.1.2:80")},
			conntrack.Reply{RST: true, Seq: 12345, Ack: 7, Wnd: 9, TS: true, TSVal: 1, TSEcr: 2}},
		{"IPv6 RST", conntrack.Tuple{Client: netip.MustParseAddrPort("[fd64::2]:40000"), Dst: netip.MustParseAddrPort("[2001:db8::2]:443")},
			conntrack.Reply{RST: true, Seq: 0xffffffff}},
	} {
		pkt := appendReply([]byte{0xaa}, tc.tu, tc.r)
		if pkt[0] != 0xaa {
			t.Fatalf("%s: the buffer's head was overwritten", tc.name)
		}
		pkt = pkt[1:]
		if v := verifyChecksums(pkt); v != csumValid {
			t.Errorf("%s: checksums %v", tc.name, v)
		}
		src, dst, seg, ok := parseTCP(pkt)
		want := conntrack.Segment{Flags: conntrack.FlagACK, Seq: tc.r.Seq, Ack: tc.r.Ack, Wnd: tc.r.Wnd,
			TS: tc.r.TS, TSVal: tc.r.TSVal, TSEcr: tc.r.TSEcr}
		if tc.r.RST {
			want = conntrack.Segment{Flags: conntrack.FlagRST, Seq: tc.r.Seq}
			tc.r.TS = false // for the options below
		}
		if !ok || src != tc.tu.Dst || dst != tc.tu.Client || seg != want {
			t.Errorf("%s: parsed %v > %v %+v %v, want %v > %v %+v", tc.name, src, dst, seg, ok, tc.tu.Dst, tc.tu.Client, want)
		}
		var tcp header.TCP
		if tc.tu.Client.Addr().Is4() {
			ip := header.IPv4(pkt)
			if tos, _ := ip.TOS(); ip.Flags() != header.IPv4FlagDontFragment || ip.ID() != 0 || ip.TTL() != 64 || tos != 0 || int(ip.TotalLength()) != len(pkt) {
				t.Errorf("%s: IPv4 header flags %d id %d ttl %d tos %d length %d", tc.name, ip.Flags(), ip.ID(), ip.TTL(), tos, ip.TotalLength())
			}
			tcp = header.TCP(ip.Payload())
		} else {
			ip := header.IPv6(pkt)
			if tcl, fl := ip.TOS(); ip.HopLimit() != 64 || tcl != 0 || fl != 0 || ip.NextHeader() != uint8(header.TCPProtocolNumber) {
				t.Errorf("%s: IPv6 header hop limit %d traffic class %d flow label %d", tc.name, ip.HopLimit(), tcl, fl)
			}
			tcp = header.TCP(ip.Payload())
		}
		wantOpts := []byte(nil)
		if tc.r.TS {
			wantOpts = []byte{1, 1, 8, 10}
			wantOpts = binary.BigEndian.AppendUint32(wantOpts, tc.r.TSVal)
			wantOpts = binary.BigEndian.AppendUint32(wantOpts, tc.r.TSEcr)
		}
		if got := tcp.Options(); string(got) != string(wantOpts) || tcp.UrgentPointer() != 0 {
			t.Errorf("%s: options % x, want % x", tc.name, got, wantOpts)
		}
	}
}
