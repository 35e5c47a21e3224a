//go:build linux

package netlab

import (
	"math/rand/v2"
	"testing"
	"time"
)

// Tier A: the impairer's scheduling pieces, without namespaces.

func TestPktHeapOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var h pktHeap
	var seq uint64
	for range 5000 {
		seq++
		// Few distinct times, so that ties are common.
		h.push(heldPkt{at: time.Duration(rng.IntN(50)), seq: seq})
		if rng.IntN(3) == 0 {
			h.pop()
		}
	}
	last := heldPkt{at: -1}
	for len(h) > 0 {
		p := h.pop()
		if p.at < last.at || p.at == last.at && p.seq < last.seq {
			t.Fatalf("popped (%v, %d) after (%v, %d)", p.at, p.seq, last.at, last.seq)
		}
		last = p
	}
}

func TestPktHeapPushReportsTop(t *testing.T) {
	var h pktHeap
	for i, c := range []struct {
		at  time.Duration
		top bool
	}{{10, true}, {20, false}, {5, true}, {5, false}, {7, false}, {1, true}} {
		if got := h.push(heldPkt{at: c.at, seq: uint64(i)}); got != c.top {
			t.Errorf("push %d (at %v): top %v, want %v", i, c.at, got, c.top)
		}
	}
}

func TestImpairDelaySample(t *testing.T) {
	d := &impairDir{
		m:   Impairment{Delay: 10 * time.Millisecond, Jitter: 5 * time.Millisecond},
		rng: rand.New(rand.NewPCG(3, 4)),
	}
	var lo, hi, sum time.Duration = time.Hour, 0, 0
	const n = 100000
	for range n {
		v := d.delay()
		lo, hi, sum = min(lo, v), max(hi, v), sum+v
	}
	if lo < 5*time.Millisecond || hi > 15*time.Millisecond {
		t.Errorf("delays in [%v, %v], want within 10ms ± 5ms", lo, hi)
	}
	if lo > 5100*time.Microsecond || hi < 14900*time.Microsecond {
		t.Errorf("delays in [%v, %v] do not cover 10ms ± 5ms", lo, hi)
	}
	if mean := sum / n; mean < 9900*time.Microsecond || mean > 10100*time.Microsecond {
		t.Errorf("mean delay %v, want 10ms", mean)
	}
	// Jitter larger than the delay never makes a negative delay.
	d.m = Impairment{Delay: time.Millisecond, Jitter: 5 * time.Millisecond}
	for range 1000 {
		if v := d.delay(); v < 0 {
			t.Fatalf("negative delay %v", v)
		}
	}
}

func TestCrossesLink(t *testing.T) {
	v4 := func(dst ...byte) []byte {
		p := make([]byte, 20)
		p[0] = 0x45
		copy(p[16:], dst)
		return p
	}
	v6 := func(src, dst byte) []byte {
		p := make([]byte, 40)
		p[0] = 0x60
		p[8], p[24] = src, dst
		return p
	}
	for _, c := range []struct {
		name string
		p    []byte
		want bool
	}{
		{"v4 unicast", v4(198, 18, 1, 2), true},
		{"v4 multicast", v4(224, 0, 0, 1), false},
		{"v4 broadcast", v4(255, 255, 255, 255), false},
		{"v6 unicast", v6(0xfd, 0x20), true},
		{"v6 multicast", v6(0xfd, 0xff), false},
		{"v6 from link-local", func() []byte { p := v6(0xfe, 0x20); p[9] = 0x80; return p }(), false},
		{"short", []byte{0x45, 0}, false},
		{"empty", nil, false},
		{"not IP", make([]byte, 40), false},
	} {
		if got := crossesLink(c.p); got != c.want {
			t.Errorf("%s: crossesLink %v, want %v", c.name, got, c.want)
		}
	}
}
