//go:build linux

package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The counting phase runs the connection-rate load once more per close
// order with `perf stat` attached to tcpd and counts, per connection:
//   - system calls by kind, from the kernel's syscall tracepoints
//     (syscalls:sys_enter_<name>; raw_syscalls:sys_enter for the total),
//     counted in the kernel per thread, threads started later included;
//   - goroutines created, from a uprobe on the Go runtime's
//     runtime.newproc1, through which every `go` statement passes, so that
//     a binary with no metric for it (an older tcpd) is measured alike.
//
// It is a phase of its own because a uprobe costs a trap per hit and
// every counted event some work at each context switch: the timed runs stay
// unobserved. Its limits: system calls are counted at entry, so a call the
// kernel restarts counts twice and a failed one (EAGAIN) counts as any
// other; the counts are divided by the connections completed in the window,
// and include tcpd's background work in it (a few calls per 100 ms tick);
// the machine needs perf, tracefs and uprobes (root).

// syscallKinds are the system calls counted one by one, those a Go network
// daemon makes; anything else shows as "other" (the total minus these).
// Names without a tracepoint on this kernel are left out.
var syscallKinds = []string{
	"read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg",
	"socket", "connect", "bind", "setsockopt", "getsockopt", "getsockname", "getpeername",
	"shutdown", "close", "accept4", "fcntl", "ioctl",
	"epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "poll", "ppoll",
	"futex", "nanosleep", "clock_nanosleep", "sched_yield", "tgkill", "getpid", "gettid",
	"rt_sigreturn", "rt_sigprocmask", "madvise", "mmap", "munmap", "mprotect",
	"clone", "clone3", "getrandom", "openat",
}

// perfQuiet is the threshold below which a system call kind is left out of
// the table: less than once per 20 connections on every path.
const perfQuiet = 0.05

// counting holds what the counting phase set up: the perf binary, the
// system calls with a tracepoint here, and one uprobe per tcpd binary.
type counting struct {
	perf  string
	kinds []string
	// probes maps a path's name to its uprobe event
	// ("group:newproc_<path>"), absent where the probe could not be placed.
	probes map[string]string
	// group is this process's uprobe group, removed at the end.
	group string
	// mounted is the tracefs this process mounted, unmounted at the end;
	// "" if it found one mounted.
	mounted string
}

// tracefsDir is where tracefs is mounted on current kernels.
const tracefsDir = "/sys/kernel/tracing"

// tracefsEvents is where the kernel lists its trace events.
func tracefsEvents() string {
	for _, d := range []string{"/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"} {
		if _, err := os.Stat(filepath.Join(d, "raw_syscalls")); err == nil {
			return d
		}
	}
	return ""
}

// newCounting prepares the counting phase for the tcpd paths. It returns nil,
// with a note saying why, when the machine cannot count.
func (b *bencher) newCounting(paths []*path) *counting {
	perf, err := exec.LookPath(b.cfg.Perf)
	if err != nil {
		b.notef("count: skipped, no perf (%v); Debian's package is linux-perf", err)
		return nil
	}
	// A machine that booted without tracefs mounted (a fresh container
	// host) has the tracepoints all the same: mount it for the run.
	var mounted string
	events := tracefsEvents()
	if events == "" {
		if err := unix.Mount("nodev", tracefsDir, "tracefs", 0, ""); err != nil {
			b.notef("count: skipped, no syscall tracepoints under /sys/kernel/tracing or /sys/kernel/debug/tracing, and mounting tracefs failed: %v", err)
			return nil
		}
		mounted = tracefsDir
		if events = tracefsEvents(); events == "" {
			unix.Unmount(mounted, 0)
			b.notef("count: skipped, no syscall tracepoints in the tracefs mounted at %s", tracefsDir)
			return nil
		}
		b.notef("count: mounted tracefs at %s for the run", tracefsDir)
	}
	c := &counting{perf: perf, probes: map[string]string{}, group: fmt.Sprintf("tcpdbench%d", os.Getpid()), mounted: mounted}
	for _, k := range syscallKinds {
		if _, err := os.Stat(filepath.Join(events, "syscalls", "sys_enter_"+k)); err == nil {
			c.kinds = append(c.kinds, k)
		}
	}
	for _, p := range paths {
		if p.bin == "" {
			continue
		}
		bin, err := filepath.Abs(p.bin)
		if err != nil {
			b.notef("count: %s: %v", p.name, err)
			continue
		}
		// perf wants event names unique across groups.
		ev := fmt.Sprintf("%s:newproc_%s", c.group, p.name)
		out, err := exec.Command(perf, "probe", "-q", "-x", bin, "-a", ev+"=runtime.newproc1").CombinedOutput()
		if err != nil {
			b.notef("count: %s: no uprobe on runtime.newproc1, goroutines not counted: %v: %s", p.name, err, firstLine(string(out)))
			continue
		}
		c.probes[p.name] = ev
	}
	return c
}

// close removes the uprobes, and the tracefs mount newCounting made.
func (c *counting) close() {
	if len(c.probes) > 0 {
		exec.Command(c.perf, "probe", "-q", "-d", c.group+":*").Run()
	}
	if c.mounted != "" {
		unix.Unmount(c.mounted, 0)
	}
}

