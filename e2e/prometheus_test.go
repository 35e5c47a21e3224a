//go:build linux

package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// promAddr is where the test's Prometheus listens inside the gateway
// namespace.
const promAddr = "127.0.0.1:9090"

// gatewayHTTP is an HTTP client whose connections are made inside the
// gateway namespace.
func gatewayHTTP(g *gateway) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return g.Gateway.Dial(ctx, network, addr)
		},
	}}
}

// scrapeText fetches tcpd's /metrics in the text exposition format, as
// promtool reads it.
func scrapeText(t *testing.T, g *gateway) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+metricsAddr+"/metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/plain; version=0.0.4")
	resp, err := gatewayHTTP(g).Do(req)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s, %v", resp.Status, err)
	}
	return string(body)
}

// promQuery runs an instant query against the test's Prometheus and returns
// the value of its only sample; ok is false when the result is empty.
func promQuery(g *gateway, query string) (v float64, ok bool, err error) {
	resp, err := gatewayHTTP(g).Get("http://" + promAddr + "/api/v1/query?query=" + url.QueryEscape(query))
	if err != nil {
		return 0, false, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return 0, false, fmt.Errorf("query %s: %s: %w", query, resp.Status, err)
	}
	if r.Status != "success" {
		return 0, false, fmt.Errorf("query %s: %s: %s", query, r.Status, r.Error)
	}
	switch len(r.Data.Result) {
	case 0:
		return 0, false, nil
	case 1:
	default:
		return 0, false, fmt.Errorf("query %s: %d series, want one: %+v", query, len(r.Data.Result), r.Data.Result)
	}
	s, _ := r.Data.Result[0].Value[1].(string)
	v, err = strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, false, fmt.Errorf("query %s: value %q: %w", query, s, err)
	}
	return v, true, nil
}

// TestPrometheusScrapesTcpd runs a real Prometheus next to tcpd, scraping it
// every second, while nConns connections are held established, and checks
// what Prometheus itself makes of the exposition: the per-state gauge, its
// sum, and a quantile of the native handshake histogram. It also lints a
// raw scrape with promtool.
func TestPrometheusScrapesTcpd(t *testing.T) {
	t.Parallel()
	prometheus, err1 := exec.LookPath("prometheus")
	promtool, err2 := exec.LookPath("promtool")
	if err1 != nil || err2 != nil {
		t.Skip("prometheus and promtool are not on PATH; they come with Debian's prometheus package, which CI installs")
	}
	g, _, port, accepted := stateLab(t, gwConfig{TimeWait: "1s"})
	client, server := dialN(t, g, port, nConns, accepted)

	dir := t.TempDir()
	cfg := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: tcpd
    static_configs:
      - targets: [%q]
`, metricsAddr)), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := g.StartProc(g.Gateway.Command(context.Background(), prometheus,
		"--config.file="+cfg,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promAddr,
		"--enable-feature=native-histograms",
	))
	if err != nil {
		t.Fatalf("start prometheus: %v", err)
	}
	t.Cleanup(p.Kill)

	query := func(q string) (float64, bool) {
		t.Helper()
		v, ok, err := promQuery(g, q)
		if err != nil {
			t.Fatalf("%v\n--- prometheus output ---\n%s", err, p.Logs())
		}
		return v, ok
	}
	established := `tcpd_tcp_connection_states{state="established"}`
	var (
		v      float64
		ok     bool
		qerr   error
		exited bool
	)
	if !waitFor(30*time.Second, func() bool {
		select {
		case <-p.Exited():
			exited = true
			return true
		default:
		}
		v, ok, qerr = promQuery(g, established)
		return qerr == nil && ok && v == nConns
	}) || exited {
		if exited {
			t.Fatalf("Prometheus exited (%v)\n--- prometheus output ---\n%s", p.Wait(), p.Logs())
		}
		t.Fatalf("Prometheus has %s = %v (present %v, error %v), want %d\n--- prometheus output ---\n%s",
			established, v, ok, qerr, nConns, p.Logs())
	}
	if v, ok := query(`sum(tcpd_tcp_connection_states)`); !ok || v != nConns {
		t.Errorf("sum(tcpd_tcp_connection_states) = %v (present %v), want %d", v, ok, nConns)
	}
	// With native histograms on, Prometheus keeps the native buckets of a
	// histogram that has them, and histogram_quantile reads them directly.
	q := `histogram_quantile(0.9, tcpd_tcp_handshake_duration_seconds)`
	if v, ok := query(q); !ok || math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
		classic, cok := query(`histogram_quantile(0.9, tcpd_tcp_handshake_duration_seconds_bucket)`)
		t.Errorf("%s = %v (present %v), want a number; the classic buckets give %v (present %v)", q, v, ok, classic, cok)
	} else {
		t.Logf("%s = %v", q, v)
	}

	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(scrapeText(t, g))
	if out, err := cmd.CombinedOutput(); err != nil || len(out) != 0 {
		t.Errorf("promtool check metrics on a scrape of tcpd: %v\n%s", err, out)
	}
	closeAll(client)
	closeAll(server)
}
