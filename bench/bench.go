// Package bench measures tcpd against the kernel's own forwarding in the
// same run: bulk throughput, new connections per second, connect latency,
// memory per idle connection, CPU per byte relayed and what each new
// connection costs tcpd (CPU, system calls, goroutines, context switches),
// on netlab topologies where the gateway either forwards in the kernel or
// runs tcpd, and optionally a second, baseline tcpd binary for A/B runs. Its load
// generator is its own Go code, clients in the client namespace and servers
// in the server namespace; it never sends a packet outside the labs it
// builds, and it removes them and every process it started on any exit.
// It is what `make bench` runs; it asserts nothing about speed.
package bench

import (
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// Config says what to measure and how long. Its zero value, with TCPD set,
// is the standard run.
type Config struct {
	// TCPD is the tcpd binary. Required.
	TCPD string
	// Base, if set, is a second tcpd binary (say, built from main) measured
	// exactly like TCPD, on its own lab, interleaved with the other paths,
	// so that before and after come from one run on one noisy machine.
	// Empty means none.
	Base string
	// LossDetection and BaseLossDetection, if set, are tcp.loss_detection
	// ("rack" or "dupack") of the tcpd and base paths; empty keeps tcpd's
	// default. With Base the same binary as TCPD, they make an A/B of loss
	// detection in one run.
	LossDetection, BaseLossDetection string
	// Only, if not empty, limits the run to these groups of measurements:
	// "bulk", "rate" (connection rate, with tcpd's CPU and context switches
	// per connection), "count" (system calls and goroutines per connection,
	// under perf), "latency", "queues" (tun.queues 1 against auto), "idle"
	// and "wireguard". Empty means all.
	Only []string
	// Runs is how many times each measurement is repeated; the table shows
	// medians. Zero means 3.
	Runs int
	// Bulk is the length of one bulk transfer in one direction. Zero means 5s.
	Bulk time.Duration
	// Streams, when above 1, adds bulk rows with that many parallel streams.
	// Zero means none (one stream only).
	Streams int
	// QueueStreams is the number of parallel streams each way of the queues
	// phase's bulk rows. Zero means 8.
	QueueStreams int
	// ConnRate is the length of one connection-rate run. Zero means 3s.
	ConnRate time.Duration
	// Workers is the number of concurrent connection-rate clients. Zero
	// means 64.
	Workers int
	// Stuck is how long a connection of the connection-rate test may take
	// from connect to close before it counts as stuck. Zero means 2s.
	Stuck time.Duration
	// Connects is the number of sequential connects the latency test
	// times. Zero means 1000.
	Connects int
	// Self is the tcpdbench executable, which runs the idle test's server
	// (RunIdleServer) when given IdleServerArg. Empty means this process's
	// own executable.
	Self string
	// Perf is the perf binary of the counting phase. Empty means "perf"
	// from PATH; without it the counting phase is skipped with a note.
	Perf string
	// Idle is the number of concurrent idle connections wanted; fewer are
	// opened if the open-file limits cannot hold them. Zero means as many
	// as they hold.
	Idle int
	// IdleTimeWait is tcp.time_wait of the tcpd instances of the idle test,
	// which wait for TIME_WAIT to drain. Zero means 10s.
	IdleTimeWait time.Duration
	// IdleAfter is how long after the drain the idle test reads tcpd's RSS
	// again. Zero means 10s.
	IdleAfter time.Duration
	// Offload, if set, is tcpd's tun.offload (auto, on or off) instead of
	// its default (auto), e.g. to compare the virtio-net offload path with
	// the plain one.
	Offload string
	// Queues, if set, is tun.queues of the tcpd and base paths outside
	// the queues phase (which sets its own) instead of tcpd's default.
	Queues string
	// ProfileCmd, if set, is run with `sh -c` during every tcpd bulk
	// transfer, after "{pid}", "{seconds}" and "{name}" are replaced by
	// tcpd's pid, the transfer's length in whole seconds and a name for
	// the output file such as "tcpd-upload-1"; it gets SIGINT when the
	// transfer ends, e.g. `perf record -g -p {pid} -o bench/out/{name}.data`.
	// Empty means no profiling (tcpd has no profiling endpoint of its own).
	ProfileCmd string
	// Soak is how long the soak runs (soak.go); it runs only when Only
	// names it. Zero means 3m.
	Soak time.Duration
	// Progress receives one line per measurement. Nil means none.
	Progress io.Writer
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	defInt := func(d *int, v int) {
		if *d == 0 {
			*d = v
		}
	}
	defInt(&c.Runs, 3)
	def(&c.Bulk, 5*time.Second)
	defInt(&c.QueueStreams, 8)
	def(&c.ConnRate, 3*time.Second)
	defInt(&c.Workers, 64)
	def(&c.Stuck, 2*time.Second)
	defInt(&c.Connects, 1000)
	defInt(&c.Idle, math.MaxInt32)
	def(&c.IdleTimeWait, 10*time.Second)
	def(&c.IdleAfter, 10*time.Second)
	def(&c.Soak, 3*time.Minute)
	if c.Perf == "" {
		c.Perf = "perf"
	}
	if c.Self == "" {
		c.Self, _ = os.Executable()
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
}

// groups are the measurement groups Only may name, in running order. The
// soak runs only when named.
var groups = []string{"bulk", "rate", "count", "latency", "queues", "idle", "wireguard", "soak"}

// checkOnly rejects an unknown group in Only.
func (c *Config) checkOnly() error {
	for _, g := range c.Only {
		if !slices.Contains(groups, g) {
			return fmt.Errorf("unknown measurement %q: want some of %s", g, strings.Join(groups, ", "))
		}
	}
	return nil
}

// runs reports whether the group g is measured.
func (c *Config) runs(g string) bool {
	if g == "soak" {
		return slices.Contains(c.Only, g)
	}
	return len(c.Only) == 0 || slices.Contains(c.Only, g)
}

// Report is the result of a run, as written to results.json.
type Report struct {
	Date    string   `json:"date"`
	Machine Machine  `json:"machine"`
	Command []string `json:"command"`
	// Settings are the Config values the run used.
	Settings map[string]any `json:"settings"`
	Rows     []Row          `json:"rows"`
	// Notes say what was adjusted or looked odd during the run.
	Notes []string `json:"notes"`
	// TCPDMetrics are selected series of the main tcpd instance's /metrics
	// at the end of the run.
	TCPDMetrics map[string]float64 `json:"tcpd_metrics"`
	// BaseMetrics are the same series of the baseline tcpd, if measured.
	BaseMetrics map[string]float64 `json:"base_metrics,omitempty"`
	// TCPDLogBytes is the size of the main tcpd instance's log output.
	TCPDLogBytes   int     `json:"tcpd_log_bytes"`
	RuntimeSeconds float64 `json:"runtime_seconds"`
	// Soak is the soak's outcome, when it ran.
	Soak *SoakResult `json:"soak,omitempty"`
}

// Machine describes where the run happened.
type Machine struct {
	NProc     int    `json:"nproc"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"go_version"`
	Hostname  string `json:"hostname"`
}

// Row is one line of the table: a metric on every path.
type Row struct {
	Metric string `json:"metric"`
	Unit   string `json:"unit"`
	// Better is "higher", "lower" or "" when the row is a count or a
	// setting rather than a score.
	Better string `json:"better"`
	// Aggregate says how Kernel and TCPD summarise the runs: "median",
	// "total" (summed over the runs) or "final" (a counter at the end).
	Aggregate string `json:"aggregate"`
	// Kernel, TCPD and Base are nil where the metric does not apply (n/a);
	// Base also when no baseline binary was measured.
	Kernel *float64 `json:"kernel"`
	TCPD   *float64 `json:"tcpd"`
	Base   *float64 `json:"base,omitempty"`
	// Ratio is TCPD/Kernel, nil when either is n/a or Kernel is zero;
	// BaseRatio is Base/Kernel and Change is TCPD/Base, alike.
	Ratio     *float64 `json:"ratio"`
	BaseRatio *float64 `json:"base_ratio,omitempty"`
	Change    *float64 `json:"change,omitempty"`
	// KernelRuns, TCPDRuns and BaseRuns are the values of the single runs,
	// null for a run that failed.
	KernelRuns []*float64 `json:"kernel_runs,omitempty"`
	TCPDRuns   []*float64 `json:"tcpd_runs,omitempty"`
	BaseRuns   []*float64 `json:"base_runs,omitempty"`
}

// newRow builds a row from the per-run values of each path; a nil slice
// makes that path n/a.
func newRow(metric, unit, better, agg string, kernel, tcpd, base []float64) Row {
	r := Row{Metric: metric, Unit: unit, Better: better, Aggregate: agg,
		KernelRuns: runs(kernel), TCPDRuns: runs(tcpd), BaseRuns: runs(base)}
	r.Kernel = aggregate(agg, kernel)
	r.TCPD = aggregate(agg, tcpd)
	r.Base = aggregate(agg, base)
	if better != "" {
		r.Ratio = quotient(r.TCPD, r.Kernel)
		r.BaseRatio = quotient(r.Base, r.Kernel)
		r.Change = quotient(r.TCPD, r.Base)
	}
	return r
}

// quotient is a/b, nil when either is n/a or b is zero.
// quotient is a/b, nil when either is missing or b is a value the table
// shows as 0.00 (say, 0.0003 recvfrom per connection): a ratio to it would
// be noise printed as a finding.
func quotient(a, b *float64) *float64 {
	if a == nil || b == nil || math.Abs(*b) < 0.005 {
		return nil
	}
	v := *a / *b
	return &v
}

func runs(v []float64) []*float64 {
	var out []*float64
	for _, x := range v {
		if math.IsNaN(x) {
			out = append(out, nil)
		} else {
			out = append(out, &x)
		}
	}
	return out
}

func aggregate(agg string, v []float64) *float64 {
	if len(v) == 0 {
		return nil
	}
	var x float64
	switch agg {
	case "total":
		for _, f := range v {
			x += f
		}
	case "final":
		x = v[len(v)-1]
	default:
		x = median(v)
	}
	if math.IsNaN(x) {
		return nil
	}
	return &x
}

// median of v; NaN entries (failed runs) are left out.
func median(v []float64) float64 {
	s := slices.DeleteFunc(slices.Clone(v), math.IsNaN)
	if len(s) == 0 {
		return math.NaN()
	}
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// percentile returns the nearest-rank p-th percentile (0 < p <= 100) of d.
func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return s[min(max(rank, 1), len(s))-1]
}

// WriteTable prints the report's rows as a table, metric names left and
// numbers right aligned, followed by the notes. The base columns appear
// when a baseline binary was measured.
func (r *Report) WriteTable(w io.Writer) error {
	withBase := slices.ContainsFunc(r.Rows, func(row Row) bool { return len(row.BaseRuns) > 0 })
	head := []string{"metric", "kernel", "tcpd", "tcpd/kernel", "better"}
	if withBase {
		head = []string{"metric", "kernel", "base", "tcpd", "base/kernel", "tcpd/kernel", "tcpd/base", "better"}
	}
	lines := [][]string{head}
	for _, row := range r.Rows {
		name := row.Metric
		if row.Unit != "" {
			name += " (" + row.Unit + ")"
		}
		better := row.Better
		if row.Aggregate == "total" {
			better = "(sum of runs)"
		}
		if withBase {
			lines = append(lines, []string{name, num(row.Kernel), num(row.Base), num(row.TCPD),
				ratio(row.BaseRatio), ratio(row.Ratio), ratio(row.Change), better})
			continue
		}
		lines = append(lines, []string{name, num(row.Kernel), num(row.TCPD), ratio(row.Ratio), better})
	}
	width := make([]int, len(lines[0]))
	for _, l := range lines {
		for i, c := range l {
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	var b strings.Builder
	rule := func() {
		for i, wd := range width {
			if i > 0 {
				b.WriteString("-+-")
			}
			b.WriteString(strings.Repeat("-", wd))
		}
		b.WriteByte('\n')
	}
	for n, l := range lines {
		for i, c := range l {
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(c))
			switch {
			case i == 0:
				b.WriteString(c + pad)
			case i == len(l)-1:
				b.WriteString(" | " + c)
			default:
				b.WriteString(" | " + pad + c)
			}
		}
		b.WriteByte('\n')
		if n == 0 {
			rule()
		}
	}
	for _, n := range r.Notes {
		b.WriteString("note: " + n + "\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func num(v *float64) string {
	if v == nil {
		return "n/a"
	}
	x := *v
	switch a := math.Abs(x); {
	case x == math.Trunc(x) && a < 1e9:
		return fmt.Sprintf("%.0f", x)
	case a >= 100:
		return fmt.Sprintf("%.0f", x)
	case a >= 10:
		return fmt.Sprintf("%.1f", x)
	default:
		return fmt.Sprintf("%.2f", x)
	}
}

func ratio(v *float64) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.2fx", *v)
}

// settings lists the effective configuration for the report.
func (c *Config) settings() map[string]any {
	paths := []string{"kernel", "tcpd"}
	if c.Base != "" {
		paths = append(paths, "base")
	}
	return map[string]any{
		"measured_paths":      strings.Join(paths, ","),
		"runs":                c.Runs,
		"bulk_seconds":        c.Bulk.Seconds(),
		"streams":             c.Streams,
		"queue_streams":       c.QueueStreams,
		"conn_rate_secs":      c.ConnRate.Seconds(),
		"workers":             c.Workers,
		"stuck_after_sec":     c.Stuck.Seconds(),
		"connects":            c.Connects,
		"idle_wanted":         c.Idle,
		"idle_time_wait":      c.IdleTimeWait.String(),
		"idle_after":          c.IdleAfter.String(),
		"profile_cmd":         c.ProfileCmd,
		"tcpd_offload":        c.Offload,
		"tcpd_queues":         c.Queues,
		"loss_detection":      c.LossDetection,
		"base_loss_detection": c.BaseLossDetection,
		"tcpd":                c.TCPD,
		"base":                c.Base,
		"only":                strings.Join(c.Only, ","),
		"perf":                c.Perf,
	}
}
