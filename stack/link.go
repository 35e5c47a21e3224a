package stack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"

	"tcpd/conntrack"
)

// writeHeadroom is reserved in front of every outbound packet tcpd builds
// or copies: the offload path writes its 10-byte virtio-net header there;
// elsewhere the bytes are simply unused.
const writeHeadroom = 16

// maxSegment is the largest packet the write path may be asked to carry: an
// IP packet is at most 64 KiB. Write buffers have this capacity so that the
// TUN's GRO can coalesce consecutive segments into one super-packet in place.
const maxSegment = 1 << 16

// link is the gvstack.LinkEndpoint between the TUN device and the netstack.
// The TUN has one or more queues (tun.queues), each a file descriptor with a
// goroutine of its own that reads its packets and delivers them
// (readQueueLoop; readTUN for a test device). WritePackets is called by the
// netstack from any goroutine and writes each packet on the queue that
// carries its flow, blocking while the device is busy rather than dropping.
type link struct {
	// dev is a test device (tests only: wireguard's ChannelTUN), read and
	// written through its own methods; nil on a real TUN, whose queues
	// the link reads and writes itself.
	dev tun.Device
	// queues are the TUN's queues, at least one; vnet says every packet on
	// them carries a virtio-net header (the offload path).
	queues []*tunQueue
	vnet   bool
	mtu    atomic.Uint32
	stats  *Stats

	// clients is immutable after newLink: the source prefixes allowed in.
	clients []netip.Prefix

	// table sees every TCP segment in both directions, and answers for
	// the connections in TIME_WAIT, which the netstack has let go.
	table *conntrack.Table
	// reuse hands the netstack a SYN that opened a new entry, or reopened
	// a 4-tuple conntrack held in TIME_WAIT, once no endpoint of an
	// earlier connection on the 4-tuple is left there; false means it kept
	// the SYN to deliver it later. opened is false for a SYN conntrack
	// tracks already (a retransmission), which reuse passes on unless it
	// keeps a copy of that SYN already.
	reuse func(proto tcpip.NetworkProtocolNumber, syn []byte, tu conntrack.Tuple, seq uint32, opened bool) bool
	// clampSYN lowers the MSS of a client's SYN to what the path back to
	// the client carries (Stack.clampSYN).
	clampSYN func(pkt []byte, client, dst netip.AddrPort, mss uint16, csum kernelCsum) (uint16, uint16)
	noTrack  bool

	// dispatcher is set by Attach; every inbound packet loads it.
	dispatcher atomic.Pointer[dispatcherRef]

	// writeBufs recycles outbound batches.
	writeBufs sync.Pool

	// closing is set before the device is closed, so that the read loops
	// take the error that follows as the end.
	closing atomic.Bool
	// lost is closed, once, when a read finds the TUN gone from under
	// tcpd (its interface deleted); lostErr is that read's error.
	lost     chan struct{}
	lostOnce sync.Once
	lostErr  error

	// stall is set only by WedgeForTest, in binaries built with -tags
	// wedgetest.
	stall atomic.Bool

	// loops tracks the read loops; done is closed once all have ended.
	loops sync.WaitGroup
	done  chan struct{}
}

// tunQueue is one queue of the TUN and what its read loop owns.
type tunQueue struct {
	idx int
	// raw is the queue's file descriptor; nil on a test device.
	raw syscall.RawConn
	// stats are the queue's counters (Stats.Queues[idx]).
	stats *QueueStats
	// busySince is when the queue's loop started handing its current
	// packets to the netstack (unix nanoseconds), 0 while it waits in a
	// read: a batch that takes seconds means the packet loop is wedged.
	busySince atomic.Int64
	// io is the read loop's: its reads, and the packets it writes itself
	// (writeQueueRaw).
	io queueIO
	// ackBuf is the read loop's too: it builds the segments conntrack
	// answers with there (writeReply).
	ackBuf [writeHeadroom + replyMax]byte
}

