package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// gateWriter records what it is given; while its gate is closed each Write
// waits for it to open, as a pipe nobody reads does.
type gateWriter struct {
	mu      sync.Mutex
	lines   []string
	gate    chan struct{}
	entered chan struct{} // gets a value each time a Write starts
}

func newGateWriter() *gateWriter {
	return &gateWriter{gate: make(chan struct{}), entered: make(chan struct{}, 1<<16)}
}

func (w *gateWriter) Write(p []byte) (int, error) {
	w.entered <- struct{}{}
	<-w.gate
	w.mu.Lock()
	defer w.mu.Unlock()
	w.lines = append(w.lines, string(p))
	return len(p), nil
}

func (w *gateWriter) got() []map[string]any {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []map[string]any
	for _, l := range w.lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			panic(fmt.Sprintf("not one JSON line: %q", l))
		}
		out = append(out, m)
	}
	return out
}

// within fails the test if f has not returned after d.
func within(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s still blocked after %v", what, d)
	}
}

// TestLogOutputStalled: while the output takes nothing, logging never
// blocks; the queue holds logQueueLines lines and the rest are counted. Once
// the output takes lines again, the queued ones come out in order and the
// first is followed by the report of what was lost.
func TestLogOutputStalled(t *testing.T) {
	w := newGateWriter()
	log, out, err := newLoggerTo(w, "json", zapcore.DebugLevel, false)
	if err != nil {
		t.Fatal(err)
	}
	const n = logQueueLines + 500
	log.Info("line", zap.Int("i", 0))
	<-w.entered // the writer holds line 0, blocked
	within(t, 5*time.Second, "logging into a stalled output", func() {
		for i := 1; i < n; i++ {
			log.Info("line", zap.Int("i", i))
		}
	})
	wantLost := uint64(n - 1 - logQueueLines)
	if failed, stalled := out.LogLinesLost(); failed != 0 || stalled != wantLost {
		t.Fatalf("LogLinesLost = %d failed, %d stalled; want 0, %d", failed, stalled, wantLost)
	}
	close(w.gate)
	within(t, 5*time.Second, "Close", out.Close)

	got := w.got()
	if len(got) != 2+logQueueLines {
		t.Fatalf("%d lines written, want %d: line 0, the report, and the %d queued", len(got), 2+logQueueLines, logQueueLines)
	}
	if got[0]["i"] != 0.0 {
		t.Errorf("first line %v, want line 0", got[0])
	}
	r := got[1]
	if r["msg"] != logLostMsg || r["level"] != "warn" || r["lost"] != float64(wantLost) ||
		r["output_stalled"] != float64(wantLost) || r["write_failed"] != 0.0 {
		t.Errorf("second line %v, want the report of %d lines lost to the stalled output", r, wantLost)
	}
	for k, m := range got[2:] {
		if m["i"] != float64(k+1) {
			t.Fatalf("line %d after the report is %v, want i=%d: the queued lines in order", k, m, k+1)
		}
	}
}

// TestLogOutputFull: on /dev/full every write fails with ENOSPC, as on a
// full disk; each line is counted and nothing blocks.
func TestLogOutputFull(t *testing.T) {
	f, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	if err != nil {
		t.Skipf("no /dev/full: %v", err)
	}
	defer f.Close()
	log, out, err := newLoggerTo(f, "console", zapcore.DebugLevel, false)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		log.Info("line", zap.Int("i", i))
	}
	within(t, 5*time.Second, "Sync", func() { log.Sync() })
	failed, stalled := out.LogLinesLost()
	// The report at Close fails too, and is counted after it was made.
	within(t, 5*time.Second, "Close", out.Close)
	if failed != 100 || stalled != 0 {
		t.Errorf("LogLinesLost = %d failed, %d stalled; want 100, 0", failed, stalled)
	}
	if !errors.Is(out.lastErr, syscall.ENOSPC) {
		t.Errorf("last write error %v, want ENOSPC", out.lastErr)
	}
}

// failWriter fails its first n writes with ENOSPC, then records.
type failWriter struct {
	n   int
	buf bytes.Buffer
}

func (w *failWriter) Write(p []byte) (int, error) {
	if w.n > 0 {
		w.n--
		return 0, &os.PathError{Op: "write", Path: "/dev/stderr", Err: syscall.ENOSPC}
	}
	return w.buf.Write(p)
}

