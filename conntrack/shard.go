package conntrack

import (
	"sync"
	"sync/atomic"
	"time"
)

// The table is split into numShards shards by a hash of the 4-tuple, so
// that the packet loops of a multi-queue TUN, each on flows of its own,
// rarely meet. A connection lives in one shard for its whole life; its ID
// carries the shard's index, so lookups by ID need no table-wide map.
//
// Locks, in the order they are taken:
//  1. an entry's mu: its state machine and the fields beside it;
//  2. its shard's mu: to add or remove an entry and to change the shard's
//     timer lists; lookups take no lock (index.go);
//  3. a client shard's mu (clients.go).
// A segment of an established connection looks its entry up without a lock
// and then takes the entry's own, which no other flow wants: packet loops
// on different flows never wait for each other. The shard's lock is taken
// a few times per connection (opened, closed, into TIME_WAIT), never per
// segment, and held for a few pointer changes. Counts, counters and the
// shard's sizes are atomics, summed by Snapshot without a lock.
//
// Work under a shard's lock that needs an entry's lock as well (the
// timers, which walk the lists) only tries it (TryLock) and leaves an entry
// that is busy for the next round.

// numShards is a power of two well above the core counts tcpd is planned
// for (64), and high enough that a loop which the kernel deschedules while
// it holds a shard's lock is rarely waited for: with 16 loops on 2 cores,
// 256 shards left each new connection waiting tens of microseconds on
// average for such holders, 16384 a few (bench/README.md). A shard is small
// (its counts are in stripes, its indexes allocated at their first entry):
// the table's fixed cost is a few MiB.
const (
	shardBits = 14
	numShards = 1 << shardBits
)

// cacheLine separates what different cores write: 64 bytes on amd64 and
// arm64, 128 where adjacent-line prefetch pairs lines; the larger is safe.
const cacheLine = 128

// listKind says which of its shard's timer lists an entry is on.
type listKind uint8

const (
	onNone listKind = iota
	// onTimeWait: the TIME_WAIT list, in deadline order (one timeout for
	// all, so the order of entry is the order of expiry).
	onTimeWait
	// onUnclaimed: entries opened by a SYN, in order of their last
	// segment while no handler had claimed them and tcpd had not answered.
	// An entry that has been claimed or answered since is taken off
	// lazily, when the timers reach it or it enters TIME_WAIT.
	onUnclaimed
)

type entry struct {
	// mu guards everything below but links, prev and next; list, listAt
	// and twDeadline change only with mu and the shard's lock both held,
	// so either lock suffices to read them.
	mu sync.Mutex
	machine
	id  ID
	key key
	// khash is the key's hash (Table.hash); links chain the entry in its
	// shard's indexes.
	khash uint64
	links [numLinks]atomic.Pointer[entry]

	opened      mono
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
	// unkeyed says the entry has left the 4-tuple index, gone that it has
	// left the table: a lookup that raced with its removal looks again.
	unkeyed, gone bool
	// mss and clampedFrom come from the client's SYN (Segment.MSS,
	// Segment.ClampedFrom).
	mss, clampedFrom uint16
	// queue is the Segment.Queue of the client's latest segment.
	queue uint16

	// list, prev and next place the entry on one of its shard's timer
	// lists (prev and next are the shard's, under its lock); listAt
	// is when it joined its place on the unclaimed list, twDeadline when
	// its TIME_WAIT ends.
	list       listKind
	prev, next *entry
	listAt     mono
	twDeadline mono
	twSince    mono

	// mismatch is the netstack state seen differing at the last reconcile.
	mismatch    State
	hasMismatch bool

	// prevISS is the client's ISN of the 4-tuple's connection before
	// this one, if that one got through its handshake and ended less than
	// EndedLinger before this one opened (hasPrev): a SYN with it is an
	// old duplicate (ActionStale).
	hasPrev bool
	prevISS uint32
}

// list is a doubly linked list of entries through their prev and next.
type list struct {
	head, tail *entry
	n          atomic.Int64
}

func (l *list) push(e *entry, k listKind) {
	e.list = k
	e.prev, e.next = l.tail, nil
	if l.tail != nil {
		l.tail.next = e
	} else {
		l.head = e
	}
	l.tail = e
	l.n.Add(1)
}