// queueDevice is a real TUN as createTUN opens it: a file per queue, with
// or without the virtio-net header.
type queueDevice interface {
	tunFiles() []*os.File
	vnetHdr() bool
}

var _ gvstack.LinkEndpoint = (*link)(nil)

// newLink builds the link over dev: a queueDevice, whose queues it reads
// and writes itself, or a test device.
func newLink(dev device, mtu uint32, clients []netip.Prefix, stats *Stats, table *conntrack.Table) (*link, error) {
	l := &link{
		stats:   stats,
		clients: clients,
		table:   table,
		done:    make(chan struct{}),
		lost:    make(chan struct{}),
	}
	l.mtu.Store(mtu)
	l.writeBufs.New = func() any { return new(writeBatch) }
	var files []*os.File
	switch d := dev.(type) {
	case queueDevice:
		files, l.vnet = d.tunFiles(), d.vnetHdr()
	case tun.Device:
		l.dev = d
	default:
		return nil, fmt.Errorf("TUN device %T is neither tcpd's own nor a test device", dev)
	}
	n := max(len(files), 1)
	stats.Queues = make([]QueueStats, n)
	l.queues = make([]*tunQueue, n)
	for i := range l.queues {
		l.queues[i] = &tunQueue{idx: i, stats: &stats.Queues[i]}
		if files != nil {
			raw, err := files[i].SyscallConn()
			if err != nil {
				return nil, fmt.Errorf("TUN queue %d: %w", i, err)
			}
			l.queues[i].raw = raw
		}
	}
	return l, nil
}

// offload reports whether the link uses the virtio-net header path.
func (l *link) offload() bool { return l.vnet }

// writeBatch holds the buffers of one WritePackets call.
type writeBatch struct {
	bufs [][]byte
	// store keeps the full-capacity buffers so that they are reused even
	// after the TUN's GRO swapped or extended the slices in bufs.
	store [][]byte
	// hdr and io serve the real TUN's writev.
	hdr [vnetHdrLen]byte
	io  queueIO
}

// start starts one read loop per queue.
func (l *link) start() {
	for _, q := range l.queues {
		l.loops.Add(1)
		go func() {
			defer l.loops.Done()
			if l.dev != nil {
				l.readTUN(q)
			} else {
				l.readQueueLoop(q)
			}
		}()
	}
	go func() {
		l.loops.Wait()
		close(l.done)
	}()
}

func nowNano() int64 { return time.Now().UnixNano() }

// sleepBackoff keeps a device that fails every read from spinning a core.
func sleepBackoff() { time.Sleep(10 * time.Millisecond) }

func (l *link) wait() { <-l.done }

// busySince returns when the loop that has been busy longest started its
// current batch (unix nanoseconds), 0 if every loop waits for packets.
func (l *link) busySince() int64 {
	var oldest int64
	for _, q := range l.queues {
		if b := q.busySince.Load(); b != 0 && (oldest == 0 || b < oldest) {
			oldest = b
		}
	}
	return oldest
}

// queueFor returns the queue an outbound packet leaves on: the queue its
// connection's client segments arrive on (tracked, one more than its index,
// as conntrack returns it), so that every packet of a flow, both ways, is
// handled by one read loop. The kernel picks the queue of a flow's first
// packets itself, by a hash tcpd cannot compute, and it learns the queue
// tcpd writes a flow on (tun_flow_update) only after it has handled the
// packet written: the ACK that completes a handshake, sent by the client
// while tcpd's SYN-ACK is still being written, reaches the kernel's choice.
// Writing on the SYN's queue agrees with both (TestMultiQueueTUN). A packet
// of no tracked connection leaves on the queue of its netstack endpoint's
// random hash, replies of no endpoint (hash 0) on queue 0.
func (l *link) queueFor(tracked uint16, hash uint32) *tunQueue {
	n := uint32(len(l.queues))
	switch {
	case n == 1:
		return l.queues[0]
	case tracked != 0 && uint32(tracked) <= n:
		return l.queues[tracked-1]
	}
	return l.queues[hash%n]
}

