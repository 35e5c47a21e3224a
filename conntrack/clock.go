package conntrack

import "time"

// mono is a moment as nanoseconds since the table's epoch, on the clock
// Config.Now gives (monotonic with the real clock). An entry keeps nine of
// them: as time.Time they would cost 24 bytes each, which at 16,384
// connections in TIME_WAIT is 2 MiB for nothing. Zero means "not yet": the
// epoch lies before anything the table records.
type mono int64

func (m mono) sub(o mono) time.Duration { return time.Duration(m - o) }
func (m mono) add(d time.Duration) mono { return m + mono(d) }

// now reads the table's clock.
func (t *Table) now() mono { return mono(t.cfg.Now().Sub(t.epoch)) }

// wall converts m back to a time.Time for snapshots.
func (t *Table) wall(m mono) time.Time { return t.epoch.Add(time.Duration(m)) }