func (l *list) unlink(e *entry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		l.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		l.tail = e.prev
	}
	e.prev, e.next, e.list = nil, nil, onNone
	l.n.Add(-1)
}

// shard is one part of the table.
type shard struct {
	// mu serialises changes to the indexes, the timer lists and the
	// records of ended 4-tuples.
	mu        sync.Mutex
	byKey     index
	byID      index
	tw        list
	unclaimed list
	// ended holds the queues of 4-tuples whose entries have left byKey
	// (ended.go); endedN is its length, for Table.expire to read without
	// the lock.
	ended  []endedRec
	endedN atomic.Int64
	// The stripe of counts this shard adds to, and the histogram stripe it
	// observes into; idx is the shard's place in the table, which its
	// entries' IDs carry.
	*stripe
	hist *histograms
	idx  int
}

// numStripes is how many copies of the counts the shards share: a change
// of state is an atomic add on one of them, and a snapshot sums them, so
// they are kept few, each on cache lines of its own.
const numStripes = 256

// stripe holds what Snapshot sums for the shards that share it: entries
// (those in byID), entries with a relay attached, entries per state of
// each end, and counters.
type stripe struct {
	entries  atomic.Int64
	relays   atomic.Int64
	counts   [2][NumStates]atomic.Int64
	counters counterSet

	_ [cacheLine]byte
}

// histograms are one stripe of the table's latency histograms.
type histograms struct {
	handshake, dial, setup, twDwell, lifetime Histogram
}

func keyHash(e *entry) uint64 { return e.khash >> shardBits }
func idHash(e *entry) uint64  { return uint64(e.id) >> shardBits }

func (sh *shard) init(idx int, st *stripe, hist *histograms) {
	sh.idx, sh.stripe, sh.hist = idx, st, hist
	sh.byKey.init(linkKey, keyHash)
	sh.byID.init(linkID, idHash)
}

// findKey returns the entry of k, whose hash is h, if the index holds it:
// without the shard's lock, a miss may be wrong (see index).
func (sh *shard) findKey(k key, h uint64) *entry {
	for e := sh.byKey.head(h >> shardBits); e != nil; e = sh.byKey.next(e) {
		if e.khash == h && e.key == k {
			return e
		}
	}
	return nil
}

func (sh *shard) findID(id ID) *entry {
	for e := sh.byID.head(uint64(id) >> shardBits); e != nil; e = sh.byID.next(e) {
		if e.id == id {
			return e
		}
	}
	return nil
}

// lookupKey returns the entry of k, whose hash is h, locked, or nil. A miss
// is confirmed under the shard's lock; an entry removed between the lookup
// and its lock is looked up again.
func (sh *shard) lookupKey(k key, h uint64) *entry {
	e, _ := sh.lookupKeyEnded(k, h, 0)
	return e
}

// lookupKeyEnded is lookupKey that, on a miss, also returns the queue
// recorded for k's ended connection at now (endedQueueLocked), read under
// the lock that confirms the miss.
func (sh *shard) lookupKeyEnded(k key, h uint64, now mono) (*entry, uint16) {
	for {
		e := sh.findKey(k, h)
		if e == nil {
			var queue uint16
			sh.mu.Lock()
			if e = sh.findKey(k, h); e == nil {
				queue = sh.endedQueueLocked(k, now)
			}
			sh.mu.Unlock()
			if e == nil {
				return nil, queue
			}
		}
		if sh.lockKeyed(e) {
			return e, 0
		}
	}
}

// lockKeyed locks e and reports true if it is still in the 4-tuple index;
// otherwise it leaves it unlocked: it was removed since it was found.
func (sh *shard) lockKeyed(e *entry) bool {
	e.mu.Lock()
	if e.unkeyed {
		e.mu.Unlock()
		return false
	}
	return true
}

// lookupID returns the entry of id, locked, or nil.
func (sh *shard) lookupID(id ID) *entry {
	e := sh.findID(id)
	if e == nil {
		sh.mu.Lock()
		e = sh.findID(id)
		sh.mu.Unlock()
		if e == nil {
			return nil
		}
	}
	e.mu.Lock()
	if e.gone {
		e.mu.Unlock()
		return nil
	}
	return e
}

