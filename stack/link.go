package stack

import (
	"errors"
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

// writeHeadroom is reserved in front of every outbound packet. wireguard's
// TUN writes its 10-byte virtio-net header there when offload is on; without
// offload the bytes are simply unused.
const writeHeadroom = 16

// maxSegment is the largest packet the write path may be asked to carry: an
// IP packet is at most 64 KiB. Write buffers have this capacity so that the
// TUN's GRO can coalesce consecutive segments into one super-packet in place.
const maxSegment = 1 << 16

// link is the gvstack.LinkEndpoint between the TUN device and the netstack.
// One goroutine (readTUN) reads batches of packets from the device and
// delivers them; WritePackets is called by the netstack from any goroutine
// and writes its batch to the device, blocking while the device is busy
// rather than dropping.
type link struct {
	dev   tun.Device
	mtu   atomic.Uint32
	stats *Stats

	// clients is immutable after newLink: the source prefixes allowed in.
	clients []netip.Prefix

	// table sees every TCP segment in both directions, and answers for
	// the connections in TIME_WAIT, which the netstack has let go.
	table *conntrack.Table
	// reuse hands the netstack a SYN that reopens a 4-tuple conntrack held
	// in TIME_WAIT; false means it kept the SYN to deliver it later.
	reuse func(proto tcpip.NetworkProtocolNumber, syn []byte, tu conntrack.Tuple) bool
	// clampSYN lowers the MSS of a client's SYN to what the path back to
	// the client carries (Stack.clampSYN).
	clampSYN func(pkt []byte, client, dst netip.AddrPort, mss uint16, csum kernelCsum) (uint16, uint16)
	noTrack  bool

	// dispatcher is set by Attach; every inbound packet loads it.
	dispatcher atomic.Pointer[dispatcherRef]

	// writeBufs recycles outbound batches.
	writeBufs sync.Pool

	// busySince is when readTUN started handing its current batch to the
	// netstack (unix nanoseconds), 0 while it waits in Read: a batch that
	// takes seconds means the packet loop is wedged.
	busySince atomic.Int64
	// raw is the TUN's file for the offload path (virtio-net headers, GSO);
	// nil on the plain path, where wireguard's Read and Write are used.
	raw syscall.RawConn

	// closing is set before the device is closed, so that the read loop
	// takes the error that follows as the end.
	closing atomic.Bool

	// stall is set only by WedgeForTest, in binaries built with -tags
	// wedgetest.
	stall atomic.Bool

	done chan struct{}
}

var _ gvstack.LinkEndpoint = (*link)(nil)

func newLink(dev tun.Device, mtu uint32, clients []netip.Prefix, stats *Stats, table *conntrack.Table) *link {
	l := &link{
		dev:     dev,
		stats:   stats,
		clients: clients,
		table:   table,
		done:    make(chan struct{}),
	}
	l.mtu.Store(mtu)
	l.writeBufs.New = func() any { return new(writeBatch) }
	l.setupVnet()
	return l
}

// offload reports whether the link uses the virtio-net header path.
func (l *link) offload() bool { return l.raw != nil }

// writeBatch holds the buffers of one WritePackets call.
type writeBatch struct {
	bufs [][]byte
	// store keeps the full-capacity buffers so that they are reused even
	// after the TUN's GRO swapped or extended the slices in bufs.
	store [][]byte
	// hdr and iov serve the offload path's writev.
	hdr [vnetHdrLen]byte
	iov [][]byte
}

func (l *link) start() {
	if l.offload() {
		go func() {
			defer close(l.done)
			l.readVnet()
		}()
		return
	}
	go l.readTUN()
}

func nowNano() int64 { return time.Now().UnixNano() }

// sleepBackoff keeps a device that fails every read from spinning a core.
func sleepBackoff() { time.Sleep(10 * time.Millisecond) }

func (l *link) wait() { <-l.done }

// readTUN delivers every packet read from the device to the netstack until
// the device is closed.
func (l *link) readTUN() {
	defer close(l.done)
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
		l.busySince.Store(time.Now().UnixNano())
		l.stallForTest()
		for i := 0; i < n; i++ {
			l.deliver(bufs[i][:sizes[i]])
		}
		l.busySince.Store(0)
		if err != nil {
			if isClosedErr(err) {
				return
			}
			// A malformed virtio-net frame or an oversized packet loses
			// that read only. A device that keeps failing (its link was
			// deleted under us) must not spin a core.
			l.stats.Dropped[DropTUNReadError].Add(1)
			failures++
			if failures > 100 {
				time.Sleep(10 * time.Millisecond)
			}
			continue
		}
		failures = 0
	}
}

