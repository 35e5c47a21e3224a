package deploy_test

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

const (
	dashboardPath  = "deploy/grafana/tcpd.json"
	alertsPath     = "deploy/prometheus/alerts.yaml"
	alertTestsPath = "deploy/prometheus/alerts_test.yaml"
	fleetPath      = "deploy/prometheus/fleet.yaml"
	fleetTestsPath = "deploy/prometheus/fleet_test.yaml"
)

// query is one PromQL expression of the dashboard or the alert rules, with
// where it comes from.
type query struct {
	Where string // "panel \"Title\" A", "annotation \"...\"", "alert Name"
	Expr  string
	// NeedData is set for panel targets: the expression must return data
	// from a Prometheus scraping a live tcpd. Annotations and alert rules
	// legitimately return nothing.
	NeedData bool
}

// dashboard is the part of a Grafana dashboard the tests read.
type dashboard struct {
	Title         string  `json:"title"`
	UID           string  `json:"uid"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Type     string          `json:"type"`
			Name     string          `json:"name"`
			Query    json.RawMessage `json:"query"`
			AllValue string          `json:"allValue"`
		} `json:"list"`
	} `json:"templating"`
	Annotations struct {
		List []struct {
			Name       string      `json:"name"`
			Expr       string      `json:"expr"`
			Datasource *datasource `json:"datasource"`
		} `json:"list"`
	} `json:"annotations"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID          int                      `json:"id"`
	Type        string                   `json:"type"`
	Title       string                   `json:"title"`
	Description string                   `json:"description"`
	Datasource  *datasource              `json:"datasource"`
	GridPos     struct{ H, W, X, Y int } `json:"gridPos"`
	Targets     []struct {
		RefID      string      `json:"refId"`
		Expr       string      `json:"expr"`
		Datasource *datasource `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's
}

func loadDashboard(t testing.TB) *dashboard {
	t.Helper()
	var d dashboard
	if err := json.Unmarshal(readFile(t, dashboardPath), &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	return &d
}

// allPanels returns the panels, those inside collapsed rows included.
func (d *dashboard) allPanels() []panel {
	var out []panel
	for _, p := range d.Panels {
		out = append(out, p)
		out = append(out, p.Panels...)
	}
	return out
}

func (d *dashboard) queries() []query {
	var qs []query
	for _, p := range d.allPanels() {
		for _, tg := range p.Targets {
			qs = append(qs, query{Where: fmt.Sprintf("panel %q %s", p.Title, tg.RefID), Expr: tg.Expr, NeedData: true})
		}
	}
	for _, a := range d.Annotations.List {
		if a.Expr != "" {
			qs = append(qs, query{Where: fmt.Sprintf("annotation %q", a.Name), Expr: a.Expr})
		}
	}
	return qs
}

// alertRules is the part of a Prometheus rule file the tests read.
type alertRules struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func loadAlerts(t testing.TB) *alertRules { return loadRules(t, alertsPath) }

// loadFleetRules reads the fleet recording rules.
func loadFleetRules(t testing.TB) *alertRules { return loadRules(t, fleetPath) }

func loadRules(t testing.TB, path string) *alertRules {
	t.Helper()
	var r alertRules
	if err := yaml.Unmarshal(readFile(t, path), &r); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return &r
}

func (r *alertRules) queries() []query {
	var qs []query
	for _, g := range r.Groups {
		for _, rule := range g.Rules {
			where := "alert " + rule.Alert
			if rule.Record != "" {
				where = "record " + rule.Record
			}
			qs = append(qs, query{Where: where, Expr: rule.Expr})
		}
	}
	return qs
}

// grafanaVars replaces the dashboard's variables as Grafana would with
// "All" selected and a range of a few minutes.
var grafanaVars = strings.NewReplacer(
	"${__rate_interval}", "1m", "$__rate_interval", "1m",
	"${__interval}", "15s", "$__interval", "15s",
	"${__range}", "5m", "$__range", "5m",
	"${job}", ".+", "$job", ".+",
	"${instance}", ".+", "$instance", ".+",
)

// expand substitutes the variables and fails if one is left.
func expand(t testing.TB, q query) string {
	t.Helper()
	e := grafanaVars.Replace(q.Expr)
	if strings.Contains(e, "$") {
		t.Errorf("%s: a variable the test does not know is left in %q", q.Where, e)
	}
	return e
}

var (
	// selectorRE matches a metric name with a label selector.
	selectorRE = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^{}]*)\}`)
	// nameRE matches the metric names the files use: tcpd's own and the
	// Go and process collectors'.
	nameRE    = regexp.MustCompile(`\b(?:tcpd|process|go|promhttp)_[a-zA-Z0-9_]+\b`)
	matcherRE = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"`)
	// wordsRE is a regular expression that only lists label values.
	wordsRE = regexp.MustCompile(`^[a-zA-Z0-9_]+(\|[a-zA-Z0-9_]+)*$`)
)