// readTUN delivers every packet read from a test device to the netstack
// until the device is closed.
func (l *link) readTUN(q *tunQueue) {
	batch := l.dev.BatchSize()
	// A read returns packets no longer than the device MTU; the slack covers
	// a device whose MTU was raised under us until the next MTU event.
	size := int(l.mtu.Load()) + 256
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, size)
	}
	sizes := make([]int, batch)
	failures := 0
	for {
		n, err := l.dev.Read(bufs, sizes, 0)
		q.busySince.Store(time.Now().UnixNano())
		l.stallForTest()
		for i := 0; i < n; i++ {
			l.deliverPacket(q, bufs[i][:sizes[i]], kernelCsumNone)
		}
		q.busySince.Store(0)
		if err != nil {
			if isClosedErr(err) {
				return
			}
			// An oversized packet loses that read only. A device that
			// keeps failing must not spin a core.
			q.stats.Dropped[DropTUNReadError].Add(1)
			failures++
			if failures > 100 {
				sleepBackoff()
			}
			continue
		}
		failures = 0
	}
}

// deliverPacket checks one inbound packet that queue q read — IP version,
// source address, every checksum unless the kernel vouched for them
// (csumValid), the per-client SYN cap — shows it to conntrack and hands it
// to the netstack.
func (l *link) deliverPacket(q *tunQueue, pkt []byte, csum kernelCsum) {
	q.stats.Packets[conntrack.FromClient].Add(1)
	q.stats.Bytes[conntrack.FromClient].Add(uint64(len(pkt)))
	proto, src, ok := ipSource(pkt)
	if !ok {
		q.stats.Dropped[DropMalformed].Add(1)
		return
	}
	if linkScoped(pkt) {
		// The TUN's own link traffic, which the gateway's kernel sends
		// on any interface (neighbour discovery, MLD, router
		// solicitations): not a client's, and nothing tcpd drops.
		return
	}
	if !l.clientAllowed(src) {
		// A router's ICMP error about one of tcpd's segments to a
		// client is let through for checkICMP to judge (quotedClient).
		// Without tracking nothing could judge it: only clients' pass.
		if c, ok := quotedClient(pkt); l.noTrack || !ok || !l.clientAllowed(c) {
			q.stats.Dropped[DropSpoofedSource].Add(1)
			return
		}
	}
	if !forNetstack(pkt) {
		q.stats.Dropped[DropNotTCP].Add(1)
		return
	}
	if csum == kernelCsumNone {
		switch verifyChecksums(pkt) {
		case csumBad:
			q.stats.Dropped[DropBadChecksum].Add(1)
			return
		case csumUnverifiable:
			q.stats.Dropped[DropUnverifiable].Add(1)
			return
		}
	}
	if (pkt[0]>>4 == 4 && pkt[9] == protoICMPv4) || (pkt[0]>>4 == 6 && pkt[6] != protoTCP) {
		var inFlight func(conntrack.Tuple, uint32) bool
		if !l.noTrack {
			inFlight = l.table.Unacknowledged
		}
		if r, ok := checkICMP(pkt, inFlight); !ok {
			q.stats.Dropped[r].Add(1)
			return
		}
	}
	from, to, seg, ok := parseTCP(pkt)
	if ok && seg.Flags&(conntrack.FlagSYN|conntrack.FlagACK|conntrack.FlagRST) == conntrack.FlagSYN && l.clampSYN != nil {
		seg.MSS, seg.ClampedFrom = l.clampSYN(pkt, from, to, seg.MSS, csum)
	}
	if ok && !l.noTrack {
		seg.Queue = uint16(q.idx + 1)
		tu := conntrack.Tuple{Client: from, Dst: to}
		switch a := l.table.Segment(conntrack.FromClient, tu, seg); a.Kind {
		case conntrack.ActionRefuse:
			// A client at its handshake cap (conntrack counts them with
			// the SYNs, exactly, however many packet loops there are):
			// drop its SYN here, before it costs a conntrack entry, a
			// forwarder slot and a goroutine, as a full SYN queue would.
			// The client retransmits.
			q.stats.Dropped[DropMaxInFlightPerClient].Add(1)
			return
		case conntrack.ActionDrop:
			// TIME_WAIT took it.
			return
		case conntrack.ActionStale:
			q.stats.Dropped[DropStaleSYN].Add(1)
			return
		case conntrack.ActionReply:
			l.writeReply(q, tu, a.Reply)
			return
		case conntrack.ActionReject:
			q.stats.Dropped[DropUnacceptableACK].Add(1)
			if a.Answer {
				l.writeReply(q, tu, a.Reply)
			}
			return
		case conntrack.ActionReuse, conntrack.ActionOpen:
			if l.reuse != nil && !l.reuse(proto, pkt, tu, seg.Seq, true) {
				return // delivered once the old endpoint has left
			}
		case conntrack.ActionNone:
			if seg.Flags&(conntrack.FlagSYN|conntrack.FlagACK|conntrack.FlagRST) == conntrack.FlagSYN &&
				l.reuse != nil && !l.reuse(proto, pkt, tu, seg.Seq, false) {
				return // the copy kept of its first transmission goes instead
			}
		}
	}
	l.dispatch(proto, pkt)
}

