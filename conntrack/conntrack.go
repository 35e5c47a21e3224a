// Package conntrack is tcpd's connection manager. It keeps one entry per
// terminated TCP connection and runs the RFC 9293 state machine for both of
// its ends — tcpd's netstack and the client behind the TUN — from the
// segments that cross the TUN and from lifecycle events the stack reports.
// It times handshakes and TIME_WAIT, caps TIME_WAIT like Linux's
// tcp_max_tw_buckets, lets a new SYN reuse a 4-tuple held in TIME_WAIT
// (RFC 6191), caps each client's open handshakes, and answers with
// snapshots. Every method is safe for concurrent use, and the packet loops of
// a multi-queue TUN call it at once: the table is sharded by 4-tuple
// (shard.go) around a per-connection state machine (machine.go). It is pure:
// standard library only, no goroutines, time from an injected clock; it must
// never import gVisor or Prometheus.
package conntrack

import (
	"hash/maphash"
	"sync/atomic"
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
	// WS says a SYN carries the window scale option (RFC 7323 2.2), whose
	// shift count is WScale.
	WS     bool
	WScale uint8
	// TS says the segment carries the timestamps option (RFC 7323 3.2),
	// with TSVal and TSEcr.
	TS           bool
	TSVal, TSEcr uint32
	// Queue is, on a client's segment, one more than the index of the TUN
	// queue it arrived on; 0 says the caller does not know.
	Queue uint16
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
	// counted. Zero means DefaultMaxEntries.
	MaxEntries int
	// Unclaimed is how long an entry whose SYN no handler took (the
	// netstack dropped it) is kept after its last segment. Zero means 5s.
	Unclaimed time.Duration
	// MaxSynRecvPerClient caps the handshakes one client address may have
	// open (entries whose tcpd end is in SYN-RECEIVED): a SYN that would
	// open one more is answered ActionRefuse, as a full SYN queue drops
	// it. Zero means no cap.
	MaxSynRecvPerClient int
	// Now returns the current time. Nil means time.Now.
	Now func() time.Time
}

// DefaultMaxEntries is room for the largest caps tcpd's configuration
// allows at once: a million relayed connections, a million in TIME_WAIT
// and 65,536 handshakes. Entries are allocated as they come, so the bound
// costs nothing until it is used; it is there so that nothing the caps do
// not count (an entry of a connection still closing) grows without end.
const DefaultMaxEntries = 2<<20 + 1<<16