// matcher is one label matcher of a selector.
type matcher struct{ Label, Op, Value string }

// selectors returns every metric name of expr with the matchers it is
// selected with (none for a bare name). The Prometheus-made "up" counts as
// a metric name only with a selector.
func selectors(expr string) map[string][][]matcher {
	out := map[string][][]matcher{}
	for _, m := range selectorRE.FindAllStringSubmatch(expr, -1) {
		var ms []matcher
		for _, mm := range matcherRE.FindAllStringSubmatch(m[2], -1) {
			ms = append(ms, matcher{mm[1], mm[2], mm[3]})
		}
		out[m[1]] = append(out[m[1]], ms)
	}
	for _, loc := range nameRE.FindAllStringIndex(expr, -1) {
		// Part of a recording rule's name (level:metric:operations).
		if loc[0] > 0 && expr[loc[0]-1] == ':' || loc[1] < len(expr) && expr[loc[1]] == ':' {
			continue
		}
		if name := expr[loc[0]:loc[1]]; out[name] == nil {
			out[name] = nil
		}
	}
	return out
}

// TestDashboardStructure checks the dashboard without a Prometheus: the
// schema, the datasource variable, every panel's title, queries and place,
// and that it shows what an operator watches.
func TestDashboardStructure(t *testing.T) {
	d := loadDashboard(t)
	if d.SchemaVersion < 38 {
		t.Errorf("schemaVersion %d < 38", d.SchemaVersion)
	}
	if d.Title == "" || d.UID == "" {
		t.Errorf("title %q, uid %q: both are needed", d.Title, d.UID)
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
		if v.Name == "datasource" {
			var q string
			if err := json.Unmarshal(v.Query, &q); err != nil || q != "prometheus" {
				t.Errorf("variable datasource: query %s, want \"prometheus\"", v.Query)
			}
		}
	}
	if vars["datasource"] != "datasource" {
		t.Errorf("no variable \"datasource\" of type datasource: %v", vars)
	}
	isDS := func(ds *datasource) bool { return ds != nil && ds.Type == "prometheus" && ds.UID == "${datasource}" }

	ids := map[int]string{}
	var boxes []panel
	var all []string
	for _, p := range d.allPanels() {
		if p.Title == "" {
			t.Errorf("panel %d (%s) has no title", p.ID, p.Type)
		}
		if other, dup := ids[p.ID]; dup {
			t.Errorf("panels %q and %q share id %d", other, p.Title, p.ID)
		}
		ids[p.ID] = p.Title
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v outside the 24-column grid", p.Title, g)
		}
		for _, b := range boxes {
			h := b.GridPos
			if g.X < h.X+h.W && h.X < g.X+g.W && g.Y < h.Y+h.H && h.Y < g.Y+g.H {
				t.Errorf("panels %q %+v and %q %+v overlap", p.Title, g, b.Title, h)
			}
		}
		boxes = append(boxes, p)
		if p.Type == "row" {
			continue
		}
		if !isDS(p.Datasource) {
			t.Errorf("panel %q: datasource %+v, want the ${datasource} variable", p.Title, p.Datasource)
		}
		if p.Description == "" {
			t.Errorf("panel %q has no description", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no target", p.Title)
		}
		refs := map[string]bool{}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q target %s has no expression", p.Title, tg.RefID)
			}
			if tg.Datasource != nil && !isDS(tg.Datasource) {
				t.Errorf("panel %q target %s: datasource %+v, want the ${datasource} variable", p.Title, tg.RefID, tg.Datasource)
			}
			if refs[tg.RefID] {
				t.Errorf("panel %q: refId %q twice", p.Title, tg.RefID)
			}
			refs[tg.RefID] = true
			all = append(all, tg.Expr)
		}
	}
	for _, a := range d.Annotations.List {
		if a.Expr != "" && !isDS(a.Datasource) {
			t.Errorf("annotation %q: datasource %+v, want the ${datasource} variable", a.Name, a.Datasource)
		}
	}

	// What an operator keeps the dashboard open for.
	text := strings.Join(all, "\n")
	for _, m := range []string{
		"tcpd_tcp_connection_states",
		"tcpd_tcp_handshake_duration_seconds_bucket",
		"tcpd_upstream_connect_duration_seconds",
		"tcpd_tcp_connection_setup_duration_seconds",
		"tcpd_tcp_time_wait_connections", "tcpd_tcp_time_wait_limit",
		"tcpd_relay_bytes_total", "tcpd_tun_bytes_total",
		"tcpd_connections_total", "tcpd_dropped_total",
		"tcpd_upstream_connect_failures_total", "tcpd_conntrack_corrections_total",
		"tcpd_netstack_tcp_retransmits_total",
		"process_resident_memory_bytes", "process_cpu_seconds_total",
		"tcpd_build_info",
	} {
		if !strings.Contains(text, m) {
			t.Errorf("no panel queries %s", m)
		}
	}
	for _, states := range [][]string{
		{"established", "close_wait", "time_wait", "fin_wait2"}, // persistent
		{"syn_recv", "fin_wait1", "last_ack", "closing"},        // transient
	} {
		found := false
		for _, e := range all {
			for _, ms := range selectors(e)["tcpd_tcp_connection_states"] {
				for _, m := range ms {
					got := strings.Split(m.Value, "|")
					if m.Label == "state" && m.Op == "=~" && len(got) == len(states) && !slices.ContainsFunc(got, func(s string) bool { return !slices.Contains(states, s) }) {
						found = true
					}
				}
			}
		}
		if !found {
			t.Errorf("no panel shows exactly the states %v together", states)
		}
	}
	// Many gateways: a gateway selector and a fleet row.
	for _, v := range d.Templating.List {
		if v.Name == "instance" && (v.Type != "query" || v.AllValue != ".+") {
			t.Errorf("variable instance: type %q allValue %q, want a query with All = .+", v.Type, v.AllValue)
		}
	}
	if vars["instance"] == "" {
		t.Error("no gateway (instance) variable")
	}
	var fleet []string
	in := false
	for _, p := range d.allPanels() {
		if p.Type == "row" {
			in = p.Title == "Fleet"
			continue
		}
		if in {
			for _, tg := range p.Targets {
				fleet = append(fleet, tg.Expr)
			}
		}
	}
	for what, re := range map[string]string{
		"connections per gateway":           `sum by \(instance\) \(tcpd_tcp_connection_states\{`,
		"connections per state, summed":     `sum by \(state\) \(tcpd_tcp_connection_states\{`,
		"the worst gateway's handshake p99": `topk\(1, histogram_quantile\(0\.99, sum by \(instance, le\) \(rate\(tcpd_tcp_handshake_duration_seconds_bucket`,
		"TIME_WAIT occupancy per gateway":   `sum by \(instance\) \(tcpd_tcp_time_wait_connections\{[^}]*\}\) / sum by \(instance\) \(tcpd_tcp_time_wait_limit\{`,
	} {
		if !slices.ContainsFunc(fleet, regexp.MustCompile(re).MatchString) {
			t.Errorf("the Fleet row has no panel for %s", what)
		}
	}

	heatmap := false
	for _, p := range d.allPanels() {
		heatmap = heatmap || p.Type == "heatmap" && len(p.Targets) > 0 && strings.Contains(p.Targets[0].Expr, "tcpd_tcp_handshake_duration_seconds")
	}
	if !heatmap {
		t.Error("no heatmap of tcpd_tcp_handshake_duration_seconds")
	}
}