// compact shrinks the indexes' bucket arrays once they are four times the
// entries they hold: after a burst of 100,000 connections they would keep
// their peak's memory for good. It reports whether buckets remain.
func (sh *shard) compact() bool {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.byKey.shrinkLocked()
	sh.byID.shrinkLocked()
	return sh.byKey.buckets.Load() != nil || sh.byID.buckets.Load() != nil
}

// compacted returns a copy of m sized for what it holds.
func compacted[K comparable, V any](m map[K]V) map[K]V {
	c := make(map[K]V, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// newEntry builds an entry for the client's SYN s on k, whose hash is h,
// counted in its states but in no index yet. The caller has reserved its
// place in the table (Table.reserveEntry) and in the client's handshakes.
func (sh *shard) newEntry(t *Table, k key, h uint64, s Segment, now mono) *entry {
	e := &entry{
		machine: opened(s, now),
		id:      ID(t.ids.Add(1)<<shardBits | uint64(sh.idx)),
		key:     k, khash: h, opened: now, listAt: now, mss: s.MSS, clampedFrom: s.ClampedFrom,
		queue: s.Queue,
	}
	sh.counts[sideTCPD][StateSynRecv].Add(1)
	sh.counts[sideClient][StateSynSent].Add(1)
	return e
}

// insertLocked puts a new entry into the shard's indexes, which publishes
// it, in place of the record of an ended connection on its 4-tuple. The
// shard's lock is held; the caller counts the entry (inserted)
// once it has let the lock go, as every atomic on a line other shards
// share: another core may hold the line, and the lock would wait for it.
func (sh *shard) insertLocked(t *Table, e *entry) {
	sh.forgetEndedLockedW(e.key)
	sh.byKey.insertLocked(e)
	sh.byID.insertLocked(e)
	sh.unclaimed.push(e, onUnclaimed)
	t.timed.mark(sh.idx)
	t.grown.mark(sh.idx)
}

// inserted counts an entry that insertLocked has inserted.
func (sh *shard) inserted() {
	sh.entries.Add(1)
	sh.counters.inc(cOpened)
}

// open tracks the client's SYN s on k (hash h), which has no entry. It
// reports false if another SYN on k opened one first: the caller looks
// again.
func (sh *shard) open(t *Table, k key, h uint64, s Segment, now mono) (Action, bool) {
	if !t.reserveClient(k.client, t.set.Load().synRecvCap) {
		return Action{Kind: ActionRefuse}, true
	}
	if !t.reserveEntry() {
		sh.counters.inc(cTableFull)
		t.clientOf(k).release(k.client)
		return Action{}, true
	}
	e := sh.newEntry(t, k, h, s, now)
	sh.mu.Lock()
	other := sh.findKey(k, h) != nil
	var stale bool
	if !other {
		e.prevISS, e.hasPrev = sh.endedISSLocked(k, now)
		stale = e.hasPrev && e.prevISS == s.Seq
	}
	if other || stale {
		sh.mu.Unlock()
		sh.counts[sideTCPD][StateSynRecv].Add(-1)
		sh.counts[sideClient][StateSynSent].Add(-1)
		t.live.Add(-1)
		t.clientOf(k).release(k.client)
		if stale {
			return Action{Kind: ActionStale}, true
		}
		return Action{}, false
	}
	sh.insertLocked(t, e)
	sh.mu.Unlock()
	sh.inserted()
	return Action{Kind: ActionOpen, Queue: s.Queue}, true
}

// The methods below run with the entry's lock held (their names end in
// Locked); those ending in LockedW with its shard's lock held too.

// setStateLocked moves one end of e to s and does the bookkeeping.
func (sh *shard) setStateLocked(t *Table, e *entry, side int, s State, now mono) {
	before := e.states()
	e.setState(side, s, now)
	sh.settleLocked(t, e, before, now)
}

// settleLocked does the bookkeeping of whatever the machine did to e's
// states since they were before: the counts per state, the client's count
// of handshakes, the TIME_WAIT list when tcpd's end leaves it, and the
// handshake's histograms when tcpd's end is established. afterLocked
// follows for what tcpd's new state implies. It takes the shard's write
// lock only if e is on the TIME_WAIT list and leaves TIME_WAIT.
func (sh *shard) settleLocked(t *Table, e *entry, before [2]State, now mono) {
	after := e.states()
	for side := range after {
		if before[side] != after[side] {
			sh.counts[side][before[side]].Add(-1)
			sh.counts[side][after[side]].Add(1)
		}
	}
	b, a := before[sideTCPD], after[sideTCPD]
	if b == a {
		return
	}
	if b == StateSynRecv {
		t.clientOf(e.key).release(e.key.client)
	}
	if a == StateSynRecv {
		// A state the table corrects to, not a SYN it may refuse: no cap.
		t.reserveClient(e.key.client, 0)
	}
	if e.list == onTimeWait {
		sh.mu.Lock()
		sh.twLeaveLockedW(t, e)
		sh.mu.Unlock()
	}
	if a == StateEstablished {
		sh.establishedLocked(e, now)
	}
}

// unclaimedLocked reports whether e is one the unclaimed timer removes:
// opened by a SYN no handler claimed, and not answered by tcpd.
func (e *entry) unclaimedLocked() bool {
	return !e.claimed && e.ends[sideTCPD].state == StateSynRecv && !e.ends[sideTCPD].synSent
}

// touchLocked records a segment on e: an unclaimed entry is kept for
// Unclaimed after its last one.
func (sh *shard) touchLocked(t *Table, e *entry, now mono) {
	if e.list == onUnclaimed && e.unclaimedLocked() {
		sh.mu.Lock()
		sh.unclaimed.unlink(e)
		e.listAt = now
		sh.unclaimed.push(e, onUnclaimed)
		t.timed.mark(sh.idx)
		sh.mu.Unlock()
	}
}

// afterLocked applies what tcpd's new state implies: TIME_WAIT accounting
// and removal once closed.
func (sh *shard) afterLocked(t *Table, e *entry, now mono) {
	switch e.ends[sideTCPD].state {
	case StateTimeWait:
		if e.list == onTimeWait {
			return
		}
		sh.observeLifetimeLocked(e, now)
		set := t.set.Load()
		reserved := t.reserveTimeWait(set.twLimit)
		sh.mu.Lock()
		defer sh.mu.Unlock()
		if !reserved {
			// The netstack has let the endpoint go already: the
			// connection simply has no TIME_WAIT, as beyond Linux's
			// tcp_max_tw_buckets.
			sh.counters.inc(cTimeWaitOverflow)
			sh.removeLockedW(t, e, now)
			return
		}
		sh.counters.inc(cTimeWaitEntered)
		if e.list == onUnclaimed {
			sh.unclaimed.unlink(e)
		}
		e.twSince = now
		sh.twPushLockedW(t, e, now, set.timeWait)
	case StateClosed:
		sh.removeLocked(t, e, now)
	}
}

// twPushLockedW puts e at the end of the TIME_WAIT list, to expire after d.
// The table's count of TIME_WAIT entries includes it already.
func (sh *shard) twPushLockedW(t *Table, e *entry, now mono, d time.Duration) {
	e.twDeadline = now.add(d)
	sh.tw.push(e, onTimeWait)
	t.timed.mark(sh.idx)
}

// twLeaveLockedW takes e off the TIME_WAIT list for good.
func (sh *shard) twLeaveLockedW(t *Table, e *entry) {
	sh.tw.unlink(e)
	t.tw.Add(-1)
}

func (sh *shard) establishedLocked(e *entry, now mono) {
	if e.established != 0 {
		return
	}
	e.established = now
	sh.counters.inc(cEstablished)
	if e.synAckAt != 0 {
		e.handshake = now.sub(e.synAckAt)
		sh.hist.handshake.Observe(e.handshake)
	}
	sh.hist.setup.Observe(now.sub(e.opened))
}

func (sh *shard) observeLifetimeLocked(e *entry, now mono) {
	if !e.lifetimeObs && e.established != 0 {
		e.lifetimeObs = true
		sh.hist.lifetime.Observe(now.sub(e.established))
	}
}

// removeLocked is removeLockedW taking the shard's lock.
func (sh *shard) removeLocked(t *Table, e *entry, now mono) {
	sh.mu.Lock()
	sh.removeLockedW(t, e, now)
	sh.mu.Unlock()
}

// removeLockedW forgets e. The caller has already counted why. An entry
// whose relay still runs is only held (see entry.held) until Released: a
// relay never runs without its entry, so `tcpd conns` can show and kill
// whatever tcpd still spends on the connection. Its queue stays recorded
// for the segments the netstack still sends (ended.go), unless it leaves
// TIME_WAIT, which is conntrack's alone: the netstack let its endpoint go
// as it entered.
func (sh *shard) removeLockedW(t *Table, e *entry, now mono) {
	netstackDone := e.list == onTimeWait
	switch e.list {
	case onTimeWait:
		sh.twLeaveLockedW(t, e)
	case onUnclaimed:
		sh.unclaimed.unlink(e)
	}
	sh.observeLifetimeLocked(e, now)
	if !e.unkeyed {
		e.unkeyed = true
		sh.byKey.removeLocked(e)
		t.live.Add(-1)
		if !netstackDone {
			sh.endedLockedW(t, e, now)
		}
	}
	if e.relay {
		if !e.held {
			e.held = true
			// Off every list already: settleLocked takes no lock.
			before := e.states()
			for side := range e.ends {
				e.setState(side, StateClosed, now)
			}
			sh.settleLocked(t, e, before, now)
		}
		return
	}
	for side := range e.ends {
		sh.counts[side][e.ends[side].state].Add(-1)
	}
	if e.ends[sideTCPD].state == StateSynRecv {
		t.clientOf(e.key).release(e.key.client)
	}
	if e.held {
		sh.releasedLockedW(e, now)
	}
	e.gone = true
	sh.byID.removeLocked(e)
	sh.entries.Add(-1)
	sh.counters.inc(cClosed)
}

// expireBatch bounds the entries expire removes under one hold of the
// shard's lock, so that a connection opening or closing on the shard waits
// at most for that many removals (a few microseconds) whatever the backlog.
const expireBatch = 32

// expire removes the entries whose TIME_WAIT has run out and, with
// unclaimed set, the unclaimed entries idle for that long, and forgets the
// records of ended 4-tuples past their linger. It costs only what it
// removes, the lists being in expiry order, in batches under the
// shard's lock; an entry whose lock is busy waits for the next
// round. The dwell recorded is the configured one, not the caller's
// lateness.
func (sh *shard) expire(t *Table, now mono, unclaimed time.Duration) int {
	n := 0
	for {
		removed, more := sh.expireBatch(t, now, unclaimed)
		n += removed
		if !more {
			return n
		}
	}
}

// expireBatch is one batch of expire; more says the batch ended at its
// bound, not at the end of what has expired.
func (sh *shard) expireBatch(t *Table, now mono, unclaimed time.Duration) (n int, more bool) {
	// The dwells are observed once the lock is let go: the histograms'
	// lines are shared.
	var dwell [expireBatch]time.Duration
	nd := 0
	defer func() {
		for _, d := range dwell[:nd] {
			sh.hist.twDwell.Observe(d)
		}
	}()
	sh.mu.Lock()
	defer sh.mu.Unlock()
	budget := expireBatch
	for e := sh.tw.head; e != nil && now >= e.twDeadline; e = sh.tw.head {
		if budget == 0 {
			return n, true
		}
		if !e.mu.TryLock() {
			break
		}
		dwell[nd] = e.twDeadline.sub(e.twSince)
		nd++
		sh.removeLockedW(t, e, now)
		e.mu.Unlock()
		n++
		budget--
	}
	sh.expireEndedLockedW(now)
	if unclaimed <= 0 {
		return n, false
	}
	for e := sh.unclaimed.head; e != nil && now.sub(e.listAt) >= unclaimed; e = sh.unclaimed.head {
		if budget == 0 {
			return n, true
		}
		if !e.mu.TryLock() {
			break
		}
		if e.unclaimedLocked() {
			sh.counters.inc(cExpired)
			sh.removeLockedW(t, e, now)
			n++
		} else {
			sh.unclaimed.unlink(e)
		}
		e.mu.Unlock()
		budget--
	}
	return n, false
}
