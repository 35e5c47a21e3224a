//go:build linux

package netlab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	readyTimeout = 20 * time.Second // StartTCPD: wait for the "ready" log line
	stopTimeout  = 30 * time.Second // Stop: SIGTERM to SIGKILL
	killTimeout  = 10 * time.Second // Close: wait for a killed process
)

// Proc is a process started via a lab, with its combined stdout and stderr
// captured.
type Proc struct {
	name string
	cmd  *exec.Cmd
	log  *logSink
	done chan struct{} // closed when the process has been waited for
	err  error         // cmd.Wait's result, valid after done
	tun  string
	// config is the configuration file StartTCPD wrote, "" for none.
	config string
}

// StartProc starts cmd (typically from NS.Command) with its stdout and
// stderr captured (stdout only, when the caller has set cmd.Stderr), and has
// the lab kill it in Close. With NETLAB_VERBOSE=1 the output is copied to
// os.Stderr as well. If cmd.WaitDelay is zero it is
// set to a few seconds, so that a process that leaks its output pipe to a
// child cannot hang Wait.
func (l *Lab) StartProc(cmd *exec.Cmd) (*Proc, error) {
	p := &Proc{
		name: filepath.Base(cmd.Path),
		cmd:  cmd,
		log:  newLogSink(),
		done: make(chan struct{}),
	}
	if len(cmd.Args) > 4 && cmd.Args[1] == "netns" && cmd.Args[2] == "exec" {
		p.name = filepath.Base(cmd.Args[4]) // `ip netns exec <ns> <name> ...`
		if p.name == "prlimit" && len(cmd.Args) > 7 {
			p.name = filepath.Base(cmd.Args[7]) // `... prlimit --nofile=N:N -- <name> ...`
		}
	}
	if os.Getenv("NETLAB_VERBOSE") == "1" {
		p.log.echo = os.Stderr
	}
	cmd.Stdout = p.log
	if cmd.Stderr == nil {
		cmd.Stderr = p.log
	}
	if cmd.WaitDelay == 0 {
		cmd.WaitDelay = 5 * time.Second
	}

	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, errClosed
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		p.err = cmd.Wait()
		p.log.finish()
		close(p.done)
	}()
	l.procs = append(l.procs, p)
	return p, nil
}

// StartTCPD runs tcpd in the gateway namespace:
//
//	ip netns exec <gateway> <bin> run [--config <file>] --log-format json <extraArgs...>
//
// configYAML is written to a temporary file; if it is empty no --config is
// passed and tcpd uses its embedded default. StartTCPD waits up to 20 s for
// the JSON log line with "msg":"ready", then routes client traffic into the
// TUN named by that line's "tun" field (RouteIntoTUN). If tcpd exits first,
// does not get ready in time or routing fails, tcpd is killed and the error
// includes its output.
//
// ctx bounds the wait for readiness and the process's life: when ctx is done
// tcpd gets SIGTERM, and SIGKILL 30 s later if it is still running.
func (l *Lab) StartTCPD(ctx context.Context, bin string, configYAML string, extraArgs ...string) (*Proc, error) {
	return l.StartTCPDWith(ctx, bin, configYAML, TCPDOptions{}, extraArgs...)
}

// TCPDOptions vary how StartTCPDWith runs tcpd.
type TCPDOptions struct {
	// OpenFiles, when positive, is tcpd's open-file limit (RLIMIT_NOFILE,
	// soft and hard), set by prlimit(1), which then execs tcpd in its
	// place: the pid stays tcpd's.
	OpenFiles int
	// Env is added to tcpd's environment (KEY=value), which is otherwise
	// the caller's.
	Env []string
	// Stderr, when set, is tcpd's standard error, where its log goes,
	// instead of the Proc's captured output (which then holds stdout
	// only). With no log to read, StartTCPDWith learns that tcpd is ready
	// as systemd does, from READY=1 on a NOTIFY_SOCKET of its own, and
	// routes into the TUN named TUN.
	Stderr *os.File
	TUN    string
}