// TestAlertRuleFields checks that every alert has a severity, a summary and
// a description, and that the rules cover what an operator must hear of.
func TestAlertRuleFields(t *testing.T) {
	r := loadAlerts(t)
	var names []string
	for _, g := range r.Groups {
		for _, rule := range g.Rules {
			names = append(names, rule.Alert)
			if rule.Alert == "" {
				t.Errorf("group %s: a rule that is not an alert: %q", g.Name, rule.Expr)
				continue
			}
			if s := rule.Labels["severity"]; !slices.Contains([]string{"critical", "warning", "info"}, s) {
				t.Errorf("%s: severity %q, want critical, warning or info", rule.Alert, s)
			}
			for _, a := range []string{"summary", "description"} {
				if strings.TrimSpace(rule.Annotations[a]) == "" {
					t.Errorf("%s: no %s annotation", rule.Alert, a)
				}
			}
		}
	}
	covered := map[string][]string{
		"tcpd down":                        {"up"},
		"TIME_WAIT near its limit":         {"tcpd_tcp_time_wait_connections", "tcpd_tcp_time_wait_limit"},
		"handshake p99":                    {"tcpd_tcp_handshake_duration_seconds_bucket"},
		"upstream failure ratio":           {"tcpd_upstream_connect_failures_total", "tcpd_connections_total"},
		"SYN drops per client":             {"tcpd_dropped_total"},
		"SYN drops at max_in_flight":       {"tcpd_netstack_tcp_forward_max_in_flight_drops_total"},
		"CLOSE_WAIT growing":               {"tcpd_tcp_connection_states"},
		"conntrack corrections":            {"tcpd_conntrack_corrections_total"},
		"configuration reload failed":      {"tcpd_config_last_reload_successful"},
		"restarts (watchdog kills, crash)": {"process_start_time_seconds"},
		"not ready for long":               {"tcpd_ready"},
		"TIME_WAIT overflow":               {"tcpd_tcp_time_wait_overflow_total"},
		"handler panics":                   {"tcpd_handler_panics_total"},
	}
	for what, metrics := range covered {
		for _, m := range metrics {
			if !slices.ContainsFunc(r.queries(), func(q query) bool { _, ok := selectors(q.Expr)[m]; return ok }) {
				t.Errorf("no alert for %s: no rule reads %s", what, m)
			}
		}
	}
	t.Logf("alerts: %s", strings.Join(names, ", "))
}

