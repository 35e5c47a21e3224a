package conntrack

import "time"

// TIME_WAIT is tcpd's own, as Linux keeps an inet_timewait_sock instead of
// a full socket: the netstack lets a connection's endpoint go as it enters
// TIME_WAIT, and its entry here does TIME_WAIT's duties until the timer
// expires. The link shows it every segment the client sends to the 4-tuple
// and does what Segment answers: nothing reaches the netstack, save a SYN
// that reopens the 4-tuple. The duties, as RFC 9293 3.10.7.4 prescribes
// them (Linux's tcp_timewait_state_process also acknowledges a segment
// without ACK, and restarts the timer for any out-of-window segment with
// one; tcpd keeps to the RFC there):
//   - an RST is ignored (RFC 1337, fix 1: no TIME-WAIT assassination);
//   - a SYN reopens the 4-tuple if it is a new incarnation (RFC 6191);
//     any other SYN, and a SYN-ACK, gets a challenge ACK (RFC 9293
//     3.10.7.4 with RFC 5961 4);
//   - a segment without ACK is dropped;
//   - a segment whose TSval is older than TS.Recent is acknowledged and
//     dropped (PAWS, RFC 7323 5.3 R1);
//   - a retransmitted FIN is acknowledged and restarts the 2MSL timer;
//   - any other segment that is not exactly at RCV.NXT, or carries data
//     (an old duplicate), is acknowledged;
//   - a bare ACK at RCV.NXT is taken silently.
// An ACK to a segment that carries neither data nor FIN, or to a SYN, goes
// at most once per oowAckInterval, as Linux limits them
// (tcp_invalid_ratelimit): two ends that each find the other's segments
// out of window would otherwise trade ACKs for as long as they last, and
// a flood of old SYNs would be answered one for one. The ACK is the one
// the endpoint would have sent: <SEQ=SND.NXT><ACK=RCV.NXT><CTL=ACK>, the
// last window it advertised, and, if the connection uses timestamps,
// TSval on the endpoint's clock and TSecr = TS.Recent.

// oowAckInterval is the least time between two rate-limited ACKs of one
// connection in TIME_WAIT: Linux's net.ipv4.tcp_invalid_ratelimit default.
const oowAckInterval = 500 * time.Millisecond

// Reply is a segment tcpd sends for a connection itself: an ACK in
// TIME_WAIT, or where the netstack must not see what the client sent
// (ActionReject). The link builds the packet: addresses and ports from the
// entry's tuple, reversed.
type Reply struct {
	// RST makes it <SEQ=Seq><CTL=RST>: no ACK, no window, no options.
	RST      bool
	Seq, Ack uint32
	// Wnd is the window field, unscaled, as the endpoint last sent it.
	Wnd uint16
	// TS says the ACK carries the timestamps option with TSVal and TSEcr.
	TS           bool
	TSVal, TSEcr uint32
}

// twVerdict is what TIME_WAIT does with one segment from the client.
type twVerdict uint8

const (
	twDrop twVerdict = iota
	twIgnoreRST
	twAck
	twAckLimited // an ACK at most once per oowAckInterval
	twAckRestart // a retransmitted FIN
	twReuse
)

// tsLT compares timestamps modulo 2^32 (RFC 7323 5.2).
func tsLT(a, b uint32) bool { return int32(a-b) < 0 }

// sentByTCPD records what a segment from tcpd's netstack says about how
// the netstack would answer in TIME_WAIT.
func (m *machine) sentByTCPD(s Segment, now mono) {
	// The window field as a segment without SYN carries it: a SYN-ACK's
	// is not scaled (RFC 7323 2.2), so the same window is its value
	// shifted by the scale tcpd gave.
	m.wnd = s.Wnd
	if s.Flags&FlagSYN != 0 {
		m.wnd = s.Wnd >> m.rcvShift
	}
	if s.TS {
		// TS.Recent only moves forward: the netstack acknowledges a FIN
		// before it takes the FIN's TSval (gVisor's consumeSegment), so
		// that ACK echoes the TSval before it, which the client's
		// FIN has already moved TS.Recent past (noteTSVal).
		if !m.ts || tsLT(m.tsEcr, s.TSEcr) {
			m.tsEcr = s.TSEcr
		}
		// tsAt is when tsVal was first seen: a segment sent again with
		// the same value (a retransmitted SYN-ACK) says nothing of the
		// clock now.
		if !m.ts || s.TSVal != m.tsVal {
			m.tsVal, m.tsAt = s.TSVal, now
		}
		m.ts = true
	}
}

