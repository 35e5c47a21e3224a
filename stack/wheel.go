package stack

import (
	"math"
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
	// soonest[i] is no later than the earliest deadline in slot i: set
	// lowers it, advance sets it exactly as it passes the slot, stop
	// leaves it (a timer stopped costs at most one early wake).
	soonest [wheelSlots]int64
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
		w.soonest[t.slot] = min(w.soonest[t.slot], t.when)
	} else {
		w.soonest[t.slot] = t.when
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
// function may arm and stop timers; one it arms already due fires in the
// same advance (a fire must not do so for ever).
func (w *wheel) advance(now time.Time) {
	to := w.since(now)
	tick := int64(wheelTick)
	if w.armed == 0 {
		w.now = max(w.now, to)
		return
	}
	for {
		i := slotOf(w.now)
		// Again while a fire armed a timer already due: it went into
		// this slot, which the wheel is about to leave.
		for due := true; due; {
			for t := w.slots[i]; t != nil; {
				next := t.next
				if t.when <= to {
					w.stop(t)
					t.fire()
				}
				t = next
			}
			// What is left is due in a later turn, or later in this
			// slot.
			w.soonest[i] = math.MaxInt64
			for t := w.slots[i]; t != nil; t = t.next {
				w.soonest[i] = min(w.soonest[i], t.when)
			}
			due = w.soonest[i] <= to
		}
		if w.now/tick >= to/tick {
			return
		}
		w.now = (w.now/tick + 1) * tick
	}
}

// next returns how long from now until the wheel must advance: the
// deadline of the first slot, in the order the wheel passes them, that
// holds a timer due as it passes (it may be a stopped timer's, an early
// wake), or a turn, when every timer armed is due in a later one; ok is
// false when no timer is armed. A slot whose timers are all due in later
// turns is not a reason to wake: the shard would poll without sleeping
// for as long as the wheel stayed on it.
func (w *wheel) next(now time.Time) (d time.Duration, ok bool) {
	if w.armed == 0 {
		return 0, false
	}
	tick := int64(wheelTick)
	from := slotOf(w.now)
	start := w.now / tick * tick // of the slot the wheel is at
	at := start + wheelSlots*tick
	// The used slots from from on, going round once.
	for k := range len(w.used) + 1 {
		word := (from/64 + k) % len(w.used)
		m := w.used[word]
		if k == 0 {
			m &= ^uint64(0) << (from % 64)
		} else if k == len(w.used) {
			m &= 1<<(from%64) - 1
		}
		for ; m != 0; m &= m - 1 {
			slot := word*64 + bits.TrailingZeros64(m)
			i := int64((slot - from + wheelSlots) % wheelSlots)
			if w.soonest[slot] < start+(i+1)*tick {
				at = w.soonest[slot]
				return max(time.Duration(at-w.since(now)), 0), true
			}
		}
	}
	return max(time.Duration(at-w.since(now)), 0), true
}
