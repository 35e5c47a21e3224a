package conntrack

// The per-connection state machine: one connection's two ends, fed one
// segment at a time. It is pure in the narrow sense: it changes only its own
// fields and reports what happened. Everything that concerns more than one
// connection — counts per state, each client's handshakes, the TIME_WAIT cap
// and list, counters, histograms, removal — is the table's (shard.go), which
// compares the ends' states before and after each call.

const (
	sideTCPD   = 0
	sideClient = 1
)

// Sequence-number comparisons modulo 2^32 (RFC 9293 3.4).
func seqLT(a, b uint32) bool  { return int32(a-b) < 0 }
func seqLEQ(a, b uint32) bool { return int32(a-b) <= 0 }
func seqGT(a, b uint32) bool  { return int32(a-b) > 0 }
func seqGEQ(a, b uint32) bool { return int32(a-b) >= 0 }

// end is one end's view of the connection, built from the segments it sent
// and those it acknowledged.
type end struct {
	since mono
	bytes uint64
	// iss is the end's initial sequence number; synSent says it is known.
	iss uint32
	// nxt is one past the end's sequence space that its receiver has in
	// order (for tcpd's end, SND.NXT as seen on the wire; for the client's,
	// tcpd's RCV.NXT: segments count from where the last one in order
	// ended, and tcpd's ACKs add what came out of order before the hole
	// filled); dataNxt the same without SYN and FIN. sent is one past the
	// highest sequence number the end has sent, in order or not.
	nxt, dataNxt, sent uint32
	// ack is the highest acknowledgment the end has sent: its RCV.NXT as
	// last advertised.
	ack uint32
	// finSeq is the sequence number of the end's FIN.
	finSeq   uint32
	state    State
	synSent  bool
	ackSent  bool
	finSent  bool
	finAcked bool // the peer acknowledged finSeq+1
	finRcvd  bool // the end acknowledged the peer's FIN
}

// machine is one connection's state machine: both ends, and what tcpd's
// netstack last said that TIME_WAIT must repeat.
type machine struct {
	ends [2]end
	// synAckAt is when tcpd's SYN-ACK crossed the TUN; advMSS its MSS
	// option.
	synAckAt mono
	advMSS   uint16

	// What tcpd's netstack last sent, for the ACKs tcpd sends itself in
	// TIME_WAIT: the window field, and with the timestamps option (ts) its
	// TSval, when it was seen (tsAt) and the TSecr it echoed, which
	// TIME_WAIT keeps as TS.Recent (RFC 7323 4.3).
	wnd uint16
	ts  bool
	// rcvShift is the shift of the window tcpd offers, which its SYN-ACK
	// gave when the client's SYN offered scaling too (cliWS); cliShift the
	// client's: its SYN's until tcpd's SYN-ACK answers it, then the shift
	// in force (0 without scaling).
	rcvShift, cliShift uint8
	cliWS              bool
	tsVal, tsEcr       uint32
	tsAt               mono
	// rcvEdge is the right edge of the receive window tcpd has offered
	// the client (RCV.NXT + RCV.WND, the furthest any of its segments
	// reached), once tcpd's end has sent an ACK. maxCliWnd is the largest
	// window the client has offered (MAX.SND.WND, RFC 5961 5.2), scaled.
	// (The fields are laid out so that a TIME_WAIT entry stays under 512
	// bytes.)
	rcvEdge, maxCliWnd uint32
	// oowAckAt is when TIME_WAIT last sent a rate-limited ACK (see
	// oowAckInterval).
	oowAckAt mono
}

// outcome is what a segment did besides moving the ends' states.
type outcome uint8

const (
	outNone outcome = iota
	// outRSTIgnored: an RST its receiver would not accept (RFC 5961 3.2).
	outRSTIgnored
	// outReset: an acceptable RST closed both ends.
	outReset
	// outBadHandshakeACK: a client's ACK in SYN-RECEIVED that is not of
	// tcpd's SYN; it moved nothing.
	outBadHandshakeACK
	// outAckUnacceptable: a client's segment that acknowledges what tcpd
	// never sent, or far less than the client has acknowledged already;
	// it moved nothing.
	outAckUnacceptable
)

// opened starts a machine from a client's SYN: tcpd's netstack is
// conceptually LISTEN and takes it to SYN-RECEIVED (RFC 9293 3.10.7.2); the
// client has sent it: SYN-SENT.
func opened(s Segment, now mono) machine {
	var m machine
	m.ends[sideTCPD] = end{state: StateSynRecv, since: now}
	m.ends[sideClient] = synSent(s.Seq, now)
	m.cliWS, m.cliShift = s.WS, s.WScale
	return m
}

