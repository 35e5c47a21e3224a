package conntrack

import "time"

// A connection's end on the wire comes before its end in the netstack:
// conntrack removes an entry when it sees the client's ACK of tcpd's FIN
// (or a reset) cross the TUN, and the netstack's endpoint learns of it a
// moment later. What the endpoint sends meanwhile — a window update as the
// relay drains the last bytes, a retransmitted or tail-loss-probe FIN —
// and the RST it answers to the client's reply to that, still belong to
// the flow, and leave on the flow's queue like every packet before them
// (Action.Queue): written on another queue, they are the one packet of a
// flow that another packet loop handles.
//
// So a shard remembers the queue of each 4-tuple whose entry left the
// 4-tuple index: for as long as the entry is held (its relay still runs),
// then for EndedLinger. A segment to the client that finds no entry asks
// this record (under the shard's lock that confirms the miss: a tracked
// segment never reads it). A new entry on the 4-tuple drops the record: its
// own queue answers then. Besides the queue, the record keeps the client's
// ISN, by which a SYN that finds no entry is known for an old duplicate of
// the connection that has ended (ActionStale). Nothing else reads it: the
// states, counts, counters and the live table are as without it.

// EndedLinger is how long a 4-tuple's queue is remembered once its entry
// has left the table: what the netstack still sends for it follows within
// its own processing of the last ACK and one round trip of the client's
// answer (microseconds to milliseconds), or a retransmission timeout or two
// (RFC 6298's one-second minimum; gVisor's is 200ms) if that ACK was lost
// inside tcpd.
const EndedLinger = 2 * time.Second

// maxEndedPerShard caps the records a shard keeps. Per shard, not per
// table: a table-wide count would be an atomic on a line every core
// shares, changed under the shard's lock at every connection's end. A
// shard's records are a slice searched in full, at most eight of them:
// with 4-tuples spread by hash, a shard holds more only when the table
// remembers tens of thousands of ends at once (in TestEndedBounded about
// 99 % of 65,536 connections ended at once are remembered). A connection
// that ends beyond the cap is not remembered, and what the netstack sends
// for it after its end leaves on the queue of the endpoint's hash. The
// records of 65,536 ended connections held about 8 MiB, of every shard at
// the cap about 11 MiB (262,144 connections ended at once).
const maxEndedPerShard = 8

// endedRec is what a shard remembers of an ended 4-tuple: its last
// entry's ID and queue, and when the record expires, 0 while the entry is
// held; and the client's ISN, if its connection got through its handshake
// (synced).
type endedRec struct {
	k      key
	id     ID
	queue  uint16
	synced bool
	iss    uint32
	until  mono
}

// endedAt returns the index of k's record, -1 if there is none. The
// shard's lock is held.
func (sh *shard) endedAt(k key) int {
	for i := range sh.ended {
		if sh.ended[i].k == k {
			return i
		}
	}
	return -1
}

// endedLockedW records the queue of e, which is leaving the 4-tuple index,
// to expire EndedLinger after now, or once released if its relay still
// runs (it will be held). The shard's lock is held.
func (sh *shard) endedLockedW(t *Table, e *entry, now mono) {
	if e.queue == 0 {
		return // no queue known: nothing to keep to
	}
	c := &e.ends[sideClient]
	r := endedRec{k: e.key, id: e.id, queue: e.queue, synced: e.established != 0 && c.synSent, iss: c.iss}
	if !e.relay {
		r.until = now.add(EndedLinger)
	}
	if i := sh.endedAt(e.key); i >= 0 {
		sh.ended[i] = r
		return
	}
	if len(sh.ended) < maxEndedPerShard {
		sh.ended = append(sh.ended, r)
		sh.endedN.Store(int64(len(sh.ended)))
		t.timed.mark(sh.idx)
	}
}

// releasedLockedW starts the linger of the record of e, a held entry
// leaving the table. The shard's lock is held.
func (sh *shard) releasedLockedW(e *entry, now mono) {
	if i := sh.endedAt(e.key); i >= 0 && sh.ended[i].id == e.id {
		sh.ended[i].until = now.add(EndedLinger)
	}
}

// forgetEndedLockedW drops k's record: a new entry on k answers for it.
// The shard's lock is held.
func (sh *shard) forgetEndedLockedW(k key) {
	if i := sh.endedAt(k); i >= 0 {
		sh.dropEndedLockedW(i)
	}
}

// dropEndedLockedW drops the record at i. The shard's lock is held.
func (sh *shard) dropEndedLockedW(i int) {
	last := len(sh.ended) - 1
	sh.ended[i] = sh.ended[last]
	sh.ended = sh.ended[:last]
	if last == 0 {
		sh.ended = nil // most shards see no end for a while: give it back
	}
	sh.endedN.Store(int64(last))
}

// endedQueueLocked returns the queue recorded for k, 0 if none lasts at
// now. The shard's lock is held.
func (sh *shard) endedQueueLocked(k key, now mono) uint16 {
	if i := sh.endedAt(k); i >= 0 && sh.ended[i].lasts(now) {
		return sh.ended[i].queue
	}
	return 0
}

// lasts reports whether r is remembered at now: held, or in its linger.
func (r *endedRec) lasts(now mono) bool { return r.until == 0 || now < r.until }

// endedISSLocked returns the client's ISN of k's last connection if it got
// through its handshake and its record lasts. A SYN on k with that ISN is
// an old duplicate: tcpd saw the client acknowledge its SYN-ACK, so the
// client has that SYN answered and will not send it for a new connection.
// A client that gives a handshake up and tries again with the same ISN is
// not taken for one: its connection never got through. The shard's lock
// is held.
func (sh *shard) endedISSLocked(k key, now mono) (uint32, bool) {
	if i := sh.endedAt(k); i >= 0 {
		if r := &sh.ended[i]; r.synced && r.lasts(now) {
			return r.iss, true
		}
	}
	return 0, false
}

// expireEndedLockedW drops the records whose linger has run out (at most
// maxEndedPerShard) and reports how many. The shard's lock is held.
func (sh *shard) expireEndedLockedW(now mono) int {
	n := 0
	for i := 0; i < len(sh.ended); {
		if u := sh.ended[i].until; u != 0 && now >= u {
			sh.dropEndedLockedW(i)
			n++
			continue
		}
		i++
	}
	return n
}
