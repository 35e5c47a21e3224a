//go:build linux

package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"tcpd/internal/netlab"
)

// The log's output failing must cost the log only: tcpd keeps relaying,
// counts what it could not write (tcpd_log_lines_lost_total), and says so in
// the log once the output takes lines again.

const (
	lostFailed  = `tcpd_log_lines_lost_total{reason="write_failed"}`
	lostStalled = `tcpd_log_lines_lost_total{reason="output_stalled"}`
)

// echoConns makes n connections to addr from workers clients at once, each
// sending size bytes and reading them back, and fails the test on any that
// does not complete within perConn (the workers stop at the first).
func echoConns(t *testing.T, g *gateway, addr string, n, workers, size int, perConn time.Duration) {
	t.Helper()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	next := make(chan int, n)
	for i := range n {
		next <- i
	}
	close(next)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				mu.Lock()
				failed := len(errs) > 0
				mu.Unlock()
				if failed {
					return
				}
				if err := echoSized(g, addr, i, size, perConn); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("connection %d: %w", i, err))
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d connections of %d failed (the rest were not tried); first: %v", len(errs), n, errors.Join(errs[:min(len(errs), 3)]...))
	}
}

func echoSized(g *gateway, addr string, seed, size int, d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	c, err := g.Client.Dial(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(d))
	sum, got, err := exchange(c, uint64(seed), int64(size))
	if err != nil {
		return err
	}
	if got != int64(size) || sum != streamSum(uint64(seed), int64(size)) {
		return fmt.Errorf("echo came back as %d bytes, not the %d sent, or changed", got, size)
	}
	return nil
}

// logLinesWith returns the JSON lines of log whose msg is msg.
func logLinesWith(log []byte, msg string) []map[string]any {
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(log))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil && m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// lostMsg is the message of the line that reports lost log lines.
const lostMsg = "log lines lost: the log's output refused them (write_failed) or fell behind (output_stalled); " +
	"tcpd_log_lines_lost_total counts them"

// TestLogOnFullDisk: tcpd's log goes to a file on a file system with no
// space left. Every connection is relayed intact, the lost lines are
// counted, and once there is space again the log says how many were lost
// and carries on.
func TestLogOnFullDisk(t *testing.T) {
	dir := t.TempDir()
	if err := unix.Mount("tcpd-e2e-full", dir, "tmpfs", 0, "size=256k,mode=0700"); err != nil {
		t.Skipf("cannot mount a tmpfs for the full disk (needs root): %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	logPath := filepath.Join(dir, "tcpd.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	filler := filepath.Join(dir, "filler")
	fillDisk(t, filler)

	g := startGateway(t, netlab.Options{}, gwConfig{Metrics: true, LogLevel: "debug", Stderr: logFile})
	port := serve(t, g.Server, func(c net.Conn) { io.Copy(c, c) })
	addr := net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port))

	// Every connection logs at debug level, and none of it fits.
	echoConns(t, g, addr, 100, 8, 64<<10, 20*time.Second)
	m := scrape(t, g)
	failed := m[lostFailed]
	if failed == 0 {
		t.Fatalf("%s = %v after 100 connections logged at debug level onto a full disk, want > 0", lostFailed, failed)
	}
	if st, err := os.Stat(logPath); err != nil || st.Size() != 0 {
		t.Fatalf("the log file on the full disk: %v, %v; want it empty (the disk is full)", st, err)
	}
	wantProbe(t, g.Gateway, "/healthz", 200, "ok")
	t.Logf("%v log lines lost while the disk was full", failed)

	// Space again: the next lines say what was lost, and what follows is
	// written.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	var reports []map[string]any
	for time.Now().Before(deadline) {
		echoConns(t, g, addr, 2, 1, 1024, 10*time.Second)
		b, err := os.ReadFile(logPath)
		if err != nil {
			t.Fatal(err)
		}
		if reports = logLinesWith(b, lostMsg); len(reports) > 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(reports) == 0 {
		t.Fatalf("no %q line in the log within 20 s of the disk having space", lostMsg)
	}
	r := reports[0]
	if got, _ := r["write_failed"].(float64); got < failed {
		t.Errorf("the log reports %v lines lost to failed writes, the metric said %v before: %v", got, failed, r)
	}
	if got, _ := r["error"].(string); got == "" {
		t.Errorf("the report names no error: %v", r)
	}
	t.Logf("the log's report: %v", r)
}

// fillDisk writes path until its file system has no space left.
func fillDisk(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if errors.Is(err, unix.ENOSPC) {
				return
			}
			t.Fatalf("fill %s: %v", path, err)
		}
	}
}

// TestLogOutputStalled: tcpd's log goes into a pipe that nothing reads, as
// when the journal stops taking lines. Connections are not held up by it;
// the lines that did not fit are counted, and once the pipe is read again
// the log says how many. Then the pipe loses its reader, and tcpd carries
// on.
func TestLogOutputStalled(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	g := startGateway(t, netlab.Options{}, gwConfig{Metrics: true, LogLevel: "debug", Stderr: w})
	w.Close() // tcpd holds its own copy
	port := serve(t, g.Server, func(c net.Conn) { io.Copy(c, c) })
	addr := net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port))

	// The pipe holds 64 KiB; each connection logs a few hundred bytes at
	// debug level, and the stalled output's queue holds a few thousand
	// lines, which these overflow.
	echoConns(t, g, addr, 3000, 16, 512, 20*time.Second)
	m := scrape(t, g)
	stalled := m[lostStalled]
	if stalled == 0 {
		t.Fatalf("%s = %v after 3000 connections logged into a stalled pipe, want > 0", lostStalled, stalled)
	}
	wantProbe(t, g.Gateway, "/healthz", 200, "ok")
	t.Logf("%v log lines lost while the output was stalled", stalled)

	// Read the pipe again: the report follows the lines that were queued.
	var (
		mu  sync.Mutex
		out bytes.Buffer
	)
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := r.Read(buf)
			mu.Lock()
			out.Write(buf[:n])
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	deadline := time.Now().Add(20 * time.Second)
	var reports []map[string]any
	for time.Now().Before(deadline) {
		echoConns(t, g, addr, 2, 1, 512, 10*time.Second)
		mu.Lock()
		reports = logLinesWith(out.Bytes(), lostMsg)
		mu.Unlock()
		if len(reports) > 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(reports) == 0 {
		t.Fatalf("no %q line in the log within 20 s of the pipe being read", lostMsg)
	}
	if got, _ := reports[0]["output_stalled"].(float64); got < stalled {
		t.Errorf("the log reports %v lines lost to the stalled output, the metric said %v before: %v", got, stalled, reports[0])
	}
	t.Logf("the log's report: %v", reports[0])

	// The reader goes away for good (a journal that restarted, a closed
	// pipe): each write fails with EPIPE, which costs the line, not tcpd
	// (the cleanup's Stop wants exit status 0, not death by SIGPIPE).
	r.Close()
	echoConns(t, g, addr, 50, 4, 512, 20*time.Second)
	if m := scrape(t, g); m[lostFailed] == 0 {
		t.Errorf("%s = 0 after 50 connections logged into a pipe with no reader, want > 0", lostFailed)
	}
}