// ipSource returns the network protocol and source address of an IP packet
// long enough to hold its fixed header and as long as its length field
// says, or at most a link's padding longer.
func ipSource(pkt []byte) (tcpip.NetworkProtocolNumber, netip.Addr, bool) {
	switch {
	case len(pkt) >= header.IPv4MinimumSize && pkt[0]>>4 == 4:
		// A header length under the minimum, or a total length beyond
		// what was read: a packet longer than the read buffer comes cut
		// short, and its checksums would call it corrupt.
		hl, tl := int(pkt[0]&0xf)*4, int(binary.BigEndian.Uint16(pkt[2:4]))
		if hl < header.IPv4MinimumSize || tl < hl || tl > len(pkt) {
			return 0, netip.Addr{}, false
		}
		return header.IPv4ProtocolNumber, netip.AddrFrom4([4]byte(pkt[12:16])), true
	case len(pkt) >= header.IPv6MinimumSize && pkt[0]>>4 == 6:
		if header.IPv6MinimumSize+int(binary.BigEndian.Uint16(pkt[4:6])) > len(pkt) {
			return 0, netip.Addr{}, false
		}
		return header.IPv6ProtocolNumber, netip.AddrFrom16([16]byte(pkt[8:24])), true
	}
	return 0, netip.Addr{}, false
}

// dispatch hands a checked packet to the netstack. It copies pkt.
func (l *link) dispatch(proto tcpip.NetworkProtocolNumber, pkt []byte) {
	d := l.dispatcher.Load()
	if d == nil {
		return
	}
	p := gvstack.NewPacketBuffer(gvstack.PacketBufferOptions{Payload: buffer.MakeWithData(pkt)})
	d.DeliverNetworkPacket(proto, p)
	p.DecRef()
}

func (l *link) clientAllowed(src netip.Addr) bool {
	for _, p := range l.clients {
		if p.Contains(src) {
			return true
		}
	}
	return false
}

// WritePackets implements gvstack.LinkWriter: each packet goes out on the
// queue of its flow (queueFor). Packets conntrack keeps back (an RST for a
// connection in TIME_WAIT) count as sent: the netstack must not retry them.
func (l *link) WritePackets(pkts gvstack.PacketBufferList) (int, tcpip.Error) {
	wb := l.writeBufs.Get().(*writeBatch)
	defer l.writeBufs.Put(wb)
	if l.dev != nil {
		return l.writePacketsDev(pkts, wb)
	}
	n := 0
	for _, pkt := range pkts.AsSlice() {
		queue, ok := l.observeOut(pkt)
		if !ok {
			n++
			continue
		}
		q := l.queueFor(queue, pkt.Hash)
		size := pkt.Size()
		if err := l.writeQueue(q, pkt, &wb.hdr, &wb.io); err != nil {
			clear(wb.io.iov)
			if isClosedErr(err) {
				return n, &tcpip.ErrClosedForSend{}
			}
			q.stats.Dropped[DropTUNWriteError].Add(1)
			return n, &tcpip.ErrAborted{}
		}
		n++
		q.stats.Packets[conntrack.ToClient].Add(1)
		q.stats.Bytes[conntrack.ToClient].Add(uint64(size))
	}
	clear(wb.io.iov)
	return n, nil
}

