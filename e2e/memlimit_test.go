//go:build linux

package e2e_test

import (
	"math"
	"os"
	"testing"

	"tcpd/internal/netlab"
)

// TestMemoryLimit runs tcpd with limits.memory set, then reloads it with
// auto and a connection cap, then with off, and checks the limit the Go
// runtime reports on each scrape (go_gc_gomemlimit_bytes) and says in the
// log.
func TestMemoryLimit(t *testing.T) {
	t.Parallel()
	cfg := gwConfig{Metrics: true, LogLevel: "info", Memory: "300MiB"}
	g := startGateway(t, netlab.Options{}, cfg)
	if m := sample(t, g); m["go_gc_gomemlimit_bytes"] != 300<<20 {
		t.Fatalf("limits.memory 300MiB: go_gc_gomemlimit_bytes %v, want %d", m["go_gc_gomemlimit_bytes"], 300<<20)
	}
	var ready map[string]any
	for _, l := range g.tcpd.LogLines() {
		if l["msg"] == "ready" {
			ready = l
		}
	}
	if ready["memory_limit"] != "300MiB" || ready["memory_limit_from"] != "limits.memory" {
		t.Errorf("ready line: memory_limit %v from %v, want 300MiB from limits.memory", ready["memory_limit"], ready["memory_limit_from"])
	}

	// auto: 64MiB and 64KiB per connection of the cap, as long as that is
	// within 3/4 of the memory tcpd may have (this machine's is far more).
	cfg.Memory, cfg.MaxConnections = "auto", 5000
	if err := os.WriteFile(g.tcpd.ConfigPath(), []byte(cfg.yaml()), 0o644); err != nil {
		t.Fatal(err)
	}
	reload(t, g, 1)
	want := float64(64<<20 + 5000*64<<10)
	if m := sample(t, g); m["go_gc_gomemlimit_bytes"] != want {
		t.Errorf("limits.memory auto, limits.max_connections 5000: go_gc_gomemlimit_bytes %v, want %v", m["go_gc_gomemlimit_bytes"], want)
	}
	if l := logLines(g, "memory limit changed"); len(l) != 1 || l[0]["memory_limit"] != "376.5MiB" || l[0]["was"] != "300MiB" {
		t.Errorf("log after the reload to auto: %v, want one change from 300MiB to 376.5MiB", l)
	}

	cfg.Memory = `"off"`
	if err := os.WriteFile(g.tcpd.ConfigPath(), []byte(cfg.yaml()), 0o644); err != nil {
		t.Fatal(err)
	}
	reload(t, g, 2)
	if m := sample(t, g); m["go_gc_gomemlimit_bytes"] != math.MaxInt64 {
		t.Errorf("limits.memory off: go_gc_gomemlimit_bytes %v, want %v (none)", m["go_gc_gomemlimit_bytes"], float64(math.MaxInt64))
	}
}