// count runs the connection-rate load once per close order under perf and
// records system calls by kind and goroutines created per connection,
// both orders pooled.
func (b *bencher) count(ctx context.Context, c *counting, p *path, rep int) error {
	events := []string{"raw_syscalls:sys_enter"}
	for _, k := range c.kinds {
		events = append(events, "syscalls:sys_enter_"+k)
	}
	probe := c.probes[p.name]
	if probe != "" {
		events = append(events, probe)
	}
	total := map[string]float64{}
	var conns int64
	var rates []string
	for _, serverFirst := range []bool{false, true} {
		ps := &perfStat{perf: c.perf, pid: p.pid, events: events,
			dir: filepath.Join(b.tmp, fmt.Sprintf("perf-%s-%d-%v", p.name, rep, serverFirst))}
		r, err := b.connRate(ctx, p, serverFirst, ps, nil)
		ps.kill()
		if err != nil {
			return err
		}
		if r.errs+r.stuck > 0 {
			b.notef("count (%s) run %d: %d errors, %d stuck under perf; first: %s", p.name, rep+1, r.errs, r.stuck, r.firstErr)
		}
		for ev, v := range ps.counts {
			total[ev] += v
		}
		conns += r.ok
		rates = append(rates, fmt.Sprintf("%.0f", r.rate()))
	}
	if conns == 0 {
		return errors.New("no connection completed under perf")
	}
	per := func(ev string) float64 {
		v, ok := total[ev]
		if !ok {
			return math.NaN()
		}
		return v / float64(conns)
	}
	all := per("raw_syscalls:sys_enter")
	b.record("sys_total", p.name, all)
	other := all
	for _, k := range c.kinds {
		v := per("syscalls:sys_enter_" + k)
		b.record("sys_"+k, p.name, v)
		if !math.IsNaN(v) {
			other -= v
		}
	}
	b.record("sys_other", p.name, other)
	gor := math.NaN()
	if probe != "" {
		gor = per(probe)
	}
	b.record("goroutines", p.name, gor)
	b.progress("%-6s %-26s run %d: %.1f system calls and %.2f goroutines per conn over %d conns (conn/s under perf: %s)",
		p.name, "syscalls, goroutines", rep+1, all, gor, conns, strings.Join(rates, ", "))
	return nil
}

// perfStat is one `perf stat` attached to a process, its events enabled
// only between start and stop through perf's control FIFOs, so that perf's
// own start-up and exit are outside the window.
type perfStat struct {
	perf   string
	pid    int
	events []string
	dir    string

	cmd      *exec.Cmd
	ctl, ack *os.File
	out      string
	// exited is closed once perf has exited, with its error in waitErr.
	exited  chan struct{}
	waitErr error
	stderr  bytes.Buffer
	// counts are the event counts, filled by stop.
	counts map[string]float64
}

var _ meter = (*perfStat)(nil)

func (s *perfStat) start() error {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return err
	}
	ctl, ack := filepath.Join(s.dir, "ctl"), filepath.Join(s.dir, "ack")
	for _, f := range []string{ctl, ack} {
		if err := unix.Mkfifo(f, 0o600); err != nil {
			return fmt.Errorf("mkfifo %s: %w", f, err)
		}
	}
	// Opened read-write, a FIFO never blocks its opener, whether or not
	// perf has opened its end yet.
	var err error
	if s.ctl, err = os.OpenFile(ctl, os.O_RDWR, 0); err != nil {
		return err
	}
	if s.ack, err = os.OpenFile(ack, os.O_RDWR, 0); err != nil {
		return err
	}
	s.out = filepath.Join(s.dir, "out.csv")
	s.cmd = exec.Command(s.perf, "stat", "-x", ",", "--no-big-num", "-o", s.out, "-D", "-1",
		"--control", "fifo:"+ctl+","+ack, "-e", strings.Join(s.events, ","), "-p", strconv.Itoa(s.pid))
	s.cmd.Stderr = &s.stderr
	// No parent-death signal: it would fire when the OS thread that
	// started perf exits, and the labs' namespace switches end threads.
	// perf stat -p exits by itself when tcpd does.
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("start perf: %w", err)
	}
	s.exited = make(chan struct{})
	go func() {
		s.waitErr = s.cmd.Wait()
		close(s.exited)
	}()
	return s.command("enable")
}

// command sends one control command and waits for perf's ack.
func (s *perfStat) command(cmd string) error {
	if _, err := s.ctl.WriteString(cmd + "\n"); err != nil {
		return err
	}
	got := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(s.ack).ReadString('\n')
		if err == nil && strings.TrimSpace(line) != "ack" {
			err = fmt.Errorf("perf answered %q", line)
		}
		got <- err
	}()
	select {
	case err := <-got:
		return err
	case <-s.exited:
		return fmt.Errorf("perf stat exited before %s: %v: %s", cmd, s.waitErr, firstLine(s.stderr.String()))
	case <-time.After(30 * time.Second):
		return fmt.Errorf("perf stat did not acknowledge %s within 30s", cmd)
	}
}

func (s *perfStat) stop() error {
	if err := s.command("disable"); err != nil {
		return err
	}
	s.cmd.Process.Signal(os.Interrupt)
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		return errors.New("perf stat did not exit within 30s of SIGINT")
	}
	b, err := os.ReadFile(s.out)
	if err != nil {
		return err
	}
	s.counts, err = parsePerfCSV(b)
	if err != nil {
		return err
	}
	for _, ev := range s.events {
		if _, ok := s.counts[ev]; !ok {
			return fmt.Errorf("perf stat counted no %s: %s", ev, firstLine(s.stderr.String()))
		}
	}
	return nil
}

// kill ends perf if it still runs and closes the FIFOs.
func (s *perfStat) kill() {
	if s.exited != nil {
		select {
		case <-s.exited:
		default:
			s.cmd.Process.Kill()
			<-s.exited
		}
	}
	for _, f := range []*os.File{s.ctl, s.ack} {
		if f != nil {
			f.Close()
		}
	}
}
