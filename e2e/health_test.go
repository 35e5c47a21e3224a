//go:build linux

package e2e_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"tcpd/internal/netlab"
)

// probe is one answer of a health endpoint.
type probe struct {
	code int
	body string
}

func (p probe) String() string { return fmt.Sprintf("%d %q", p.code, p.body) }

// get fetches http://metricsAddr+path from inside the gateway namespace.
func getProbe(ns *netlab.NS, path string) (probe, error) {
	c := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return ns.Dial(ctx, network, addr)
		},
	}}
	resp, err := c.Get("http://" + metricsAddr + path)
	if err != nil {
		return probe{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return probe{resp.StatusCode, string(b)}, err
}

// wantProbe checks one answer: its status and the start of its body.
func wantProbe(t *testing.T, ns *netlab.NS, path string, code int, bodyPrefix string) {
	t.Helper()
	p, err := getProbe(ns, path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	if p.code != code || !strings.HasPrefix(p.body, bodyPrefix) {
		t.Errorf("GET %s: %v, want %d %q...", path, p, code, bodyPrefix)
	}
}

// waitProbe polls path until it answers code with a body starting with
// bodyPrefix, and returns the time that took.
func waitProbe(t *testing.T, ns *netlab.NS, path string, code int, bodyPrefix string, within time.Duration) time.Duration {
	t.Helper()
	t0 := time.Now()
	var last probe
	var err error
	for time.Since(t0) < within {
		last, err = getProbe(ns, path)
		if err == nil && last.code == code && strings.HasPrefix(last.body, bodyPrefix) {
			return time.Since(t0)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("GET %s: after %v still %v (err %v), want %d %q...", path, within, last, err, code, bodyPrefix)
	return 0
}

// dialEcho connects through tcpd to the echo server on port and checks
// that a message comes back.
func dialEcho(t *testing.T, lab *netlab.Lab, port int) net.Conn {
	t.Helper()
	c, err := lab.Client.DialTimeout("tcp", net.JoinHostPort(lab.ServerAddr4.String(), fmt.Sprint(port)), 5*time.Second)
	if err != nil {
		t.Fatalf("dial through tcpd: %v", err)
	}
	if err := echoOnce(c); err != nil {
		c.Close()
		t.Fatalf("echo through tcpd: %v", err)
	}
	return c
}

// TestHealthStartingAndWedged runs a wedgetest build of tcpd and asks
// /healthz and /readyz in each state: held before it creates its TUN
// (alive, not ready, no metrics yet), serving (both 200), and with its
// packet loop wedged (both 503 with the watchdog's reason).
func TestHealthStartingAndWedged(t *testing.T) {
	lab := netlab.NewT(t, netlab.Options{})
	bin := netlab.BuildTags(t, "./cmd/tcpd", "wedgetest")
	dir := t.TempDir()
	hold := filepath.Join(dir, "hold")
	if err := os.WriteFile(hold, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(dir, "tcpd.yaml")
	if err := os.WriteFile(cfgFile, []byte(gwConfig{Metrics: true, LogLevel: "info"}.yaml()), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := lab.Gateway.Command(context.Background(), bin, "run", "--config", cfgFile, "--log-format", "json")
	cmd.Env = append(os.Environ(), "TCPD_TEST_HOLD_START="+hold)
	p, err := lab.StartProc(cmd)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Kill() // a wedged tcpd cannot drain
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := p.WaitForLog(ctx, "holding the start while the file exists (wedgetest build)"); err != nil {
		t.Fatalf("tcpd did not hold its start: %v\n%s", err, p.Logs())
	}

	// Starting: the listener answers, the TUN does not exist yet.
	wantProbe(t, lab.Gateway, "/readyz", http.StatusServiceUnavailable, "starting: creating the TUN and the netstack\n")
	wantProbe(t, lab.Gateway, "/healthz", http.StatusOK, "ok\n")
	wantProbe(t, lab.Gateway, "/metrics", http.StatusServiceUnavailable, "tcpd is starting")
	if _, err := lab.Gateway.Netlink().LinkByName("tcpd0"); err == nil {
		t.Error("tcpd0 exists while tcpd holds its start before creating it")
	}

	// Serving.
	if err := os.Remove(hold); err != nil {
		t.Fatal(err)
	}
	ready, err := p.WaitForLog(ctx, "ready")
	if err != nil {
		t.Fatalf("no ready line: %v\n%s", err, p.Logs())
	}
	if err := lab.RouteIntoTUN(ready["tun"].(string)); err != nil {
		t.Fatal(err)
	}
	wantProbe(t, lab.Gateway, "/readyz", http.StatusOK, "ok\n")
	wantProbe(t, lab.Gateway, "/healthz", http.StatusOK, "ok\n")
	wantProbe(t, lab.Gateway, "/metrics", http.StatusOK, "# HELP")
	port := serve(t, lab.Server, func(c net.Conn) { io.Copy(c, c) })
	dialEcho(t, lab, port).Close()

	// Wedged: SIGUSR2 wedges the packet loop at its next batch, which a
	// SYN provides. Both endpoints say so once the loop has been stuck for
	// the watchdog's 5 s.
	if err := syscall.Kill(p.Pid(), syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	if _, err := p.WaitForLog(ctx, "SIGUSR2: wedging the packet loop (wedgetest build)"); err != nil {
		t.Fatal(err)
	}
	go func() {
		if c, err := lab.Client.DialTimeout("tcp", net.JoinHostPort(lab.ServerAddr4.String(), fmt.Sprint(port)), 2*time.Second); err == nil {
			c.Close()
		}
	}()
	took := waitProbe(t, lab.Gateway, "/healthz", http.StatusServiceUnavailable, "packet loop stuck on one batch for ", 15*time.Second)
	t.Logf("/healthz turned 503 %v after the wedging SYN", took.Round(100*time.Millisecond))
	wantProbe(t, lab.Gateway, "/readyz", http.StatusServiceUnavailable, "data path wedged: packet loop stuck on one batch for ")
	wantReady(t, lab, 0)
	// The watchdog's own log line shows that both read the same test.
	if _, err := p.WaitForLog(ctx, "data path wedged; withholding watchdog pings"); err != nil {
		t.Errorf("the watchdog did not see the wedge: %v", err)
	}
}

// TestHealthDrain holds a connection through tcpd, sends SIGTERM and
// checks that /readyz answers 503 at once while the listener, /healthz,
// /metrics and the held connection keep working through the drain, that
// new connections are refused, and that tcpd exits once the last one ends.
func TestHealthDrain(t *testing.T) {
	lab := netlab.NewT(t, netlab.Options{})
	bin := netlab.BuildTCPD(t)
	p, err := lab.StartTCPD(context.Background(), bin, gwConfig{Metrics: true, LogLevel: "info"}.yaml()+"shutdown_grace: 60s\n")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Kill()
	port := serve(t, lab.Server, func(c net.Conn) { io.Copy(c, c) })
	wantProbe(t, lab.Gateway, "/readyz", http.StatusOK, "ok\n")
	wantProbe(t, lab.Gateway, "/healthz", http.StatusOK, "ok\n")
	wantProbe(t, lab.Gateway, "/metrics", http.StatusOK, "# HELP")
	wantReady(t, lab, 1)

	held := dialEcho(t, lab, port)
	defer held.Close()

	if err := syscall.Kill(p.Pid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := p.WaitForLog(ctx, "shutting down"); err != nil {
		t.Fatal(err)
	}
	wantProbe(t, lab.Gateway, "/readyz", http.StatusServiceUnavailable, "draining: shutting down, 1 connections left\n")
	wantProbe(t, lab.Gateway, "/healthz", http.StatusOK, "ok\n")
	wantProbe(t, lab.Gateway, "/metrics", http.StatusOK, "# HELP")
	wantReady(t, lab, 0)
	if err := echoOnce(held); err != nil {
		t.Errorf("the held connection stopped working during the drain: %v", err)
	}
	c, err := lab.Client.DialTimeout("tcp", net.JoinHostPort(lab.ServerAddr4.String(), fmt.Sprint(port)), 3*time.Second)
	if err == nil {
		c.Close()
		t.Error("a new connection was accepted while draining")
	}
	select {
	case <-p.Exited():
		t.Fatal("tcpd exited while a connection was still draining")
	default:
	}

	// The last connection ends: tcpd stops well before shutdown_grace.
	held.Close()
	select {
	case <-p.Exited():
	case <-time.After(20 * time.Second):
		t.Fatal("tcpd still runs 20 s after its last connection closed")
	}
	if err := p.Wait(); err != nil {
		t.Errorf("tcpd exited with %v\n%s", err, p.Logs())
	}
	if _, err := getProbe(lab.Gateway, "/readyz"); err == nil {
		t.Error("the metrics listener still answers after tcpd exited")
	}
}

// wantReady checks tcpd_ready in a scrape of the gateway's /metrics.
func wantReady(t *testing.T, lab *netlab.Lab, want int) {
	t.Helper()
	p, err := getProbe(lab.Gateway, "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if line := fmt.Sprintf("\ntcpd_ready %d\n", want); !strings.Contains(p.body, line) {
		i := strings.Index(p.body, "\ntcpd_ready ")
		t.Errorf("/metrics: want %q, got %q", strings.TrimSpace(line), p.body[max(i, 0):min(max(i, 0)+20, len(p.body))])
	}
}

// TestHealthPortTaken: the metrics listener is bound first, so a taken port
// fails the start at once with a message naming the key and the cause.
func TestHealthPortTaken(t *testing.T) {
	lab := netlab.NewT(t, netlab.Options{})
	bin := netlab.BuildTCPD(t)
	ln, err := lab.Gateway.Listen("tcp", metricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfgFile := filepath.Join(t.TempDir(), "tcpd.yaml")
	if err := os.WriteFile(cfgFile, []byte(gwConfig{Metrics: true, LogLevel: "info"}.yaml()), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := lab.StartProc(lab.Gateway.Command(context.Background(), bin, "run", "--config", cfgFile, "--log-format", "json"))
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Exited():
	case <-time.After(20 * time.Second):
		t.Fatalf("tcpd still runs with its metrics port taken:\n%s", p.Logs())
	}
	if err := p.Wait(); err == nil {
		t.Errorf("tcpd exited 0 with its metrics port taken")
	}
	if logs := p.Logs(); !strings.Contains(logs, "metrics.listen "+metricsAddr) || !strings.Contains(logs, "address already in use") {
		t.Errorf("the error does not name metrics.listen and the cause:\n%s", logs)
	}
	if strings.Contains(p.Logs(), `"msg":"ready"`) {
		t.Error("tcpd said ready")
	}
}