// StartTCPDWith is StartTCPD with options.
func (l *Lab) StartTCPDWith(ctx context.Context, bin string, configYAML string, opts TCPDOptions, extraArgs ...string) (*Proc, error) {
	args := []string{"run"}
	var config string
	if configYAML != "" {
		dir, err := l.tempDir()
		if err != nil {
			return nil, err
		}
		f, err := os.CreateTemp(dir, "tcpd-*.yaml")
		if err != nil {
			return nil, err
		}
		_, werr := f.WriteString(configYAML)
		if err := errors.Join(werr, f.Close()); err != nil {
			return nil, fmt.Errorf("netlab: write tcpd config: %w", err)
		}
		args = append(args, "--config", f.Name())
		config = f.Name()
	}
	args = append(args, "--log-format", "json")
	args = append(args, extraArgs...)

	name := bin
	if opts.OpenFiles > 0 {
		args = append([]string{fmt.Sprintf("--nofile=%d:%d", opts.OpenFiles, opts.OpenFiles), "--", bin}, args...)
		name = "prlimit"
	}
	cmd := l.Gateway.Command(ctx, name, args...)
	env := opts.Env
	var notify *net.UnixConn
	if opts.Stderr != nil {
		if opts.TUN == "" {
			return nil, errors.New("netlab: TCPDOptions.Stderr needs TCPDOptions.TUN")
		}
		var err error
		if notify, err = l.notifySocket(); err != nil {
			return nil, err
		}
		env = append(env, "NOTIFY_SOCKET="+notify.LocalAddr().String())
		cmd.Stderr = opts.Stderr
	}
	if len(env) > 0 {
		cmd.Env = append(cmd.Environ(), env...)
	}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = stopTimeout
	p, err := l.StartProc(cmd)
	if err != nil {
		if notify != nil {
			notify.Close()
		}
		return nil, fmt.Errorf("netlab: start %s: %w", bin, err)
	}

	var tun string
	if notify != nil {
		err := p.waitReady(ctx, notify)
		// The socket takes (and drops) tcpd's later messages, STATUS and
		// STOPPING, for as long as it runs: a send to a full one would
		// block it.
		go func() {
			buf := make([]byte, 4096)
			for {
				if _, err := notify.Read(buf); err != nil {
					return
				}
			}
		}()
		go func() {
			<-p.done
			notify.Close()
		}()
		if err != nil {
			p.Kill()
			return nil, fmt.Errorf("netlab: tcpd not ready: %w\n--- tcpd output ---\n%s", err, p.Logs())
		}
		tun = opts.TUN
	} else {
		wctx, cancel := context.WithTimeoutCause(ctx, readyTimeout,
			fmt.Errorf("no \"ready\" log line within %v", readyTimeout))
		defer cancel()
		ready, err := p.WaitForLog(wctx, "ready")
		if err != nil {
			p.Kill()
			return nil, fmt.Errorf("netlab: tcpd not ready: %w\n--- tcpd output ---\n%s", err, p.Logs())
		}
		tun, _ = ready["tun"].(string)
	}
	if tun == "" {
		p.Kill()
		return nil, fmt.Errorf("netlab: tcpd's ready line names no TUN (\"tun\")\n--- tcpd output ---\n%s", p.Logs())
	}
	p.tun, p.config = tun, config
	if err := l.RouteIntoTUN(tun); err != nil {
		p.Kill()
		return nil, fmt.Errorf("%w\n--- tcpd output ---\n%s", err, p.Logs())
	}
	return p, nil
}

// notifySocket opens a datagram socket in the lab's temporary directory for
// the systemd notify protocol. (A path in the file system, not an abstract
// name: those belong to a network namespace.) The lab's Close removes it
// with the directory.
func (l *Lab) notifySocket() (*net.UnixConn, error) {
	dir, err := l.tempDir()
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, fmt.Sprintf("notify-%d", notifyN.Add(1)))
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("netlab: notify socket: %w", err)
	}
	return c, nil
}

var notifyN atomic.Uint64

// waitReady waits up to readyTimeout for a notify message with the line
// READY=1, and fails if the process exits or ctx is done first.
func (p *Proc) waitReady(ctx context.Context, c *net.UnixConn) error {
	defer c.SetReadDeadline(time.Time{})
	deadline := time.Now().Add(readyTimeout)
	buf := make([]byte, 4096)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return fmt.Errorf("exited before READY=1: %v", p.err)
		case <-ctx.Done():
			return context.Cause(ctx)
		default:
		}
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := c.Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if err != nil {
			return err
		}
		for _, line := range strings.Split(string(buf[:n]), "\n") {
			if line == "READY=1" {
				return nil
			}
		}
	}
	return fmt.Errorf("no READY=1 within %v", readyTimeout)
}

// Pid returns the process id (inside the namespace too: namespaces are
// network-only).
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// ConfigPath returns the configuration file StartTCPD gave tcpd, which a
// test may rewrite before it sends SIGHUP; "" when tcpd runs on its
// embedded default, and for other processes.
func (p *Proc) ConfigPath() string { return p.config }

// TUN returns the TUN name from tcpd's ready line ("" for other processes).
func (p *Proc) TUN() string { return p.tun }

// Logs returns everything the process has written to stdout and stderr so
// far.
func (p *Proc) Logs() string { return p.log.String() }

// LogLines returns the output lines that parsed as JSON objects, in order.
func (p *Proc) LogLines() []map[string]any { return p.log.Lines() }

// Exited returns a channel closed when the process has exited.
func (p *Proc) Exited() <-chan struct{} { return p.done }

// Wait waits for the process to exit and returns exec.Cmd.Wait's result. It
// may be called any number of times, from any goroutine.
func (p *Proc) Wait() error {
	<-p.done
	return p.err
}

