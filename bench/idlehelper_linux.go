//go:build linux

package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"tcpd/internal/netlab"
)

// idleServer is a running RunIdleServer in the server namespace.
type idleServer struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Scanner
	addr string
}

// startIdleServer runs cfg.Self with IdleServerArg in ns, listening on host.
func (b *bencher) startIdleServer(ctx context.Context, ns *netlab.NS, host netip.Addr) (*idleServer, error) {
	cmd := ns.Command(ctx, b.cfg.Self, IdleServerArg, net.JoinHostPort(host.String(), "0"))
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	outR, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("idle server: %w", err)
	}
	s := &idleServer{cmd: cmd, in: in, out: bufio.NewScanner(outR)}
	line, err := s.line()
	addr, ok := strings.CutPrefix(line, "listening ")
	if err != nil || !ok {
		s.stop()
		return nil, fmt.Errorf("idle server: %q, %v: %s", line, err, firstLine(stderr.String()))
	}
	s.addr = addr
	return s, nil
}

func (s *idleServer) line() (string, error) {
	if !s.out.Scan() {
		if err := s.out.Err(); err != nil {
			return "", err
		}
		return "", io.ErrUnexpectedEOF
	}
	return s.out.Text(), nil
}

// command sends cmd and returns the number in the answer that starts with
// want.
func (s *idleServer) command(cmd, want string) (int, error) {
	if _, err := io.WriteString(s.in, cmd+"\n"); err != nil {
		return 0, err
	}
	line, err := s.line()
	if err != nil {
		return 0, err
	}
	num, ok := strings.CutPrefix(line, want+" ")
	if !ok {
		return 0, fmt.Errorf("idle server answered %q to %s", line, cmd)
	}
	return strconv.Atoi(num)
}

func (s *idleServer) accepted() (int, error) { return s.command("count", "accepted") }

// closeConns closes every connection the server holds.
func (s *idleServer) closeConns() error {
	_, err := s.command("close", "closed")
	return err
}

// stop ends the server, which closes what it still holds.
func (s *idleServer) stop() {
	s.in.Close()
	done := make(chan error, 1)
	go func() { done <- s.cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			return
		}
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-done
	}
}
