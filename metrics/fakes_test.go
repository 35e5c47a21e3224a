package metrics_test

import (
	"time"

	"tcpd/conntrack"
	"tcpd/stack"
)

type fakeConntrack struct{ snap conntrack.Snapshot }

func (f *fakeConntrack) Snapshot() conntrack.Snapshot { return f.snap }

// countingConntrack counts Snapshot calls.
type countingConntrack struct {
	fakeConntrack
	calls int
}

func (f *countingConntrack) Snapshot() conntrack.Snapshot {
	f.calls++
	return f.snap
}

type fakeStack struct {
	stats    stack.Stats
	counters []stack.Counter
}

func (f *fakeStack) Stats() *stack.Stats               { return &f.stats }
func (f *fakeStack) NetstackCounters() []stack.Counter { return f.counters }

type fakeReload struct {
	ok bool
	at time.Time
}

func (f fakeReload) LastReload() (bool, time.Time) { return f.ok, f.at }

// netstackCounters is a short list in the shape of (*stack.Stack).NetstackCounters.
func netstackCounters() []stack.Counter {
	return []stack.Counter{
		{Name: "tcp_retransmits", Help: "TCP segments the netstack retransmitted.", Value: 12},
		{Name: "tcp_resets_sent", Help: "TCP RST segments the netstack sent.", Value: 0},
	}
}

// realisticSnapshot is a busy gateway's table: thousands of connections in
// every state and histograms filled from a spread of durations, so that
// every native bucket in the usual range is populated.
func realisticSnapshot() conntrack.Snapshot {
	var s conntrack.Snapshot
	for _, st := range conntrack.States() {
		s.States[st] = uint64(100 * (int(st) + 1))
		s.ClientStates[st] = uint64(90 * (int(st) + 1))
	}
	s.States[conntrack.StateEstablished] = 20000
	s.Live = 25000
	s.TimeWait = int(s.States[conntrack.StateTimeWait])
	s.TimeWaitLimit = 16384
	s.TimeWaitTimeout = 30 * time.Second
	s.Counters = conntrack.Counters{Opened: 1e7, Established: 9e6, Closed: 99e5}
	hists := []*conntrack.HistogramSnapshot{&s.Handshake, &s.Dial, &s.Setup, &s.TimeWaitDwell, &s.Lifetime}
	for i, hs := range hists {
		var h conntrack.Histogram
		// 10 µs to 100 s in steps of 1%: about 1,600 observations
		// spread over every native bucket in between.
		for d := 10 * time.Microsecond; d < 100*time.Second; d += d / 100 {
			h.Observe(d + time.Duration(i))
		}
		*hs = h.Snapshot()
	}
	return s
}