// synSent is the client's end once it has sent its SYN with sequence
// number iss, since since.
func synSent(iss uint32, since mono) end {
	return end{state: StateSynSent, since: since, iss: iss, synSent: true, nxt: iss + 1, dataNxt: iss + 1, sent: iss + 1}
}

// restartClientSYN makes the client's SYN with sequence number seq the one
// the handshake is for, in place of the one that opened it, when nothing
// has answered that: the client end as opened would have it, in SYN-SENT
// since it first was (or since now, if the client's own segments had moved
// it on). The caller counts the move.
func (m *machine) restartClientSYN(s Segment, now mono) {
	c := &m.ends[sideClient]
	since := c.since
	if c.state != StateSynSent {
		since = now
	}
	*c = synSent(s.Seq, since)
	m.cliWS, m.cliShift = s.WS, s.WScale
}

// offered records the right edge of the receive window tcpd offered in s,
// one of its segments: the window field counts from its acknowledgment
// number, scaled except in a SYN-ACK (RFC 7323 2.2). The edge only moves
// right: a window is not shrunk (RFC 9293 3.8.6.2.2).
func (m *machine) offered(s Segment) {
	if s.Flags&FlagACK == 0 {
		return
	}
	wnd := uint32(s.Wnd)
	if s.Flags&FlagSYN != 0 {
		if s.WS && m.cliWS {
			m.rcvShift = min(s.WScale, 14) // RFC 7323 2.3
			m.cliShift = min(m.cliShift, 14)
		} else {
			m.cliShift = 0
		}
	} else {
		wnd <<= m.rcvShift
	}
	if edge := s.Ack + wnd; !m.ends[sideTCPD].ackSent || seqGT(edge, m.rcvEdge) {
		m.rcvEdge = edge
	}
}

// clientFINAcceptable reports whether a FIN from the client at sequence
// number seq is one the netstack can take: not below what it has in order
// from the client already (an old duplicate: RFC 9293 3.10.7.4 has it
// acknowledged and dropped), not beyond the window it offered (a FIN
// exactly at the edge of a window offered as zero is allowed: Linux sends
// and takes one). A client's real FIN always is: it follows all the
// client's data, and the client keeps to the window.
func (m *machine) clientFINAcceptable(seq uint32) bool {
	return seqGEQ(seq, m.ends[sideClient].nxt) && m.clientWithinEdge(seq)
}

// clientWithinEdge reports whether the client's sequence number seq is
// not beyond the right edge of the window tcpd offered it.
func (m *machine) clientWithinEdge(seq uint32) bool {
	return !m.ends[sideTCPD].ackSent || seqLEQ(seq, m.rcvEdge)
}

// states returns both ends' states, tcpd's first.
func (m *machine) states() [2]State {
	return [2]State{m.ends[sideTCPD].state, m.ends[sideClient].state}
}

// setState moves one end to s, recording when.
func (m *machine) setState(side int, s State, now mono) {
	if e := &m.ends[side]; e.state != s {
		e.state, e.since = s, now
	}
}

