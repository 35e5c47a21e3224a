//go:build linux

package e2e_test

import (
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"tcpd/internal/netlab"
)

// readmeMetric is one row of README's metrics table.
type readmeMetric struct {
	typ, labels, help string
}

// readmeMetrics reads README's metrics table and the prose around it: the
// rows by name, the families documented by prefix (`go_*`), and every
// back-quoted word of the "Label values:" paragraph.
func readmeMetrics(t *testing.T) (rows map[string]readmeMetric, prefixes []string, labelWords map[string]bool) {
	t.Helper()
	data, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	start := strings.Index(text, "\n## Metrics\n")
	if start < 0 {
		t.Fatal(`README has no "## Metrics" section`)
	}
	section := text[start+1:]
	if end := strings.Index(section[3:], "\n## "); end >= 0 {
		section = section[:end+3]
	}
	rows = map[string]readmeMetric{}
	header := false
	row := regexp.MustCompile("^\\| `([a-z_:]+)` \\| (\\w+) \\| ([a-z_, ]*) \\| (.*) \\|$")
	for line := range strings.Lines(section) {
		line = strings.TrimRight(line, "\n")
		switch {
		case line == "| metric | type | labels | meaning |":
			header = true
		case header && strings.HasPrefix(line, "|---"):
		case header && strings.HasPrefix(line, "|"):
			m := row.FindStringSubmatch(line)
			if m == nil {
				t.Errorf("README metrics table: cannot read row %q", line)
				continue
			}
			if _, dup := rows[m[1]]; dup {
				t.Errorf("README metrics table: %s listed twice", m[1])
			}
			labels := strings.Fields(strings.ReplaceAll(m[3], ",", " "))
			slices.Sort(labels)
			rows[m[1]] = readmeMetric{typ: m[2], labels: strings.Join(labels, ","), help: m[4]}
		case header:
			header = false
		}
	}
	for _, m := range regexp.MustCompile("`([a-z_]+_)\\*`").FindAllStringSubmatch(section, -1) {
		prefixes = append(prefixes, m[1])
	}
	labelWords = map[string]bool{}
	i := strings.Index(section, "Label values:")
	if i < 0 {
		t.Fatal(`README's metrics section has no "Label values:" paragraph`)
	}
	para, _, _ := strings.Cut(section[i:], "\n\n")
	for _, m := range regexp.MustCompile("`([^`]+)`").FindAllStringSubmatch(para, -1) {
		labelWords[m[1]] = true
	}
	return rows, prefixes, labelWords
}

// TestREADMEMetricsTable scrapes the real daemon (a real TUN and netstack in
// a namespace) and holds README's metrics table to it, both ways: every
// family /metrics exposes is a row with its type, labels and help text (or
// documented by a prefix such as `go_*`), every row is exposed, and every
// label value is named in the "Label values:" paragraph, which names no
// value tcpd does not export.
func TestREADMEMetricsTable(t *testing.T) {
	t.Parallel()
	rows, prefixes, labelWords := readmeMetrics(t)
	if len(rows) < 50 {
		t.Fatalf("read %d rows of README's metrics table; the parser lost its place", len(rows))
	}
	// Two queues, so that the queue label has the values README names.
	g := startGateway(t, netlab.Options{}, gwConfig{Metrics: true, Queues: "2"})
	body := scrapeText(t, g)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse the scrape: %v", err)
	}

	seenWords := map[string]bool{}
	for name, f := range fams {
		doc, ok := rows[name]
		if !ok {
			if !slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(name, p) }) {
				t.Errorf("%s is exposed but not in README's metrics table", name)
			}
			continue
		}
		delete(rows, name)
		if typ := strings.ToLower(f.GetType().String()); typ != doc.typ {
			t.Errorf("%s: README says %s, /metrics says %s", name, doc.typ, typ)
		}
		if f.GetHelp() != doc.help {
			t.Errorf("%s: README says %q, /metrics' help says %q", name, doc.help, f.GetHelp())
		}
		labels := familyLabels(f)
		var names []string
		for l := range labels {
			names = append(names, l)
		}
		slices.Sort(names)
		if got := strings.Join(names, ","); got != doc.labels {
			t.Errorf("%s: README gives labels %q, /metrics has %q", name, doc.labels, got)
		}
		for l, values := range labels {
			if l == "version" || l == "goversion" {
				continue // tcpd_build_info's, documented by its help text
			}
			for _, v := range values {
				seenWords[v] = true
				if l != "state" && !labelWords[v] {
					t.Errorf("%s{%s=%q} is exposed but README's \"Label values:\" paragraph does not name %q", name, l, v, v)
				}
			}
		}
	}
	for name := range rows {
		t.Errorf("README's metrics table lists %s, which /metrics does not expose", name)
	}
	for w := range labelWords {
		if strings.HasPrefix(w, "tcpd_") {
			if _, ok := fams[w]; !ok {
				t.Errorf("README's \"Label values:\" paragraph names %s, which /metrics does not expose", w)
			}
			continue
		}
		if !seenWords[w] && w != "direction" && w != "reason" && w != "result" && w != "end" && w != "queue" {
			t.Errorf("README's \"Label values:\" paragraph names %q, which no exposed label has", w)
		}
	}
	for _, p := range prefixes {
		if !slices.ContainsFunc(slices.Collect(maps.Keys(fams)), func(n string) bool { return strings.HasPrefix(n, p) }) {
			t.Errorf("README documents `%s*`, but /metrics exposes no such family", p)
		}
	}
}

// familyLabels returns each label of f (histogram buckets' le aside) with
// the values it takes.
func familyLabels(f *dto.MetricFamily) map[string][]string {
	out := map[string][]string{}
	for _, m := range f.GetMetric() {
		for _, lp := range m.GetLabel() {
			if !slices.Contains(out[lp.GetName()], lp.GetValue()) {
				out[lp.GetName()] = append(out[lp.GetName()], lp.GetValue())
			}
		}
	}
	return out
}
