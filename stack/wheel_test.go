package stack

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// TestWheel arms timers across several turns, stops some, moves others,
// and advances in uneven steps: each fires once, never early, at most a
// tick late, and a stopped one never.
func TestWheel(t *testing.T) {
	start := time.Unix(1000, 0)
	w := newWheel(start)
	rng := rand.New(rand.NewPCG(1, 2))
	type rec struct {
		when  time.Time
		fired []time.Time
		tm    timer
		dead  bool
	}
	var now time.Time
	recs := make([]*rec, 2000)
	for i := range recs {
		r := &rec{when: start.Add(time.Duration(rng.Int64N(int64(20 * time.Second))))}
		r.tm.fire = func() { r.fired = append(r.fired, now) }
		recs[i] = r
		w.set(&r.tm, r.when)
	}
	for i, r := range recs {
		switch i % 5 {
		case 0:
			w.stop(&r.tm)
			r.dead = true
		case 1:
			r.when = r.when.Add(3 * time.Second)
			w.set(&r.tm, r.when)
		}
	}
	for now = start; now.Before(start.Add(30 * time.Second)); now = now.Add(time.Duration(rng.Int64N(int64(700 * time.Millisecond)))) {
		w.advance(now)
		checkNext(t, w, now, start)
	}
	w.advance(now)
	for i, r := range recs {
		switch {
		case r.dead && len(r.fired) != 0:
			t.Fatalf("timer %d fired after stop", i)
		case r.dead:
		case len(r.fired) != 1:
			t.Fatalf("timer %d fired %d times", i, len(r.fired))
		case r.fired[0].Before(r.when):
			t.Fatalf("timer %d fired at %v, before its deadline %v", i, r.fired[0].Sub(start), r.when.Sub(start))
		}
	}
	if w.armed != 0 {
		t.Fatalf("%d timers still armed", w.armed)
	}
}

// TestWheelNext checks that the wheel says when to wake, and that a timer
// fires at most a tick after its deadline when advanced at that time.
func TestWheelNext(t *testing.T) {
	start := time.Unix(1000, 0)
	w := newWheel(start)
	if _, ok := w.next(start); ok {
		t.Fatal("an empty wheel wants to be woken")
	}
	var fired []time.Duration
	var now time.Time
	for _, d := range []time.Duration{35 * time.Millisecond, 2 * time.Second, 7 * time.Second} {
		tm := &timer{}
		tm.fire = func() { fired = append(fired, now.Sub(start)) }
		w.set(tm, start.Add(d))
	}
	now = start
	for len(fired) < 3 && now.Before(start.Add(10*time.Second)) {
		d := checkNext(t, w, now, start)
		now = now.Add(d)
		w.advance(now)
	}
	want := []time.Duration{35 * time.Millisecond, 2 * time.Second, 7 * time.Second}
	if len(fired) != 3 {
		t.Fatalf("fired %v", fired)
	}
	for i := range want {
		if fired[i] < want[i] || fired[i] > want[i]+wheelTick {
			t.Errorf("timer due at %v fired at %v", want[i], fired[i])
		}
	}
	if !slices.IsSorted(fired) {
		t.Errorf("fired out of order: %v", fired)
	}
}

// TestWheelNextFarTimer: a timer an hour away, alone or with others far
// away in the same slot, wakes its shard about once a turn, not every
// time the shard looks: a slot holding only timers of later turns is no
// reason to wake (the shard would poll without sleeping for the whole of
// each tick the wheel spent on it).
func TestWheelNextFarTimer(t *testing.T) {
	start := time.Unix(1000, 0)
	w := newWheel(start)
	var firedAt time.Time
	var now time.Time
	far := &timer{fire: func() { firedAt = now }}
	w.set(far, start.Add(time.Hour))
	// Others an exact number of turns later share its slot.
	for k := range 3 {
		w.set(&timer{fire: func() {}}, start.Add(time.Hour+time.Duration(k+1)*wheelSlots*wheelTick))
	}
	wakes := 0
	for now = start; firedAt.IsZero() && now.Before(start.Add(2*time.Hour)); {
		now = now.Add(checkNext(t, w, now, start))
		w.advance(now)
		wakes++
	}
	if firedAt.IsZero() || firedAt.Before(start.Add(time.Hour)) || firedAt.After(start.Add(time.Hour+wheelTick)) {
		t.Fatalf("the timer due in an hour fired at %v", firedAt.Sub(start))
	}
	// An hour is 704 turns.
	if turns := int(time.Hour / (wheelSlots * wheelTick)); wakes > turns+2 {
		t.Errorf("%d wakes to fire a timer an hour away, want about one a turn (%d)", wakes, turns)
	}
}

// checkNext checks what w.next says at now, after w.advance(now): when
// armed, a wait of more than zero (nothing is due: it has fired) that
// ends no later than the earliest deadline armed and no more than a turn
// away. It returns the wait.
func checkNext(t *testing.T, w *wheel, now, start time.Time) time.Duration {
	t.Helper()
	d, ok := w.next(now)
	earliest, armed := earliestByScan(w)
	if ok != armed {
		t.Fatalf("next at %v: ok %v with %d timers armed", now.Sub(start), ok, w.armed)
	}
	if !ok {
		return wheelTick
	}
	switch {
	case d <= 0:
		t.Fatalf("next at %v: %v, with nothing due (the earliest deadline is %v)", now.Sub(start), d, time.Duration(earliest-w.since(now)))
	case d > wheelTick*wheelSlots:
		t.Fatalf("next at %v: %v, more than a turn", now.Sub(start), d)
	case w.since(now)+int64(d) > earliest:
		t.Fatalf("next at %v: %v, after the earliest deadline, %v away", now.Sub(start), d, time.Duration(earliest-w.since(now)))
	}
	return d
}

// earliestByScan is the earliest deadline armed in w, from every timer in
// every slot.
func earliestByScan(w *wheel) (int64, bool) {
	earliest, armed := int64(math.MaxInt64), false
	for _, head := range w.slots {
		for tm := head; tm != nil; tm = tm.next {
			earliest, armed = min(earliest, tm.when), true
		}
	}
	return earliest, armed
}

// TestWheelFireArmsDue: a timer that a fire arms already due, while an
// advance passes several slots, fires in that advance, not a turn later.
func TestWheelFireArmsDue(t *testing.T) {
	start := time.Unix(1000, 0)
	w := newWheel(start)
	var now, bFired time.Time
	b := &timer{fire: func() { bFired = now }}
	a := &timer{fire: func() { w.set(b, start.Add(5*time.Millisecond)) }}
	w.set(a, start.Add(5*time.Millisecond))
	now = start.Add(100 * time.Millisecond) // a late wake: ten slots on
	w.advance(now)
	if bFired.IsZero() {
		d, ok := w.next(now)
		t.Fatalf("a timer armed already due by a fire did not fire in the same advance (next: %v, %v)", d, ok)
	}
	if w.armed != 0 {
		t.Fatalf("%d timers still armed", w.armed)
	}
}
