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
const vnetHdrLen = 10 // sizeof(struct virtio_net_hdr)

// queueIO is one system call on a queue's descriptor with its arguments and
// results in fields. A closure handed to syscall.RawConn's Read or Write
// escapes to the heap with the variables it captures: built per call, that
// would be two or three allocations per packet. The callbacks here are
// bound once. A queueIO serves one goroutine at a time: tunQueue.io belongs
// to the queue's read loop, writeBatch.io to the WritePackets call that
// holds the batch.
type queueIO struct {
	buf         []byte
	iov         [][]byte
	n           int
	err         error
	read, write func(fd uintptr) bool
}

func (c *queueIO) doRead(fd uintptr) bool {
	c.n, c.err = unix.Read(int(fd), c.buf)
	return c.err != unix.EAGAIN
}

func (c *queueIO) doWrite(fd uintptr) bool {
	_, c.err = unix.Writev(int(fd), c.iov)
	return c.err != unix.EAGAIN
}

// readQueue reads one frame from q into q.io.buf, waiting for one.
func readQueue(q *tunQueue) (int, error) {
	c := &q.io
	if c.read == nil {
		c.read = c.doRead
	}
	c.n, c.err = 0, nil
	if err := q.raw.Read(c.read); err != nil {
		return c.n, err
	}
	return c.n, c.err
}

// readFailed counts a failed read and reports whether the loop must end:
// the device was closed, or taken away (EBADFD: the interface was deleted
// under tcpd, which marks the TUN lost). A loop that keeps failing otherwise
// backs off rather than spin a core.
func (l *link) readFailed(q *tunQueue, err error, failures *int) bool {
	if l.closing.Load() || isClosedErr(err) {
		return true
	}
	if errors.Is(err, unix.EBADFD) {
		l.tunLost(err)
		return true
	}
	q.stats.Dropped[DropTUNReadError].Add(1)
	*failures++
	if *failures > 100 {
		sleepBackoff()
	}
	return false
}

// readQueueLoop is q's read loop: one frame per read, a bare IP packet on
// the plain path, behind a virtio-net header on the offload path.
func (l *link) readQueueLoop(q *tunQueue) {
	// On the plain path a read returns packets no longer than the device
	// MTU; the slack covers a device whose MTU was raised under us.
	size := int(l.mtu.Load()) + 256
	if l.vnet {
		size = vnetHdrLen + 65535
	}
	q.io.buf = make([]byte, size)
	failures := 0
	for {
		n, err := readQueue(q)
		if err != nil {
			if l.readFailed(q, err, &failures) {
				return
			}
			continue
		}
		failures = 0
		q.busySince.Store(nowNano())
		l.stallForTest()
		if l.vnet {
			l.deliverVnet(q, q.io.buf[:n])
		} else {
			l.deliverPacket(q, q.io.buf[:n], kernelCsumNone)
		}
		q.busySince.Store(0)
	}
}

// deliverVnet delivers one frame of the offload path: what the virtio-net
// header says of the checksums goes with the packet behind it.
func (l *link) deliverVnet(q *tunQueue, frame []byte) {
	if len(frame) < vnetHdrLen {
		q.stats.Dropped[DropMalformed].Add(1)
		return
	}
	flags, gso := frame[0], frame[1]
	switch gso {
	case unix.VIRTIO_NET_HDR_GSO_NONE, unix.VIRTIO_NET_HDR_GSO_TCPV4, unix.VIRTIO_NET_HDR_GSO_TCPV6:
		csum := kernelCsumNone
		switch {
		case flags&unix.VIRTIO_NET_HDR_F_NEEDS_CSUM != 0:
			csum = kernelCsumPartial
		case flags&unix.VIRTIO_NET_HDR_F_DATA_VALID != 0:
			csum = kernelCsumValid
		}
		l.deliverPacket(q, frame[vnetHdrLen:], csum)
	default:
		// UDP segmentation offload or ECN variants: nothing tcpd
		// terminates.
		q.stats.Packets[conntrack.FromClient].Add(1)
		q.stats.Bytes[conntrack.FromClient].Add(uint64(len(frame) - vnetHdrLen))
		q.stats.Dropped[DropMalformed].Add(1)
	}
}

// writev writes c.iov as one frame on q, waiting while the device is busy.
func writev(q *tunQueue, c *queueIO) error {
	if c.write == nil {
		c.write = c.doWrite
	}
	c.err = nil
	if err := q.raw.Write(c.write); err != nil {
		return err
	}
	return c.err
}

// writeQueue writes one outbound packet on q: behind a virtio-net header on
// the offload path, bare otherwise. c.iov keeps pkt's slices until the
// caller clears it.
func (l *link) writeQueue(q *tunQueue, pkt *gvstack.PacketBuffer, hdr *[vnetHdrLen]byte, c *queueIO) error {
	c.iov = c.iov[:0]
	if l.vnet {
		vnetHeader(pkt, hdr)
		c.iov = append(c.iov, hdr[:])
	}
	c.iov = append(c.iov, pkt.AsSlices()...)
	return writev(q, c)
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
// the kernel. buf[:headroom] is free room of at least vnetHdrLen bytes. It
// runs on q's read loop and writes through q.io.
func (l *link) writeQueueRaw(q *tunQueue, buf []byte, headroom int) error {
	frame := buf[headroom:]
	if l.vnet {
		frame = buf[headroom-vnetHdrLen:]
		clear(frame[:vnetHdrLen]) // VIRTIO_NET_HDR_GSO_NONE, no flags
	}
	c := &q.io
	c.iov = append(c.iov[:0], frame)
	err := writev(q, c)
	clear(c.iov)
	return err
}