// TestLogOutputReportsOncePerInterval: a disk that fills and frees twice
// within logReportEvery gets one report at once, and the second loss is
// reported when the output closes, not lost.
func TestLogOutputReportsOncePerInterval(t *testing.T) {
	w := &failWriter{n: 3}
	log, out, err := newLoggerTo(w, "json", zapcore.DebugLevel, false)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 { // 0-2 fail, 3 is written and reported after
		log.Info("line", zap.Int("i", i))
	}
	log.Sync()
	w.n = 2 // the disk fills again: 5 and 6 fail
	for i := 5; i < 9; i++ {
		log.Info("line", zap.Int("i", i))
	}
	within(t, 5*time.Second, "Close", out.Close)

	var lines []map[string]any
	sc := bufio.NewScanner(&w.buf)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("not JSON: %q", sc.Text())
		}
		lines = append(lines, m)
	}
	var seq []string
	for _, m := range lines {
		if m["msg"] == logLostMsg {
			seq = append(seq, fmt.Sprintf("lost %v (failed %v, stalled %v, %v)", m["lost"], m["write_failed"], m["output_stalled"], m["error"]))
		} else {
			seq = append(seq, fmt.Sprint(m["i"]))
		}
	}
	want := []string{
		"3", "lost 3 (failed 3, stalled 0, write /dev/stderr: no space left on device)", "4",
		"7", "8", "lost 2 (failed 2, stalled 0, write /dev/stderr: no space left on device)",
	}
	if strings.Join(seq, "\n") != strings.Join(want, "\n") {
		t.Errorf("written:\n%s\nwant:\n%s", strings.Join(seq, "\n"), strings.Join(want, "\n"))
	}
}

// TestLogOutputBoundedBytes: the queue also holds at most logQueueBytes, so
// that a stall with long lines (a panic's stack) holds a few MiB at most.
func TestLogOutputBoundedBytes(t *testing.T) {
	w := newGateWriter()
	out := newLogOutput(w)
	out.report = func(uint64, uint64, error) {}
	out.start()
	defer func() {
		close(w.gate)
		out.Close()
	}()
	line := bytes.Repeat([]byte("x"), 64<<10)
	out.Write(line)
	<-w.entered
	for range 100 {
		out.Write(line)
	}
	if q := out.queued.Load(); q > logQueueBytes {
		t.Errorf("%d bytes queued, want at most %d", q, logQueueBytes)
	}
	if _, stalled := out.LogLinesLost(); stalled != uint64(100-logQueueBytes/len(line)) {
		t.Errorf("%d lines dropped, want %d", stalled, 100-logQueueBytes/len(line))
	}
}

// TestLogOutputCloseBounded: an output that never takes a line does not hold
// up Sync or Close (the daemon's exit) beyond logFlushTimeout.
func TestLogOutputCloseBounded(t *testing.T) {
	w := newGateWriter() // opened only once the test is over
	log, out, err := newLoggerTo(w, "json", zapcore.DebugLevel, false)
	if err != nil {
		t.Fatal(err)
	}
	defer close(w.gate)
	log.Info("stuck")
	<-w.entered
	log.Info("queued")
	within(t, logFlushTimeout+3*time.Second, "Sync", func() { log.Sync() })
	within(t, logFlushTimeout+3*time.Second, "Close", out.Close)
}

// TestREADMEStatesTheLogQueue: README gives the queue's bounds as this
// package has them.
func TestREADMEStatesTheLogQueue(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Join(strings.Fields(string(b)), " ")
	want := fmt.Sprintf("through a queue of at most %d lines and %d MiB", logQueueLines, logQueueBytes>>20)
	if !strings.Contains(text, want) {
		t.Errorf("README does not say %q", want)
	}
}

// TestLogOutputAfterClose: lines logged after Close (goroutines still
// finishing as the daemon exits) are written whole, one after another,
// alongside what the writer still drains.
func TestLogOutputAfterClose(t *testing.T) {
	w := newGateWriter()
	close(w.gate)
	log, out, err := newLoggerTo(w, "json", zapcore.DebugLevel, false)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 200 {
				log.Info("line", zap.Int("g", g), zap.Int("i", i))
			}
		})
	}
	out.Close()
	wg.Wait()
	// got fails on a line that is not one whole JSON object.
	if n, failed, stalled := len(w.got()), out.failed.Load(), out.stalled.Load(); n != 800 || failed != 0 || stalled != 0 {
		t.Errorf("%d lines written, %d failed, %d dropped; want 800, 0, 0", n, failed, stalled)
	}
}
