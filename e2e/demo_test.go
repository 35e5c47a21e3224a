//go:build linux

package e2e_test

import (
	"context"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"tcpd/internal/netlab"
)

// TestDemo runs `make demo`'s program, as sudo make demo does, and checks
// that it went through every step README promises: the fetches, the refused
// metadata address, a clamped bulk transfer byte-identical both ways, tcpd
// conns with live, TIME-WAIT and CLOSE-WAIT connections, tcpd conns -s, the
// /metrics lines, the clean stop, and all of it in under a minute.
func TestDemo(t *testing.T) {
	t.Parallel()
	if why := netlab.Available(); why != "" {
		t.Skip(why)
	}
	demo := netlab.Build(t, "./internal/demo")
	tcpd := netlab.BuildTCPD(t)
	root, err := netlab.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, demo, "--tcpd", tcpd)
	cmd.Dir = root // where make runs it: it builds its WireGuard peer from there
	start := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	text := regexp.MustCompile("\x1b\\[[0-9;]*m").ReplaceAllString(string(out), "")
	if err != nil {
		t.Fatalf("demo: %v after %v\n%s", err, took, text)
	}
	for _, want := range []string{
		"hello from the server namespace; you came from 198.18.1.1:",
		"hello from the server namespace; you came from [2001:db8:1::1]:",
		"Failed to connect to 169.254.169.254",
		"bulk: client 1 → server: 67108864 bytes",
		"bulk: server → client 1: 67108864 bytes",
		"1380*",
		"TIME-WAIT   CLOSED",
		"CLOSE-WAIT  FIN-WAIT-2",
		"TIME-WAIT: 3 of 16384 used",
		`tcpd_tcp_connection_states{state="time_wait"} 3`,
		"tcpd_tcp_time_wait_connections 3",
		"tcpd_tcp_mss_clamped_total 1",
		"tcpd_tcp_handshake_duration_seconds p50",
		"tcpd | info  stopped reset_connections=0",
		"namespaces, links, WireGuard peers and processes removed",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the demo's output lacks %q", want)
		}
	}
	if n := strings.Count(text, "identical"); n != 2 {
		t.Errorf("%d transfers identical, want both", n)
	}
	if strings.Contains(text, "MISMATCH") {
		t.Error("a transfer was corrupted")
	}
	// README promises the demo takes under a minute (the builds aside).
	if took > time.Minute {
		t.Errorf("the demo took %v", took)
	}
	if t.Failed() {
		t.Logf("demo output:\n%s", text)
	}
}
