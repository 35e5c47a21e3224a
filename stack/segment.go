package stack

import (
	"encoding/binary"
	"net/netip"

	"tcpd/conntrack"
)

// IP protocol number of TCP, and the header sizes the parser relies on
// (RFC 791, RFC 8200, RFC 9293 3.1).
const (
	protoTCP      = 6
	ipv4MinHeader = 20
	ipv6Header    = 40
	tcpMinHeader  = 20
)

// parseTCP reads the fields conntrack needs from one IP packet: the 4-tuple,
// the TCP flags, SEQ, ACK and payload length. It returns ok=false for
// anything that is not a whole, first-fragment TCP segment with consistent
// lengths; the netstack will judge those itself. It never allocates and
// never reads out of bounds, whatever pkt holds.
func parseTCP(pkt []byte) (src, dst netip.AddrPort, seg conntrack.Segment, ok bool) {
	return parseTCPHeader(pkt, len(pkt))
}

// maxHeaders bounds an IPv4 or IPv6 header plus a TCP header with options:
// 60 + 60 bytes for IPv4, 40 + 60 for IPv6.
const maxHeaders = 128

// parseTCPHeader is parseTCP for a packet of wireLen bytes of which pkt holds
// at least the IP and TCP headers: the netstack's outbound packets keep their
// headers and payload apart, and copying only the headers keeps the GSO path
// free of payload copies.
func parseTCPHeader(pkt []byte, wireLen int) (src, dst netip.AddrPort, seg conntrack.Segment, ok bool) {
	if len(pkt) == 0 || wireLen < len(pkt) {
		return
	}
	var (
		srcIP, dstIP netip.Addr
		// tcp is the TCP header and as much payload as pkt holds; payload
		// is the TCP segment's length on the wire.
		tcp     []byte
		payload int
	)
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < ipv4MinHeader {
			return
		}
		ihl := int(pkt[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(pkt[2:4]))
		// Fragments other than the first carry no TCP header; a first
		// fragment carries a TCP header but not the whole payload.
		frag := binary.BigEndian.Uint16(pkt[6:8])
		if ihl < ipv4MinHeader || total < ihl || total > wireLen || ihl > len(pkt) || frag&0x3fff != 0 || pkt[9] != protoTCP {
			return
		}
		srcIP = netip.AddrFrom4([4]byte(pkt[12:16]))
		dstIP = netip.AddrFrom4([4]byte(pkt[16:20]))
		tcp = pkt[ihl:min(total, len(pkt))]
		payload = total - ihl
	case 6:
		if len(pkt) < ipv6Header {
			return
		}
		payload = int(binary.BigEndian.Uint16(pkt[4:6]))
		// Extension headers are not followed: the netstack sees those
		// segments, conntrack does not (they are counted as untracked
		// only if they matter, which for TCP from real stacks they do not).
		if pkt[6] != protoTCP || ipv6Header+payload > wireLen {
			return
		}
		srcIP = netip.AddrFrom16([16]byte(pkt[8:24]))
		dstIP = netip.AddrFrom16([16]byte(pkt[24:40]))
		tcp = pkt[ipv6Header:min(ipv6Header+payload, len(pkt))]
	default:
		return
	}
	if len(tcp) < tcpMinHeader {
		return
	}
	off := int(tcp[12]>>4) * 4
	if off < tcpMinHeader || off > len(tcp) || off > payload {
		return
	}
	src = netip.AddrPortFrom(srcIP, binary.BigEndian.Uint16(tcp[0:2]))
	dst = netip.AddrPortFrom(dstIP, binary.BigEndian.Uint16(tcp[2:4]))
	seg = conntrack.Segment{
		Flags: tcp[13] & 0x1f,
		Seq:   binary.BigEndian.Uint32(tcp[4:8]),
		Ack:   binary.BigEndian.Uint32(tcp[8:12]),
		Len:   uint32(payload - off),
	}
	return src, dst, seg, true
}
