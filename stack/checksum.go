package stack

import (
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// checksumsValid verifies the IPv4 header checksum and the TCP checksum of a
// packet the kernel did not vouch for. Packets other than TCP are passed:
// the netstack terminates only TCP and drops the rest.
func checksumsValid(pkt []byte) bool {
	var (
		tcp      []byte
		src, dst tcpip.Address
	)
	switch {
	case len(pkt) >= header.IPv4MinimumSize && pkt[0]>>4 == 4:
		ip := header.IPv4(pkt)
		hl := int(ip.HeaderLength())
		total := int(ip.TotalLength())
		if hl < header.IPv4MinimumSize || hl > total || total > len(pkt) || !ip.IsChecksumValid() {
			return false
		}
		if ip.TransportProtocol() != header.TCPProtocolNumber || ip.FragmentOffset() != 0 || ip.More() {
			return true
		}
		tcp, src, dst = pkt[hl:total], ip.SourceAddress(), ip.DestinationAddress()
	case len(pkt) >= header.IPv6MinimumSize && pkt[0]>>4 == 6:
		ip := header.IPv6(pkt)
		end := header.IPv6MinimumSize + int(ip.PayloadLength())
		if end > len(pkt) {
			return false
		}
		if ip.TransportProtocol() != header.TCPProtocolNumber {
			return true
		}
		tcp, src, dst = pkt[header.IPv6MinimumSize:end], ip.SourceAddress(), ip.DestinationAddress()
	default:
		return true // the netstack rejects what it cannot parse
	}
	if len(tcp) < header.TCPMinimumSize {
		return false
	}
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(tcp)))
	return checksum.Checksum(tcp, xsum) == 0xffff
}