// deliver hands one inbound packet from the plain path to the netstack.
func (l *link) deliver(pkt []byte) { l.deliverPacket(pkt, kernelCsumNone) }

// deliverPacket checks one inbound packet — IP version, source address,
// every checksum unless the kernel vouched for them (csumValid), the
// per-client SYN cap — shows it to conntrack and hands it to the netstack.
func (l *link) deliverPacket(pkt []byte, csum kernelCsum) {
	l.stats.TUNPackets[conntrack.FromClient].Add(1)
	l.stats.TUNBytes[conntrack.FromClient].Add(uint64(len(pkt)))
	proto, src, ok := ipSource(pkt)
	if !ok {
		l.stats.Dropped[DropMalformed].Add(1)
		return
	}
	if linkScoped(pkt) {
		// The TUN's own link traffic, which the gateway's kernel sends
		// on any interface (neighbour discovery, MLD, router
		// solicitations): not a client's, and nothing tcpd drops.
		return
	}
	if !l.clientAllowed(src) {
		l.stats.Dropped[DropSpoofedSource].Add(1)
		return
	}
	if !forNetstack(pkt) {
		l.stats.Dropped[DropNotTCP].Add(1)
		return
	}
	if csum == kernelCsumNone {
		switch verifyChecksums(pkt) {
		case csumBad:
			l.stats.Dropped[DropBadChecksum].Add(1)
			return
		case csumUnverifiable:
			l.stats.Dropped[DropUnverifiable].Add(1)
			return
		}
	}
	from, to, seg, ok := parseTCP(pkt)
	if ok && seg.Flags&(conntrack.FlagSYN|conntrack.FlagACK|conntrack.FlagRST) == conntrack.FlagSYN && l.clampSYN != nil {
		seg.MSS, seg.ClampedFrom = l.clampSYN(pkt, from, to, seg.MSS, csum)
	}
	if ok && !l.noTrack {
		tu := conntrack.Tuple{Client: from, Dst: to}
		switch a := l.table.Segment(conntrack.FromClient, tu, seg); a.Kind {
		case conntrack.ActionRefuse:
			// A client at its handshake cap (conntrack counts them with
			// the SYNs, exactly, however many packet loops there are):
			// drop its SYN here, before it costs a conntrack entry, a
			// forwarder slot and a goroutine, as a full SYN queue would.
			// The client retransmits.
			l.stats.Dropped[DropMaxInFlightPerClient].Add(1)
			return
		case conntrack.ActionDrop:
			// TIME_WAIT took it.
			return
		case conntrack.ActionReply:
			l.writeTimeWaitACK(tu, a.Reply)
			return
		case conntrack.ActionReuse:
			if l.reuse != nil && !l.reuse(proto, pkt, tu) {
				return // delivered once the old endpoint has left
			}
		}
	}
	l.dispatch(proto, pkt)
}

