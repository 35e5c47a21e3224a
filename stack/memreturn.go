package stack

import "time"

// memReturn decides when a falling load should hand the heap back: the Go
// runtime would otherwise keep the pages of a burst's buffers and netstack
// endpoints until its next forced GC, two minutes later, and some for good,
// so that a gateway's RSS would show its last burst rather than what it
// holds. A return is due once the connections have fallen to half of a
// peak of at least returnAbove, and once more when the last of them has
// gone (what the halving left behind, and the garbage no GC has collected
// since, because an idle process allocates nothing). At most one every
// returnEvery: each costs a full GC.
type memReturn struct {
	peak int64 // the most connections since the last return
	// owed says a burst has been seen since the last return with none
	// left, so that the return at zero is due.
	owed bool
	last time.Time
}

func (m *memReturn) due(live int64, now time.Time) bool {
	m.peak = max(m.peak, live)
	if m.peak >= returnAbove {
		m.owed = true
	}
	halved := m.peak >= returnAbove && live <= m.peak/2
	gone := live == 0 && m.owed
	if !(halved || gone) || now.Sub(m.last) < returnEvery {
		return false
	}
	m.peak, m.owed, m.last = live, live > 0, now
	return true
}

// returnAbove is the peak of connections from which a fall gives memory
// back: about 5 MiB of relays, buffers and netstack endpoints.
const returnAbove = 256

// returnEvery is the least time between two returns of memory.
const returnEvery = 5 * time.Second
