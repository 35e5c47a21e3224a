package stack

import (
	"encoding/binary"
	"net/netip"

	"tcpd/conntrack"
)

// ICMP errors about tcpd's segments. The netstack acts on any it is given:
// an unreachable aborts a handshake, and a "fragmentation needed" or
// "packet too big" lowers the connection's MSS to whatever MTU it names,
// down to one byte of payload per segment for an MTU under 68. It does not
// check that the quoted segment is one of the connection's (RFC 5927 4.1),
// nor bound the MTU. Any client, or anyone who can reach the TUN, could
// then stall or cripple another client's connection with one packet that
// guesses its ports. tcpd applies Linux's rules before the netstack sees
// an error: the quoted sequence number must lie in what tcpd has sent and
// the client has not acknowledged (tcp_v4_err, tcp_v6_err:
// LINUX_MIB_OUTOFWINDOWICMPS), an IPv4 MTU below 552 is raised to 552 (the
// default net.ipv4.route.min_pmtu), and an IPv6 "packet too big" below
// 1280, the least MTU IPv6 allows, is ignored (RFC 8201 4).

const (
	icmpv4FragNeeded   = 4 // code of destination unreachable
	icmpv4MinPMTU      = 552
	icmpv6PacketTooBig = 2
	ipv6MinMTU         = 1280
	icmpHeader         = 8 // type, code, checksum and four bytes, both families
)

// checkICMP judges pkt, a client's packet that forNetstack passed, and
// raises an IPv4 "fragmentation needed" MTU below 552 in place. inFlight
// says whether tcpd has the segment with sequence number seq in flight on
// connection tu (nil: tcpd tracks nothing and cannot tell). It returns
// why the packet must be dropped, or ok: an ICMP error that quotes no TCP
// segment tcpd could have sent is not_tcp; one that came in fragments,
// which an error never needs (RFC 792 and RFC 4443 bound it to 576 and
// 1280 bytes), unverifiable (icmpMessage). TCP passes as it is.
func checkICMP(pkt []byte, inFlight func(tu conntrack.Tuple, seq uint32) bool) (drop DropReason, ok bool) {
	icmp, v4, drop, isError := icmpMessage(pkt)
	if !isError {
		return drop, drop == 0
	}
	quoted := icmp[icmpHeader:]
	tu, seq, ok := quotedTCP(quoted, v4)
	if !ok {
		return DropNotTCP, false
	}
	if inFlight != nil && !inFlight(tu, seq) {
		return DropICMPOutOfWindow, false
	}
	switch {
	case v4 && icmp[0] == icmpv4DestUnreachable && icmp[1] == icmpv4FragNeeded:
		if mtu := binary.BigEndian.Uint16(icmp[6:8]); mtu < icmpv4MinPMTU {
			binary.BigEndian.PutUint16(icmp[6:8], icmpv4MinPMTU)
			sum := binary.BigEndian.Uint16(icmp[2:4])
			binary.BigEndian.PutUint16(icmp[2:4], checksumUpdate(sum, mtu, icmpv4MinPMTU))
		}
	case !v4 && icmp[0] == icmpv6PacketTooBig:
		if binary.BigEndian.Uint32(icmp[4:8]) < ipv6MinMTU {
			return DropICMPMTUTooSmall, false
		}
	}
	return 0, true
}

// icmpMessage finds the ICMP error message in pkt, which holds at least the
// fixed IP header. isError false with drop 0 says pkt is TCP (over IPv6,
// behind extension headers, which the netstack walks past as it does to
// an ICMPv6 message: whatever is not TCP behind them is dropped, so that
// no error reaches it unchecked); with drop set, why it must be dropped:
// an error in fragments, which an error never needs (RFC 792 and RFC 4443
// bound it to 576 and 1280 bytes), is unverifiable; anything else that is
// no ICMP error is not_tcp.
func icmpMessage(pkt []byte) (icmp []byte, v4 bool, drop DropReason, isError bool) {
	if pkt[0]>>4 == 4 {
		ihl := int(pkt[0]&0x0f) * 4
		switch {
		case pkt[9] != protoICMPv4:
			return nil, true, 0, false
		case binary.BigEndian.Uint16(pkt[6:8])&0x3fff != 0:
			return nil, true, DropUnverifiable, false
		case ihl < ipv4MinHeader || len(pkt) < ihl+icmpHeader:
			return nil, true, DropNotTCP, false
		}
		switch pkt[ihl] {
		case icmpv4DestUnreachable, icmpv4TimeExceeded, icmpv4ParamProblem:
			return pkt[ihl:], true, 0, true
		}
		return nil, true, DropNotTCP, false
	}
	off, next, frag, _ := ipv6Transport(pkt, ipv6Header, pkt[6])
	switch {
	case next == protoTCP:
		return nil, false, 0, false
	case frag:
		return nil, false, DropUnverifiable, false
	case next != protoICMPv6 || len(pkt) < off+icmpHeader || pkt[off] > icmpv6LastError:
		return nil, false, DropNotTCP, false
	}
	return pkt[off:], false, 0, true
}

