package stack

import (
	"encoding/binary"
	"errors"

	"golang.org/x/sys/unix"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"

	"tcpd/conntrack"
)

// The link reads and writes its TUN's queues itself. On the offload path
// every packet carries a virtio-net header (linux/virtio_net.h), which
// wireguard's Read and Write would not let through as it is: they split
// the kernel's TSO super-packets into MTU-sized ones and cannot write a
// super-packet the netstack segmented only logically. In: a super-packet
// goes into the netstack whole, its checksum trusted when the kernel says
// so. Out: the netstack's GSO segments (up to 64 KiB) leave with a GSO
// header and the kernel cuts them to MSS. On the plain path a read or a
// write is one bare IP packet.
const (
	vnetHdrLen = 10 // sizeof(struct virtio_net_hdr)

	// gsoMaxSize bounds the netstack's GSO segments: an IPv4 packet's total
	// length is 16 bits, and the headers must fit too.
	gsoMaxSize = 65535 - 256
)

// readQueue reads one frame from q into buf, waiting for one.
func readQueue(q *tunQueue, buf []byte) (int, error) {
	var n int
	var rerr error
	err := q.raw.Read(func(fd uintptr) bool {
		n, rerr = unix.Read(int(fd), buf)
		return rerr != unix.EAGAIN
	})
	if err == nil {
		err = rerr
	}
	return n, err
}

// readFailed counts a failed read and reports whether the loop must end:
// the device was closed. A loop that keeps failing (its link was deleted
// under us) backs off rather than spin a core.
func (l *link) readFailed(q *tunQueue, err error, failures *int) bool {
	if l.closing.Load() || isClosedErr(err) || errors.Is(err, unix.EBADFD) {
		return true
	}
	q.stats.Dropped[DropTUNReadError].Add(1)
	*failures++
	if *failures > 100 {
		sleepBackoff()
	}
	return false
}

// readVnet is q's read loop on the offload path.
func (l *link) readVnet(q *tunQueue) {
	buf := make([]byte, vnetHdrLen+65535)
	failures := 0
	for {
		n, err := readQueue(q, buf)
		if err != nil {
			if l.readFailed(q, err, &failures) {
				return
			}
			continue
		}
		failures = 0
		if n < vnetHdrLen {
			q.stats.Dropped[DropMalformed].Add(1)
			continue
		}
		q.busySince.Store(nowNano())
		l.stallForTest()
		flags, gso := buf[0], buf[1]
		switch gso {
		case unix.VIRTIO_NET_HDR_GSO_NONE, unix.VIRTIO_NET_HDR_GSO_TCPV4, unix.VIRTIO_NET_HDR_GSO_TCPV6:
			csum := kernelCsumNone
			switch {
			case flags&unix.VIRTIO_NET_HDR_F_NEEDS_CSUM != 0:
				csum = kernelCsumPartial
			case flags&unix.VIRTIO_NET_HDR_F_DATA_VALID != 0:
				csum = kernelCsumValid
			}
			l.deliverPacket(q, buf[vnetHdrLen:n], csum)
		default:
			// UDP segmentation offload or ECN variants: nothing tcpd
			// terminates.
			q.stats.Packets[conntrack.FromClient].Add(1)
			q.stats.Bytes[conntrack.FromClient].Add(uint64(n - vnetHdrLen))
			q.stats.Dropped[DropMalformed].Add(1)
		}
		q.busySince.Store(0)
	}
}

// readPlain is q's read loop on the plain path: one packet per read.
func (l *link) readPlain(q *tunQueue) {
	// A read returns packets no longer than the device MTU; the slack covers
	// a device whose MTU was raised under us.
	buf := make([]byte, int(l.mtu.Load())+256)
	failures := 0
	for {
		n, err := readQueue(q, buf)
		if err != nil {
			if l.readFailed(q, err, &failures) {
				return
			}
			continue
		}
		failures = 0
		q.busySince.Store(nowNano())
		l.stallForTest()
		l.deliverPacket(q, buf[:n], kernelCsumNone)
		q.busySince.Store(0)
	}
}

// writev writes iov as one frame on q, waiting while the device is busy.
func writev(q *tunQueue, iov [][]byte) error {
	var werr error
	err := q.raw.Write(func(fd uintptr) bool {
		_, werr = unix.Writev(int(fd), iov)
		return werr != unix.EAGAIN
	})
	if err == nil {
		err = werr
	}
	return err
}

// writeQueue writes one outbound packet on q: behind a virtio-net header on
// the offload path, bare otherwise. It returns iov for reuse.
func (l *link) writeQueue(q *tunQueue, pkt *gvstack.PacketBuffer, hdr *[vnetHdrLen]byte, iov [][]byte) ([][]byte, error) {
	iov = iov[:0]
	if l.vnet {
		vnetHeader(pkt, hdr)
		iov = append(iov, hdr[:])
	}
	iov = append(iov, pkt.AsSlices()...)
	return iov, writev(q, iov)
}

// vnetHeader fills hdr with the virtio-net header of pkt: a GSO request
// for a segment the netstack left for the kernel to cut.
func vnetHeader(pkt *gvstack.PacketBuffer, hdr *[vnetHdrLen]byte) {
	*hdr = [vnetHdrLen]byte{}
	g := pkt.GSOOptions
	if g.Type == gvstack.GSONone {
		return
	}
	if g.NeedsCsum {
		hdr[0] = unix.VIRTIO_NET_HDR_F_NEEDS_CSUM
		binary.LittleEndian.PutUint16(hdr[6:8], g.L3HdrLen)
		binary.LittleEndian.PutUint16(hdr[8:10], g.CsumOffset)
	}
	if pkt.Data().Size() > int(g.MSS) {
		switch g.Type {
		case gvstack.GSOTCPv4:
			hdr[1] = unix.VIRTIO_NET_HDR_GSO_TCPV4
		case gvstack.GSOTCPv6:
			hdr[1] = unix.VIRTIO_NET_HDR_GSO_TCPV6
		}
		binary.LittleEndian.PutUint16(hdr[2:4], uint16(pkt.HeaderSize()))
		binary.LittleEndian.PutUint16(hdr[4:6], g.MSS)
	}
}

// writeQueueRaw writes one whole IP packet, which holds its own checksums,
// on q; on the offload path behind a virtio-net header that asks nothing of
// the kernel. buf[:headroom] is free room of at least vnetHdrLen bytes.
func (l *link) writeQueueRaw(q *tunQueue, buf []byte, headroom int) error {
	frame := buf[headroom:]
	if l.vnet {
		frame = buf[headroom-vnetHdrLen:]
		clear(frame[:vnetHdrLen]) // VIRTIO_NET_HDR_GSO_NONE, no flags
	}
	return writev(q, [][]byte{frame})
}
