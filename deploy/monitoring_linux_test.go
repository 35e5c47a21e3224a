package deploy_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"tcpd/internal/netlab"
)

// labConfig runs tcpd as configs/tcpd.yaml does, without the admin socket
// (/run/tcpd is the host's).
const labConfig = `tun:
  name: tcpd0
  addresses: ["100.64.0.1/32", "fd64::1/128"]
clients: ["100.64.0.0/10", "fd64::/64"]
metrics:
  listen: "127.0.0.1:9810"
admin:
  socket: ""
`

// TestMonitoringAgainstLiveTCPD runs tcpd in a lab, sends traffic through
// it and checks the dashboard and the alert rules against what it exports:
// every metric and label value they name exists in a real scrape, and, with
// Prometheus installed, every panel query returns data and every rule
// evaluates, on a Prometheus that ingests native histograms and on one that
// does not.
func TestMonitoringAgainstLiveTCPD(t *testing.T) {
	lab := netlab.NewT(t, netlab.Options{})
	t.Logf("lab %s", lab.ID)
	bin := netlab.BuildTCPD(t)
	tcpd, err := lab.StartTCPD(context.Background(), bin, labConfig)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tcpd.Stop(); err != nil {
			t.Errorf("tcpd did not stop cleanly: %v", err)
		}
	})
	d, rules := loadDashboard(t), loadAlerts(t)

	// Prometheus first, so that its rate windows see the traffic.
	type server struct {
		name string
		url  string
	}
	var proms []server
	if prom, err := exec.LookPath("prometheus"); err != nil {
		t.Log("prometheus not installed (Debian package prometheus): the queries are not run")
	} else {
		rules := []string{filepath.Join(root(t), alertsPath), filepath.Join(root(t), fleetPath)}
		cfg := promConfig{ns: lab.Gateway, targets: []string{metricsAddr}, ruleFiles: rules}
		native, classic := cfg, cfg
		native.port, native.native = 9090, true
		classic.port = 9091
		proms = []server{
			{"native histograms", startPrometheus(t, lab, prom, native)},
			{"classic histograms", startPrometheus(t, lab, prom, classic)},
		}
	}

	sendTraffic(t, lab)
	fams, err := scrapeFamilies(lab.Gateway)
	if err != nil {
		t.Fatal(err)
	}
	if v := samples(fams)[`tcpd_connections_total{result="relayed"}`]; v < 2 {
		t.Fatalf(`tcpd_connections_total{result="relayed"} = %v after the traffic, want >= 2`, v)
	}

	t.Run("dashboard names exist", func(t *testing.T) { checkNames(t, fams, d.queries()) })
	t.Run("alert rules' names exist", func(t *testing.T) { checkNames(t, fams, rules.queries()) })
	t.Run("fleet rules' names exist", func(t *testing.T) { checkNames(t, fams, loadFleetRules(t).queries()) })
	for _, p := range proms {
		t.Run("prometheus with "+p.name, func(t *testing.T) {
			c := nsClient(lab.Gateway)
			// Wait until the relays are in a 1m rate window.
			waitQuery(t, c, p.url, `increase(tcpd_connections_total{job="tcpd", result="relayed"}[1m]) > 0`, 20*time.Second)
			for _, q := range d.queries() {
				res, err := promQuery(c, p.url, expand(t, q))
				switch {
				case err != nil:
					t.Errorf("%s: %v\n%s", q.Where, err, q.Expr)
				case q.NeedData && len(res) == 0:
					t.Errorf("%s returns no data:\n%s", q.Where, expand(t, q))
				}
			}
			checkRules(t, c, p.url)
			checkRecordingRules(t, c, p.url)
		})
	}
}

