package stack

import (
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"tcpd/conntrack"
)

// TIME_WAIT is conntrack's, not the netstack's: the netstack's TIME_WAIT
// timeout is zero, so an endpoint that enters TIME_WAIT leaves the
// netstack's demuxer at once, without a RST, and its memory goes with the
// relay. conntrack keeps a record of a few hundred bytes that does
// TIME_WAIT's duties at the link (see conntrack/timewait.go): the link
// keeps every segment for the 4-tuple from the netstack and sends the ACKs
// conntrack asks for, built here as the netstack builds its own.

// netstackTimeWait is the netstack's TIME_WAIT timeout: none.
const netstackTimeWait = tcpip.TCPTimeWaitTimeoutOption(0)

// ipTTL is the TTL (IPv4) and hop limit (IPv6) of the netstack's packets:
// its default, which tcpd does not change.
const ipTTL = 64

// tcpTSOptionLen is the timestamps option as the netstack lays it out:
// NOP, NOP, kind 8, length 10, TSval, TSecr (RFC 7323 3.2, appendix A).
const tcpTSOptionLen = 12

// timeWaitACKMax is the largest ACK appendTimeWaitACK builds: IPv6 with
// timestamps.
const timeWaitACKMax = header.IPv6MinimumSize + header.TCPMinimumSize + tcpTSOptionLen

// appendTimeWaitACK appends the IP packet of the ACK r, from tu.Dst to
// tu.Client, built field for field as the netstack builds the ACKs of an
// endpoint: IPv4 with DF and ID 0 (RFC 6864 4.1, an atomic datagram),
// TTL 64; IPv6 with traffic class and flow label 0, hop limit 64; TCP with
// no options but timestamps, laid out as NOP, NOP, TS.
func appendTimeWaitACK(b []byte, tu conntrack.Tuple, r conntrack.Reply) []byte {
	tcpLen := header.TCPMinimumSize
	if r.TS {
		tcpLen += tcpTSOptionLen
	}
	src := tcpipAddr(tu.Dst.Addr())
	dst := tcpipAddr(tu.Client.Addr())
	ipLen := header.IPv4MinimumSize
	if tu.Client.Addr().Is6() {
		ipLen = header.IPv6MinimumSize
	}
	start := len(b)
	b = append(b, make([]byte, ipLen+tcpLen)...)
	pkt := b[start:]
	if ipLen == header.IPv4MinimumSize {
		ip := header.IPv4(pkt)
		ip.Encode(&header.IPv4Fields{
			TotalLength: uint16(len(pkt)),
			Flags:       header.IPv4FlagDontFragment,
			TTL:         ipTTL,
			Protocol:    uint8(header.TCPProtocolNumber),
			SrcAddr:     src,
			DstAddr:     dst,
		})
		ip.SetChecksum(^ip.CalculateChecksum())
	} else {
		header.IPv6(pkt).Encode(&header.IPv6Fields{
			PayloadLength:     uint16(tcpLen),
			TransportProtocol: header.TCPProtocolNumber,
			HopLimit:          ipTTL,
			SrcAddr:           src,
			DstAddr:           dst,
		})
	}
	t := header.TCP(pkt[ipLen:])
	t.Encode(&header.TCPFields{
		SrcPort:    tu.Dst.Port(),
		DstPort:    tu.Client.Port(),
		SeqNum:     r.Seq,
		AckNum:     r.Ack,
		DataOffset: uint8(tcpLen),
		Flags:      header.TCPFlagAck,
		WindowSize: r.Wnd,
	})
	if r.TS {
		opts := t[header.TCPMinimumSize:]
		n := header.EncodeNOP(opts)
		n += header.EncodeNOP(opts[n:])
		header.EncodeTSOption(r.TSVal, r.TSEcr, opts[n:])
	}
	sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(tcpLen))
	t.SetChecksum(^checksum.Checksum(t, sum))
	return b
}

// writeTimeWaitACK sends the ACK conntrack answered for a connection in
// TIME_WAIT, on q, the queue the client's segment came in on. It runs on
// q's packet loop, and builds the ACK in q.ackBuf; a failed write is counted as any
// other and, like a lost ACK, mended by the client's next retransmission.
func (l *link) writeTimeWaitACK(q *tunQueue, tu conntrack.Tuple, r conntrack.Reply) {
	pkt := appendTimeWaitACK(q.ackBuf[:writeHeadroom], tu, r)
	if err := l.writeRaw(q, pkt, writeHeadroom); err != nil {
		if !isClosedErr(err) {
			q.stats.Dropped[DropTUNWriteError].Add(1)
		}
		return
	}
	q.stats.Packets[conntrack.ToClient].Add(1)
	q.stats.Bytes[conntrack.ToClient].Add(uint64(len(pkt) - writeHeadroom))
}

// reuseWait bounds how long a SYN that opens a 4-tuple waits for the old
// connection's endpoint to leave the netstack. The endpoint leaves as soon
// as the netstack has run its zero TIME_WAIT timer, microseconds after its
// last ACK, or processed the client's RST; the SYN can only come after it.
const reuseWait = 100 * time.Millisecond

// reuseSYN hands the netstack a SYN that opened a new conntrack entry, or
// reopened a 4-tuple conntrack held in TIME_WAIT. Should the netstack still
// hold an endpoint of the tuple's last connection, the SYN would be queued
// on it: behind a TIME_WAIT the netstack drops it; behind the client's RST
// (a client that resets and reuses its port at once), the endpoint closes
// and answers the SYN with RST instead of offering it to the forwarder, and
// the client sees "connection refused". So the SYN waits, a copy on a
// goroutine, until the endpoint has left, at most reuseWait. It returns
// false if it kept the SYN.
func (s *Stack) reuseSYN(proto tcpip.NetworkProtocolNumber, syn []byte, tu conntrack.Tuple) bool {
	id := gvstack.TransportEndpointID{
		LocalAddress:  tcpipAddr(tu.Dst.Addr()),
		LocalPort:     tu.Dst.Port(),
		RemoteAddress: tcpipAddr(tu.Client.Addr()),
		RemotePort:    tu.Client.Port(),
	}
	held := func() bool { return s.ns.FindTransportEndpoint(proto, tcp.ProtocolNumber, id, nicID) != nil }
	if !held() {
		return true
	}
	pkt := append([]byte(nil), syn...)
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		deadline := time.Now().Add(reuseWait)
		for held() && time.Now().Before(deadline) {
			select {
			case <-tick.C:
			case <-s.ctx.Done():
				return
			}
		}
		// Checked, counted and tracked already: only the netstack has
		// not seen it yet.
		s.link.dispatch(proto, pkt)
	}()
	return false
}
