//go:build linux

package e2e_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"tcpd/internal/netlab"
)

// TestReloadTellsTheTruth sends tcpd SIGHUP with a file that changes a key
// that needs a restart (tun.mtu) and two that apply to new connections
// (tcp.congestion_control, upstream.mark), twice:
//   - every reload warns that tun.mtu keeps its running value, not just the
//     first (a reload once stored the whole file as the configuration in
//     force, so the second found nothing to warn about);
//   - congestion control is not among the keys that need a restart, and a
//     connection opened after the reload runs cubic while the one opened
//     before keeps reno, as tcpd conns shows; likewise only the new
//     connection's upstream socket carries the new firewall mark, as the
//     gateway's ss -e shows.
func TestReloadTellsTheTruth(t *testing.T) {
	t.Parallel()
	cfg := gwConfig{LogLevel: "info"}
	g, sock, port, accepted := stateLab(t, cfg)
	dialN(t, g, port, 1, accepted)
	if rows := connsJSON(t, sock); len(rows) != 1 || rows[0].CongestionControl != "reno" {
		t.Fatalf("before the reload: %+v, want one connection running reno", rows)
	}

	cfg.Metrics, cfg.AdminSocket = true, sock
	cfg.MTU, cfg.CongestionControl, cfg.Mark = 1400, "cubic", 7
	if err := os.WriteFile(g.tcpd.ConfigPath(), []byte(cfg.yaml()), 0o644); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 2; i++ {
		reload(t, g, i)
		warnings := logLines(g, "reload: these settings need a restart and keep their running values")
		if len(warnings) != i {
			t.Fatalf("after reload %d: %d restart warnings, want %d (one per reload)", i, len(warnings), i)
		}
		keys := fmt.Sprint(warnings[i-1]["keys"])
		if !strings.Contains(keys, "tun.mtu: 1500 → 1400") || strings.Contains(keys, "congestion_control") {
			t.Fatalf("reload %d warned about %s; want tun.mtu 1500 → 1400 and not congestion control", i, keys)
		}
	}
	if m := sample(t, g); m["tcpd_config_restart_pending"] != 1 || m["tcpd_config_last_reload_successful"] != 1 {
		t.Errorf("tcpd_config_restart_pending %v, last reload successful %v; want 1 (tun.mtu) and 1",
			m["tcpd_config_restart_pending"], m["tcpd_config_last_reload_successful"])
	}
	dialN(t, g, port, 1, accepted)
	var ccs, marks []string
	upstream := upstreamMarks(t, g, port)
	for _, r := range connsJSON(t, sock) {
		ccs = append(ccs, r.CongestionControl)
		mark, ok := upstream[r.Upstream]
		if !ok {
			t.Fatalf("no upstream socket %s in the gateway's ss -e: %v", r.Upstream, upstream)
		}
		marks = append(marks, mark)
	}
	if !slices.Equal(ccs, []string{"reno", "cubic"}) {
		t.Errorf("congestion control of the connection opened before the reloads and the one after: %q, want reno, cubic", ccs)
	}
	if !slices.Equal(marks, []string{"", "0x7"}) {
		t.Errorf("firewall marks of the upstream sockets opened before the reloads and after: %q, want none, 0x7", marks)
	}
}

// upstreamMarks runs ss -e in the gateway namespace and returns the
// firewall mark ("" for none) of each socket connected to port, by its
// local address.
func upstreamMarks(t *testing.T, g *gateway, port int) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := g.Gateway.Command(ctx, "ss", "-Htne", "dport", "=", fmt.Sprintf(":%d", port)).Output()
	if err != nil {
		t.Fatalf("ss -Htne in the gateway namespace: %v", err)
	}
	marks := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		marks[f[3]] = ""
		for _, x := range f[5:] {
			if m, ok := strings.CutPrefix(x, "fwmark:"); ok {
				marks[f[3]] = m
			}
		}
	}
	return marks
}

