package stack

import (
	"testing"
	"time"
)

// TestMemReturn drives memReturn through bursts and checks when it hands
// the heap back.
func TestMemReturn(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	type step struct {
		at   time.Duration // since t0
		live int64
		want bool
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"small load never returns", []step{
			{0, 100, false}, {10 * time.Second, 50, false}, {20 * time.Second, 0, false},
		}},
		{"a burst returns at half and again at zero", []step{
			{0, 1000, false}, {time.Second, 600, false}, {2 * time.Second, 500, true},
			{3 * time.Second, 200, false}, // a quarter of the burst, but within 5 s
			{8 * time.Second, 200, true},  // half of the peak of the last return
			{9 * time.Second, 150, false}, {20 * time.Second, 150, false},
			{21 * time.Second, 0, true}, // what the halving left behind
			{40 * time.Second, 0, false},
		}},
		{"a burst that drains at once returns once", []step{
			{0, 20000, false}, {time.Second, 0, true}, {10 * time.Second, 0, false},
		}},
		{"zero within 5 s of the last return waits for the next tick", []step{
			{0, 400, false}, {time.Second, 200, true}, {2 * time.Second, 0, false},
			{6 * time.Second, 0, true}, {7 * time.Second, 0, false},
		}},
		{"a new burst after a return at zero owes one again", []step{
			{0, 300, false}, {time.Second, 0, true},
			{10 * time.Second, 300, false}, {20 * time.Second, 100, true},
			{30 * time.Second, 0, true},
		}},
		{"a small load after a return at zero owes nothing", []step{
			{0, 300, false}, {time.Second, 0, true},
			{10 * time.Second, 40, false}, {20 * time.Second, 0, false},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var m memReturn
			for i, s := range tc.steps {
				if got := m.due(s.live, t0.Add(s.at)); got != s.want {
					t.Fatalf("step %d (%v, %d live): due = %v, want %v", i, s.at, s.live, got, s.want)
				}
			}
		})
	}
}