// quotedClient returns the client an ICMP error in pkt is about: the
// destination of the TCP segment it quotes, which tcpd sent. Routers send
// errors from their own addresses, outside the client prefixes: a
// "fragmentation needed" or "packet too big" from a narrow hop beyond the
// gateway is how a download learns its path's MTU (RFC 1191, RFC 8201),
// and dropped as spoofed it would stall for good. So the link lets an
// error through by whom it is about; checkICMP then takes only one that
// quotes a segment tcpd has in flight, as Linux takes an error from any
// router. ok is false for anything else, an error that quotes no TCP
// among them. pkt holds at least the fixed IP header.
func quotedClient(pkt []byte) (netip.Addr, bool) {
	icmp, v4, _, isError := icmpMessage(pkt)
	if !isError {
		return netip.Addr{}, false
	}
	tu, _, ok := quotedTCP(icmp[icmpHeader:], v4)
	return tu.Client.Addr(), ok
}

// quotedTCP reads the connection and sequence number of the TCP segment
// that an ICMP error quotes: its IP header and at least the first eight
// bytes of TCP (ports and sequence number), sent by tcpd (from the
// destination's address) to a client.
func quotedTCP(q []byte, v4 bool) (conntrack.Tuple, uint32, bool) {
	var src, dst netip.Addr
	var tcp []byte
	if v4 {
		if len(q) < ipv4MinHeader || q[0]>>4 != 4 || q[9] != protoTCP {
			return conntrack.Tuple{}, 0, false
		}
		ihl := int(q[0]&0x0f) * 4
		if ihl < ipv4MinHeader || len(q) < ihl+8 {
			return conntrack.Tuple{}, 0, false
		}
		src, dst, tcp = netip.AddrFrom4([4]byte(q[12:16])), netip.AddrFrom4([4]byte(q[16:20])), q[ihl:]
	} else {
		if len(q) < ipv6Header || q[0]>>4 != 6 {
			return conntrack.Tuple{}, 0, false
		}
		off, next, _, _ := ipv6Transport(q, ipv6Header, q[6])
		if next != protoTCP || len(q) < off+8 {
			return conntrack.Tuple{}, 0, false
		}
		src, dst, tcp = netip.AddrFrom16([16]byte(q[8:24])), netip.AddrFrom16([16]byte(q[24:40])), q[off:]
	}
	tu := conntrack.Tuple{
		Client: netip.AddrPortFrom(dst, binary.BigEndian.Uint16(tcp[2:4])),
		Dst:    netip.AddrPortFrom(src, binary.BigEndian.Uint16(tcp[0:2])),
	}
	return tu, binary.BigEndian.Uint32(tcp[4:8]), true
}

// ipv6Transport walks the IPv6 extension headers of pkt from off, where a
// header of kind next starts, to the first that is not hop-by-hop, routing
// or destination options. It returns where that one starts and its kind,
// and whether a fragment header came before it (frag; the walk stops
// there, returning the fragment's payload kind), and whether a routing
// header came before it (routed). A header cut short ends the walk with
// kind 255 (reserved).
func ipv6Transport(pkt []byte, off int, next byte) (_ int, _ byte, frag, routed bool) {
	for {
		switch next {
		case 0, 43, 60: // hop-by-hop, routing, destination options
			if len(pkt) < off+2 {
				return off, 255, false, routed
			}
			routed = routed || next == 43
			next, off = pkt[off], off+(int(pkt[off+1])+1)*8
		case 44: // fragment
			if len(pkt) < off+8 {
				return off, 255, true, routed
			}
			return off + 8, pkt[off], true, routed
		default:
			return off, next, false, routed
		}
	}
}

// checksumUpdate returns the Internet checksum sum of a message in which
// one 16-bit word changed from old to new (RFC 1624 3: HC' = ~(~HC + ~m +
// m')).
func checksumUpdate(sum, old, new uint16) uint16 {
	x := uint32(^sum) + uint32(^old) + uint32(new)
	x = (x & 0xffff) + x>>16
	x = (x & 0xffff) + x>>16
	return ^uint16(x)
}