// Stop sends SIGTERM and waits up to 30 s for the process to exit, then
// kills it. It returns an error (including the output) if the process did
// not exit on its own or exited with a non-zero status.
func (p *Proc) Stop() error {
	select {
	case <-p.done:
		return p.exitError()
	default:
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("netlab: SIGTERM %s: %w", p.name, err)
	}
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return p.exitError()
	case <-timer.C:
		p.Kill()
		return fmt.Errorf("netlab: %s (pid %d) still running %v after SIGTERM; killed it\n--- output ---\n%s",
			p.name, p.Pid(), stopTimeout, p.Logs())
	}
}

// Kill sends SIGKILL and waits for the process to be gone.
func (p *Proc) Kill() { p.kill(0) }

// kill sends SIGKILL and waits, at most timeout if it is positive.
func (p *Proc) kill(timeout time.Duration) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	_ = p.cmd.Process.Kill()
	if timeout <= 0 {
		<-p.done
		return nil
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return nil
	case <-timer.C:
		return fmt.Errorf("netlab: %s (pid %d) not reaped %v after SIGKILL", p.name, p.Pid(), timeout)
	}
}

func (p *Proc) exitError() error {
	if p.err == nil {
		return nil
	}
	return fmt.Errorf("netlab: %s (pid %d): %w\n--- output ---\n%s", p.name, p.Pid(), p.err, p.Logs())
}

// WaitForLog waits for a JSON log line whose "msg" is msg (from the start of
// the output, so a line already written counts) and returns it. It fails
// when ctx is done or the process exits without writing such a line.
func (p *Proc) WaitForLog(ctx context.Context, msg string) (map[string]any, error) {
	return p.WaitForLine(ctx, func(m map[string]any) bool { return m["msg"] == msg })
}

// WaitForLine is WaitForLog with an arbitrary predicate.
func (p *Proc) WaitForLine(ctx context.Context, match func(map[string]any) bool) (map[string]any, error) {
	seen := 0
	for {
		lines, changed := p.log.since(seen)
		for _, m := range lines {
			if match(m) {
				return m, nil
			}
		}
		seen += len(lines)
		select {
		case <-changed:
		case <-p.done:
			// The last lines may have arrived together with the exit.
			if lines, _ := p.log.since(seen); len(lines) > 0 {
				continue
			}
			if p.err != nil {
				return nil, fmt.Errorf("%s exited first: %w", p.name, p.err)
			}
			return nil, fmt.Errorf("%s exited first (status 0)", p.name)
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
}

// logSink collects a process's output and parses it into JSON lines.
type logSink struct {
	mu      sync.Mutex
	all     bytes.Buffer
	partial []byte
	lines   []map[string]any
	changed chan struct{} // closed and replaced when lines grow
	echo    io.Writer
}

func newLogSink() *logSink { return &logSink{changed: make(chan struct{})} }

func (s *logSink) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.all.Write(b)
	if s.echo != nil {
		s.echo.Write(b)
	}
	s.partial = append(s.partial, b...)
	grew := false
	for {
		i := bytes.IndexByte(s.partial, '\n')
		if i < 0 {
			break
		}
		grew = s.parse(s.partial[:i]) || grew
		s.partial = s.partial[i+1:]
	}
	s.partial = append([]byte(nil), s.partial...)
	if grew {
		s.notify()
	}
	return len(b), nil
}

// finish parses a last line without a newline.
func (s *logSink) finish() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.partial) > 0 && s.parse(s.partial) {
		s.notify()
	}
	s.partial = nil
}

func (s *logSink) parse(line []byte) bool {
	line = bytes.TrimSpace(line)
	if len(line) == 0 || line[0] != '{' {
		return false
	}
	var m map[string]any
	if json.Unmarshal(line, &m) != nil {
		return false
	}
	s.lines = append(s.lines, m)
	return true
}

func (s *logSink) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// since returns the JSON lines after the first n and a channel closed when
// more arrive.
func (s *logSink) since(n int) ([]map[string]any, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n > len(s.lines) {
		n = len(s.lines)
	}
	return append([]map[string]any(nil), s.lines[n:]...), s.changed
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.all.String()
}

func (s *logSink) Lines() []map[string]any {
	lines, _ := s.since(0)
	return lines
}

// Netem runs `tc qdisc replace dev <link> root netem <args...>` in ns, e.g.
// Netem(l.Gateway, l.GatewayServerLink, "delay", "20ms", "loss", "1%").
// With no args netem is installed with its defaults (no impairment).
// Kernels without netem fail with "Specified qdisc kind is unknown";
// [Lab.ImpairClientLink] emulates an impaired client link without it.
func (l *Lab) Netem(ns *NS, link string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tcArgs := append([]string{"qdisc", "replace", "dev", link, "root", "netem"}, args...)
	out, err := ns.Command(ctx, "tc", tcArgs...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("netlab: tc %s in %s: %w: %s", strings.Join(tcArgs, " "), ns.Name, err, bytes.TrimSpace(out))
	}
	return nil
}