// writePacketsDev writes to a test device: it copies each packet behind
// writeHeadroom bytes and writes the batch in one call.
func (l *link) writePacketsDev(pkts gvstack.PacketBufferList, wb *writeBatch) (int, tcpip.Error) {
	q := l.queues[0]
	wb.bufs = wb.bufs[:0]
	var bytes uint64
	for i, pkt := range pkts.AsSlice() {
		if i == len(wb.store) {
			wb.store = append(wb.store, make([]byte, writeHeadroom+maxSegment))
		}
		b := wb.store[i][:writeHeadroom]
		for _, s := range pkt.AsSlices() {
			b = append(b, s...)
		}
		// Observed before the write: the TUN's GRO may merge buffers.
		if src, dst, seg, ok := parseTCP(b[writeHeadroom:]); ok && !l.noTrack {
			a := l.table.Segment(conntrack.ToClient, conntrack.Tuple{Client: dst, Dst: src}, seg)
			if a.Kind == conntrack.ActionDrop {
				continue
			}
			if a.TSVal != 0 {
				setTSVal(ownTCPHeader(b[writeHeadroom:]), a.TSVal)
			}
		}
		bytes += uint64(len(b) - writeHeadroom)
		wb.bufs = append(wb.bufs, b)
	}
	n := len(wb.bufs)
	if n == 0 {
		return pkts.Len(), nil
	}
	if _, err := l.dev.Write(wb.bufs, writeHeadroom); err != nil {
		if isClosedErr(err) {
			return 0, &tcpip.ErrClosedForSend{}
		}
		q.stats.Dropped[DropTUNWriteError].Add(1)
		return 0, &tcpip.ErrAborted{}
	}
	q.stats.Packets[conntrack.ToClient].Add(uint64(n))
	q.stats.Bytes[conntrack.ToClient].Add(bytes)
	return pkts.Len(), nil
}

// writeRaw writes one IP packet that tcpd built itself, buf[headroom:],
// whole and with its checksums, on queue q; buf[:headroom] is free room of
// writeHeadroom bytes for the device's own header.
func (l *link) writeRaw(q *tunQueue, buf []byte, headroom int) error {
	if l.dev != nil {
		_, err := l.dev.Write([][]byte{buf}, headroom)
		return err
	}
	return l.writeQueueRaw(q, buf, headroom)
}

// observeOut shows an outbound packet's TCP header to conntrack without
// copying its payload. It reports whether the packet may go out, and the
// queue of its connection as conntrack knows it (Action.Queue).
func (l *link) observeOut(pkt *gvstack.PacketBuffer) (uint16, bool) {
	if l.noTrack {
		return 0, true
	}
	var hdr [maxHeaders]byte
	h := append(hdr[:0], pkt.NetworkHeader().Slice()...)
	h = append(h, pkt.TransportHeader().Slice()...)
	src, dst, seg, ok := parseTCPHeader(h, pkt.Size())
	if !ok {
		return 0, true
	}
	a := l.table.Segment(conntrack.ToClient, conntrack.Tuple{Client: dst, Dst: src}, seg)
	if a.TSVal != 0 {
		setTSVal(pkt.TransportHeader().Slice(), a.TSVal)
	}
	return a.Queue, a.Kind != conntrack.ActionDrop
}

// MTU implements gvstack.NetworkLinkEndpoint.
func (l *link) MTU() uint32 { return l.mtu.Load() }

