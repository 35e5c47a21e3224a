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
// then for endedLinger. A segment to the client that finds no entry asks
// this record (under the shard's lock that confirms the miss: a tracked
// segment never reads it). A new entry on the 4-tuple drops the record: its
// own queue answers then. Nothing else reads it: the states, counts,
// counters and the live table are as without it.

// endedLinger is how long a 4-tuple's queue is remembered once its entry
// has left the table: what the netstack still sends for it follows within
// its own processing of the last ACK and one round trip of the client's
// answer (microseconds to milliseconds), or a retransmission timeout or two
// (RFC 6298's one-second minimum; gVisor's is 200ms) if that ACK was lost
// inside tcpd.
const endedLinger = 2 * time.Second

// maxEnded caps the records the table keeps, like the TIME_WAIT cap: a
// record is about 130 bytes with its place on the expiry list, so the cap
// bounds them to about 8 MiB, 32,768 connections ending per second. A
// connection that ends beyond it is not remembered, and what the netstack
// sends for it after its end leaves on the queue of the endpoint's hash.
const maxEnded = 1 << 16

// endedRec is what a shard remembers of an ended 4-tuple: its last
// entry's ID and queue, and when the record expires; 0 while the entry is
// held.
type endedRec struct {
	id    ID
	queue uint16
	until mono
}

// endedItem is a record's place on its shard's expiry list.
type endedItem struct {
	k     key
	id    ID
	until mono
}

// endedLockedW records the queue of e, which is leaving the 4-tuple index,
// to expire endedLinger after now, or once released if its relay still
// runs (it will be held). The shard's lock is held.
func (sh *shard) endedLockedW(t *Table, e *entry, now mono) {
	if e.queue == 0 {
		return // no queue known: nothing to keep to
	}
	if _, ok := sh.ended[e.key]; !ok {
		if t.ended.Add(1) > maxEnded {
			t.ended.Add(-1)
			return
		}
		if sh.ended == nil {
			sh.ended = make(map[key]endedRec)
		}
	}
	r := endedRec{id: e.id, queue: e.queue}
	if !e.relay {
		r.until = now.add(endedLinger)
		sh.endedPushLockedW(e.key, e.id, r.until)
	}
	sh.ended[e.key] = r
}

// releasedLockedW starts the linger of the record of e, a held entry
// leaving the table. The shard's lock is held.
func (sh *shard) releasedLockedW(e *entry, now mono) {
	if r, ok := sh.ended[e.key]; ok && r.id == e.id {
		r.until = now.add(endedLinger)
		sh.ended[e.key] = r
		sh.endedPushLockedW(e.key, e.id, r.until)
	}
}

func (sh *shard) endedPushLockedW(k key, id ID, until mono) {
	sh.endedList = append(sh.endedList, endedItem{k: k, id: id, until: until})
	sh.endedN.Add(1)
}

// forgetEndedLockedW drops k's record: a new entry on k answers for it.
// The shard's lock is held; the record's place on the expiry list goes
// when it expires.
func (sh *shard) forgetEndedLockedW(t *Table, k key) {
	if _, ok := sh.ended[k]; ok {
		sh.dropEndedLockedW(t, k)
	}
}

func (sh *shard) dropEndedLockedW(t *Table, k key) {
	delete(sh.ended, k)
	t.ended.Add(-1)
	if len(sh.ended) == 0 {
		sh.ended = nil // a map never shrinks: give it back
	}
}

// endedQueueLocked returns the queue recorded for k, 0 if none lasts at
// now. The shard's lock is held.
func (sh *shard) endedQueueLocked(k key, now mono) uint16 {
	r, ok := sh.ended[k]
	if !ok || (r.until != 0 && now >= r.until) {
		return 0
	}
	return r.queue
}

// expireEndedLockedW drops up to budget records whose linger has run out,
// and reports how many places on the expiry list it took off. The shard's
// lock is held.
func (sh *shard) expireEndedLockedW(t *Table, now mono, budget int) int {
	n := 0
	for n < budget && sh.endedHead < len(sh.endedList) {
		it := &sh.endedList[sh.endedHead]
		if now < it.until {
			break
		}
		if r, ok := sh.ended[it.k]; ok && r.id == it.id && r.until == it.until {
			sh.dropEndedLockedW(t, it.k)
		}
		*it = endedItem{}
		sh.endedHead++
		n++
	}
	sh.endedN.Add(int64(-n))
	if sh.endedHead == len(sh.endedList) {
		// Empty: give its memory back, as the map's. A shard sees few
		// connections end within endedLinger, on most of the table's
		// shards none: keeping every shard's list would cost more.
		sh.endedList, sh.endedHead = nil, 0
	}
	return n
}