// sendTraffic relays two echo exchanges (IPv4 and IPv6) through tcpd and
// makes one upstream connect fail (a closed port) and one destination be
// denied (the cloud metadata address).
func sendTraffic(t *testing.T, lab *netlab.Lab) {
	t.Helper()
	if err := lab.AllowLocalnetFromClients(); err != nil {
		t.Fatal(err)
	}
	ln, err := lab.Server.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				io.Copy(c, c)
			}()
		}
	}()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	const msg = "for the dashboard\n"
	for _, dst := range []netip.Addr{lab.ServerAddr4, lab.ServerAddr6} {
		c, err := lab.Client.DialTimeout("tcp", net.JoinHostPort(dst.String(), port), 5*time.Second)
		if err != nil {
			t.Fatalf("dial %s through tcpd: %v", dst, err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		_, werr := io.WriteString(c, msg)
		cerr := c.(*net.TCPConn).CloseWrite()
		got, rerr := io.ReadAll(c)
		c.Close()
		if err := errors.Join(werr, cerr, rerr); err != nil || string(got) != msg {
			t.Fatalf("echo via %s: %q, %v", dst, got, err)
		}
	}
	// Port 9 (discard) is closed on the server: tcpd's dial is refused and
	// the client gets RST. The metadata address is denied by policy.
	for _, addr := range []string{net.JoinHostPort(lab.ServerAddr4.String(), "9"), "169.254.169.254:80"} {
		if c, err := lab.Client.DialTimeout("tcp", addr, 5*time.Second); err == nil {
			c.Close()
			t.Fatalf("dial %s succeeded; tcpd should have answered with RST", addr)
		}
	}
}

// checkNames checks that every metric a query names exists in the scrape
// (a histogram's _bucket, _sum and _count through their family), and that
// every label value it selects with = or a list of alternatives occurs.
func checkNames(t *testing.T, fams map[string]*dto.MetricFamily, qs []query) {
	for _, q := range qs {
		sels := selectors(q.Expr)
		for _, name := range sortedKeys(sels) {
			if name == "up" { // made by Prometheus, not tcpd
				continue
			}
			f := family(fams, name)
			if f == nil {
				t.Errorf("%s: %s is not in tcpd's /metrics", q.Where, name)
				continue
			}
			for _, ms := range sels[name] {
				for _, m := range ms {
					checkMatcher(t, q.Where, name, f, m)
				}
			}
		}
	}
}

func family(fams map[string]*dto.MetricFamily, name string) *dto.MetricFamily {
	if f := fams[name]; f != nil {
		return f
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok {
			if f := fams[base]; f != nil && f.GetType() == dto.MetricType_HISTOGRAM {
				return f
			}
		}
	}
	return nil
}

func checkMatcher(t *testing.T, where, name string, f *dto.MetricFamily, m matcher) {
	switch m.Label {
	case "job", "instance": // target labels, added by Prometheus
		return
	case "le":
		if f.GetType() == dto.MetricType_HISTOGRAM {
			return
		}
	}
	values := map[string]bool{}
	for _, metric := range f.GetMetric() {
		for _, l := range metric.GetLabel() {
			if l.GetName() == m.Label {
				values[l.GetValue()] = true
			}
		}
	}
	if len(values) == 0 {
		t.Errorf("%s: %s has no label %q", where, name, m.Label)
		return
	}
	if strings.Contains(m.Value, "$") {
		return
	}
	var want []string
	switch {
	case m.Op == "=" || m.Op == "!=":
		want = []string{m.Value}
	case wordsRE.MatchString(m.Value):
		want = strings.Split(m.Value, "|")
	}
	for _, v := range want {
		if !values[v] {
			t.Errorf("%s: %s{%s%s%q}: tcpd exports no %s=%q (it has %v)", where, name, m.Label, m.Op, m.Value, m.Label, v, sortedKeys(values))
		}
	}
}

// promConfig says where a test's Prometheus runs and what it scrapes.
type promConfig struct {
	ns        *netlab.NS // where it runs
	port      int        // it listens on 127.0.0.1:port in ns
	targets   []string   // of the job "tcpd", scraped every second
	ruleFiles []string   // evaluated every second
	native    bool       // ingest native histograms
	// raw, when set, is the whole prometheus.yml instead; targets and
	// ruleFiles are then not used, and startPrometheus waits only for
	// readiness.
	raw string
}

// startPrometheus runs a Prometheus as c says and returns its base URL
// (reachable from c.ns) once it scrapes every target.
func startPrometheus(t *testing.T, lab *netlab.Lab, bin string, c promConfig) string {
	t.Helper()
	dir := t.TempDir()
	quote := func(ss []string) string {
		q := make([]string, len(ss))
		for i, s := range ss {
			q[i] = strconv.Quote(s)
		}
		return "[" + strings.Join(q, ", ") + "]"
	}
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: %s
scrape_configs:
  - job_name: tcpd
    static_configs:
      - targets: %s
`, quote(c.ruleFiles), quote(c.targets))
	if c.raw != "" {
		cfg = c.raw
	}
	cfgFile := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	listen := net.JoinHostPort("127.0.0.1", strconv.Itoa(c.port))
	args := []string{
		"--config.file=" + cfgFile,
		"--storage.tsdb.path=" + filepath.Join(dir, "data"),
		"--web.listen-address=" + listen,
		"--log.level=warn",
	}
	if c.native {
		args = append(args, "--enable-feature=native-histograms")
	}
	p, err := lab.StartProc(c.ns.Command(context.Background(), bin, args...))
	if err != nil {
		t.Fatal(err)
	}
	// Before t.TempDir's removal, which runs after this.
	t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			t.Errorf("prometheus: %v", err)
		}
	})
	base := "http://" + listen
	hc := nsClient(c.ns)
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := hc.Get(base + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready after 30s: %v\n%s", err, p.Logs())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if c.raw == "" {
		waitQuery(t, hc, base, fmt.Sprintf(`count(up{job="tcpd"} == 1) == %d`, len(c.targets)), 20*time.Second)
	}
	return base
}

// promQuery runs an instant query and returns its result vector.
func promQuery(c *http.Client, base, expr string) ([]json.RawMessage, error) {
	resp, err := c.PostForm(base+"/api/v1/query", url.Values{"query": {expr}})
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var r struct {
		Status    string `json:"status"`
		Error     string `json:"error"`
		ErrorType string `json:"errorType"`
		Data      struct {
			ResultType string            `json:"resultType"`
			Result     []json.RawMessage `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return nil, fmt.Errorf("query: %s: %w", resp.Status, err)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("query failed: %s: %s", r.ErrorType, r.Error)
	}
	return r.Data.Result, nil
}