// SetMTU implements gvstack.NetworkLinkEndpoint.
func (l *link) SetMTU(mtu uint32) { l.mtu.Store(mtu) }

// MaxHeaderLength implements gvstack.NetworkLinkEndpoint: a TUN carries bare
// IP packets.
func (*link) MaxHeaderLength() uint16 { return 0 }

// LinkAddress implements gvstack.NetworkLinkEndpoint: a TUN has none.
func (*link) LinkAddress() tcpip.LinkAddress { return "" }

// SetLinkAddress implements gvstack.NetworkLinkEndpoint.
func (*link) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements gvstack.NetworkLinkEndpoint. The one capability,
// RX checksum offload, tells the netstack that every packet this link
// delivers had all its checksums verified, so the netstack skips the IPv4
// header's, TCP's and UDP's. That is true: the kernel vouched for the packet
// (NEEDS_CSUM or DATA_VALID on the offload path), or verifyChecksums checked
// the IPv4 header and the transport checksum before conntrack or the
// netstack saw it, and a packet it cannot check is not delivered. A bad one
// is counted (bad_checksum) and tracks nothing.
func (l *link) Capabilities() gvstack.LinkEndpointCapabilities {
	return gvstack.CapabilityRXChecksumOffload
}

var _ gvstack.GSOEndpoint = (*link)(nil)

// gsoMaxSize bounds the netstack's GSO segments on the offload path: an
// IPv4 packet's total length is 16 bits, and the headers must fit too.
const gsoMaxSize = 65535 - 256

// gsoMaxPayload is the most payload the netstack puts in one segment on the
// offload path: its sender cuts what it sends at the GSO size less
// header.TCPTotalHeaderMaximumSize and one byte (tcp's sender.sendData).
const gsoMaxPayload = gsoMaxSize - header.TCPTotalHeaderMaximumSize - 1

// SupportedGSO implements gvstack.GSOEndpoint: on the offload path the
// kernel segments what the netstack sends.
func (l *link) SupportedGSO() gvstack.SupportedGSO {
	if l.offload() {
		return gvstack.HostGSOSupported
	}
	return gvstack.GSONotSupported
}

// GSOMaxSize implements gvstack.GSOEndpoint.
func (l *link) GSOMaxSize() uint32 {
	if l.offload() {
		return gsoMaxSize
	}
	return 0
}

// dispatcherRef boxes the interface for atomic.Pointer.
type dispatcherRef struct{ gvstack.NetworkDispatcher }

// Attach implements gvstack.NetworkLinkEndpoint.
func (l *link) Attach(d gvstack.NetworkDispatcher) {
	if d == nil {
		l.dispatcher.Store(nil)
		return
	}
	l.dispatcher.Store(&dispatcherRef{d})
}

// IsAttached implements gvstack.NetworkLinkEndpoint.
func (l *link) IsAttached() bool { return l.dispatcher.Load() != nil }

// Wait implements gvstack.NetworkLinkEndpoint. The read loops are stopped by
// closing the device; Stack.Close waits for them.
func (*link) Wait() {}

// ARPHardwareType implements gvstack.NetworkLinkEndpoint.
func (*link) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareNone }

// AddHeader implements gvstack.NetworkLinkEndpoint.
func (*link) AddHeader(*gvstack.PacketBuffer) {}

// ParseHeader implements gvstack.NetworkLinkEndpoint.
func (*link) ParseHeader(*gvstack.PacketBuffer) bool { return true }

// Close implements gvstack.NetworkLinkEndpoint.
func (*link) Close() {}

// SetOnCloseAction implements gvstack.NetworkLinkEndpoint.
func (*link) SetOnCloseAction(func()) {}

// tunLost marks the TUN gone: its interface was deleted while tcpd held it,
// so that no packet can reach a client or come from one again.
func (l *link) tunLost(err error) {
	l.lostOnce.Do(func() {
		l.lostErr = err
		close(l.lost)
	})
}

// isClosedErr reports whether err means the device was closed.
func isClosedErr(err error) bool {
	return errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed)
}
