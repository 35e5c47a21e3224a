package stack

import (
	"math/bits"
	"time"
)

// wheel is a hashed timing wheel: a shard's timeouts (dial, handshake, idle,
// half-close) without a runtime timer per connection. Each slot covers
// wheelTick; a timer further away than one turn waits in its slot for as
// many turns as it needs. Arming and stopping cost O(1); advancing costs
// the slots passed and the timers in them. A timer fires at most a tick
// late. A wheel belongs to one goroutine (its shard's) and has no lock.
type wheel struct {
	slots [wheelSlots]*timer
	// used has bit i set while slot i holds a timer, for next.
	used [wheelSlots / 64]uint64
	// now is a time within the slot the wheel is at, in ns since start.
	now   int64
	start time.Time
	// armed counts the timers in the wheel.
	armed int
}

const (
	// wheelTick is the wheel's resolution. The shortest timeout it serves
	// is upstream.dial_timeout's least, 100 ms; the usual ones are
	// seconds.
	wheelTick  = 10 * time.Millisecond
	wheelSlots = 512 // a turn: 5.12 s
)

// timer is one timeout, embedded in what it times.
type timer struct {
	when       int64 // deadline, ns since the wheel's start
	slot       int
	prev, next *timer
	armed      bool
	// fire is called by advance, on the wheel's goroutine, once the
	// deadline has passed.
	fire func()
}

func newWheel(now time.Time) *wheel { return &wheel{start: now} }

func (w *wheel) since(t time.Time) int64 { return int64(t.Sub(w.start)) }

func slotOf(at int64) int { return int(at/int64(wheelTick)) % wheelSlots }

// set arms t to fire at when, moving it if it was armed. A deadline already
// past fires at the next advance.
func (w *wheel) set(t *timer, when time.Time) {
	w.stop(t)
	t.when = w.since(when)
	t.slot = slotOf(max(t.when, w.now))
	t.prev, t.next = nil, w.slots[t.slot]
	if t.next != nil {
		t.next.prev = t
	}
	w.slots[t.slot] = t
	w.used[t.slot/64] |= 1 << (t.slot % 64)
	t.armed = true
	w.armed++
}

// stop disarms t; a timer not armed is left alone.
func (w *wheel) stop(t *timer) {
	if !t.armed {
		return
	}
	if t.prev != nil {
		t.prev.next = t.next
	} else {
		w.slots[t.slot] = t.next
		if t.next == nil {
			w.used[t.slot/64] &^= 1 << (t.slot % 64)
		}
	}
	if t.next != nil {
		t.next.prev = t.prev
	}
	t.prev, t.next, t.armed = nil, nil, false
	w.armed--
}

// advance fires every timer whose deadline is at or before now. A fire
// function may arm and stop timers; one it arms already due fires at the
// next advance.
func (w *wheel) advance(now time.Time) {
	to := w.since(now)
	tick := int64(wheelTick)
	if w.armed == 0 {
		w.now = max(w.now, to)
		return
	}
	for {
		for t := w.slots[slotOf(w.now)]; t != nil; {
			next := t.next
			if t.when <= to {
				w.stop(t)
				t.fire()
			}
			t = next
		}
		if w.now/tick >= to/tick {
			return
		}
		w.now = (w.now/tick + 1) * tick
	}
}

// next returns how long from now until the earliest slot holding a timer,
// at most a turn; ok is false when no timer is armed.
func (w *wheel) next(now time.Time) (d time.Duration, ok bool) {
	if w.armed == 0 {
		return 0, false
	}
	tick := int64(wheelTick)
	from := slotOf(w.now)
	// The first used slot at or after from, going round once.
	i := 0
	for k := range len(w.used) + 1 {
		word := (from/64 + k) % len(w.used)
		m := w.used[word]
		if k == 0 {
			m &= ^uint64(0) << (from % 64)
		} else if k == len(w.used) {
			m &= 1<<(from%64) - 1
		}
		if m != 0 {
			i = (word*64 + bits.TrailingZeros64(m) - from + wheelSlots) % wheelSlots
			break
		}
	}
	at := (w.now/tick + int64(i)) * tick
	return max(time.Duration(at-w.since(now)), 0), true
}
