package stack

import (
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
		d, ok := w.next(now)
		if ok && d > wheelTick*wheelSlots {
			t.Fatalf("next %v: more than a turn", d)
		}
		if sd, sok := nextByScan(w, now); d != sd || ok != sok {
			t.Fatalf("next at %v: %v, %v; a scan of every slot says %v, %v", now.Sub(start), d, ok, sd, sok)
		}
		w.advance(now)
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
		d, ok := w.next(now)
		if !ok {
			t.Fatal("armed wheel said no timer")
		}
		now = now.Add(d)
		w.advance(now)
		if d == 0 {
			now = now.Add(wheelTick)
		}
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

// nextByScan is what wheel.next computes, by looking at every slot in turn.
func nextByScan(w *wheel, now time.Time) (time.Duration, bool) {
	if w.armed == 0 {
		return 0, false
	}
	tick := int64(wheelTick)
	for i := range int64(wheelSlots) {
		at := (w.now/tick + i) * tick
		if w.slots[slotOf(at)] != nil {
			return max(time.Duration(at-w.since(now)), 0), true
		}
	}
	return wheelTick * wheelSlots, true
}
