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
	stats stack.Stats
	ns    stack.NetstackStats
	// relayEntries is what Relays reports as tracked.
	relayEntries int
}

func (f *fakeStack) Stats() *stack.Stats                { return &f.stats }
func (f *fakeStack) NetstackStats() stack.NetstackStats { return f.ns }
func (f *fakeStack) Relays() (int64, int)               { return f.stats.Active.Load(), f.relayEntries }

type fakeReload struct {
	ok      bool
	at      time.Time
	pending int
}

func (f fakeReload) LastReload() (bool, time.Time) { return f.ok, f.at }
func (f fakeReload) RestartPending() int           { return f.pending }

// netstackStats gives every field a distinct value, so that a field
// exported under another's name shows up in a comparison.
func netstackStats() stack.NetstackStats {
	return stack.NetstackStats{
		TCPPassiveOpens:                       1,
		TCPFailedConnectionAttempts:           2,
		TCPEstablishedResets:                  3,
		TCPEstablishedTimeouts:                4,
		TCPSegmentsReceived:                   5,
		TCPInvalidSegmentsReceived:            6,
		TCPSegmentsSent:                       7,
		TCPSegmentSendErrors:                  8,
		TCPResetsSent:                         9,
		TCPResetsReceived:                     10,
		TCPRetransmits:                        11,
		TCPFastRetransmits:                    12,
		TCPTimeouts:                           13,
		TCPSACKRecoveries:                     14,
		TCPTLPRecoveries:                      15,
		TCPSpuriousRecoveries:                 16,
		TCPChecksumErrors:                     17,
		TCPForwardMaxInFlightDrops:            18,
		IPPacketsReceived:                     19,
		IPMalformedPacketsReceived:            20,
		IPInvalidDestinationAddressesReceived: 21,
		IPInvalidSourceAddressesReceived:      22,
		IPPacketsSent:                         23,
		Endpoints:                             24,
		TrackedEndpoints:                      25,
	}
}

// realisticSnapshot is a busy gateway's table: thousands of connections in
// every state and histograms filled from a spread of durations, so that
// every native bucket in the usual range is populated.
func realisticSnapshot() conntrack.Snapshot {
	var s conntrack.Snapshot
	for st := range conntrack.NumStates {
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
