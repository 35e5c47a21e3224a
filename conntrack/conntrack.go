// Package conntrack is tcpd's connection manager. It keeps one entry per
// terminated TCP connection and runs the RFC 9293 state machine for both of
// its ends — tcpd's netstack and the client behind the TUN — from the
// segments that cross the TUN and from lifecycle events the stack reports.
// It times handshakes and TIME_WAIT, caps TIME_WAIT like Linux's
// tcp_max_tw_buckets, lets a new SYN reuse a 4-tuple held in TIME_WAIT
// (RFC 6191), and answers with snapshots. It is pure: standard library only,
// no goroutines, time from an injected clock; it must never import gVisor or
// Prometheus.
package conntrack

import (
	"net/netip"
	"sync"
	"time"
)

// TCP header flags, as the link endpoint passes them in Segment.Flags.
const (
	FlagFIN uint8 = 1 << 0
	FlagSYN uint8 = 1 << 1
	FlagRST uint8 = 1 << 2
	FlagPSH uint8 = 1 << 3
	FlagACK uint8 = 1 << 4
)

// Segment is the part of a TCP segment the state machine needs.
type Segment struct {
	Flags uint8
	Seq   uint32
	Ack   uint32
	// Len is the payload length (SYN and FIN not included).
	Len uint32
	// MSS is the value of a SYN's MSS option as it crossed the TUN (after
	// tcpd clamped a client's), 0 for a segment without one (RFC 9293
	// 3.7.1: its receiver assumes 536 bytes).
	MSS uint16
	// ClampedFrom is, on a client's SYN whose MSS tcpd lowered, the value
	// the client sent; 0 otherwise.
	ClampedFrom uint16
	// Wnd is the window field as sent, unscaled.
	Wnd uint16
	// TS says the segment carries the timestamps option (RFC 7323 3.2),
	// with TSVal and TSEcr.
	TS           bool
	TSVal, TSEcr uint32
}

// Config configures a Table. The zero value works.
type Config struct {
	// TimeWait is how long tcpd holds a connection in TIME_WAIT, answering
	// for it at the link once the netstack has let its endpoint go. Zero
	// means 30s.
	TimeWait time.Duration
	// TimeWaitLimit caps entries in TIME_WAIT; one more is cut short and
	// counted, as Linux does beyond tcp_max_tw_buckets. Nil means 16384;
	// zero keeps none, as tcp_max_tw_buckets=0 does.
	TimeWaitLimit *int
	// MaxEntries bounds the table; SYNs beyond it are not tracked and are
	// counted. Zero means 1<<20.
	MaxEntries int
	// Unclaimed is how long an entry whose SYN no handler took (the
	// netstack dropped it) is kept after its last segment. Zero means 5s.
	Unclaimed time.Duration
	// Now returns the current time. Nil means time.Now.
	Now func() time.Time
}