// segment runs one segment that crossed the TUN in direction dir through
// both ends, outside TIME_WAIT (timewait.go has those duties).
func (m *machine) segment(dir Dir, s Segment, now mono) outcome {
	if dir == ToClient {
		if !m.ends[sideTCPD].synSent && s.Flags&(FlagSYN|FlagRST) == 0 {
			// tcpd has not answered this connection's SYN yet: the
			// segment is the 4-tuple's last connection's, which the
			// netstack sent before it took the client's RST (an ACK of
			// the last data). It is none of this connection's: taken for
			// tcpd's ACK, it would make the client's answer to it (a
			// RST from SYN-SENT, at the old connection's sequence
			// number) look acceptable, and end the new entry before its
			// handler could claim it.
			return outNone
		}
		m.offered(s)
		m.sentByTCPD(s, now)
	}
	xs, ys := sideClient, sideTCPD
	if dir == ToClient {
		xs, ys = sideTCPD, sideClient
	}
	x, y := &m.ends[xs], &m.ends[ys]

	if s.Flags&FlagRST != 0 {
		return m.rst(xs, ys, s, now)
	}
	if xs == sideClient && y.state == StateSynRecv && s.Flags&(FlagACK|FlagSYN) == FlagACK {
		// Once timestamps were agreed, the netstack drops a segment
		// without them (RFC 7323 3.2).
		if m.ts && !s.TS {
			return outNone
		}
		// The netstack's forwarder completes its handshake on any ACK
		// whose sequence number is in its window, whatever it
		// acknowledges: it has no listener to check that against
		// (gVisor's synRcvdState checks the ACK only for a listener's
		// SYN cookies).
		if !y.ackSent || !m.inSynRecvWindow(s.Seq) {
			return outNone // out of its window: dropped, answered with an ACK
		}
		// RFC 9293 3.10.7.4: in SYN-RECEIVED only SND.UNA < SEG.ACK <=
		// SND.NXT, that is ISS+1, is acceptable; anything else is
		// answered with <SEQ=SEG.ACK><CTL=RST>, as Linux does
		// (tcp_check_req). The netstack's forwarder would take it.
		if y.synSent && s.Ack != y.iss+1 {
			return outBadHandshakeACK
		}
		m.setState(ys, StateEstablished, now)
	}
	// A client's segment that acknowledges what tcpd never sent (SEG.ACK >
	// SND.NXT) is dropped and answered with an ACK (RFC 9293 3.10.7.4,
	// RFC 5961 5.2), as Linux does (tcp_ack); the netstack would take its
	// data and FIN in ESTABLISHED (gVisor's handleRcvdSegment), so the
	// link drops it and answers. tcpd's own segments are seen before they
	// are written, so its end's nxt is never behind what the client can
	// have received.
	//
	// Likewise one that acknowledges less than SND.UNA - MAX.SND.WND
	// (RFC 5961 5.2, Linux's tcp_ack): no ACK of this connection is that
	// old, and the netstack would take its data.
	if xs == sideClient && s.Flags&FlagACK != 0 && y.synSent &&
		(seqGT(s.Ack, y.nxt) || (x.ackSent && seqLT(s.Ack, x.ack-m.maxCliWnd))) {
		return outAckUnacceptable
	}
	if xs == sideClient && s.Flags&FlagACK != 0 {
		wnd := uint32(s.Wnd)
		if s.Flags&FlagSYN == 0 {
			wnd <<= m.cliShift
		}
		m.maxCliWnd = max(m.maxCliWnd, wnd)
	}
	// RFC 7323 4.3: the netstack's TS.Recent follows the newest TSval of
	// a client's segment that does not lie beyond what it acknowledged;
	// tcpd's next segment echoes it, and TIME_WAIT keeps it.
	if xs == sideClient && y.ackSent {
		m.noteTSVal(s, y.ack)
	}

	syn := s.Flags&FlagSYN != 0
	if syn {
		if !x.synSent {
			x.iss, x.synSent = s.Seq, true
			x.nxt, x.dataNxt, x.sent = s.Seq+1, s.Seq+1, s.Seq+1
		}
		switch {
		case s.Flags&FlagACK == 0:
			// A SYN from an end that has not synchronized: simultaneous
			// open takes the receiver from SYN-SENT to SYN-RECEIVED
			// (RFC 9293 3.5, figure 8).
			if x.state == StateClosed || x.state == StateListen {
				m.setState(xs, StateSynSent, now)
			}
			if y.state == StateSynSent && y.synSent {
				m.setState(ys, StateSynRecv, now)
			}
		default:
			// SYN-ACK: the sender is in SYN-RECEIVED.
			if xs == sideTCPD {
				if m.synAckAt == 0 {
					m.synAckAt = now
				}
				m.advMSS = s.MSS
			}
			if x.state == StateListen || x.state == StateSynSent {
				m.setState(xs, StateSynRecv, now)
			}
			// The receiver in SYN-SENT whose SYN it acknowledges becomes
			// established when it processes it (RFC 9293 3.10.7.3), which
			// the wire shows only by its ACK of this SYN: see below.
		}
	}

	if s.Flags&FlagACK != 0 {
		if !x.ackSent || seqGT(s.Ack, x.ack) {
			x.ack, x.ackSent = s.Ack, true
		}
		if xs == sideTCPD {
			y.acknowledged(s.Ack)
		}
		// An end in SYN-SENT that acknowledges the peer's SYN has
		// received the SYN-ACK (RFC 9293 3.10.7.3); a SYN-ACK that was
		// lost on its way leaves it in SYN-SENT, as `ss` would show.
		if x.state == StateSynSent && y.synSent && s.Ack == y.iss+1 {
			m.setState(xs, StateEstablished, now)
		}
		// The ACK of the receiver's SYN completes its handshake
		// (RFC 9293 3.10.7.4, SYN-RECEIVED).
		if y.state == StateSynRecv && y.synSent && seqGEQ(s.Ack, y.iss+1) && seqLEQ(s.Ack, y.nxt) {
			m.setState(ys, StateEstablished, now)
		}
		// A FIN counts as acknowledged only by an ACK of FIN.SEQ+1.
		if y.finSent && !y.finAcked && seqGEQ(s.Ack, y.finSeq+1) {
			y.finAcked = true
			x.finRcvd = true
			// The sender has consumed the receiver's FIN.
			switch x.state {
			case StateSynRecv, StateEstablished:
				m.setState(xs, StateCloseWait, now)
			case StateFinWait1:
				if x.finAcked {
					m.setState(xs, StateTimeWait, now)
				} else {
					m.setState(xs, StateClosing, now) // simultaneous close
				}
			case StateFinWait2:
				m.setState(xs, StateTimeWait, now)
			}
			// The receiver's FIN is acknowledged.
			switch y.state {
			case StateFinWait1:
				if y.finRcvd {
					m.setState(ys, StateTimeWait, now)
				} else {
					m.setState(ys, StateFinWait2, now)
				}
			case StateClosing:
				m.setState(ys, StateTimeWait, now)
			case StateLastAck:
				m.setState(ys, StateClosed, now)
			}
		}
	}

	// Sequence space and payload bytes.
	dataStart := s.Seq
	if syn {
		dataStart++
	}
	// Judged before this segment moves the client's end: an in-order FIN
	// would move RCV.NXT past itself.
	fin := s.Flags&FlagFIN != 0 && !x.finSent && (xs == sideTCPD || m.clientFINAcceptable(dataStart+s.Len))
	// A client's segment counts only in order: one that starts beyond
	// what the netstack has in sequence is out of order (queued until the
	// hole fills, whereupon tcpd's ACK says so) or out of its window
	// (dropped), and must not move what conntrack takes for the netstack's
	// RCV.NXT, nor the bytes. tcpd's own segments all count.
	segEnd := dataStart + s.Len
	if s.Flags&FlagFIN != 0 {
		segEnd++
	}
	// A client's segment beyond the window tcpd offered was not sent on
	// this connection (a client keeps to the window): it is an old
	// duplicate from far back in the sequence space, or forged.
	if x.synSent && seqGT(segEnd, x.sent) && (xs == sideTCPD || m.clientWithinEdge(s.Seq)) {
		x.sent = segEnd
	}
	if x.synSent && (xs == sideTCPD || m.clientInWindow(s.Seq, segEnd)) {
		if s.Len > 0 {
			x.dataTo(dataStart + s.Len)
		}
		if seqGT(segEnd, x.nxt) {
			x.nxt = segEnd
		}
	}

	if fin {
		x.finSent, x.finSeq = true, dataStart+s.Len
		switch x.state {
		case StateSynRecv, StateEstablished:
			m.setState(xs, StateFinWait1, now)
		case StateCloseWait:
			m.setState(xs, StateLastAck, now)
		}
	}
	return outNone
}

