//go:build linux

package e2e_test

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

func netipNet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), bits)}
}

// tunStats reads the gateway kernel's counters for tcpd's TUN: its TX side
// is what the kernel handed to tcpd (or dropped, the queue full).
func tunStats(t *testing.T, g *gateway) netlink.LinkStatistics {
	t.Helper()
	var st netlink.LinkStatistics
	if err := g.Gateway.Do(func() error {
		l, err := netlink.LinkByName("tcpd0")
		if err != nil {
			return err
		}
		st = *l.Attrs().Statistics
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return st
}

// tunTxPackets reads how many packets the gateway kernel has handed to
// tcpd's TUN.
func tunTxPackets(t *testing.T, g *gateway) uint64 { t.Helper(); return tunStats(t, g).TxPackets }

// sendRawSYN sends a hand-built IPv4 TCP SYN from the client namespace
// straight onto its veth, addressed to the gateway's MAC, bypassing the
// client's routing (which would never send 127.0.0.1 out of a veth).
func sendRawSYN(t *testing.T, g *gateway, src, dst netip.AddrPort) {
	t.Helper()
	var gwMAC net.HardwareAddr
	if err := g.Gateway.Do(func() error {
		l, err := netlink.LinkByName(g.GatewayClientLink)
		if err != nil {
			return err
		}
		gwMAC = l.Attrs().HardwareAddr
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	pkt := make([]byte, header.IPv4MinimumSize+header.TCPMinimumSize)
	ip := header.IPv4(pkt)
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(pkt)),
		ID:          1,
		TTL:         64,
		Protocol:    uint8(header.TCPProtocolNumber),
		SrcAddr:     tcpip.AddrFrom4(src.Addr().As4()),
		DstAddr:     tcpip.AddrFrom4(dst.Addr().As4()),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	tcp := header.TCP(pkt[header.IPv4MinimumSize:])
	tcp.Encode(&header.TCPFields{
		SrcPort:    src.Port(),
		DstPort:    dst.Port(),
		SeqNum:     1000,
		DataOffset: header.TCPMinimumSize,
		Flags:      header.TCPFlagSyn,
		WindowSize: 65535,
	})
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(tcp)))
	tcp.SetChecksum(^checksum.Checksum(tcp, xsum))

	if err := g.Client.Do(func() error {
		l, err := netlink.LinkByName(g.ClientLink)
		if err != nil {
			return err
		}
		proto := htons(unix.ETH_P_IP)
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM, int(proto))
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		sa := &unix.SockaddrLinklayer{Protocol: proto, Ifindex: l.Attrs().Index, Halen: 6}
		copy(sa.Addr[:], gwMAC)
		return unix.Sendto(fd, pkt, 0, sa)
	}); err != nil {
		t.Fatal(err)
	}
}

func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}