// WithDefaults returns c with each unset field set to its default.
func (c Config) WithDefaults() Config {
	if c.TimeWait == 0 {
		c.TimeWait = 30 * time.Second
	}
	if c.TimeWaitLimit == nil {
		c.TimeWaitLimit = new(16384)
	}
	if c.MaxEntries == 0 {
		c.MaxEntries = 1 << 20
	}
	if c.Unclaimed == 0 {
		c.Unclaimed = 5 * time.Second
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// ActionKind tells the caller of Segment what to do with the segment.
type ActionKind uint8

const (
	// ActionNone: hand the segment on to the netstack.
	ActionNone ActionKind = iota
	// ActionDrop: the segment reached a connection in TIME_WAIT, which
	// takes it without a reply (an RST, RFC 1337; a bare in-window ACK;
	// a SYN that may not reopen the 4-tuple, RFC 6191): the netstack must
	// not see it. For a segment from the netstack, an RST for a
	// connection in TIME_WAIT: the client must not see it.
	ActionDrop
	// ActionReply: the segment reached a connection in TIME_WAIT, which
	// answers it with Action.Reply, an ACK (a retransmitted FIN, an old
	// duplicate). The netstack must not see it.
	ActionReply
	// ActionReuse: a SYN reopens a 4-tuple that was in TIME_WAIT (RFC
	// 6191); its new entry exists. Hand it to the netstack once the old
	// connection's endpoint has left it.
	ActionReuse
)

// Action is Segment's answer.
type Action struct {
	Kind ActionKind
	// Reply is the ACK to send to the client for ActionReply.
	Reply Reply
}

const (
	sideTCPD   = 0
	sideClient = 1
)

// end is one end's view of the connection, built from the segments it sent
// and those it acknowledged.
type end struct {
	state State
	since mono
	// iss is the end's initial sequence number; synSent says it is known.
	iss     uint32
	synSent bool
	// nxt is the highest sequence number the end has sent plus one
	// (SND.NXT as seen on the wire); dataNxt the same without SYN and FIN.
	nxt, dataNxt uint32
	// ack is the highest acknowledgment the end has sent: its RCV.NXT as
	// last advertised.
	ack     uint32
	ackSent bool
	// finSeq is the sequence number of the end's FIN.
	finSeq   uint32
	finSent  bool
	finAcked bool // the peer acknowledged finSeq+1
	finRcvd  bool // the end acknowledged the peer's FIN
	bytes    uint64
}

type entry struct {
	id   ID
	key  key
	ends [2]end

	opened      mono
	lastSeen    mono
	synAckAt    mono
	established mono
	dial        time.Duration
	handshake   time.Duration
	claimed     bool
	lifetimeObs bool
	// relay says a relay carries the connection's bytes (Relaying to
	// Released). held says the connection is over but its relay has not
	// finished: the entry has left the 4-tuple index and the TIME_WAIT
	// list, both its ends count as closed, and Released removes it.
	relay, held bool
	// mss and clampedFrom come from the client's SYN, advMSS from tcpd's
	// SYN-ACK (Segment.MSS, Segment.ClampedFrom).
	mss, clampedFrom, advMSS uint16

	// TIME_WAIT list, ordered by deadline (the timeout is the same for all,
	// so entry order is deadline order).
	twDeadline     mono
	twSince        mono
	twPrev, twNext *entry
	inTW           bool

	// What tcpd's netstack last sent, for the ACKs tcpd sends itself in
	// TIME_WAIT: the window field, and with the timestamps option (ts) its
	// TSval, when it was seen (tsAt) and the TSecr it echoed, which
	// TIME_WAIT keeps as TS.Recent (RFC 7323 4.3).
	wnd          uint16
	ts           bool
	tsVal, tsEcr uint32
	tsAt         mono

	// mismatch is the netstack state seen differing at the last reconcile.
	mismatch    State
	hasMismatch bool
}

// Table tracks connections. All methods are safe for concurrent use.
type Table struct {
	// cfg is the configuration with its defaults; Tune changes its timers
	// and cap under mu.
	cfg Config
	// twLimit is *cfg.TimeWaitLimit, never negative.
	twLimit int
	// epoch is just before the table was created: the zero of its mono
	// times.
	epoch time.Time

	mu      sync.Mutex
	byTuple map[key]*entry
	byID    map[ID]*entry
	// mapPeak is the most entries byID has held since the maps were last
	// built (compactLocked).
	mapPeak int
	nextID  ID
	counts  [2][NumStates]int
	// synRecv counts, per client address, the entries whose tcpd end is
	// in SYN-RECEIVED: the handshakes each client has open.
	synRecv  map[netip.Addr]int
	counters Counters
	twHead   *entry
	twTail   *entry
	twCount  int
	// relays counts entries with a relay attached.
	relays int

	handshake, dial, setup, twDwell, lifetime Histogram
}

// New returns an empty table.
func New(cfg Config) *Table {
	t := &Table{byTuple: map[key]*entry{}, byID: map[ID]*entry{}, synRecv: map[netip.Addr]int{}}
	t.cfg = cfg.WithDefaults()
	t.twLimit = max(*t.cfg.TimeWaitLimit, 0)
	t.epoch = t.cfg.Now().Add(-time.Nanosecond)
	return t
}

// Tune changes the TIME_WAIT duration and cap and the unclaimed timeout, as
// cfg gives them (with New's defaults), for what happens from now on:
// entries already in TIME_WAIT keep their deadline, and a lower cap cuts
// nothing short, it only stops new entries. MaxEntries and Now stay as New
// set them.
func (t *Table) Tune(cfg Config) {
	cfg = cfg.WithDefaults()
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cfg.TimeWait, t.cfg.TimeWaitLimit, t.cfg.Unclaimed = cfg.TimeWait, cfg.TimeWaitLimit, cfg.Unclaimed
	t.twLimit = max(*cfg.TimeWaitLimit, 0)
}

func (t *Table) synRecvDecLocked(a netip.Addr) {
	if n := t.synRecv[a] - 1; n > 0 {
		t.synRecv[a] = n
	} else {
		delete(t.synRecv, a)
	}
}

// SynRecvFrom returns how many of client's connections tcpd holds in
// SYN-RECEIVED, so that a SYN over a per-client cap can be refused before it
// opens one more.
func (t *Table) SynRecvFrom(client netip.Addr) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.synRecv[client]
}

// Sequence-number comparisons modulo 2^32 (RFC 9293 3.4).
func seqLT(a, b uint32) bool  { return int32(a-b) < 0 }
func seqLEQ(a, b uint32) bool { return int32(a-b) <= 0 }
func seqGT(a, b uint32) bool  { return int32(a-b) > 0 }
func seqGEQ(a, b uint32) bool { return int32(a-b) >= 0 }

func (t *Table) setStateLocked(e *entry, side int, s State, now mono) {
	old := e.ends[side].state
	if old == s {
		return
	}
	if side == sideTCPD && e.inTW {
		t.twUnlinkLocked(e)
	}
	if side == sideTCPD {
		if old == StateSynRecv {
			t.synRecvDecLocked(e.key.clientAddr())
		}
		if s == StateSynRecv {
			t.synRecv[e.key.clientAddr()]++
		}
	}
	t.counts[side][old]--
	t.counts[side][s]++
	e.ends[side].state = s
	e.ends[side].since = now
}

func (t *Table) createLocked(k key, s Segment, now mono) *entry {
	if len(t.byTuple) >= t.cfg.MaxEntries {
		t.counters.TableFull++
		return nil
	}
	t.nextID++
	e := &entry{id: t.nextID, key: k, opened: now, lastSeen: now, mss: s.MSS, clampedFrom: s.ClampedFrom}
	// tcpd's netstack is conceptually LISTEN and takes the SYN to
	// SYN-RECEIVED (RFC 9293 3.10.7.2); the client has sent it: SYN-SENT.
	e.ends[sideTCPD] = end{state: StateSynRecv, since: now}
	c := &e.ends[sideClient]
	*c = end{state: StateSynSent, since: now, iss: s.Seq, synSent: true, nxt: s.Seq + 1, dataNxt: s.Seq + 1}
	t.counts[sideTCPD][StateSynRecv]++
	t.counts[sideClient][StateSynSent]++
	t.synRecv[k.clientAddr()]++
	t.byTuple[k] = e
	t.byID[e.id] = e
	t.mapPeak = max(t.mapPeak, len(t.byID))
	t.counters.Opened++
	return e
}

// removeLocked forgets e. The caller has already counted why. An entry
// whose relay still runs is only held (see entry.held) until Released: a
// relay never runs without its entry, so `tcpd conns` can show and kill
// whatever tcpd still spends on the connection.
func (t *Table) removeLocked(e *entry, now mono) {
	if e.inTW {
		t.twUnlinkLocked(e)
	}
	t.observeLifetimeLocked(e, now)
	if t.byTuple[e.key] == e {
		delete(t.byTuple, e.key)
	}
	if e.relay {
		if !e.held {
			e.held = true
			for side := range e.ends {
				t.setStateLocked(e, side, StateClosed, now)
			}
		}
		return
	}
	for side := range e.ends {
		t.counts[side][e.ends[side].state]--
	}
	if e.ends[sideTCPD].state == StateSynRecv {
		t.synRecvDecLocked(e.key.clientAddr())
	}
	delete(t.byID, e.id)
	t.counters.Closed++
}

func (t *Table) observeLifetimeLocked(e *entry, now mono) {
	if !e.lifetimeObs && e.established != 0 {
		e.lifetimeObs = true
		t.lifetime.Observe(now.sub(e.established))
	}
}

// Segment records one TCP segment that crossed the TUN. tu is always the
// client's view (Client = the client's address and port), whatever dir is.
func (t *Table) Segment(dir Dir, tu Tuple, s Segment) Action {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()

	bareSYN := s.Flags&(FlagSYN|FlagACK|FlagRST) == FlagSYN
	k := keyOf(tu)
	e := t.byTuple[k]
	if e == nil {
		if dir == FromClient && bareSYN {
			t.createLocked(k, s, now)
			return Action{}
		}
		t.counters.Untracked++
		return Action{}
	}
	e.lastSeen = now
	if e.inTW {
		if dir == FromClient {
			return t.timeWaitLocked(e, k, s, now)
		}
		if s.Flags&FlagRST != 0 {
			// The netstack answers RST to what was queued on an
			// endpoint when it let it go for TIME_WAIT: TIME_WAIT is
			// conntrack's, and sends no RST.
			return Action{Kind: ActionDrop}
		}
	}
	if dir == ToClient {
		e.sentByTCPD(s, now)
	}

	xs, ys := sideClient, sideTCPD
	if dir == ToClient {
		xs, ys = sideTCPD, sideClient
	}
	x, y := &e.ends[xs], &e.ends[ys]

	if s.Flags&FlagRST != 0 {
		return t.rstLocked(e, xs, ys, s, now)
	}

	syn := s.Flags&FlagSYN != 0
	if syn {
		if !x.synSent {
			x.iss, x.synSent = s.Seq, true
			x.nxt, x.dataNxt = s.Seq+1, s.Seq+1
		}
		switch {
		case s.Flags&FlagACK == 0:
			// A SYN from an end that has not synchronized: simultaneous
			// open takes the receiver from SYN-SENT to SYN-RECEIVED
			// (RFC 9293 3.5, figure 8).
			if x.state == StateClosed || x.state == StateListen {
				t.setStateLocked(e, xs, StateSynSent, now)
			}
			if y.state == StateSynSent && y.synSent {
				t.setStateLocked(e, ys, StateSynRecv, now)
			}
		default:
			// SYN-ACK: the sender is in SYN-RECEIVED.
			if xs == sideTCPD && e.synAckAt == 0 {
				e.synAckAt = now
			}
			if xs == sideTCPD {
				e.advMSS = s.MSS
			}
			if x.state == StateListen || x.state == StateSynSent {
				t.setStateLocked(e, xs, StateSynRecv, now)
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
		// An end in SYN-SENT that acknowledges the peer's SYN has
		// received the SYN-ACK (RFC 9293 3.10.7.3); a SYN-ACK that was
		// lost on its way leaves it in SYN-SENT, as `ss` would show.
		if x.state == StateSynSent && y.synSent && s.Ack == y.iss+1 {
			t.setStateLocked(e, xs, StateEstablished, now)
		}
		// The ACK of the receiver's SYN completes its handshake
		// (RFC 9293 3.10.7.4, SYN-RECEIVED).
		if y.state == StateSynRecv && y.synSent && seqGEQ(s.Ack, y.iss+1) && seqLEQ(s.Ack, y.nxt) {
			t.setStateLocked(e, ys, StateEstablished, now)
			if ys == sideTCPD {
				t.establishedLocked(e, now)
			}
		}
		// A FIN counts as acknowledged only by an ACK of FIN.SEQ+1.
		if y.finSent && !y.finAcked && seqGEQ(s.Ack, y.finSeq+1) {
			y.finAcked = true
			x.finRcvd = true
			// The sender has consumed the receiver's FIN.
			switch x.state {
			case StateSynRecv, StateEstablished:
				t.setStateLocked(e, xs, StateCloseWait, now)
			case StateFinWait1:
				if x.finAcked {
					t.setStateLocked(e, xs, StateTimeWait, now)
				} else {
					t.setStateLocked(e, xs, StateClosing, now) // simultaneous close
				}
			case StateFinWait2:
				t.setStateLocked(e, xs, StateTimeWait, now)
			}
			// The receiver's FIN is acknowledged.
			switch y.state {
			case StateFinWait1:
				if y.finRcvd {
					t.setStateLocked(e, ys, StateTimeWait, now)
				} else {
					t.setStateLocked(e, ys, StateFinWait2, now)
				}
			case StateClosing:
				t.setStateLocked(e, ys, StateTimeWait, now)
			case StateLastAck:
				t.setStateLocked(e, ys, StateClosed, now)
			}
		}
	}

	// Sequence space and payload bytes.
	dataStart := s.Seq
	if syn {
		dataStart++
	}
	if x.synSent {
		if dataEnd := dataStart + s.Len; s.Len > 0 && seqGT(dataEnd, x.dataNxt) {
			x.bytes += uint64(dataEnd - x.dataNxt)
			x.dataNxt = dataEnd
		}
		segEnd := dataStart + s.Len
		if s.Flags&FlagFIN != 0 {
			segEnd++
		}
		if seqGT(segEnd, x.nxt) {
			x.nxt = segEnd
		}
	}

	if s.Flags&FlagFIN != 0 {
		finSeq := dataStart + s.Len
		switch {
		case !x.finSent:
			x.finSent, x.finSeq = true, finSeq
			switch x.state {
			case StateSynRecv, StateEstablished:
				t.setStateLocked(e, xs, StateFinWait1, now)
			case StateCloseWait:
				t.setStateLocked(e, xs, StateLastAck, now)
			}
		}
	}

	return t.afterLocked(e, now)
}

// afterLocked applies what tcpd's new state implies: TIME_WAIT accounting
// and removal once closed.
func (t *Table) afterLocked(e *entry, now mono) Action {
	switch e.ends[sideTCPD].state {
	case StateTimeWait:
		if e.inTW {
			return Action{}
		}
		t.observeLifetimeLocked(e, now)
		if t.twCount >= t.twLimit {
			// The netstack has let the endpoint go already: the
			// connection simply has no TIME_WAIT, as beyond Linux's
			// tcp_max_tw_buckets.
			t.counters.TimeWaitOverflow++
			t.removeLocked(e, now)
			return Action{}
		}
		t.counters.TimeWaitEntered++
		e.twSince = now
		t.twPushLocked(e, now)
	case StateClosed:
		t.removeLocked(e, now)
	}
	return Action{}
}

func (t *Table) establishedLocked(e *entry, now mono) {
	if e.established != 0 {
		return
	}
	e.established = now
	t.counters.Established++
	if e.synAckAt != 0 {
		e.handshake = now.sub(e.synAckAt)
		t.handshake.Observe(e.handshake)
	}
	t.setup.Observe(now.sub(e.opened))
}

// rstLocked handles a RST from side xs. RFC 5961 3.2: the receiver accepts
// it only if its sequence number is exactly RCV.NXT; on the wire RCV.NXT lies
// between the last ACK the receiver sent and what the sender has sent, so a
// RST in that range is taken, and anything else (out of window, or in window
// but not at RCV.NXT, which earns a challenge ACK) is ignored. In SYN-SENT it
// is acceptable only if it acknowledges the SYN (RFC 9293 3.10.7.3).
func (t *Table) rstLocked(e *entry, xs, ys int, s Segment, now mono) Action {
	x, y := &e.ends[xs], &e.ends[ys]
	// A RST that acknowledges nothing of the receiver's current connection
	// comes from an older incarnation of the 4-tuple (a TIME_WAIT endpoint
	// retired for reuse): it belongs to no end here.
	if s.Flags&FlagACK != 0 && y.synSent && !(seqGEQ(s.Ack, y.iss) && seqLEQ(s.Ack, y.nxt)) {
		t.counters.RSTIgnored++
		return Action{}
	}
	// Likewise a RST whose sequence number lies outside everything the
	// sender has sent on this connection, or from an end that has sent
	// nothing yet and acknowledges nothing (tcpd before its SYN-ACK: its
	// only legitimate RST is the refusal, which acknowledges the SYN).
	if s.Flags&FlagACK == 0 && (!x.synSent || !(seqGEQ(s.Seq, x.iss) && seqLEQ(s.Seq, x.nxt))) {
		t.counters.RSTIgnored++
		return Action{}
	}
	var acceptable bool
	switch {
	case y.state == StateSynSent:
		acceptable = s.Flags&FlagACK != 0 && s.Ack == y.iss+1
	case y.ackSent:
		hi := x.nxt
		if seqLT(hi, y.ack) {
			hi = y.ack
		}
		acceptable = seqGEQ(s.Seq, y.ack) && seqLEQ(s.Seq, hi)
	default:
		// The receiver has acknowledged nothing yet (tcpd before its
		// SYN-ACK): RCV.NXT is the sender's ISS+1.
		acceptable = x.synSent && (s.Seq == x.iss+1 || s.Seq == x.nxt)
	}
	if !acceptable {
		t.counters.RSTIgnored++
		// The sender has aborted its end all the same.
		t.setStateLocked(e, xs, StateClosed, now)
		return t.afterLocked(e, now)
	}
	t.counters.Resets++
	t.setStateLocked(e, xs, StateClosed, now)
	t.setStateLocked(e, ys, StateClosed, now)
	return t.afterLocked(e, now)
}

func (t *Table) twPushLocked(e *entry, now mono) {
	e.inTW = true
	e.twDeadline = now.add(t.cfg.TimeWait)
	e.twPrev, e.twNext = t.twTail, nil
	if t.twTail != nil {
		t.twTail.twNext = e
	} else {
		t.twHead = e
	}
	t.twTail = e
	t.twCount++
}

func (t *Table) twUnlinkLocked(e *entry) {
	if e.twPrev != nil {
		e.twPrev.twNext = e.twNext
	} else {
		t.twHead = e.twNext
	}
	if e.twNext != nil {
		e.twNext.twPrev = e.twPrev
	} else {
		t.twTail = e.twPrev
	}
	e.twPrev, e.twNext, e.inTW = nil, nil, false
	t.twCount--
}

// ExpireTimeWait removes the entries whose TIME_WAIT has run out. It costs
// only the expired entries, so the stack calls it often; the dwell recorded
// is the configured one, not the caller's lateness.
func (t *Table) ExpireTimeWait() int {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.expireTimeWaitLocked(now)
}

func (t *Table) expireTimeWaitLocked(now mono) int {
	n := 0
	for e := t.twHead; e != nil && now >= e.twDeadline; e = t.twHead {
		t.twDwell.Observe(e.twDeadline.sub(e.twSince))
		t.removeLocked(e, now)
		n++
	}
	return n
}

// Tick runs the timers: TIME_WAIT expiry and entries no handler claimed.
// The stack calls it periodically; it returns how many entries it removed.
func (t *Table) Tick() int {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.expireTimeWaitLocked(now)
	for _, e := range t.byID {
		if !e.claimed && e.ends[sideTCPD].state == StateSynRecv && !e.ends[sideTCPD].synSent &&
			now.sub(e.lastSeen) >= t.cfg.Unclaimed {
			t.counters.Expired++
			t.removeLocked(e, now)
			n++
		}
	}
	t.compactLocked()
	return n
}

// compactMaps is the table size below which the maps are never rebuilt:
// their peak memory is then a few hundred KiB at most.
const compactMaps = 1024

// compactLocked rebuilds the maps once they hold a quarter of their peak:
// Go's maps never give back the memory of the most they held, so after a
// burst of 100,000 connections they would keep megabytes for good.
func (t *Table) compactLocked() {
	if t.mapPeak < compactMaps || len(t.byID)*4 > t.mapPeak {
		return
	}
	t.byTuple, t.byID, t.synRecv = compacted(t.byTuple), compacted(t.byID), compacted(t.synRecv)
	t.mapPeak = len(t.byID)
}

// compacted returns a copy of m sized for what it holds.
func compacted[K comparable, V any](m map[K]V) map[K]V {
	c := make(map[K]V, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// Claim is called by the handler that took the connection's SYN from the
// netstack. It returns the entry's ID, or 0 when the SYN is not tracked
// (the table was full).
func (t *Table) Claim(tu Tuple) ID {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.byTuple[keyOf(tu)]
	if e == nil || e.claimed || e.ends[sideTCPD].state != StateSynRecv {
		return 0
	}
	e.claimed = true
	return e.id
}

// Relaying records that a relay now carries id's bytes. From then on the
// entry outlives whatever ends the connection — a reset, a netstack timer,
// the end of TIME_WAIT — until Released. It reports false, attaching
// nothing, when id has no entry or its connection is over already: the
// caller must not relay it.
func (t *Table) Relaying(id ID) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.byID[id]
	if e == nil || e.held || e.relay {
		return false
	}
	e.relay = true
	t.relays++
	return true
}

// Released records that id's relay has finished. An entry whose connection
// ended while its relay ran is removed now.
func (t *Table) Released(id ID) {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.byID[id]
	if e == nil || !e.relay {
		return
	}
	e.relay = false
	t.relays--
	if e.held {
		t.removeLocked(e, now)
	}
}

// Relays returns how many entries have a relay attached.
func (t *Table) Relays() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.relays
}

// Dialled records the upstream connect of id, which succeeded after d.
func (t *Table) Dialled(id ID, d time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.byID[id]; e != nil {
		e.dial = d
		t.dial.Observe(d)
	}
}

// Gone reports that the netstack holds no endpoint for id any more and no
// segment will close it: the handshake failed or was abandoned, the handler
// dropped the SYN silently, or a netstack timer reaped the endpoint. The
// entry is removed, unless it is in TIME_WAIT: the netstack lets an
// endpoint go as it enters TIME_WAIT, and the entry is what remains of the
// connection until its own timer expires.
func (t *Table) Gone(id ID) {
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.byID[id]
	if e == nil || e.held || e.inTW {
		return
	}
	t.counters.Expired++
	t.removeLocked(e, now)
}

// Reconcile compares tcpd's state for id with the netstack endpoint's own
// state ns. A disagreement seen at two consecutive calls is corrected to ns
// and counted. Lags are not disagreements: the netstack enters FIN-WAIT-1
// or LAST-ACK when it queues its FIN, before the FIN crosses the TUN, and
// an entry in TIME_WAIT is tcpd's own, whose endpoint passes through
// TIME_WAIT to closed at once. StateClosed means the endpoint is gone, as
// Gone. It returns whether it corrected the entry, and the state conntrack
// had.
func (t *Table) Reconcile(id ID, ns State) (corrected bool, was State) {
	if ns == StateClosed {
		t.Gone(id)
		return false, 0
	}
	now := t.now()
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.byID[id]
	if e == nil || e.held {
		return false, 0
	}
	ours := e.ends[sideTCPD].state
	if ours == ns || (ours == StateEstablished && ns == StateFinWait1) || (ours == StateCloseWait && ns == StateLastAck) ||
		(e.inTW && ns == StateTimeWait) {
		e.hasMismatch = false
		return false, ours
	}
	if !e.hasMismatch || e.mismatch != ns {
		e.hasMismatch, e.mismatch = true, ns
		return false, ours
	}
	e.hasMismatch = false
	t.counters.Corrections++
	t.setStateLocked(e, sideTCPD, ns, now)
	if ns == StateEstablished {
		t.establishedLocked(e, now)
	}
	t.afterLocked(e, now)
	return true, ours
}

// Snapshot returns counts, counters and histograms.
func (t *Table) Snapshot() Snapshot {
	t.mu.Lock()
	var s Snapshot
	for st := range NumStates {
		s.States[st] = uint64(t.counts[sideTCPD][st])
		s.ClientStates[st] = uint64(t.counts[sideClient][st])
	}
	s.Live = len(t.byID)
	s.Relays = t.relays
	s.TimeWait = t.twCount
	s.Counters = t.counters
	s.TimeWaitLimit = t.twLimit
	s.TimeWaitTimeout = t.cfg.TimeWait
	t.mu.Unlock()
	s.Handshake = t.handshake.Snapshot()
	s.Dial = t.dial.Snapshot()
	s.Setup = t.setup.Snapshot()
	s.TimeWaitDwell = t.twDwell.Snapshot()
	s.Lifetime = t.lifetime.Snapshot()
	return s
}

// Conns returns the live table, in ID order, keeping the rows keep accepts
// (nil keeps all).
func (t *Table) Conns(keep func(*Conn) bool) []Conn {
	now := t.now()
	t.mu.Lock()
	out := make([]Conn, 0, len(t.byID))
	for _, e := range t.byID {
		c := Conn{
			ID:          e.id,
			Tuple:       e.key.tuple(),
			State:       e.ends[sideTCPD].state,
			ClientState: e.ends[sideClient].state,
			Opened:      t.wall(e.opened),
			Since:       t.wall(e.ends[sideTCPD].since),
			BytesIn:     e.ends[sideClient].bytes,
			BytesOut:    e.ends[sideTCPD].bytes,
			Handshake:   e.handshake,
			Dial:        e.dial,
			MSS:         e.mss,
			ClampedFrom: e.clampedFrom,
			AdvMSS:      e.advMSS,
		}
		if e.inTW {
			c.TimeWaitLeft = max(e.twDeadline.sub(now), 0)
		}
		if keep == nil || keep(&c) {
			out = append(out, c)
		}
	}
	t.mu.Unlock()
	sortConns(out)
	return out
}

// Len returns the number of live entries, without the cost of a Snapshot.
func (t *Table) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.byID)
}
