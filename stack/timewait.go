package stack

import (
	"sync"
	"sync/atomic"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
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

// replyMax is the largest segment appendReply builds: an IPv6 ACK with
// timestamps.
const replyMax = header.IPv6MinimumSize + header.TCPMinimumSize + tcpTSOptionLen

// appendReply appends the IP packet of r, an ACK or a RST conntrack
// answered, from tu.Dst to tu.Client, built field for field as the
// netstack builds the ACKs and RSTs of an endpoint: IPv4 with DF and ID 0
// (RFC 6864 4.1, an atomic datagram), TTL 64; IPv6 with traffic class and
// flow label 0, hop limit 64; TCP with no options but timestamps on an
// ACK, laid out as NOP, NOP, TS.
func appendReply(b []byte, tu conntrack.Tuple, r conntrack.Reply) []byte {
	flags, ack, wnd := header.TCPFlagAck, r.Ack, r.Wnd
	if r.RST {
		flags, ack, wnd, r.TS = header.TCPFlagRst, 0, 0, false
	}
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
		AckNum:     ack,
		DataOffset: uint8(tcpLen),
		Flags:      flags,
		WindowSize: wnd,
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

// resetClient sends the client of id's connection the RST that the
// netstack does not send when keepalive, the user timeout or its
// retransmissions give the client's leg up, where Linux's keepalive and
// user timeout do (tcp_keepalive_timer): a client that is there, whose
// answers were lost on the way, learns that the connection is over instead
// of holding it open until it next sends. Nothing is sent to a client that
// reset or closed its end. The RST leaves through the netstack's NIC, so
// that the link tracks it as any segment of tcpd's.
func (s *Stack) resetClient(id conntrack.ID) {
	tu, r, ok := s.table.ResetToClient(id)
	if !ok {
		return
	}
	proto := header.IPv4ProtocolNumber
	if tu.Client.Addr().Is6() {
		proto = header.IPv6ProtocolNumber
	}
	s.ns.WriteRawPacket(nicID, proto, buffer.MakeWithData(appendReply(nil, tu, r)))
}

// writeReply sends the segment conntrack answered for a client's segment
// (an ACK in TIME_WAIT, a RST or ACK for one rejected), on q, the queue the
// client's segment came in on. It runs on q's packet loop, and builds the
// segment in q.ackBuf; a failed write is counted as any other and, like a
// lost segment, mended by the client's next retransmission.
func (l *link) writeReply(q *tunQueue, tu conntrack.Tuple, r conntrack.Reply) {
	pkt := appendReply(q.ackBuf[:writeHeadroom], tu, r)
	if err := l.writeRaw(q, pkt, writeHeadroom); err != nil {
		if !isClosedErr(err) {
			q.stats.Dropped[DropTUNWriteError].Add(1)
		}
		return
	}
	q.stats.Packets[conntrack.ToClient].Add(1)
	q.stats.Bytes[conntrack.ToClient].Add(uint64(len(pkt) - writeHeadroom))
}

// reusePolls bounds how long a SYN that opens a 4-tuple waits for the old
// connection's endpoint to leave the netstack. The endpoint leaves as soon
// as the netstack has run its zero TIME_WAIT timer, microseconds after its
// last ACK, or processed the client's RST; the SYN can only come after it.
// The old connection's forwarder request, if its handler is still running,
// is done as soon as the handler has its endpoint (or has failed to get
// it: the client reset as its handshake completed).
// The wait is counted in polls, reusePolls of them at least reusePoll
// apart (100ms), not on the clock: when the machine stalls (a starved
// process gets no CPU for half a second), the clock runs on while the
// netstack processes nothing, and a SYN let go by the clock would reach
// the old endpoint all the same.
const (
	reusePoll  = time.Millisecond
	reusePolls = 100
)

// reuseSYN hands the netstack a SYN that opened a new conntrack entry,
// reopened a 4-tuple conntrack held in TIME_WAIT, or took with a new ISN an
// entry nothing had answered (the client gave the last SYN up while it was
// held here: that copy is then dropped). Should the netstack still
// hold an endpoint of the tuple's last connection, the SYN would be queued
// on it: behind a TIME_WAIT the netstack drops it; behind the client's RST
// (a client that resets and reuses its port at once), the endpoint closes
// and answers the SYN with RST instead of offering it to the forwarder, and
// the client sees "connection refused". Should the forwarder still be
// answering the last connection's SYN (its handler has not completed the
// request: a client that reset as its handshake completed), it would
// ignore this one (syn_in_flight), and the client would wait a second to
// retransmit it. So the SYN waits, a copy on a goroutine, until the
// endpoint and the request have left, at most reusePolls polls, and
// goes then only if they have (else it is dropped, counted
// reuse_wait, and the client's retransmission, which nothing holds back,
// tries again) and it is still the SYN its entry waits for
// (Table.AwaitsSYN): the
// client may have retransmitted it and finished that connection meanwhile
// (a client in SYN-SENT that gets the old endpoint's ACK retransmits within
// milliseconds), and a stale SYN delivered after that would take the next
// connection's entry and get it refused. While a copy waits, the client's
// retransmissions of the same SYN (opened false) are dropped: the copy
// goes in their place. It returns false if it kept or dropped the SYN.
func (s *Stack) reuseSYN(proto tcpip.NetworkProtocolNumber, syn []byte, tu conntrack.Tuple, seq uint32, opened bool) bool {
	if !opened {
		return s.kept.Load() == 0 || !s.keeping(tu, seq)
	}
	id := gvstack.TransportEndpointID{
		LocalAddress:  tcpipAddr(tu.Dst.Addr()),
		LocalPort:     tu.Dst.Port(),
		RemoteAddress: tcpipAddr(tu.Client.Addr()),
		RemotePort:    tu.Client.Port(),
	}
	held := func() bool {
		if _, busy := s.adm.syns.seq(id); busy {
			return true // the last connection's request
		}
		return s.ns.FindTransportEndpoint(proto, tcp.ProtocolNumber, id, nicID) != nil
	}
	if !held() {
		return true
	}
	pkt := append([]byte(nil), syn...)
	s.keep(tu, seq)
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		defer s.unkeep(tu, seq)
		tick := time.NewTicker(reusePoll)
		defer tick.Stop()
		for range reusePolls {
			if !held() {
				break
			}
			select {
			case <-tick.C:
			case <-s.ctx.Done():
				return
			}
		}
		if held() {
			// Queued on the old endpoint, the SYN would be answered
			// with RST once the endpoint closes: "connection refused".
			s.stats.Dropped[DropReuseWait].Add(1)
			return
		}
		if !s.table.AwaitsSYN(tu, seq) {
			return
		}
		// Checked, counted and tracked already: only the netstack has
		// not seen it yet.
		s.link.dispatch(proto, pkt)
	}()
	return false
}

// keptSYNs are the SYNs reuseSYN holds back, by 4-tuple and sequence
// number, each with how many copies of it wait (a SYN can open an entry
// twice: its retransmission, read after the client's RST closed the
// first, opens another). kept counts all copies, so that a retransmitted
// SYN costs one atomic load while none is kept.
type keptSYNs struct {
	kept   atomic.Int32
	keptMu sync.Mutex
	keptBy map[keptSYN]int
}

type keptSYN struct {
	tu  conntrack.Tuple
	seq uint32
}

func (k *keptSYNs) keep(tu conntrack.Tuple, seq uint32) {
	k.keptMu.Lock()
	defer k.keptMu.Unlock()
	if k.keptBy == nil {
		k.keptBy = make(map[keptSYN]int)
	}
	k.keptBy[keptSYN{tu, seq}]++
	k.kept.Add(1)
}

func (k *keptSYNs) unkeep(tu conntrack.Tuple, seq uint32) {
	k.keptMu.Lock()
	defer k.keptMu.Unlock()
	key := keptSYN{tu, seq}
	if k.keptBy[key]--; k.keptBy[key] == 0 {
		delete(k.keptBy, key)
	}
	k.kept.Add(-1)
	if len(k.keptBy) == 0 {
		k.keptBy = nil // a burst's map is not kept for good
	}
}

func (k *keptSYNs) keeping(tu conntrack.Tuple, seq uint32) bool {
	k.keptMu.Lock()
	defer k.keptMu.Unlock()
	return k.keptBy[keptSYN{tu, seq}] > 0
}