// freshSYNACKTS returns the timestamp value a SYN-ACK that tcpd's netstack
// sends again must carry. The netstack resends its SYN-ACK with the first
// one's options, TSval included (gVisor's retransmitHandlerLocked resends
// h.sendSYNOpts), so a client that answers the retransmission echoes the
// first SYN-ACK's TSval, and the netstack takes the time since that one, a
// second or more after a loss, for the connection's first round trip: an
// RTO of seconds for its first losses. RFC 7323 has every segment carry the
// clock when it is sent. The value is the netstack's timestamp clock
// (milliseconds) now, one less, so that it is never ahead of what the
// netstack sends next (the client would drop that as old, PAWS), and never
// behind what tcpd sent last; ok is false when s is not such a SYN-ACK or
// already carries it.
func (m *machine) freshSYNACKTS(s Segment, now mono) (uint32, bool) {
	// Not newer than the last TSval tcpd sent: the netstack may have
	// answered the client's retransmitted SYN with a fresher segment
	// before it resent the SYN-ACK.
	if s.Flags&(FlagSYN|FlagACK) != FlagSYN|FlagACK || !s.TS || !m.ts || !m.ends[sideTCPD].synSent || tsLT(m.tsVal, s.TSVal) {
		return 0, false
	}
	ts := m.tsVal
	if elapsed := now.sub(m.tsAt).Milliseconds(); elapsed >= 2 {
		ts += uint32(elapsed) - 1
	}
	return ts, ts != s.TSVal && ts != 0
}

// timeWaitVerdict decides what TIME_WAIT does with s, a segment from the
// client, and keeps TS.Recent up to date as the endpoint would. It touches
// the machine only, not the table.
func (e *machine) timeWaitVerdict(s Segment) twVerdict {
	switch {
	case s.Flags&FlagRST != 0:
		return twIgnoreRST
	case s.Flags&FlagSYN != 0 && s.Flags&FlagACK == 0:
		if e.newIncarnation(s) {
			return twReuse
		}
		return twAckLimited
	case s.Flags&FlagACK == 0:
		return twDrop
	}
	// Data and FIN occupy sequence space: their ACKs are not limited, as
	// they cannot be part of an ACK loop.
	ack := twAckLimited
	if s.Len != 0 || s.Flags&FlagFIN != 0 {
		ack = twAck
	}
	if e.pawsReject(s) {
		return ack
	}
	if s.Flags&FlagSYN != 0 {
		return twAckLimited // a SYN-ACK: challenged, its TSval not taken
	}
	rcvNxt := e.ends[sideTCPD].ack
	e.noteTSVal(s, rcvNxt)
	switch {
	case s.Flags&FlagFIN != 0 && s.Seq+s.Len+1 == rcvNxt:
		return twAckRestart
	case s.Seq != rcvNxt || s.Len != 0:
		return ack
	}
	return twDrop
}

// noteTSVal keeps TS.Recent as the endpoint would (RFC 7323 4.3): the
// newest TSval of a client's segment that does not lie beyond rcvNxt, what
// tcpd acknowledged.
func (e *machine) noteTSVal(s Segment, rcvNxt uint32) {
	if e.ts && s.TS && tsLT(e.tsEcr, s.TSVal) && seqLEQ(s.Seq, rcvNxt) {
		e.tsEcr = s.TSVal
	}
}

// newIncarnation reports whether the SYN s may reopen the 4-tuple (RFC 6191
// 2): if the old connection used timestamps and s carries them, a newer
// TSval, or an equal one with a sequence number beyond the old
// connection's; otherwise a sequence number beyond the old connection's.
func (e *machine) newIncarnation(s Segment) bool {
	seqNewer := seqGT(s.Seq, e.ends[sideClient].nxt)
	switch {
	case e.pawsReject(s):
		return false
	case e.ts && s.TS && e.tsEcr != 0:
		return tsLT(e.tsEcr, s.TSVal) || (s.TSVal == e.tsEcr && seqNewer)
	case e.ts && s.TS:
		// A TS.Recent of 0 says nothing (pawsReject): a newer sequence
		// number will do, as will a TSval after 0, as in Linux's
		// tcp_timewait_state_process.
		return seqNewer || tsLT(0, s.TSVal)
	}
	return seqNewer
}

