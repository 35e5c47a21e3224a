package deploy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"tcpd/internal/netlab"
)

// fleetConfig runs a gateway of the fleet: metrics on every address, as a
// gateway scraped over the network must (deploy/kubernetes does the same),
// and a TIME_WAIT long enough to stay put while the test reads it.
const fleetConfig = `tun:
  name: tcpd0
  addresses: ["100.64.0.1/32", "fd64::1/128"]
clients: ["100.64.0.0/10", "fd64::/64"]
tcp:
  time_wait: 5m
  time_wait_limit: %d
metrics:
  listen: ":9810"
admin:
  socket: ""
log:
  level: info
`

// fleetGateway is one gateway of the fleet test and what it is made to
// hold.
type fleetGateway struct {
	lab         *netlab.Lab
	target      string // host:port Prometheus scrapes
	established int    // connections held open through it
	timeWait    int    // connections closed by the server first: tcpd's end in TIME_WAIT
	twLimit     int
}

// TestFleetUnderOnePrometheus runs two tcpd gateways in separate labs,
// each holding a different number of connections in ESTABLISHED and in
// TIME_WAIT, and one real Prometheus in a monitoring namespace that scrapes
// both and evaluates deploy/prometheus/fleet.yaml. Every fleet figure the
// recording rules make equals the sum (or the worst) of the gateways' own,
// read straight from each gateway's /metrics; Prometheus' per-gateway
// series equal those; and the dashboard's fleet panels return one series
// per gateway and the same sums.
func TestFleetUnderOnePrometheus(t *testing.T) {
	prom := needTool(t, "prometheus", "prometheus")
	gws := []*fleetGateway{
		{established: 3, timeWait: 2, twLimit: 100},
		{established: 5, timeWait: 4, twLimit: 16384},
	}
	var labs []*netlab.Lab
	for _, g := range gws {
		g.lab = netlab.NewT(t, netlab.Options{})
		labs = append(labs, g.lab)
	}
	mon := netlab.NewMonitorT(t, labs...)
	bin := netlab.BuildTCPD(t)
	var targets []string
	for i, g := range gws {
		g.target = net.JoinHostPort(mon.GatewayAddrs[i].String(), "9810")
		targets = append(targets, g.target)
		p, err := g.lab.StartTCPD(context.Background(), bin, fmt.Sprintf(fleetConfig, g.twLimit))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := p.Stop(); err != nil {
				t.Errorf("tcpd %d did not stop cleanly: %v", i, err)
			}
		})
	}
	// Prometheus first, so that its rate windows see the traffic.
	rules := []string{filepath.Join(root(t), alertsPath), filepath.Join(root(t), fleetPath)}
	base := startPrometheus(t, labs[0], prom, promConfig{ns: mon.NS, port: 9090, targets: targets, ruleFiles: rules})

	for i, g := range gws {
		holdFleetConnections(t, g)
		// Wait until the gateway itself counts them.
		deadline := time.Now().Add(20 * time.Second)
		for {
			s := scrapeTarget(t, mon.NS, g.target)
			est, tw := s[`tcpd_tcp_connection_states{state="established"}`], s[`tcpd_tcp_connection_states{state="time_wait"}`]
			if est == float64(g.established) && tw == float64(g.timeWait) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("gateway %d: established %v, time_wait %v; want %d, %d", i, est, tw, g.established, g.timeWait)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	hc := nsClient(mon.NS)
	wantEst := 0
	for _, g := range gws {
		wantEst += g.established
	}
	waitQuery(t, hc, base, fmt.Sprintf(`job:tcpd_tcp_connection_states:sum{job="tcpd", state="established"} == %d`, wantEst), 30*time.Second)
	// Two more evaluations, so that every rule has seen the last scrape.
	time.Sleep(2500 * time.Millisecond)

	// The truth: each gateway's own /metrics, which no longer changes.
	truth := make([]map[string]float64, len(gws))
	for i, g := range gws {
		truth[i] = scrapeTarget(t, mon.NS, g.target)
	}
	sum := func(key string) float64 {
		v := 0.0
		for _, s := range truth {
			v += s[key]
		}
		return v
	}
	// Read everything at one instant a little in the past, so that no rule
	// evaluation is half written.
	at := time.Now().Add(-1500 * time.Millisecond)
	q := func(expr string) map[string]float64 {
		t.Helper()
		v, err := promVector(hc, base, expr, at)
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		return v
	}
	one := func(expr string) float64 {
		t.Helper()
		v := q(expr)
		if len(v) != 1 {
			t.Fatalf("%s: %d series %v, want 1", expr, len(v), v)
		}
		for _, x := range v {
			return x
		}
		return 0
	}

	states := []string{"established", "syn_sent", "syn_recv", "fin_wait1", "fin_wait2", "time_wait", "close", "close_wait", "last_ack", "listen", "closing"}
	fleetStates := q(`job:tcpd_tcp_connection_states:sum{job="tcpd"}`)
	for _, st := range states {
		key := `tcpd_tcp_connection_states{state="` + st + `"}`
		for i, g := range gws {
			got := one(fmt.Sprintf(`tcpd_tcp_connection_states{job="tcpd", instance=%q, state=%q}`, g.target, st))
			if got != truth[i][key] {
				t.Errorf("gateway %d %s: Prometheus has %v, the gateway says %v", i, st, got, truth[i][key])
			}
		}
		if got, want := fleetStates[`{job="tcpd",state="`+st+`"}`], sum(key); got != want {
			t.Errorf("fleet %s: job:tcpd_tcp_connection_states:sum = %v, the gateways' sum is %v", st, got, want)
		}
	}
	if got := fleetStates[`{job="tcpd",state="established"}`]; got != float64(wantEst) {
		t.Errorf("fleet established = %v, want %d", got, wantEst)
	}

	for _, c := range []struct{ rule, metric string }{
		{`job:tcpd_relays_active:sum`, `tcpd_relays_active`},
		{`job:tcpd_tcp_time_wait_connections:sum`, `tcpd_tcp_time_wait_connections`},
		{`job:tcpd_tcp_time_wait_limit:sum`, `tcpd_tcp_time_wait_limit`},
		{`job:tcpd_gateways_ready:sum`, `tcpd_ready`},
		{`job:tcpd_gateways_up:sum`, ``},
		{`job:tcpd_gateways:count`, ``},
	} {
		want := float64(len(gws))
		if c.metric != "" {
			want = sum(c.metric)
		}
		if got := one(c.rule + `{job="tcpd"}`); got != want {
			t.Errorf("%s = %v, the gateways' sum is %v", c.rule, got, want)
		}
	}

	// TIME_WAIT occupancy: each gateway's own, and the worst.
	worst := 0.0
	for i, g := range gws {
		want := truth[i][`tcpd_tcp_time_wait_connections`] / truth[i][`tcpd_tcp_time_wait_limit`]
		worst = math.Max(worst, want)
		if got := one(fmt.Sprintf(`instance:tcpd_tcp_time_wait_occupancy:ratio{instance=%q}`, g.target)); got != want {
			t.Errorf("gateway %d TIME_WAIT occupancy %v, want %v", i, got, want)
		}
	}
	if got := one(`job:tcpd_tcp_time_wait_occupancy:max{job="tcpd"}`); got != worst {
		t.Errorf("worst TIME_WAIT occupancy %v, want %v", got, worst)
	}

	// Handshake p99: the worst gateway's is the largest of the gateways'.
	p99s := q(`instance:tcpd_tcp_handshake_duration_seconds:p99_5m`)
	if len(p99s) != len(gws) {
		t.Fatalf("per-gateway handshake p99: %v, want one per gateway", p99s)
	}
	maxP99 := math.Inf(-1)
	for _, v := range p99s {
		maxP99 = math.Max(maxP99, v)
	}
	if got := one(`job:tcpd_tcp_handshake_duration_seconds:p99_5m_max{job="tcpd"}`); got != maxP99 || math.IsNaN(got) {
		t.Errorf("worst gateway's handshake p99 %v, want the largest of %v", got, p99s)
	}
	if got := one(`job:tcpd_tcp_handshake_duration_seconds:p99_5m{job="tcpd"}`); !(got > 0) || got > maxP99 {
		t.Errorf("fleet handshake p99 %v: not in (0, worst gateway's %v]", got, maxP99)
	}

	// Rates: the fleet's is the gateways' summed, each gateway's from the
	// same evaluation; and each gateway's relayed rate is there.
	for _, c := range []struct{ metric, by string }{
		{"tcpd_connections", "result"},
		{"tcpd_relay_bytes", "direction"},
		{"tcpd_dropped", "reason"},
		{"tcpd_upstream_connect_failures", "reason"},
	} {
		fleet := q("job:" + c.metric + `:rate5m{job="tcpd"}`)
		perGW := q("instance:" + c.metric + `:rate5m{job="tcpd"}`)
		sums := map[string]float64{}
		for k, v := range perGW {
			labels := []string{`job="tcpd"`, regexp.MustCompile(c.by + `="[^"]*"`).FindString(k)}
			slices.Sort(labels) // as promVector writes them
			sums["{"+strings.Join(labels, ",")+"}"] += v
		}
		if len(fleet) != len(sums) {
			t.Errorf("job:%s:rate5m has %v, the gateways' sums are %v", c.metric, fleet, sums)
		}
		for k, want := range sums {
			if got, ok := fleet[k]; !ok || math.Abs(got-want) > 1e-9*math.Abs(want) {
				t.Errorf("job:%s:rate5m%s = %v, the gateways' sum is %v (per gateway: %v)", c.metric, k, got, want, perGW)
			}
		}
	}
	relayed := q(`instance:tcpd_connections:rate5m{job="tcpd", result="relayed"}`)
	if len(relayed) != len(gws) {
		t.Errorf("relayed connection rate per gateway: %v, want one per gateway", relayed)
	}
	for k, v := range relayed {
		if !(v > 0) {
			t.Errorf("relayed connection rate %s = %v after relaying, want > 0", k, v)
		}
	}

	// The dashboard's fleet row against this Prometheus.
	checkFleetPanels(t, hc, base, at, gws, sum)

	// A global Prometheus federating from this one with the example
	// configuration of deploy/prometheus/examples sees the same fleet.
	t.Run("federation", func(t *testing.T) {
		var cfg map[string]any
		if err := yaml.Unmarshal(readFile(t, "deploy/prometheus/examples/global-federation.yml"), &cfg); err != nil {
			t.Fatal(err)
		}
		cfg["global"] = map[string]any{"scrape_interval": "1s", "scrape_timeout": "1s"}
		job := cfg["scrape_configs"].([]any)[0].(map[string]any)
		job["static_configs"] = []any{map[string]any{"targets": []string{strings.TrimPrefix(base, "http://")}}}
		raw, err := yaml.Marshal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		global := startPrometheus(t, labs[0], prom, promConfig{ns: mon.NS, port: 9091, raw: string(raw)})
		waitQuery(t, hc, global, fmt.Sprintf(`job:tcpd_tcp_connection_states:sum{job="tcpd", state="established"} == %d`, wantEst), 30*time.Second)
		for _, expr := range []string{
			`instance:tcpd_tcp_time_wait_occupancy:ratio{job="tcpd"}`,
			`tcpd_tcp_connection_states{job="tcpd", state="time_wait"}`,
			`up{job="tcpd"}`,
		} {
			waitQuery(t, hc, global, fmt.Sprintf(`count(%s) == %d`, expr, len(gws)), 10*time.Second)
		}
		// Every series the dashboard's Fleet row reads, as the global
		// Prometheus holds it (it once lacked tcpd_ready and the
		// handshake histogram, so two panels were empty there).
		names := fleetSeries(t)
		if !slices.Contains(names, "tcpd_ready") || !slices.Contains(names, "tcpd_tcp_handshake_duration_seconds_bucket") {
			t.Fatalf("the Fleet row reads %v; the test expects tcpd_ready and the handshake buckets among them", names)
		}
		for _, name := range names {
			expr := fmt.Sprintf(`count(%s{job="tcpd"})`, name)
			site, err := promVector(hc, base, expr, at)
			if err != nil {
				t.Fatalf("%s at the site: %v", expr, err)
			}
			if len(site) == 0 {
				continue // a native histogram's series, where this Prometheus keeps classic buckets only
			}
			waitQuery(t, hc, global, fmt.Sprintf(`%s == %v`, expr, site["{}"]), 10*time.Second)
		}
		got, err := promVector(hc, global, `job:tcpd_tcp_connection_states:sum{job="tcpd", state="time_wait"}`, time.Now())
		if want := sum(`tcpd_tcp_connection_states{state="time_wait"}`); err != nil || len(got) != 1 || got[`{job="tcpd",state="time_wait"}`] != want {
			t.Errorf("federated fleet time_wait: %v (%v), want %v", got, err, want)
		}
	})
}

// fleetPanels are the panels of the dashboard's Fleet row.
func fleetPanels(t *testing.T) []panel {
	t.Helper()
	var fleet []panel
	in := false
	for _, p := range loadDashboard(t).allPanels() {
		if p.Type == "row" {
			in = p.Title == "Fleet"
			continue
		}
		if in {
			fleet = append(fleet, p)
		}
	}
	if len(fleet) == 0 {
		t.Fatal(`the dashboard has no "Fleet" row`)
	}
	return fleet
}

// seriesName finds the metric names in a query: a name followed by its
// label matchers.
var seriesName = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)\{`)

// fleetSeries are the metric names the Fleet row's queries read.
func fleetSeries(t *testing.T) []string {
	t.Helper()
	var names []string
	for _, p := range fleetPanels(t) {
		for _, tg := range p.Targets {
			for _, m := range seriesName.FindAllStringSubmatch(tg.Expr, -1) {
				if !slices.Contains(names, m[1]) {
					names = append(names, m[1])
				}
			}
		}
	}
	slices.Sort(names)
	return names
}

// holdFleetConnections makes g hold g.established open relays and
// g.timeWait connections whose server closed first, so that tcpd's end of
// them waits in TIME_WAIT. The open ones are closed when the test ends.
func holdFleetConnections(t *testing.T, g *fleetGateway) {
	t.Helper()
	ln, err := g.lab.Server.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		serving = map[net.Conn]bool{}
		closing = make(chan struct{})
	)
	t.Cleanup(func() {
		close(closing)
		ln.Close()
		mu.Lock()
		for c := range serving {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			// The first byte says what to do: 'h' hold, 'c' close first.
			b := make([]byte, 1)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(c, b); err != nil || b[0] != 'h' {
				c.Close()
				continue
			}
			mu.Lock()
			serving[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-closing
			}()
		}
	}()
	addr := net.JoinHostPort(g.lab.ServerAddr4.String(), strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
	for range g.timeWait {
		c, err := g.lab.Client.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte{'c'}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, c); err != nil { // the server's FIN, through tcpd
			t.Fatal(err)
		}
		c.Close()
	}
	for range g.established {
		c, err := g.lab.Client.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := c.Write([]byte{'h'}); err != nil {
			t.Fatal(err)
		}
	}
}

// scrapeTarget reads a gateway's /metrics from ns, as Prometheus does.
func scrapeTarget(t *testing.T, ns *netlab.NS, target string) map[string]float64 {
	t.Helper()
	resp, err := nsClient(ns).Get("http://" + target + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s/metrics: %s", target, resp.Status)
	}
	fams, err := parseFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return samples(fams)
}

// promVector runs an instant query at a given time and returns each series'
// value by its labels without the name, as `{a="x",b="y"}`, sorted by
// label name.
func promVector(c *http.Client, base, expr string, at time.Time) (map[string]float64, error) {
	resp, err := c.PostForm(base+"/api/v1/query", url.Values{
		"query": {expr},
		"time":  {strconv.FormatFloat(float64(at.UnixMilli())/1000, 'f', 3, 64)},
	})
	if err != nil {
		return nil, err
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
		return nil, fmt.Errorf("%s: %w", resp.Status, err)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("query failed: %s", r.Error)
	}
	if r.Data.ResultType != "vector" {
		return nil, fmt.Errorf("result type %s, want vector", r.Data.ResultType)
	}
	out := map[string]float64{}
	for _, s := range r.Data.Result {
		var names []string
		for k := range s.Metric {
			if k != "__name__" {
				names = append(names, k)
			}
		}
		slices.Sort(names)
		parts := make([]string, len(names))
		for i, k := range names {
			parts[i] = k + "=" + strconv.Quote(s.Metric[k])
		}
		str, _ := s.Value[1].(string)
		v, err := strconv.ParseFloat(str, 64)
		if err != nil {
			return nil, fmt.Errorf("value %v: %w", s.Value[1], err)
		}
		out["{"+strings.Join(parts, ",")+"}"] = v
	}
	return out, nil
}

// checkFleetPanels evaluates the dashboard's fleet row as Grafana would
// with every gateway selected: every target returns data, the per-gateway
// panels one series per gateway, and the fleet total the gateways' sum.
func checkFleetPanels(t *testing.T, c *http.Client, base string, at time.Time, gws []*fleetGateway, sum func(string) float64) {
	t.Helper()
	fleet := fleetPanels(t)
	perGateway := map[string]bool{
		"Connections per gateway":           true,
		"Connections per gateway and state": false, // one series per gateway and state
		"TIME_WAIT occupancy per gateway":   true,
	}
	for _, p := range fleet {
		for _, tg := range p.Targets {
			where := fmt.Sprintf("panel %q %s", p.Title, tg.RefID)
			expr := expand(t, query{Where: where, Expr: tg.Expr})
			v, err := promVector(c, base, expr, at)
			if err != nil {
				t.Errorf("%s: %v", where, err)
				continue
			}
			if len(v) == 0 {
				t.Errorf("%s returns no data:\n%s", where, expr)
				continue
			}
			if perGateway[p.Title] {
				instances := map[string]bool{}
				for k := range v {
					for _, g := range gws {
						if strings.Contains(k, strconv.Quote(g.target)) {
							instances[g.target] = true
						}
					}
				}
				if len(v) != len(gws) || len(instances) != len(gws) {
					t.Errorf("%s: %v, want one series per gateway %v", where, v, instances)
				}
			}
			if p.Title == "Connections per state, fleet total" {
				for _, st := range []string{"established", "time_wait"} {
					if got, want := v[`{state="`+st+`"}`], sum(`tcpd_tcp_connection_states{state="`+st+`"}`); got != want {
						t.Errorf("%s: %s %v, the gateways' sum is %v", where, st, got, want)
					}
				}
			}
			if p.Title == "Gateways" {
				for k, x := range v {
					if x != float64(len(gws)) {
						t.Errorf("%s: %s = %v, want %d", where, k, x, len(gws))
					}
				}
			}
		}
	}
}
