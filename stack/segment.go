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
		end := ipv6Header + int(binary.BigEndian.Uint16(pkt[4:6]))
		if end > wireLen {
			return
		}
		// Hop-by-hop and destination options are walked past (RFC 8200
		// allows them on any packet, and the netstack takes TCP behind
		// them); a routing header, which changes the destination the
		// checksum counts, or a fragment is left to the netstack.
		off, next, walked := ipv6Upper(pkt[:min(end, len(pkt))])
		if !walked || next != protoTCP {
			return
		}
		payload = end - off
		srcIP = netip.AddrFrom16([16]byte(pkt[8:24]))
		dstIP = netip.AddrFrom16([16]byte(pkt[24:40]))
		tcp = pkt[off:min(end, len(pkt))]
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
		Wnd:   binary.BigEndian.Uint16(tcp[14:16]),
	}
	opts := tcp[tcpMinHeader:off]
	if seg.Flags&conntrack.FlagSYN != 0 {
		if at := mssOptionAt(opts); at >= 0 {
			seg.MSS = binary.BigEndian.Uint16(tcp[tcpMinHeader+at:])
		}
		if at := optionAt(opts, optWS, optWSLen); at >= 0 {
			seg.WS, seg.WScale = true, opts[at]
		}
	}
	if at := optionAt(opts, optTimestamps, optTSLen); at >= 0 {
		seg.TS, seg.TSVal, seg.TSEcr = true, binary.BigEndian.Uint32(opts[at:]), binary.BigEndian.Uint32(opts[at+4:])
	}
	return src, dst, seg, true
}

// TCP option kinds and lengths (RFC 9293 3.2, RFC 7323 3.2).
const (
	optEnd        = 0
	optNOP        = 1
	optMSS        = 2
	optMSSLen     = 4
	optWS         = 3
	optWSLen      = 3
	optTimestamps = 8
	optTSLen      = 10
)

// mssOptionAt returns the offset in opts (a TCP header's options) of the
// MSS option's 2-byte value, or -1 if there is none or the options are
// malformed before it.
func mssOptionAt(opts []byte) int { return optionAt(opts, optMSS, optMSSLen) }

// optionAt returns the offset in opts of the value of the option of that
// kind and length, or -1 if there is none or the options are malformed
// before it (an end-of-options kind ends the search).
func optionAt(opts []byte, kind, length byte) int {
	for i := 0; i < len(opts); {
		switch opts[i] {
		case optEnd:
			return -1
		case optNOP:
			i++
			continue
		}
		if i+1 >= len(opts) || opts[i+1] < 2 || i+int(opts[i+1]) > len(opts) {
			return -1
		}
		if opts[i] == kind && opts[i+1] == length {
			return i + 2
		}
		i += int(opts[i+1])
	}
	return -1
}

// linkScoped reports a packet that belongs to the link rather than to a
// client behind it: IPv6 from the unspecified or a link-local address (the
// sources of neighbour discovery, MLD and router solicitations), or any
// packet to a multicast or the limited broadcast address. pkt holds at
// least the fixed IP header (ipSource said so).
func linkScoped(pkt []byte) bool {
	if pkt[0]>>4 == 4 {
		dst := netip.AddrFrom4([4]byte(pkt[16:20]))
		return dst.IsMulticast() || dst == netip.AddrFrom4([4]byte{255, 255, 255, 255})
	}
	src := netip.AddrFrom16([16]byte(pkt[8:24]))
	dst := netip.AddrFrom16([16]byte(pkt[24:40]))
	return src.IsUnspecified() || src.IsLinkLocalUnicast() || dst.IsMulticast()
}

// ipv6Upper walks an IPv6 packet's extension headers (ipv6Transport) to
// the transport header, and returns where it starts and its kind. ok is
// false behind a routing header (the final destination, which the
// transport checksum counts, is then another) or a fragment header, and
// when pkt cuts a header short.
func ipv6Upper(pkt []byte) (off int, next byte, ok bool) {
	off, next, frag, routed := ipv6Transport(pkt, ipv6Header, pkt[6])
	return off, next, !frag && !routed && next != 255 && off <= len(pkt)
}

// IP protocol numbers and ICMP error types the netstack may use for the
// TCP connections they quote (RFC 792, RFC 4443 section 2.1).
const (
	protoICMPv4 = 1
	protoICMPv6 = 58

	icmpv4DestUnreachable = 3
	icmpv4TimeExceeded    = 11
	icmpv4ParamProblem    = 12
	icmpv6LastError       = 127 // types 0-127 are errors
)

// forNetstack reports whether the netstack has any use for a client's
// packet: TCP (fragments and IPv6 extension headers included: the netstack
// judges those) or an ICMP error, which may quote one of tcpd's segments
// (packet too big, unreachable). Everything else is for protocols tcpd
// does not terminate. pkt holds at least the fixed IP header.
func forNetstack(pkt []byte) bool {
	if pkt[0]>>4 == 4 {
		ihl := int(pkt[0]&0x0f) * 4
		switch pkt[9] {
		case protoTCP:
			return true
		case protoICMPv4:
			frag := binary.BigEndian.Uint16(pkt[6:8]) & 0x1fff
			if frag != 0 || ihl < ipv4MinHeader || len(pkt) <= ihl {
				return false
			}
			switch pkt[ihl] {
			case icmpv4DestUnreachable, icmpv4TimeExceeded, icmpv4ParamProblem:
				return true
			}
		}
		return false
	}
	switch next := pkt[6]; next {
	case protoTCP:
		return true
	case protoICMPv6:
		return len(pkt) > ipv6Header && pkt[ipv6Header] <= icmpv6LastError
	case 0, 43, 44, 60: // hop-by-hop, routing, fragment, destination options
		return true
	}
	return false
}