// pawsReject reports whether the client's segment s is older than
// TS.Recent (PAWS, RFC 7323 5.3). A TS.Recent of 0 rejects nothing, as in
// Linux's tcp_paws_check: some stacks send TSval 0 on their SYN, and
// against 0 half of all TSvals would look old.
func (e *machine) pawsReject(s Segment) bool {
	return e.ts && s.TS && e.tsEcr != 0 && tsLT(s.TSVal, e.tsEcr)
}

// timeWaitReply is the ACK the endpoint would send now: TIME_WAIT's, and
// the answer to an acknowledgment of what tcpd never sent.
func (e *machine) timeWaitReply(now mono) Reply {
	d := &e.ends[sideTCPD]
	r := Reply{Seq: d.nxt, Ack: d.ack, Wnd: e.wnd}
	if e.ts {
		// The netstack's timestamp clock counts milliseconds.
		r.TS, r.TSVal, r.TSEcr = true, e.tsVal+uint32(now.sub(e.tsAt).Milliseconds()), e.tsEcr
	}
	return r
}

// timeWaitLocked applies TIME_WAIT's verdict on a segment from the client.
// e's lock is held.
func (sh *shard) timeWaitLocked(t *Table, e *entry, s Segment, now mono) Action {
	switch e.timeWaitVerdict(s) {
	case twIgnoreRST:
		sh.counters.inc(cRSTIgnored)
		// The client has aborted its end all the same.
		sh.setStateLocked(t, e, sideClient, StateClosed, now)
		return Action{Kind: ActionDrop}
	case twReuse:
		// The new connection is one more handshake for its client, capped
		// like any other; a SYN over the cap leaves TIME_WAIT as it was.
		k := e.key
		if !t.reserveClient(k.client, t.set.Load().synRecvCap) {
			return Action{Kind: ActionRefuse}
		}
		sh.counters.inc(cTimeWaitReused)
		sh.hist.twDwell.Observe(now.sub(e.twSince))
		sh.mu.Lock()
		sh.removeLockedW(t, e, now)
		reserved := t.reserveEntry()
		if reserved {
			sh.insertLocked(t, sh.newEntry(t, k, e.khash, s, now))
		}
		sh.mu.Unlock()
		if reserved {
			sh.inserted()
		} else {
			sh.counters.inc(cTableFull)
			t.clientOf(k).release(k.client)
		}
		return Action{Kind: ActionReuse}
	case twAckRestart:
		// RFC 9293 3.10.7.4, TIME-WAIT: acknowledge it and restart the
		// 2 MSL timeout.
		sh.mu.Lock()
		sh.tw.unlink(e)
		sh.twPushLockedW(t, e, now, t.set.Load().timeWait)
		sh.mu.Unlock()
	case twAckLimited:
		if e.oowAckAt != 0 && now.sub(e.oowAckAt) < oowAckInterval {
			sh.counters.inc(cTimeWaitAcksSkipped)
			return Action{Kind: ActionDrop}
		}
		e.oowAckAt = now
	case twAck:
	default:
		return Action{Kind: ActionDrop}
	}
	sh.counters.inc(cTimeWaitAcks)
	return Action{Kind: ActionReply, Reply: e.timeWaitReply(now)}
}

// DropTimeWait removes id's entry if it is in TIME_WAIT, as `ss -K` destroys
// a TIME_WAIT socket: the connection is over and nothing is sent; the
// client's next segments for the 4-tuple reach the netstack, which answers
// them as it answers any segment of no connection. No counter says so (no
// TIME_WAIT counter is about a removal by hand); the state counts, the
// TIME_WAIT count and the dwell histogram follow it as they follow the
// end of TIME_WAIT. It reports whether it removed the entry.
func (t *Table) DropTimeWait(id ID) bool {
	now := t.now()
	sh, e := t.lookup(id)
	if e == nil {
		return false
	}
	if e.list != onTimeWait {
		e.mu.Unlock()
		return false
	}
	dwell := now.sub(e.twSince)
	sh.removeLocked(t, e, now)
	e.mu.Unlock()
	sh.hist.twDwell.Observe(dwell)
	return true
}