// reload sends tcpd SIGHUP and waits for its n-th "reloaded" line.
func reload(t *testing.T, g *gateway, n int) {
	t.Helper()
	if err := syscall.Kill(g.tcpd.Pid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	seen := 0
	if _, err := g.tcpd.WaitForLine(ctx, func(m map[string]any) bool {
		if m["msg"] == "reload rejected; the running configuration stays in force" {
			t.Errorf("reload %d rejected: %v", n, m["error"])
		}
		if m["msg"] == "reloaded" {
			seen++
		}
		return seen == n
	}); err != nil {
		t.Fatalf("reload %d: %v", n, err)
	}
}

// logLines returns tcpd's log lines whose msg is msg, in order.
func logLines(g *gateway, msg string) []map[string]any {
	var out []map[string]any
	for _, m := range g.tcpd.LogLines() {
		if m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// TestReloadKeepsAnAdminLogLevel: a log level set through the admin socket
// stays across a reload that leaves log.level as it was (a reload once
// reset it to the file's, so turning on debug for an investigation ended
// at the next reload of any key), and a reload that changes log.level
// applies it.
func TestReloadKeepsAnAdminLogLevel(t *testing.T) {
	t.Parallel()
	sock := filepath.Join(t.TempDir(), "tcpd.sock")
	cfg := gwConfig{LogLevel: "info", AdminSocket: sock}
	g := startGateway(t, netlab.Options{}, cfg)
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	level := func(method, body string) string {
		t.Helper()
		req, err := http.NewRequest(method, "http://tcpd/v1/log/level", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s /v1/log/level: %v", method, err)
		}
		defer resp.Body.Close()
		var v struct{ Level string }
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("%s /v1/log/level: %s, %v", method, resp.Status, err)
		}
		return v.Level
	}
	write := func() {
		t.Helper()
		if err := os.WriteFile(g.tcpd.ConfigPath(), []byte(cfg.yaml()), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	if got := level("PUT", `{"level": "debug"}`); got != "debug" {
		t.Fatalf("PUT debug answered %q", got)
	}
	cfg.CongestionControl = "cubic" // another key changes, log.level does not
	write()
	reload(t, g, 1)
	if got := level("GET", ""); got != "debug" {
		t.Errorf("after a reload that changed tcp.congestion_control only, the level is %q, want the admin's debug", got)
	}
	if got := fmt.Sprint(logLines(g, "reloaded")[0]["log_level"]); got != "debug" {
		t.Errorf("the reload logged log_level %q, want the level in force, debug", got)
	}

	if got := level("PUT", `{"level": "info"}`); got != "info" {
		t.Fatalf("PUT info answered %q", got)
	}
	cfg.LogLevel = "debug"
	write()
	reload(t, g, 2)
	if got := level("GET", ""); got != "debug" {
		t.Errorf("after a reload that changed log.level from info to debug, the level is %q, want debug", got)
	}
}

// TestReloadCommandWaits: `tcpd reload` returns once the reload is done,
// so that what it changed is in force when it exits (the metrics say so
// at once, a new connection runs the new congestion control), and a file
// with errors makes it fail with the reasons while tcpd keeps its running
// configuration. It is what the unit's ExecReload runs.
func TestReloadCommandWaits(t *testing.T) {
	t.Parallel()
	cfg := gwConfig{LogLevel: "info"}
	g, sock, port, accepted := stateLab(t, cfg)
	cfg.Metrics, cfg.AdminSocket = true, sock
	bin := netlab.BuildTCPD(t)
	reloadCmd := func() (string, error) {
		out, err := exec.Command(bin, "reload", "--socket", sock).CombinedOutput()
		return string(out), err
	}

	if err := os.WriteFile(g.tcpd.ConfigPath(), []byte(cfg.yaml()+"tunn: {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := reloadCmd()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(out, "tunn: unknown key") {
		t.Fatalf("tcpd reload of a file with an error: %v\n%s\nwant exit 1 naming the unknown key", err, out)
	}
	if m := sample(t, g); m["tcpd_config_last_reload_successful"] != 0 {
		t.Errorf("right after the rejected reload returned: tcpd_config_last_reload_successful %v, want 0", m["tcpd_config_last_reload_successful"])
	}

	cfg.CongestionControl = "cubic"
	if err := os.WriteFile(g.tcpd.ConfigPath(), []byte(cfg.yaml()), 0o644); err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	out, err = reloadCmd()
	if err != nil || out != "reloaded "+g.tcpd.ConfigPath()+"\n" {
		t.Fatalf("tcpd reload: %v\n%q", err, out)
	}
	// No waiting: it is in force when the command has returned.
	m := sample(t, g)
	if at := float64(before.UnixNano()) / 1e9; m["tcpd_config_last_reload_successful"] != 1 || !(m["tcpd_config_last_reload_success_timestamp_seconds"] >= at-1e-6) {
		t.Errorf("right after tcpd reload returned: last reload successful %v at %.6f, want 1 at or after %.6f",
			m["tcpd_config_last_reload_successful"], m["tcpd_config_last_reload_success_timestamp_seconds"], at)
	}
	dialN(t, g, port, 1, accepted)
	if rows := connsJSON(t, sock); len(rows) != 1 || rows[0].CongestionControl != "cubic" {
		t.Errorf("a connection opened right after tcpd reload: %+v, want cubic", rows)
	}
}

// TestReloadTimeoutsApplyAtOnce: tcp.idle_timeout and
// tcp.half_close_timeout apply at once on reload, to the connections that
// run, as their documentation says: turning the idle timeout on resets
// idle connections that had none once they have been idle that long, and
// lowering the half-close timeout resets a half-closed connection whose
// old deadline was an hour away. Before, a relay kept the deadline it had
// armed, or none.
func TestReloadTimeoutsApplyAtOnce(t *testing.T) {
	t.Parallel()
	const (
		timeout = 2 * time.Second
		slack   = 3 * time.Second
	)
	cfg := gwConfig{Metrics: true, LogLevel: "info", IdleTimeout: "0s", HalfCloseTimeout: "1h"}
	g := startGateway(t, netlab.Options{}, cfg)
	before := sample(t, g)
	hold := make(chan struct{})
	port := serve(t, g.Server, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(time.Minute))
		io.Copy(io.Discard, c)
		<-hold // the destination never closes its direction
	})
	t.Cleanup(func() { close(hold) })
	idle := []net.Conn{dialPort(t, g, port, time.Minute), dialPort(t, g, port, time.Minute)}
	half := dialPort(t, g, port, time.Minute)
	half.(*net.TCPConn).CloseWrite()
	// Every relay is running, idle since the dials.
	waitMetrics(t, g, 5*time.Second, func(m map[string]float64) bool { return m["tcpd_relays_active"] == 3 })

	cfg.IdleTimeout, cfg.HalfCloseTimeout = timeout.String(), timeout.String()
	if err := os.WriteFile(g.tcpd.ConfigPath(), []byte(cfg.yaml()), 0o644); err != nil {
		t.Fatal(err)
	}
	reloaded := time.Now()
	reload(t, g, 1)
	for i, c := range append(idle, half) {
		b, err := readAllString(c)
		took := time.Since(reloaded)
		if !isReset(err) || b != "" {
			t.Errorf("connection %d read %q then %s after the reload; want a reset", i, b, endName(err))
		} else if took > timeout+slack {
			t.Errorf("connection %d was reset %v after the reload, want within %v", i, took.Round(10*time.Millisecond), timeout+slack)
		}
	}
	assertEnds(t, g, before, map[string]float64{"timeout": 3})
}
