package stack

import (
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// csumVerdict is what the link's own checksum check found.
type csumVerdict uint8

const (
	// csumValid: every checksum of the packet is right.
	csumValid csumVerdict = iota
	// csumBad: a checksum is wrong, or the lengths it covers do not fit
	// the packet.
	csumBad
	// csumUnverifiable: the link cannot verify the transport checksum: an
	// IP fragment (the checksum covers the reassembled datagram), a
	// transport protocol other than TCP, UDP, ICMP and ICMPv6, or an IPv6
	// routing or fragment header in front of the transport header (those
	// of hop-by-hop and destination options are walked past, ipv6Upper).
	csumUnverifiable
)

// verifyChecksums checks every checksum of a packet the kernel did not vouch
// for: the IPv4 header's and the transport's. The link tells the netstack
// that it verified the checksums of every packet it delivers
// (CapabilityRXChecksumOffload is one flag for the whole link, and the
// netstack then skips the IPv4 header's, TCP's and UDP's), so a packet it
// cannot verify must not be delivered at all. Packets that are not IPv4 or
// IPv6 are the caller's to reject.
func verifyChecksums(pkt []byte) csumVerdict {
	var (
		l4       []byte
		proto    tcpip.TransportProtocolNumber
		src, dst tcpip.Address
	)
	switch {
	case len(pkt) >= header.IPv4MinimumSize && pkt[0]>>4 == 4:
		ip := header.IPv4(pkt)
		hl := int(ip.HeaderLength())
		total := int(ip.TotalLength())
		if hl < header.IPv4MinimumSize || hl > total || total > len(pkt) || !ip.IsChecksumValid() {
			return csumBad
		}
		if ip.FragmentOffset() != 0 || ip.More() {
			return csumUnverifiable
		}
		l4, proto, src, dst = pkt[hl:total], ip.TransportProtocol(), ip.SourceAddress(), ip.DestinationAddress()
	case len(pkt) >= header.IPv6MinimumSize && pkt[0]>>4 == 6:
		ip := header.IPv6(pkt)
		end := header.IPv6MinimumSize + int(ip.PayloadLength())
		if end > len(pkt) {
			return csumBad
		}
		off, next, ok := ipv6Upper(pkt[:end])
		if !ok {
			return csumUnverifiable
		}
		l4, proto, src, dst = pkt[off:end], tcpip.TransportProtocolNumber(next), ip.SourceAddress(), ip.DestinationAddress()
	default:
		return csumUnverifiable
	}
	var minLen, at int // the transport header's minimum length; its checksum's offset
	switch proto {
	case header.TCPProtocolNumber:
		minLen, at = header.TCPMinimumSize, header.TCPChecksumOffset
	case header.UDPProtocolNumber:
		minLen, at = header.UDPMinimumSize, 6
	case header.ICMPv4ProtocolNumber:
		if src.Len() != 4 {
			return csumUnverifiable
		}
		minLen, at = header.ICMPv4MinimumSize, 2
	case header.ICMPv6ProtocolNumber:
		if src.Len() != 16 {
			return csumUnverifiable
		}
		minLen, at = header.ICMPv6MinimumSize, 2
	default:
		return csumUnverifiable
	}
	if len(l4) < minLen {
		return csumBad
	}
	var xsum uint16
	switch proto {
	case header.ICMPv4ProtocolNumber:
		// ICMP's checksum covers the message alone (RFC 792).
	case header.UDPProtocolNumber:
		if l4[at] == 0 && l4[at+1] == 0 {
			// Zero means "no checksum" over IPv4 (RFC 768) and is
			// forbidden over IPv6 (RFC 8200, section 8.1).
			if src.Len() == 4 {
				return csumValid
			}
			return csumBad
		}
		fallthrough
	default:
		xsum = header.PseudoHeaderChecksum(proto, src, dst, uint16(len(l4)))
	}
	if checksum.Checksum(l4, xsum) != 0xffff {
		return csumBad
	}
	return csumValid
}
