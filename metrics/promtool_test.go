package metrics_test

import (
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"

	"tcpd/metrics"
)

// TestPromtoolCheckMetrics lints a real scrape, every collector included,
// with Prometheus' own checker.
func TestPromtoolCheckMetrics(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not on PATH; it comes with Debian's prometheus package, which CI installs")
	}
	snap := realisticSnapshot()
	_, st := testSources()
	reg := metrics.NewRegistry(metrics.Config{
		Conntrack: &fakeConntrack{snap: snap},
		Stack:     st,
		Reload:    fakeReload{ok: true},
		Version:   "test",
	})
	srv := httptest.NewServer(metrics.Handler(reg))
	defer srv.Close()
	body, _ := scrape(t, srv.URL, "text/plain; version=0.0.4")

	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	out, err := cmd.CombinedOutput()
	if err != nil || len(out) != 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}
