//go:build linux

package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"testing"
	"time"

	"tcpd/internal/netlab"
)

// TestTUNDeletedExits: an operator (or a script) deletes tcpd's TUN while
// connections run through it. Nothing can reach those clients again and the
// routes into the TUN are gone with it, so tcpd says so, resets the
// connections' upstream legs and exits with a failure, for its supervisor
// to restart it (Restart=on-failure), rather than live on healthy-looking
// with no data path.
func TestTUNDeletedExits(t *testing.T) {
	lab := netlab.NewT(t, netlab.Options{})
	bin := netlab.BuildTCPD(t)
	p, err := lab.StartTCPDWith(context.Background(), bin, gwConfig{Metrics: true, LogLevel: "info"}.yaml(), netlab.TCPDOptions{})
	if err != nil {
		t.Fatalf("start tcpd: %v", err)
	}
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("tcpd log:\n%s", p.Logs())
		}
	})
	g := &gateway{Lab: lab, tcpd: p}
	upstream := make(chan net.Conn, 1)
	done := make(chan struct{})
	defer close(done)
	port := serve(t, g.Server, func(c net.Conn) {
		io.CopyN(c, c, int64(len("ping through tcpd"))) // echoOnce's message
		upstream <- c
		<-done
	})
	addr := net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port))
	c, err := g.Client.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := echoOnce(c); err != nil {
		t.Fatalf("echo before the TUN goes: %v", err)
	}
	up := <-upstream

	if out, err := g.Gateway.Command(context.Background(), "ip", "link", "del", p.TUN()).CombinedOutput(); err != nil {
		t.Fatalf("ip link del %s: %v: %s", p.TUN(), err, out)
	}
	select {
	case <-p.Exited():
	case <-time.After(10 * time.Second):
		t.Fatal("tcpd still runs 10 s after its TUN was deleted")
	}
	var ee *exec.ExitError
	if err := p.Wait(); !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("tcpd exited with %v, want exit status 1 (a failure, for a restart)", err)
	}
	msg := "the TUN was deleted from under tcpd; exiting so that a restart creates it again"
	if lines := logLines(g, msg); len(lines) != 1 || lines[0]["level"] != "error" || lines[0]["tun"] != p.TUN() {
		t.Errorf("log lines %q: %v, want one error line naming the TUN", msg, lines)
	}
	// The connection's upstream leg is reset by tcpd, not merely closed
	// by its exit (which would be a FIN).
	up.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := up.Read(make([]byte, 1)); !isReset(err) {
		t.Errorf("the destination's side after tcpd exited: %v, want a reset", err)
	}
}
