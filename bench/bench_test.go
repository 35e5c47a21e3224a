package bench

import (
	"math"
	"strings"
	"testing"
)

func TestNewRowRatios(t *testing.T) {
	r := newRow("conn rate", "conn/s", "higher", "median",
		[]float64{100, 300, 200}, []float64{50, math.NaN(), 70}, []float64{40, 40, 40})
	check := func(name string, got *float64, want float64) {
		t.Helper()
		if got == nil || math.Abs(*got-want) > 1e-9 {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	check("kernel", r.Kernel, 200)
	check("tcpd (failed run left out)", r.TCPD, 60)
	check("base", r.Base, 40)
	check("tcpd/kernel", r.Ratio, 0.3)
	check("base/kernel", r.BaseRatio, 0.2)
	check("tcpd/base", r.Change, 1.5)
	if len(r.TCPDRuns) != 3 || r.TCPDRuns[1] != nil {
		t.Errorf("tcpd runs = %v, want the failed run as null", r.TCPDRuns)
	}

	noKernel := newRow("CPU per conn", "µs", "lower", "median", nil, []float64{100}, nil)
	if noKernel.Kernel != nil || noKernel.Ratio != nil || noKernel.Base != nil || noKernel.Change != nil {
		t.Errorf("row without kernel or base: %+v", noKernel)
	}
	tiny := newRow("recvfrom", "", "lower", "median", []float64{0.001}, []float64{1.2}, []float64{0.0003})
	if tiny.Ratio != nil || tiny.Change != nil {
		t.Errorf("a ratio to a value shown as 0.00: tcpd/kernel %v, tcpd/base %v", tiny.Ratio, tiny.Change)
	}
	count := newRow("errors", "", "", "total", []float64{1, 2}, []float64{3, 4}, nil)
	check("total", count.TCPD, 7)
	if count.Ratio != nil {
		t.Errorf("a count row has a ratio: %v", *count.Ratio)
	}
}

func TestWriteTableBaseColumns(t *testing.T) {
	rep := &Report{Rows: []Row{
		newRow("new conns", "conn/s", "higher", "median", []float64{5000}, []float64{3000}, nil),
	}}
	var b strings.Builder
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	if head := strings.SplitN(b.String(), "\n", 2)[0]; strings.Contains(head, "base") {
		t.Errorf("no base measured, yet the header has a base column: %q", head)
	}

	rep.Rows = []Row{
		newRow("new conns", "conn/s", "higher", "median", []float64{5000}, []float64{3000}, []float64{2000}),
		newRow("CPU per conn, user", "µs", "lower", "median", nil, []float64{100}, []float64{200}),
	}
	b.Reset()
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(b.String(), "\n")
	want := [][]string{
		{"metric", "kernel", "base", "tcpd", "base/kernel", "tcpd/kernel", "tcpd/base", "better"},
		{"new conns (conn/s)", "5000", "2000", "3000", "0.40x", "0.60x", "1.50x", "higher"},
		{"CPU per conn, user (µs)", "n/a", "200", "100", "-", "-", "0.50x", "lower"},
	}
	for i, w := range want {
		idx := i
		if i > 0 {
			idx = i + 1 // after the rule
		}
		var got []string
		for _, c := range strings.Split(lines[idx], "|") {
			got = append(got, strings.TrimSpace(c))
		}
		if strings.Join(got, ";") != strings.Join(w, ";") {
			t.Errorf("line %d = %q, want %q", idx, got, w)
		}
	}
}

func TestParsePerfCSV(t *testing.T) {
	out := `# started on Sun Dec  6 11:34:58 2026

4000,,syscalls:sys_enter_getpid,4637461,100.00,,
4115,,raw_syscalls:sys_enter,4637461,100.00,,Events disabled
<not counted>,,syscalls:sys_enter_connect,0,0.00,,
<not supported>,,probe:newproc,0,0.00,,
Events enabled
Events disabled
`
	got, err := parsePerfCSV([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{"syscalls:sys_enter_getpid": 4000, "raw_syscalls:sys_enter": 4115}
	if len(got) != len(want) {
		t.Errorf("got %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
}

func TestOnly(t *testing.T) {
	c := Config{Only: []string{"rate", "count"}}
	if err := c.checkOnly(); err != nil {
		t.Fatal(err)
	}
	if !c.runs("rate") || c.runs("bulk") {
		t.Errorf("runs(rate)=%v runs(bulk)=%v, want true, false", c.runs("rate"), c.runs("bulk"))
	}
	if err := (&Config{Only: []string{"rates"}}).checkOnly(); err == nil || !strings.Contains(err.Error(), `"rates"`) {
		t.Errorf("unknown group: err = %v, want one naming it", err)
	}
	if !(&Config{}).runs("idle") {
		t.Error("an empty Only must run everything")
	}
}
