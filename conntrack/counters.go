package conntrack

import "sync/atomic"

// counterID names one of Counters' fields, for the shards' atomic copies:
// a shard's counters change under its entries' locks, not its own, so they
// are atomics, summed into Counters at snapshot time.
type counterID uint8

const (
	cOpened counterID = iota
	cEstablished
	cClosed
	cResets
	cTimeWaitEntered
	cTimeWaitOverflow
	cTimeWaitReused
	cTimeWaitAcks
	cTimeWaitAcksSkipped
	cRSTIgnored
	cUntracked
	cTableFull
	cExpired
	cCorrections
	numCounters
)

// counterSet is a shard's counters.
type counterSet [numCounters]atomic.Uint64

func (c *counterSet) inc(id counterID) { c[id].Add(1) }

// addTo adds the set's counts to s.
func (c *counterSet) addTo(s *Counters) {
	s.Opened += c[cOpened].Load()
	s.Established += c[cEstablished].Load()
	s.Closed += c[cClosed].Load()
	s.Resets += c[cResets].Load()
	s.TimeWaitEntered += c[cTimeWaitEntered].Load()
	s.TimeWaitOverflow += c[cTimeWaitOverflow].Load()
	s.TimeWaitReused += c[cTimeWaitReused].Load()
	s.TimeWaitAcks += c[cTimeWaitAcks].Load()
	s.TimeWaitAcksSkipped += c[cTimeWaitAcksSkipped].Load()
	s.RSTIgnored += c[cRSTIgnored].Load()
	s.Untracked += c[cUntracked].Load()
	s.TableFull += c[cTableFull].Load()
	s.Expired += c[cExpired].Load()
	s.Corrections += c[cCorrections].Load()
}