// WithDefaults returns c with each unset field set to its default.
func (c Config) WithDefaults() Config {
	if c.TimeWait == 0 {
		c.TimeWait = 30 * time.Second
	}
	if c.TimeWaitLimit == nil {
		c.TimeWaitLimit = new(16384)
	}
	if c.MaxEntries == 0 {
		c.MaxEntries = DefaultMaxEntries
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
	// ActionOpen: a client's SYN opened a new entry, or took one that
	// nothing had answered with a new ISN. Hand it to the netstack once no
	// endpoint of an earlier connection on the 4-tuple is left there: a
	// SYN queued behind that connection's last segment (the RST of a
	// client that reuses its port at once) would be answered with RST
	// once the old endpoint closed, not offered to the forwarder.
	ActionOpen
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
	// ActionRefuse: a client's SYN that would open a handshake beyond
	// Config.MaxSynRecvPerClient. It is not tracked; drop it, as a full
	// SYN queue would, and the client retransmits.
	ActionRefuse
	// ActionStale: a client's SYN with the ISN of the 4-tuple's last
	// connection, which completed its handshake and has ended (less than
	// EndedLinger ago): an old duplicate, such as a retransmission the
	// client sent just before that connection's SYN-ACK reached it,
	// delivered after the connection's end. It is not tracked; drop it.
	// Handed on, it would open a connection the client has closed (a
	// dial to the destination, and a half-open endpoint that answers the
	// client's next SYN on the 4-tuple with RST), or, once that next
	// connection has opened, make the netstack give its handshake up (a
	// SYN with another ISN in a SYN-RECEIVED connection's window, which
	// the netstack answers with RST and ends the handshake).
	ActionStale
	// ActionReject: a client's segment whose acknowledgment no TCP takes
	// (RFC 9293 3.10.7.4): in SYN-RECEIVED, one that is not of tcpd's
	// SYN, which the netstack's forwarder would take all the same and
	// complete the handshake on (a blind forger who knows only its own
	// ISN would have a connection); in a synchronized state, one that
	// acknowledges what tcpd never sent, or less than SND.UNA - MAX.SND.WND,
	// whose data the netstack would take in ESTABLISHED (RFC 5961 5.2: a
	// blind forger's). Drop it; if Answer, send Reply:
	// a RST at its acknowledgment number for the first, as Linux does; an
	// ACK for the second, at most one per connection each half second.
	ActionReject
)

// Action is Segment's answer.
type Action struct {
	Kind ActionKind
	// Reply is the segment to send to the client for ActionReply, and
	// for ActionReject if Answer.
	Reply  Reply
	Answer bool
	// Queue is, for a tracked connection, one more than the index of the
	// TUN queue its client's segments last arrived on (Segment.Queue); 0
	// when the table knows none. A segment to the client leaves on that
	// queue, so the kernel's flow steering keeps the flow on one queue.
	Queue uint16
	// TSVal, if not 0, is the timestamp value a segment to the client must
	// carry instead of its own (machine.freshSYNACKTS).
	TSVal uint32
}

// Table tracks connections. All methods are safe for concurrent use; none
// takes a lock of the whole table, and the cost of each grows with the
// table only for Conns (shard.go says which locks each takes).
type Table struct {
	// cfg is the configuration with its defaults; only MaxEntries and Now
	// are read from it after New: set holds what Tune changes.
	cfg Config
	// epoch is just before the table was created: the zero of its mono
	// times.
	epoch time.Time
	// seed keys the hashes that place 4-tuples and clients in shards.
	seed maphash.Seed
	set  atomic.Pointer[settings]

	shards  [numShards]shard
	stripes [numStripes]stripe
	clients [numClientShards]clientShard
	hist    [histStripes]histograms

	// The shards the periodic passes are to visit (marks.go): timed, with
	// an entry on a timer list or an ended record (expire); grown, with
	// index buckets, and the client shards with records (Tick).
	timed, grown, clientsGrown shardMarks

	// The table-wide counts that caps hold against, each changed by one
	// atomic add per connection (never per segment), apart from the shards.
	_ [cacheLine]byte
	// ids issues IDs: they grow in the order connections opened.
	ids atomic.Uint64
	// live counts the entries in the 4-tuple index (Config.MaxEntries).
	live atomic.Int64
	// tw counts the entries in TIME_WAIT (Config.TimeWaitLimit).
	tw atomic.Int64
	_  [cacheLine]byte
}

// histStripes is how many copies of the latency histograms the shards
// share: observations happen once per connection, not per segment, so a few
// stripes keep them off each other's cache lines for far less memory than
// one copy per shard (a copy is 8.5 KiB).
const histStripes = 8

// settings are what Tune changes, replaced whole.
type settings struct {
	timeWait, unclaimed time.Duration
	// twLimit is *Config.TimeWaitLimit, never negative.
	twLimit    int64
	synRecvCap int
}

func settingsOf(c Config) *settings {
	return &settings{
		timeWait: c.TimeWait, unclaimed: c.Unclaimed,
		twLimit: int64(max(*c.TimeWaitLimit, 0)), synRecvCap: max(c.MaxSynRecvPerClient, 0),
	}
}

// New returns an empty table.
func New(cfg Config) *Table {
	t := &Table{cfg: cfg.WithDefaults(), seed: maphash.MakeSeed()}
	t.set.Store(settingsOf(t.cfg))
	t.epoch = t.cfg.Now().Add(-time.Nanosecond)
	for i := range t.hist {
		t.hist[i].twDwell.SetBounds(TimeWaitBounds)
		t.hist[i].lifetime.SetBounds(LifetimeBounds)
	}
	for i := range t.shards {
		t.shards[i].init(i, &t.stripes[i%numStripes], &t.hist[i%histStripes])
	}
	return t
}

// Tune changes the TIME_WAIT duration and cap, the unclaimed timeout and the
// per-client handshake cap, as cfg gives them (with New's defaults), for
// what happens from now on: entries already in TIME_WAIT keep their
// deadline, and a lower cap cuts nothing short, it only stops new entries.
// MaxEntries and Now stay as New set them.
func (t *Table) Tune(cfg Config) {
	t.set.Store(settingsOf(cfg.WithDefaults()))
}

// hash returns the hash of the 4-tuple k: its low bits choose the shard,
// the others the bucket in the shard's index.
func (t *Table) hash(k key) uint64 { return maphash.Comparable(t.seed, k) }

// shardOf returns the shard of a 4-tuple whose hash is h.
func (t *Table) shardOf(h uint64) *shard { return &t.shards[h&(numShards-1)] }

// shardOfID returns the shard of the connection id, or nil for an ID no
// table issued.
func (t *Table) shardOfID(id ID) *shard {
	if id>>shardBits == 0 {
		return nil
	}
	return &t.shards[id&(numShards-1)]
}

// clientOf returns the client shard that counts the handshakes of k's
// client.
func (t *Table) clientOf(k key) *clientShard { return &t.clients[t.clientIndex(k.client)] }

func (t *Table) clientShardOf(client [16]byte) *clientShard {
	return &t.clients[t.clientIndex(client)]
}

func (t *Table) clientIndex(client [16]byte) int {
	return int(maphash.Comparable(t.seed, client) & (numClientShards - 1))
}

// reserveClient counts one more handshake for client if it has fewer than
// limit open (limit 0: no limit), and reports whether it did.
func (t *Table) reserveClient(client [16]byte, limit int) bool {
	i := t.clientIndex(client)
	ok, added := t.clients[i].reserve(client, limit)
	if added {
		t.clientsGrown.mark(i)
	}
	return ok
}

// reserveEntry counts one more entry if the table has room for it.
func (t *Table) reserveEntry() bool {
	if t.live.Add(1) > int64(t.cfg.MaxEntries) {
		t.live.Add(-1)
		return false
	}
	return true
}

// reserveTimeWait counts one more entry in TIME_WAIT if the cap allows it.
func (t *Table) reserveTimeWait(limit int64) bool {
	if t.tw.Add(1) > limit {
		t.tw.Add(-1)
		return false
	}
	return true
}

// Segment records one TCP segment that crossed the TUN. tu is always the
// client's view (Client = the client's address and port), whatever dir is.
func (t *Table) Segment(dir Dir, tu Tuple, s Segment) Action {
	now := t.now()
	k := keyOf(tu)
	h := t.hash(k)
	sh := t.shardOf(h)
	bareSYN := dir == FromClient && s.Flags&(FlagSYN|FlagACK|FlagRST) == FlagSYN
	for {
		var e *entry
		restarted := false
		if bareSYN {
			// A SYN's 4-tuple is usually new: open confirms that under
			// the shard's lock it takes anyway.
			if e = sh.findKey(k, h); e == nil {
				if a, ok := sh.open(t, k, h, s, now); ok {
					return a
				}
				continue // another SYN on k opened it first
			}
			if !sh.lockKeyed(e) {
				continue
			}
			if e.hasPrev && s.Seq == e.prevISS {
				// The client's next connection has opened the
				// 4-tuple meanwhile: the old duplicate must not reach
				// its handshake, which the netstack would abort.
				e.mu.Unlock()
				return Action{Kind: ActionStale}
			}
			if e.unclaimedLocked() && s.Seq != e.ends[sideClient].iss {
				// The client gave up a handshake nothing had answered
				// yet and opened the 4-tuple again with a new ISN (a
				// socket closed in SYN-SENT sends no RST). Its old SYN
				// will never be answered, and no handler could claim
				// the entry for the new one, whose retransmissions
				// would keep it alive: the entry is the new SYN's.
				// The client's own segments may have moved its end
				// on meanwhile (a SYN-ACK of its own: SYN-RECEIVED),
				// so the restart is counted as any move is.
				before := e.states()
				e.restartClientSYN(s, now)
				sh.settleLocked(t, e, before, now)
				restarted = true
			}
		} else {
			var ended uint16
			if e, ended = sh.lookupKeyEnded(k, h, now); e == nil {
				sh.counters.inc(cUntracked)
				if dir == ToClient {
					// What the netstack still sends for a connection
					// that is over keeps to its queue (ended.go).
					return Action{Queue: ended}
				}
				return Action{}
			}
		}
		if dir == FromClient && s.Queue != 0 {
			e.queue = s.Queue
		}
		a := sh.segmentLocked(t, e, dir, s, now)
		if restarted && a.Kind == ActionNone {
			// The new SYN opens the handshake as a first one would.
			a.Kind = ActionOpen
		}
		a.Queue = e.queue
		e.mu.Unlock()
		return a
	}
}

// segmentLocked runs s through e, whose lock is held.
func (sh *shard) segmentLocked(t *Table, e *entry, dir Dir, s Segment, now mono) Action {
	sh.touchLocked(t, e, now)
	if e.list == onTimeWait {
		if dir == FromClient {
			return sh.timeWaitLocked(t, e, s, now)
		}
		if s.Flags&FlagRST != 0 {
			// The netstack answers RST to what was queued on an
			// endpoint when it let it go for TIME_WAIT: TIME_WAIT is
			// conntrack's, and sends no RST.
			return Action{Kind: ActionDrop}
		}
	}
	var a Action
	if dir == ToClient {
		if ts, ok := e.freshSYNACKTS(s, now); ok {
			a.TSVal, s.TSVal = ts, ts
		}
	}
	before := e.states()
	switch e.segment(dir, s, now) {
	case outRSTIgnored:
		sh.counters.inc(cRSTIgnored)
	case outReset:
		sh.counters.inc(cResets)
	case outBadHandshakeACK:
		return Action{Kind: ActionReject, Answer: true, Reply: Reply{RST: true, Seq: s.Ack}}
	case outAckUnacceptable:
		if e.oowAckAt != 0 && now.sub(e.oowAckAt) < oowAckInterval {
			return Action{Kind: ActionReject}
		}
		e.oowAckAt = now
		return Action{Kind: ActionReject, Answer: true, Reply: e.timeWaitReply(now)}
	}
	sh.settleLocked(t, e, before, now)
	sh.afterLocked(t, e, now)
	return a
}

// ExpireTimeWait removes the entries whose TIME_WAIT has run out, and
// forgets the queues of ended connections kept past EndedLinger. It costs
// only what has expired (and a lock per shard), so the stack calls it
// often; the dwell recorded is the configured one, not the caller's
// lateness. It returns how many entries it removed.
func (t *Table) ExpireTimeWait() int {
	return t.expire(false)
}

// Tick runs the timers: TIME_WAIT expiry and entries no handler claimed,
// shard by shard, each costing only what it removes; then it gives back the
// memory of maps that have shrunk. The stack calls it periodically; it
// returns how many entries it removed.
func (t *Table) Tick() int {
	n := t.expire(true)
	for i := range t.grown.take() {
		if sh := &t.shards[i]; sh.compact() {
			t.grown.mark(i)
		}
	}
	for i := range t.clientsGrown.take() {
		if t.clients[i].compact() {
			t.clientsGrown.mark(i)
		}
	}
	return n
}

// expire visits the shards marked timed: an idle table costs a look at
// the marks, not at every shard.
func (t *Table) expire(unclaimed bool) int {
	now := t.now()
	var limit time.Duration
	if unclaimed {
		limit = t.set.Load().unclaimed
	}
	n := 0
	for i := range t.timed.take() {
		sh := &t.shards[i]
		n += sh.expire(t, now, limit)
		if sh.tw.n.Load() > 0 || sh.endedN.Load() > 0 || sh.unclaimed.n.Load() > 0 {
			t.timed.mark(i)
		}
	}
	return n
}

// lookup returns the entry of id, locked, and its shard; the entry is nil
// if id has none. The caller unlocks it.
func (t *Table) lookup(id ID) (*shard, *entry) {
	sh := t.shardOfID(id)
	if sh == nil {
		return nil, nil
	}
	return sh, sh.lookupID(id)
}

// Claim is called by the handler that took the client's SYN with sequence
// number seq from the netstack. It claims tu's entry only if that SYN opened
// it: the entry's client ISN is seq, tcpd's end is in SYN_RCVD and no
// handler has claimed it. It returns the entry's ID, or 0 with stale false
// when tu has no entry (the table was full when the SYN came, or its
// connection is over and nothing has opened the 4-tuple since), or 0 with
// stale true when tu's entry is not this SYN's to claim: a copy of the SYN
// that reached the netstack twice, the second time after its connection
// had ended and the client had opened the 4-tuple again with a new ISN, or
// after another handler had claimed the entry. The handler must then drop
// the SYN without a word and leave the entry alone: it is the client's
// next connection, which answering the old ISN would refuse.
func (t *Table) Claim(tu Tuple, seq uint32) (id ID, stale bool) {
	e := t.lookupTuple(tu)
	if e == nil {
		return 0, false
	}
	defer e.mu.Unlock()
	if !e.awaitsLocked(seq) {
		return 0, true
	}
	e.claimed = true
	return e.id, false
}

// AwaitsSYN reports whether the client's SYN with sequence number seq is
// the one tu's entry still waits for the netstack to see: the entry's
// client ISN is seq, tcpd's end is in SYN_RCVD, and no handler has claimed
// it. A copy of a SYN that the link kept back (Stack.reuseSYN) must not be
// delivered otherwise: a retransmission of it was delivered meanwhile, or
// the client has moved on to a newer connection on the 4-tuple, which a
// stale SYN would steal (the handler claims the tuple's entry) and refuse
// (the netstack's endpoint for the stale SYN answers the newer one with
// RST).
func (t *Table) AwaitsSYN(tu Tuple, seq uint32) bool {
	e := t.lookupTuple(tu)
	if e == nil {
		return false
	}
	defer e.mu.Unlock()
	return e.awaitsLocked(seq)
}

// awaitsLocked reports whether e waits for a handler to claim it for the
// client's SYN with sequence number seq.
func (e *entry) awaitsLocked(seq uint32) bool {
	c := &e.ends[sideClient]
	return !e.claimed && e.ends[sideTCPD].state == StateSynRecv && c.synSent && c.iss == seq
}

// Unanswered is called for the client's SYN with sequence number seq that
// the netstack dropped before any handler took it (every handshake slot
// was taken): tu's entry, if that SYN opened it and no handler has claimed
// it, is removed, as Linux keeps nothing of a SYN its full queue drops. A
// SYN flood then costs no entry per dropped SYN, and the state counts and
// `tcpd conns` show the handshakes tcpd holds, not the SYNs it ignored. The
// client's retransmission opens the 4-tuple again.
func (t *Table) Unanswered(tu Tuple, seq uint32) {
	k := keyOf(tu)
	h := t.hash(k)
	sh := t.shardOf(h)
	e := sh.lookupKey(k, h)
	if e == nil {
		return
	}
	defer e.mu.Unlock()
	if !e.awaitsLocked(seq) || e.held {
		return
	}
	sh.counters.inc(cExpired)
	sh.removeLocked(t, e, t.now())
}

// ResetToClient returns the RST tcpd's end of id's connection sends the
// client when tcpd gives the connection up by a timer (keepalive, the user
// timeout), <SEQ=tcpd's SND.NXT><CTL=RST> as Linux's tcp_send_active_reset
// sends it, and the connection's tuple. ok is false when the client's end
// is over already: it reset the connection, or closed it and tcpd saw it.
func (t *Table) ResetToClient(id ID) (tu Tuple, r Reply, ok bool) {
	_, e := t.lookup(id)
	if e == nil {
		return Tuple{}, Reply{}, false
	}
	defer e.mu.Unlock()
	switch e.ends[sideClient].state {
	case StateClosed, StateTimeWait:
		return Tuple{}, Reply{}, false
	}
	return e.key.tuple(), Reply{RST: true, Seq: e.ends[sideTCPD].nxt}, true
}

// Relaying records that a relay now carries id's bytes. From then on the
// entry outlives whatever ends the connection — a reset, a netstack timer,
// the end of TIME_WAIT — until Released. It reports false, attaching
// nothing, when id has no entry or its connection is over already: the
// caller must not relay it.
func (t *Table) Relaying(id ID) bool {
	sh, e := t.lookup(id)
	if e == nil {
		return false
	}
	defer e.mu.Unlock()
	if e.held || e.relay {
		return false
	}
	e.relay = true
	sh.relays.Add(1)
	return true
}

// Released records that id's relay has finished. An entry whose connection
// ended while its relay ran is removed now.
func (t *Table) Released(id ID) {
	now := t.now()
	sh, e := t.lookup(id)
	if e == nil {
		return
	}
	defer e.mu.Unlock()
	if !e.relay {
		return
	}
	e.relay = false
	sh.relays.Add(-1)
	if e.held {
		sh.removeLocked(t, e, now)
	}
}

// Relays returns how many entries have a relay attached.
func (t *Table) Relays() int {
	n := 0
	for i := range t.stripes {
		n += int(t.stripes[i].relays.Load())
	}
	return n
}

// Dialled records the upstream connect of id, which succeeded after d.
func (t *Table) Dialled(id ID, d time.Duration) {
	sh, e := t.lookup(id)
	if e == nil {
		return
	}
	defer e.mu.Unlock()
	e.dial = d
	sh.hist.dial.Observe(d)
}

// Gone reports that the netstack holds no endpoint for id any more and no
// segment will close it: the handshake failed or was abandoned, the handler
// dropped the SYN silently, or a netstack timer reaped the endpoint. The
// entry is removed, unless it is in TIME_WAIT: the netstack lets an
// endpoint go as it enters TIME_WAIT, and the entry is what remains of the
// connection until its own timer expires.
func (t *Table) Gone(id ID) {
	now := t.now()
	sh, e := t.lookup(id)
	if e == nil {
		return
	}
	defer e.mu.Unlock()
	if e.held || e.list == onTimeWait {
		return
	}
	sh.counters.inc(cExpired)
	sh.removeLocked(t, e, now)
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
	sh, e := t.lookup(id)
	if e == nil {
		return false, 0
	}
	defer e.mu.Unlock()
	if e.held {
		return false, 0
	}
	ours := e.ends[sideTCPD].state
	if ours == ns || (ours == StateEstablished && ns == StateFinWait1) || (ours == StateCloseWait && ns == StateLastAck) ||
		(e.list == onTimeWait && ns == StateTimeWait) {
		e.hasMismatch = false
		return false, ours
	}
	if !e.hasMismatch || e.mismatch != ns {
		e.hasMismatch, e.mismatch = true, ns
		return false, ours
	}
	e.hasMismatch = false
	sh.counters.inc(cCorrections)
	sh.setStateLocked(t, e, sideTCPD, ns, now)
	sh.afterLocked(t, e, now)
	return true, ours
}

// Snapshot returns counts, counters and histograms. It takes no lock: each
// figure is a sum of the shards' atomics, exact when nothing moves; while
// connections change state, a figure may include a change that another
// does not yet.
func (t *Table) Snapshot() Snapshot {
	var s Snapshot
	for i := range t.stripes {
		sp := &t.stripes[i]
		for st := range NumStates {
			s.States[st] += uint64(sp.counts[sideTCPD][st].Load())
			s.ClientStates[st] += uint64(sp.counts[sideClient][st].Load())
		}
		s.Live += int(sp.entries.Load())
		s.Relays += int(sp.relays.Load())
		sp.counters.addTo(&s.Counters)
	}
	s.TimeWait = int(t.tw.Load())
	set := t.set.Load()
	s.TimeWaitLimit = int(set.twLimit)
	s.TimeWaitTimeout = set.timeWait
	var hs [5][histStripes]*Histogram
	for i := range t.hist {
		h := &t.hist[i]
		hs[0][i], hs[1][i], hs[2][i], hs[3][i], hs[4][i] = &h.handshake, &h.dial, &h.setup, &h.twDwell, &h.lifetime
	}
	s.Handshake = snapshotOf(hs[0][:])
	s.Dial = snapshotOf(hs[1][:])
	s.Setup = snapshotOf(hs[2][:])
	s.TimeWaitDwell = snapshotOf(hs[3][:])
	s.Lifetime = snapshotOf(hs[4][:])
	return s
}

// Conns returns the live table, in ID order, keeping the rows keep accepts
// (nil keeps all). keep runs under one entry's lock at a time.
func (t *Table) Conns(keep func(*Conn) bool) []Conn {
	now := t.now()
	var out []Conn
	var es []*entry
	for i := range t.shards {
		sh := &t.shards[i]
		sh.mu.Lock()
		es = sh.byID.appendAll(es[:0])
		sh.mu.Unlock()
		for _, e := range es {
			e.mu.Lock()
			if !e.gone {
				c := e.connLocked(t, now)
				if keep == nil || keep(&c) {
					out = append(out, c)
				}
			}
			e.mu.Unlock()
		}
	}
	clear(es)
	sortConns(out)
	return out
}

// connLocked is e's row of the live table.
func (e *entry) connLocked(t *Table, now mono) Conn {
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
	if e.list == onTimeWait {
		c.TimeWaitLeft = max(e.twDeadline.sub(now), 0)
	}
	return c
}

// Len returns the number of live entries, without the cost of a Snapshot.
func (t *Table) Len() int {
	n := 0
	for i := range t.stripes {
		n += int(t.stripes[i].entries.Load())
	}
	return n
}

// lookupTuple returns tu's entry, locked, or nil.
func (t *Table) lookupTuple(tu Tuple) *entry {
	k := keyOf(tu)
	h := t.hash(k)
	return t.shardOf(h).lookupKey(k, h)
}

// Acknowledged returns how much of what tcpd sent after its SYN (its data,
// then its FIN) the client has acknowledged on id's connection, modulo
// 2^32; ok is false if id has no entry or the client has acknowledged
// nothing yet.
func (t *Table) Acknowledged(id ID) (n uint32, ok bool) {
	_, e := t.lookup(id)
	if e == nil {
		return 0, false
	}
	defer e.mu.Unlock()
	d, c := &e.ends[sideTCPD], &e.ends[sideClient]
	if !d.synSent || !c.ackSent {
		return 0, false
	}
	return c.ack - d.iss - 1, true
}

// Unacknowledged reports whether seq lies in what tcpd has sent on tu's
// connection and the client has not acknowledged (SND.UNA to SND.NXT, as
// Linux checks the segment an ICMP error quotes: RFC 5927 4.1). An error
// about anything else is forged or stale: no connection, the sequence
// number of another, or a connection tcpd keeps in TIME_WAIT, whose
// endpoint is gone and which has nothing in flight.
func (t *Table) Unacknowledged(tu Tuple, seq uint32) bool {
	e := t.lookupTuple(tu)
	if e == nil {
		return false
	}
	defer e.mu.Unlock()
	d, c := &e.ends[sideTCPD], &e.ends[sideClient]
	if e.held || e.list == onTimeWait || !d.synSent {
		return false
	}
	una := d.iss
	if c.ackSent && seqGT(c.ack, una) && seqLEQ(c.ack, d.nxt) {
		una = c.ack
	}
	return seqGEQ(seq, una) && seqLEQ(seq, d.nxt)
}