// TestAlertRulesPromtool runs `promtool check rules` and `promtool test
// rules` on the rule file and its unit tests, which make every alert fire
// for one instance and stay silent for others.
func TestAlertRulesPromtool(t *testing.T) {
	promtool := needTool(t, "promtool", "prometheus")
	dir := filepath.Join(root(t), "deploy/prometheus")
	for _, args := range [][]string{
		{"check", "rules", "alerts.yaml"},
		{"test", "rules", "alerts_test.yaml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	// Every alert has a test of its own.
	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string `yaml:"alertname"`
				ExpAlerts []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(readFile(t, alertTestsPath), &tests); err != nil {
		t.Fatal(err)
	}
	fires, silent := map[string]bool{}, map[string]bool{}
	for _, g := range tests.Tests {
		for _, a := range g.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				silent[a.Alertname] = true
			}
		}
	}
	for _, q := range loadAlerts(t).queries() {
		name := strings.TrimPrefix(q.Where, "alert ")
		if !fires[name] || !silent[name] {
			t.Errorf("%s: alerts_test.yaml must check both that it fires (%v) and that it does not (%v)", name, fires[name], silent[name])
		}
	}
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// TestFleetRulesPromtool runs `promtool check rules` and `promtool test
// rules` on the fleet recording rules, and checks that the unit tests
// evaluate every rule, that every rule reads only the job the alerts read,
// and that the names follow level:metric:operations.
func TestFleetRulesPromtool(t *testing.T) {
	r := loadFleetRules(t)
	var records []string
	for _, g := range r.Groups {
		for _, rule := range g.Rules {
			if rule.Record == "" {
				t.Errorf("group %s: %q is not a recording rule; alerts go in alerts.yaml", g.Name, rule.Alert)
				continue
			}
			records = append(records, rule.Record)
			if !regexp.MustCompile(`^(instance|job):tcpd_[a-z0-9_]+:[a-z0-9_]+$`).MatchString(rule.Record) {
				t.Errorf("%s: not level:metric:operations with level instance or job", rule.Record)
			}
			for name, sels := range selectors(rule.Expr) {
				if strings.Contains(name, ":") {
					continue // another recording rule
				}
				for _, ms := range sels {
					if !slices.Contains(ms, matcher{"job", "=", "tcpd"}) {
						t.Errorf("%s: %s is not selected with job=\"tcpd\" as the alerts are", rule.Record, name)
					}
				}
				if len(sels) == 0 {
					t.Errorf("%s: %s has no selector", rule.Record, name)
				}
			}
		}
	}
	promtool := needTool(t, "promtool", "prometheus")
	dir := filepath.Join(root(t), "deploy/prometheus")
	for _, args := range [][]string{
		{"check", "rules", "fleet.yaml"},
		{"test", "rules", "fleet_test.yaml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	var tests struct {
		Tests []struct {
			PromQLExprTest []struct {
				Expr string `yaml:"expr"`
			} `yaml:"promql_expr_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(readFile(t, fleetTestsPath), &tests); err != nil {
		t.Fatal(err)
	}
	tested := map[string]bool{}
	for _, g := range tests.Tests {
		for _, e := range g.PromQLExprTest {
			tested[strings.TrimSpace(e.Expr)] = true
		}
	}
	for _, rec := range records {
		if !tested[rec] {
			t.Errorf("%s: fleet_test.yaml never evaluates it", rec)
		}
	}
}

// TestPrometheusExamples checks the example Prometheus configurations for
// a fleet (deploy/prometheus/examples): promtool accepts each; every one
// that scrapes gateways names its job "tcpd", which the rules select, and
// loads both rule files; the file discovery example's target file is in
// the format Prometheus reads.
func TestPrometheusExamples(t *testing.T) {
	dir := filepath.Join(root(t), "deploy/prometheus/examples")
	files, err := filepath.Glob(filepath.Join(dir, "*.yml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples in %s (%v)", dir, err)
	}
	promtool, _ := exec.LookPath("promtool")
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			var cfg struct {
				RuleFiles     []string `yaml:"rule_files"`
				ScrapeConfigs []struct {
					JobName     string `yaml:"job_name"`
					MetricsPath string `yaml:"metrics_path"`
				} `yaml:"scrape_configs"`
			}
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if err := yaml.Unmarshal(b, &cfg); err != nil {
				t.Fatal(err)
			}
			if len(cfg.ScrapeConfigs) != 1 {
				t.Fatalf("%d scrape configs, want 1", len(cfg.ScrapeConfigs))
			}
			if sc := cfg.ScrapeConfigs[0]; sc.MetricsPath != "/federate" {
				if sc.JobName != "tcpd" {
					t.Errorf("job_name %q: the rules select job=\"tcpd\"", sc.JobName)
				}
				for _, want := range []string{"alerts.yaml", "fleet.yaml"} {
					if !slices.ContainsFunc(cfg.RuleFiles, func(r string) bool { return filepath.Base(r) == want }) {
						t.Errorf("rule_files %v lack %s", cfg.RuleFiles, want)
					}
				}
			}
			if promtool == "" {
				t.Skip("promtool not found: install the prometheus package")
			}
			out, err := exec.Command(promtool, "check", "config", "--syntax-only", f).CombinedOutput()
			if err != nil && strings.Contains(string(out), "field kubernetes_sd_configs not found") {
				t.Skipf("this promtool is built without Kubernetes discovery (Debian's is); deploy/kubernetes checks the relabelling against the DaemonSet:\n%s", out)
			}
			if err != nil {
				t.Errorf("promtool check config: %v\n%s", err, out)
			}
		})
	}
	var groups []struct {
		Targets []string          `json:"targets"`
		Labels  map[string]string `json:"labels"`
	}
	if err := json.Unmarshal(readFile(t, "deploy/prometheus/examples/targets/tcpd.json"), &groups); err != nil {
		t.Fatalf("targets/tcpd.json: %v", err)
	}
	for _, g := range groups {
		for _, tg := range g.Targets {
			if _, port, err := net.SplitHostPort(tg); err != nil || port != "9810" {
				t.Errorf("targets/tcpd.json: target %q is not host:9810", tg)
			}
		}
	}
}
