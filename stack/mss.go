package stack

import (
	"encoding/binary"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// kernelCsum is what the kernel said about an inbound packet's checksums.
type kernelCsum uint8

const (
	// kernelCsumNone: nothing (the plain path); the link verifies the
	// checksums itself.
	kernelCsumNone kernelCsum = iota
	// kernelCsumValid: VIRTIO_NET_HDR_F_DATA_VALID, complete and correct.
	kernelCsumValid
	// kernelCsumPartial: VIRTIO_NET_HDR_F_NEEDS_CSUM, the TCP checksum
	// field holds only the pseudo-header's sum, which no option affects.
	kernelCsumPartial
)

// clampSYN lowers the MSS option of a client's SYN, in place, to what the
// path back to the client carries (Tunables.MSSClamp), before the netstack
// reads it; the netstack then never sends that client a segment the VPN
// interface would refuse. mss is the option's value (0: none, and the
// netstack assumes 536 bytes, which every path carries). It returns the
// MSS the netstack will read and, if it lowered it, the client's value.
func (s *Stack) clampSYN(pkt []byte, client, dst netip.AddrPort, mss uint16, csum kernelCsum) (uint16, uint16) {
	mode := s.tune.Load().MSSClamp
	if mode == MSSClampOff || mss == 0 {
		return mss, 0
	}
	hdr := ipv4TCPHeaders
	if client.Addr().Is6() {
		hdr = ipv6TCPHeaders
	}
	// The netstack itself never sends more than its TUN's MTU allows.
	inUse := min(int(mss), int(s.link.MTU())-hdr)
	limit := mode
	if mode == MSSClampAuto {
		if s.paths == nil {
			return mss, 0
		}
		limit = int(s.paths.mss(client, dst))
	}
	if limit <= 0 || limit >= inUse {
		return mss, 0
	}
	if !setMSS(pkt, uint16(limit), csum != kernelCsumPartial) {
		return mss, 0
	}
	s.stats.MSSClamped.Add(1)
	return uint16(limit), mss
}

// setMSS rewrites the MSS option of the TCP segment in pkt, an IPv4 or IPv6
// packet parseTCP accepted, and recomputes the TCP checksum if fixCsum. It
// reports whether it found the option.
func setMSS(pkt []byte, mss uint16, fixCsum bool) bool {
	var (
		tcp      []byte
		src, dst tcpip.Address
	)
	if pkt[0]>>4 == 4 {
		ihl := int(pkt[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(pkt[2:4]))
		tcp = pkt[ihl:total]
		src, dst = tcpip.AddrFrom4([4]byte(pkt[12:16])), tcpip.AddrFrom4([4]byte(pkt[16:20]))
	} else {
		end := ipv6Header + int(binary.BigEndian.Uint16(pkt[4:6]))
		off, _, _ := ipv6Upper(pkt[:end]) // past hop-by-hop and destination options
		tcp = pkt[off:end]
		src, dst = tcpip.AddrFrom16([16]byte(pkt[8:24])), tcpip.AddrFrom16([16]byte(pkt[24:40]))
	}
	off := int(tcp[12]>>4) * 4
	at := mssOptionAt(tcp[tcpMinHeader:off])
	if at < 0 {
		return false
	}
	binary.BigEndian.PutUint16(tcp[tcpMinHeader+at:], mss)
	if fixCsum {
		h := header.TCP(tcp)
		h.SetChecksum(0)
		xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(tcp)))
		h.SetChecksum(^checksum.Checksum(tcp, xsum))
	}
	return true
}

// setTSVal sets the timestamp value of the TCP header (with its options)
// tcp, and updates its checksum for it (RFC 1624): the netstack's segments
// have their checksums complete. It reports whether tcp has the option.
func setTSVal(tcp []byte, tsval uint32) bool {
	if len(tcp) < header.TCPMinimumSize {
		return false
	}
	end := int(tcp[12]>>4) * 4
	if end > len(tcp) {
		return false
	}
	for i := header.TCPMinimumSize; i < end; {
		switch kind := tcp[i]; kind {
		case header.TCPOptionEOL:
			return false
		case header.TCPOptionNOP:
			i++
			continue
		}
		if i+1 >= end || tcp[i+1] < 2 || i+int(tcp[i+1]) > end {
			return false
		}
		if tcp[i] == header.TCPOptionTS && tcp[i+1] == header.TCPOptionTSLength {
			v := tcp[i+2 : i+6]
			sum := binary.BigEndian.Uint16(tcp[16:18])
			sum = csumReplace(sum, binary.BigEndian.Uint16(v[0:2]), uint16(tsval>>16))
			sum = csumReplace(sum, binary.BigEndian.Uint16(v[2:4]), uint16(tsval))
			binary.BigEndian.PutUint32(v, tsval)
			binary.BigEndian.PutUint16(tcp[16:18], sum)
			return true
		}
		i += int(tcp[i+1])
	}
	return false
}

// csumReplace updates the Internet checksum sum for a 16-bit word of the
// data changed from old to new (RFC 1624, eqn. 3).
func csumReplace(sum, old, new uint16) uint16 {
	s := uint32(^sum) + uint32(^old) + uint32(new)
	s = s&0xffff + s>>16
	s = s&0xffff + s>>16
	return ^uint16(s)
}

// ownTCPHeader returns the TCP header, with what follows, of a packet the
// netstack built: IPv4, or IPv6 with no extension header.
func ownTCPHeader(pkt []byte) []byte {
	switch {
	case len(pkt) >= header.IPv4MinimumSize && pkt[0]>>4 == 4:
		if ihl := int(pkt[0]&0x0f) * 4; ihl <= len(pkt) {
			return pkt[ihl:]
		}
	case len(pkt) >= header.IPv6MinimumSize && pkt[0]>>4 == 6 && pkt[6] == uint8(header.TCPProtocolNumber):
		return pkt[header.IPv6MinimumSize:]
	}
	return nil
}
