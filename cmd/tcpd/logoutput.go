package main

import (
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// logOutput is where the daemon's log lines go: its output (stderr) behind a
// bounded queue and one writer goroutine, so that nothing that logs (a
// connection's handler, a relay shard, a packet loop's warning) ever waits
// for the output. An output that refuses writes (a full disk: ENOSPC) or
// stops taking them (a stuck journal, a pipe nobody reads) costs log lines
// only: each one lost is counted, by why (LogLinesLost, for
// tcpd_log_lines_lost_total), and the first line written after a loss is
// followed by one saying how many were lost, at most once per
// logReportEvery.
type logOutput struct {
	out io.Writer
	q   chan logItem
	// queued is the bytes of the lines in q, which logQueueBytes bounds.
	queued atomic.Int64
	// failed counts the lines the output refused; stalled, the lines
	// dropped because the queue was full.
	failed, stalled atomic.Uint64

	// mu guards closed: Write holds it shared, so that no line is queued
	// after Close's stop.
	mu     sync.RWMutex
	closed bool
	// outMu serialises writes to out (the writer goroutine's, and after
	// Close the callers' own) and guards lastErr.
	outMu sync.Mutex
	done  chan struct{}

	// report logs that lines were lost: so many to failed writes and so
	// many to a full queue since the last report, and the last write error.
	// Set before start. The writer goroutine calls it, and it writes
	// through a directOutput.
	report func(failed, stalled uint64, err error)

	// The writer goroutine's own.
	reportedFailed, reportedStalled uint64
	lastReport                      time.Time

	lastErr error // the last write's error
}

// logItem is one line, or a marker: sync is closed when the writer reaches
// it, stop ends the writer.
type logItem struct {
	b    []byte
	sync chan struct{}
	stop bool
}

const (
	// logQueueLines and logQueueBytes bound what waits for the output:
	// seconds of the busiest debug logging, and at most a few MiB of RSS.
	logQueueLines = 4096
	logQueueBytes = 4 << 20
	// logReportEvery is how often at most a loss is reported in the log,
	// as stack's warnEvery for its warnings.
	logReportEvery = 10 * time.Second
	// logFlushTimeout bounds how long Sync and Close wait for the output:
	// an output that takes nothing must not hold up the daemon's exit.
	logFlushTimeout = 2 * time.Second
)

// newLogOutput returns an output for out whose writer has not started: set
// report, then start it.
func newLogOutput(out io.Writer) *logOutput {
	return &logOutput{out: out, q: make(chan logItem, logQueueLines), done: make(chan struct{})}
}

func (o *logOutput) start() { go o.run() }

// Write queues one line (zap writes each entry whole) and never blocks on
// the output. It never fails: a line that cannot be queued is counted.
func (o *logOutput) Write(p []byte) (int, error) {
	o.mu.RLock()
	defer o.mu.RUnlock()
	if o.closed {
		// After Close, the exit's last lines go straight out.
		o.writeOut(p)
		return len(p), nil
	}
	n := int64(len(p))
	if o.queued.Add(n) > logQueueBytes {
		o.queued.Add(-n)
		o.stalled.Add(1)
		return len(p), nil
	}
	select {
	case o.q <- logItem{b: append([]byte(nil), p...)}: // p is the caller's buffer
	default:
		o.queued.Add(-n)
		o.stalled.Add(1)
	}
	return len(p), nil
}

// Sync waits, at most logFlushTimeout, until the lines queued before it have
// been written.
func (o *logOutput) Sync() error {
	o.mu.RLock()
	if o.closed {
		o.mu.RUnlock()
		return nil
	}
	ch := make(chan struct{})
	select {
	case o.q <- logItem{sync: ch}:
	default: // full: the output is stalled, and waiting would not help
		o.mu.RUnlock()
		return nil
	}
	o.mu.RUnlock()
	t := time.NewTimer(logFlushTimeout)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	}
	return nil
}

// Close writes what is queued and reports a loss not yet reported, waiting
// at most logFlushTimeout; lines logged after it are written at once, by
// their callers. A writer stuck in a write the output never finishes is
// left behind: the process is about to exit.
func (o *logOutput) Close() {
	o.mu.Lock()
	if o.closed {
		o.mu.Unlock()
		return
	}
	o.closed = true
	o.mu.Unlock()
	t := time.NewTimer(logFlushTimeout)
	defer t.Stop()
	select {
	case o.q <- logItem{stop: true}:
	case <-t.C:
		return
	}
	select {
	case <-o.done:
	case <-t.C:
	}
}

// LogLinesLost returns the lines lost since start: refused by the output,
// and dropped because it fell behind.
func (o *logOutput) LogLinesLost() (writeFailed, outputStalled uint64) {
	return o.failed.Load(), o.stalled.Load()
}

func (o *logOutput) run() {
	defer close(o.done)
	for it := range o.q {
		switch {
		case it.sync != nil:
			close(it.sync)
		case it.stop:
			// Closed: nothing more is queued. The report, if one is
			// due, is written at once (Write after Close); then what
			// was queued before the stop.
			o.reportLost(true)
			for {
				select {
				case it := <-o.q:
					if it.sync != nil {
						close(it.sync)
					} else {
						o.write(it.b)
					}
				default:
					return
				}
			}
		default:
			if o.write(it.b) {
				o.reportLost(false)
			}
		}
	}
}

// write writes one queued line and reports whether the output took it.
func (o *logOutput) write(b []byte) bool {
	o.queued.Add(-int64(len(b)))
	return o.writeOut(b)
}

// writeOut writes b to the output and reports whether it took it.
func (o *logOutput) writeOut(b []byte) bool {
	o.outMu.Lock()
	defer o.outMu.Unlock()
	if _, err := o.out.Write(b); err != nil {
		o.failed.Add(1)
		o.lastErr = err
		return false
	}
	return true
}

// reportLost logs the lines lost since the last report, if any, and if the
// last report is logReportEvery old (or final).
func (o *logOutput) reportLost(final bool) {
	f, s := o.failed.Load(), o.stalled.Load()
	if f == o.reportedFailed && s == o.reportedStalled {
		return
	}
	now := time.Now()
	if !final && !o.lastReport.IsZero() && now.Sub(o.lastReport) < logReportEvery {
		return
	}
	df, ds := f-o.reportedFailed, s-o.reportedStalled
	o.reportedFailed, o.reportedStalled, o.lastReport = f, s, now
	var err error
	if df > 0 {
		o.outMu.Lock()
		err = o.lastErr
		o.outMu.Unlock()
	}
	o.report(df, ds, err)
}

// directOutput writes to a logOutput's output at once, bypassing the queue:
// for the writer goroutine's own lines (report).
type directOutput struct{ o *logOutput }

func (d directOutput) Write(p []byte) (int, error) {
	d.o.writeOut(p)
	return len(p), nil
}