// waitQuery waits until expr returns data.
func waitQuery(t *testing.T, c *http.Client, base, expr string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		res, err := promQuery(c, base, expr)
		if err == nil && len(res) > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v, %s returns nothing (%v)", d, expr, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// checkRules waits until Prometheus has evaluated every alert rule, checks
// that each evaluated without error, and that none fires for a healthy tcpd.
func checkRules(t *testing.T, c *http.Client, base string) {
	t.Helper()
	type rule struct {
		Name           string `json:"name"`
		Health         string `json:"health"`
		LastError      string `json:"lastError"`
		State          string `json:"state"`
		LastEvaluation string `json:"lastEvaluation"`
	}
	want := loadAlerts(t).queries()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := c.Get(base + "/api/v1/rules?type=alert")
		if err != nil {
			t.Fatal(err)
		}
		var r struct {
			Data struct {
				Groups []struct {
					Rules []rule `json:"rules"`
				} `json:"groups"`
			} `json:"data"`
		}
		err = json.NewDecoder(resp.Body).Decode(&r)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		var rules []rule
		for _, g := range r.Data.Groups {
			rules = append(rules, g.Rules...)
		}
		evaluated := len(rules) == len(want) && !slices.ContainsFunc(rules, func(r rule) bool {
			return r.Health == "unknown" || strings.HasPrefix(r.LastEvaluation, "0001-")
		})
		if evaluated || time.Now().After(deadline) {
			if !evaluated {
				t.Errorf("after 10s Prometheus has %d alert rules, not all evaluated; the file has %d", len(rules), len(want))
			}
			for _, r := range rules {
				if r.Health != "ok" {
					t.Errorf("alert %s: health %q: %s", r.Name, r.Health, r.LastError)
				}
				if r.State == "firing" {
					t.Errorf("alert %s fires for a healthy tcpd", r.Name)
				}
			}
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// checkRecordingRules waits until Prometheus has evaluated every recording
// rule of the fleet file and checks that each evaluated without error.
func checkRecordingRules(t *testing.T, c *http.Client, base string) {
	t.Helper()
	type rule struct {
		Name           string `json:"name"`
		Health         string `json:"health"`
		LastError      string `json:"lastError"`
		LastEvaluation string `json:"lastEvaluation"`
	}
	want := loadFleetRules(t).queries()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := c.Get(base + "/api/v1/rules?type=record")
		if err != nil {
			t.Fatal(err)
		}
		var r struct {
			Data struct {
				Groups []struct {
					Rules []rule `json:"rules"`
				} `json:"groups"`
			} `json:"data"`
		}
		err = json.NewDecoder(resp.Body).Decode(&r)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		var rules []rule
		for _, g := range r.Data.Groups {
			rules = append(rules, g.Rules...)
		}
		evaluated := len(rules) == len(want) && !slices.ContainsFunc(rules, func(r rule) bool {
			return r.Health == "unknown" || strings.HasPrefix(r.LastEvaluation, "0001-")
		})
		if evaluated || time.Now().After(deadline) {
			if !evaluated {
				t.Errorf("after 10s Prometheus has %d recording rules, not all evaluated; the file has %d", len(rules), len(want))
			}
			for _, r := range rules {
				if r.Health != "ok" {
					t.Errorf("record %s: health %q: %s", r.Name, r.Health, r.LastError)
				}
			}
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}