// ipSource returns the network protocol and source address of an IP packet
// long enough to hold its fixed header.
func ipSource(pkt []byte) (tcpip.NetworkProtocolNumber, netip.Addr, bool) {
	switch {
	case len(pkt) >= header.IPv4MinimumSize && pkt[0]>>4 == 4:
		return header.IPv4ProtocolNumber, netip.AddrFrom4([4]byte(pkt[12:16])), true
	case len(pkt) >= header.IPv6MinimumSize && pkt[0]>>4 == 6:
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

// WritePackets implements gvstack.LinkWriter. It copies each packet behind
// writeHeadroom bytes and writes the batch to the device in one call.
func (l *link) WritePackets(pkts gvstack.PacketBufferList) (int, tcpip.Error) {
	wb := l.writeBufs.Get().(*writeBatch)
	defer l.writeBufs.Put(wb)
	if l.offload() {
		return l.writePacketsVnet(pkts, wb)
	}
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
			if a := l.table.Segment(conntrack.ToClient, conntrack.Tuple{Client: dst, Dst: src}, seg); a.Kind == conntrack.ActionDrop {
				continue
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
		l.stats.Dropped[DropTUNWriteError].Add(1)
		return 0, &tcpip.ErrAborted{}
	}
	l.stats.TUNPackets[conntrack.ToClient].Add(uint64(n))
	l.stats.TUNBytes[conntrack.ToClient].Add(bytes)
	// Packets conntrack kept back count as sent: the netstack must not
	// retry them.
	return pkts.Len(), nil
}

// writePacketsVnet writes each packet with its virtio-net header, one writev
// per packet: a GSO segment carries up to 64 KiB, so a call per packet is
// already a call per ~44 MTU-sized packets.
func (l *link) writePacketsVnet(pkts gvstack.PacketBufferList, wb *writeBatch) (int, tcpip.Error) {
	n := 0
	for _, pkt := range pkts.AsSlice() {
		if !l.observeOut(pkt) {
			n++ // kept back by conntrack; counts as sent
			continue
		}
		size := pkt.Size()
		var err error
		wb.iov, err = l.writeVnet(pkt, &wb.hdr, wb.iov)
		if err != nil {
			clear(wb.iov)
			if isClosedErr(err) || errors.Is(err, os.ErrClosed) {
				return n, &tcpip.ErrClosedForSend{}
			}
			l.stats.Dropped[DropTUNWriteError].Add(1)
			return n, &tcpip.ErrAborted{}
		}
		n++
		l.stats.TUNPackets[conntrack.ToClient].Add(1)
		l.stats.TUNBytes[conntrack.ToClient].Add(uint64(size))
	}
	clear(wb.iov)
	return n, nil
}

// writeRaw writes one IP packet that tcpd built itself, buf[headroom:],
// whole and with its checksums; buf[:headroom] is free room of
// writeHeadroom bytes for the device's own header.
func (l *link) writeRaw(buf []byte, headroom int) error {
	if l.offload() {
		return l.writeVnetRaw(buf, headroom)
	}
	_, err := l.dev.Write([][]byte{buf}, headroom)
	return err
}

// observeOut shows an outbound packet's TCP header to conntrack without
// copying its payload. It reports whether the packet may go out.
func (l *link) observeOut(pkt *gvstack.PacketBuffer) bool {
	if l.noTrack {
		return true
	}
	var hdr [maxHeaders]byte
	h := append(hdr[:0], pkt.NetworkHeader().Slice()...)
	h = append(h, pkt.TransportHeader().Slice()...)
	src, dst, seg, ok := parseTCPHeader(h, pkt.Size())
	if !ok {
		return true
	}
	return l.table.Segment(conntrack.ToClient, conntrack.Tuple{Client: dst, Dst: src}, seg).Kind != conntrack.ActionDrop
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

// Wait implements gvstack.NetworkLinkEndpoint. The read loop is stopped by
// closing the device; Stack.Close waits for it.
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

// isClosedErr reports whether err means the device was closed.
func isClosedErr(err error) bool {
	return errors.Is(err, os.ErrClosed) || errors.Is(err, net.ErrClosed)
}