// clientInWindow reports whether the netstack takes in the client's
// segment from seq to end (one past its last sequence number) as far as
// conntrack can tell: in order (it starts at or before the client end's
// nxt, what tcpd has in sequence), not into a window tcpd advertised as
// zero (where only a segment that occupies no new sequence number is
// acceptable, RFC 9293 3.10.7.4: a BSD client probes a zero window with a
// new byte), and not beyond the client's FIN (rcv.go drops data after the
// FIN once it is received).
func (m *machine) clientInWindow(seq, end uint32) bool {
	c := &m.ends[sideClient]
	if !seqLEQ(seq, c.nxt) {
		return false
	}
	if m.ends[sideTCPD].synSent && m.wnd == 0 && seqGT(end, c.nxt) {
		return false
	}
	return !c.finSent || seqLEQ(end, c.finSeq+1)
}

// acknowledged records tcpd's acknowledgment ack of the client's end e:
// the netstack acknowledges only what it received in sequence, so
// everything below ack was sent, including what came out of order before
// the hole was filled, which the segments alone left uncounted.
func (e *end) acknowledged(ack uint32) {
	if !e.synSent || !seqGT(ack, e.nxt) {
		return
	}
	e.nxt = ack
	if seqGT(ack, e.sent) {
		e.sent = ack
	}
	dataEnd := ack
	if e.finSent && ack == e.finSeq+1 {
		dataEnd = e.finSeq
	}
	e.dataTo(dataEnd)
}

