package stack

import (
	"encoding/binary"
	"errors"
	"os"

	"golang.org/x/sys/unix"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"

	"tcpd/conntrack"
)

// The offload path talks to the TUN's file descriptor directly, with a
// virtio-net header (linux/virtio_net.h) in front of every packet, instead of
// through wireguard's Read and Write, which split the kernel's TSO
// super-packets into MTU-sized ones and cannot write a super-packet the
// netstack segmented only logically. In: a super-packet goes into the
// netstack whole, its checksum trusted when the kernel says so. Out: the
// netstack's GSO segments (up to 64 KiB) leave with a GSO header and the
// kernel cuts them to MSS.
const (
	vnetHdrLen = 10

	vnetFlagNeedsCsum = 1 // VIRTIO_NET_HDR_F_NEEDS_CSUM
	vnetFlagDataValid = 2 // VIRTIO_NET_HDR_F_DATA_VALID

	vnetGSONone  = 0 // VIRTIO_NET_HDR_GSO_NONE
	vnetGSOTCPv4 = 1 // VIRTIO_NET_HDR_GSO_TCPV4
	vnetGSOTCPv6 = 4 // VIRTIO_NET_HDR_GSO_TCPV6

	// gsoMaxSize bounds the netstack's GSO segments: an IPv4 packet's total
	// length is 16 bits, and the headers must fit too.
	gsoMaxSize = 65535 - 256
)

// fileDevice is what wireguard's native TUN offers besides tun.Device.
type fileDevice interface{ File() *os.File }

// setupVnet switches l to the offload path if its device is a native TUN
// opened with IFF_VNET_HDR (wireguard reports that as a batch size above 1).
func (l *link) setupVnet() {
	fd, ok := l.dev.(fileDevice)
	if !ok || l.dev.BatchSize() <= 1 {
		return
	}
	raw, err := fd.File().SyscallConn()
	if err != nil {
		return
	}
	l.raw = raw
}

// readVnet is readTUN for the offload path.
func (l *link) readVnet() {
	buf := make([]byte, vnetHdrLen+65535)
	failures := 0
	for {
		var n int
		var rerr error
		err := l.raw.Read(func(fd uintptr) bool {
			n, rerr = unix.Read(int(fd), buf)
			return rerr != unix.EAGAIN
		})
		if err == nil {
			err = rerr
		}
		if err != nil {
			if l.closing.Load() || isClosedErr(err) || errors.Is(err, unix.EBADFD) {
				return
			}
			l.stats.Dropped[DropTUNReadError].Add(1)
			failures++
			if failures > 100 {
				sleepBackoff()
			}
			continue
		}
		failures = 0
		if n < vnetHdrLen {
			l.stats.Dropped[DropMalformed].Add(1)
			continue
		}
		l.busySince.Store(nowNano())
		l.stallForTest()
		flags, gso := buf[0], buf[1]
		switch gso {
		case vnetGSONone, vnetGSOTCPv4, vnetGSOTCPv6:
			csum := kernelCsumNone
			switch {
			case flags&vnetFlagNeedsCsum != 0:
				csum = kernelCsumPartial
			case flags&vnetFlagDataValid != 0:
				csum = kernelCsumValid
			}
			l.deliverPacket(buf[vnetHdrLen:n], csum)
		default:
			// UDP segmentation offload or ECN variants: nothing tcpd
			// terminates.
			l.stats.TUNPackets[conntrack.FromClient].Add(1)
			l.stats.TUNBytes[conntrack.FromClient].Add(uint64(n - vnetHdrLen))
			l.stats.Dropped[DropMalformed].Add(1)
		}
		l.busySince.Store(0)
	}
}

// writeVnet writes one outbound packet with its virtio-net header.
func (l *link) writeVnet(pkt *gvstack.PacketBuffer, hdr *[vnetHdrLen]byte, iov [][]byte) ([][]byte, error) {
	*hdr = [vnetHdrLen]byte{}
	if g := pkt.GSOOptions; g.Type != gvstack.GSONone {
		if g.NeedsCsum {
			hdr[0] = vnetFlagNeedsCsum
			binary.LittleEndian.PutUint16(hdr[6:8], g.L3HdrLen)
			binary.LittleEndian.PutUint16(hdr[8:10], g.CsumOffset)
		}
		if pkt.Data().Size() > int(g.MSS) {
			switch g.Type {
			case gvstack.GSOTCPv4:
				hdr[1] = vnetGSOTCPv4
			case gvstack.GSOTCPv6:
				hdr[1] = vnetGSOTCPv6
			}
			binary.LittleEndian.PutUint16(hdr[2:4], uint16(pkt.HeaderSize()))
			binary.LittleEndian.PutUint16(hdr[4:6], g.MSS)
		}
	}
	iov = append(iov[:0], hdr[:])
	iov = append(iov, pkt.AsSlices()...)
	var werr error
	err := l.raw.Write(func(fd uintptr) bool {
		_, werr = unix.Writev(int(fd), iov)
		return werr != unix.EAGAIN
	})
	if err == nil {
		err = werr
	}
	return iov, err
}

// writeVnetRaw writes one whole IP packet, which holds its own checksums,
// behind a virtio-net header that asks nothing of the kernel. buf[:headroom]
// is free room of at least vnetHdrLen bytes.
func (l *link) writeVnetRaw(buf []byte, headroom int) error {
	frame := buf[headroom-vnetHdrLen:]
	clear(frame[:vnetHdrLen]) // VIRTIO_NET_HDR_GSO_NONE, no flags
	var werr error
	err := l.raw.Write(func(fd uintptr) bool {
		_, werr = unix.Write(int(fd), frame)
		return werr != unix.EAGAIN
	})
	if err == nil {
		err = werr
	}
	return err
}
