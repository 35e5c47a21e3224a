//go:build linux

package e2e_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReloadTellsTheTruth sends tcpd SIGHUP with a file that changes a key
// that needs a restart (tun.mtu) and one that applies to new connections
// (tcp.congestion_control), twice:
//   - every reload warns that tun.mtu keeps its running value, not just the
//     first (a reload once stored the whole file as the configuration in
//     force, so the second found nothing to warn about);
//   - congestion control is not among the keys that need a restart, and a
//     connection opened after the reload runs cubic while the one opened
//     before keeps reno, as tcpd conns shows.
func TestReloadTellsTheTruth(t *testing.T) {
	t.Parallel()
	cfg := gwConfig{LogLevel: "info"}
	g, sock, port, accepted := stateLab(t, cfg)
	dialN(t, g, port, 1, accepted)
	if rows := connsJSON(t, sock); len(rows) != 1 || rows[0].CongestionControl != "reno" {
		t.Fatalf("before the reload: %+v, want one connection running reno", rows)
	}

	cfg.Metrics, cfg.AdminSocket = true, sock
	cfg.MTU, cfg.CongestionControl = 1400, "cubic"
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
	dialN(t, g, port, 1, accepted)
	var ccs []string
	for _, r := range connsJSON(t, sock) {
		ccs = append(ccs, r.CongestionControl)
	}
	if !slices.Equal(ccs, []string{"reno", "cubic"}) {
		t.Fatalf("congestion control of the connection opened before the reloads and the one after: %q, want reno, cubic", ccs)
	}
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