// dataTo records that the end's data up to dataEnd was taken in, counting
// what is new.
func (e *end) dataTo(dataEnd uint32) {
	if seqGT(dataEnd, e.dataNxt) {
		e.bytes += uint64(dataEnd - e.dataNxt)
		e.dataNxt = dataEnd
	}
}

// inSynRecvWindow reports whether seq lies in the window tcpd's netstack
// offered in its SYN-ACK (RCV.NXT, then the window field, unscaled in a
// SYN), as gVisor's synRcvdState checks a segment in SYN-RECEIVED.
func (m *machine) inSynRecvWindow(seq uint32) bool {
	ack := m.ends[sideTCPD].ack
	return seqGEQ(seq, ack) && seqLT(seq, ack+max(uint32(m.wnd), 1))
}

// rst handles a RST from side xs. RFC 5961 3.2: the receiver accepts it only
// if its sequence number is exactly RCV.NXT, and anything else (out of
// window, or in window but not at RCV.NXT, which earns a challenge ACK) is
// ignored. The netstack's RCV.NXT is where the client's data in order ends
// (its end's nxt); a client's lies between the last ACK it sent and what
// tcpd has sent, so a RST from tcpd in that range is taken. In SYN-SENT a
// RST is acceptable only if it acknowledges the SYN (RFC 9293 3.10.7.3).
func (m *machine) rst(xs, ys int, s Segment, now mono) outcome {
	x, y := &m.ends[xs], &m.ends[ys]
	acceptable := m.rstAcceptable(xs, ys, s)
	// The netstack's verdict on a client's RST is its own rules' alone.
	// Otherwise: a RST that acknowledges nothing of the receiver's
	// current connection comes from an older incarnation of the 4-tuple
	// (a TIME_WAIT endpoint retired for reuse): it belongs to no end here.
	// Likewise a RST whose sequence number lies outside everything the
	// sender has sent on this connection, or from an end that has sent
	// nothing yet and acknowledges nothing (tcpd before its SYN-ACK: its
	// only legitimate RST is the refusal, which acknowledges the SYN).
	if !(xs == sideClient && acceptable) {
		if s.Flags&FlagACK != 0 && y.synSent && !(seqGEQ(s.Ack, y.iss) && seqLEQ(s.Ack, y.sent)) {
			return outRSTIgnored
		}
		if s.Flags&FlagACK == 0 && (!x.synSent || !(seqGEQ(s.Seq, x.iss) && seqLEQ(s.Seq, x.sent))) {
			return outRSTIgnored
		}
		// A client that aborts sends its RST at its SND.NXT, which is
		// never behind what tcpd has in order from it (nor is its
		// answer to what tcpd sends, at that segment's ACK): a RST
		// below it is an old duplicate or forged, and the client's
		// connection goes on (RFC 5961 3.2).
		if xs == sideClient && seqLT(s.Seq, x.nxt) {
			return outRSTIgnored
		}
	}
	// The sender has aborted its end either way.
	m.setState(xs, StateClosed, now)
	if !acceptable {
		return outRSTIgnored
	}
	m.setState(ys, StateClosed, now)
	return outReset
}

// rstAcceptable reports whether the receiver of s, a RST from side xs,
// takes it.
func (m *machine) rstAcceptable(xs, ys int, s Segment) bool {
	x, y := &m.ends[xs], &m.ends[ys]
	switch {
	case y.state == StateSynSent:
		return s.Flags&FlagACK != 0 && s.Ack == y.iss+1
	case xs == sideClient && y.state != StateSynRecv:
		// The netstack, synchronized, takes a RST only at exactly
		// RCV.NXT (and answers one elsewhere in its window with a
		// challenge ACK): the client's data in sequence, as x.nxt
		// counts it.
		return s.Seq == x.nxt
	case xs == sideClient && y.ackSent:
		// In SYN-RECEIVED it takes any RST in its window (gVisor's
		// synRcvdState, RFC 9293 3.10.7.4).
		return m.inSynRecvWindow(s.Seq)
	case y.ackSent:
		hi := x.nxt
		if seqLT(hi, y.ack) {
			hi = y.ack
		}
		return seqGEQ(s.Seq, y.ack) && seqLEQ(s.Seq, hi)
	default:
		// The receiver has acknowledged nothing yet (tcpd before its
		// SYN-ACK): RCV.NXT is the sender's ISS+1.
		return x.synSent && (s.Seq == x.iss+1 || s.Seq == x.nxt)
	}
}
