// Package bench measures tcpd against the kernel's own forwarding in the
// same run: bulk throughput, new connections per second, connect latency,
// memory per idle connection and CPU per byte relayed, on netlab topologies
// where the gateway either forwards in the kernel or runs tcpd. Its load
// generator is its own Go code, clients in the client namespace and servers
// in the server namespace; it never sends a packet outside the labs it
// builds, and it removes them and every process it started on any exit.
// It is what `make bench` runs; it asserts nothing about speed.
package bench

import (
	"fmt"
	"io"
	"math"
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
	// Runs is how many times each measurement is repeated; the table shows
	// medians. Zero means 3.
	Runs int
	// Bulk is the length of one bulk transfer in one direction. Zero means 5s.
	Bulk time.Duration
	// Streams, when above 1, adds bulk rows with that many parallel streams.
	// Zero means none (one stream only).
	Streams int
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
	// Idle is the number of concurrent idle connections wanted; fewer are
	// opened if the open-file limit cannot hold them. Zero means 15000.
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
	// ProfileCmd, if set, is run with `sh -c` during every tcpd bulk
	// transfer, after "{pid}", "{seconds}" and "{name}" are replaced by
	// tcpd's pid, the transfer's length in whole seconds and a name for
	// the output file such as "tcpd-upload-1"; it gets SIGINT when the
	// transfer ends, e.g. `perf record -g -p {pid} -o bench/out/{name}.data`.
	// Empty means no profiling (tcpd has no profiling endpoint of its own).
	ProfileCmd string
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
	def(&c.ConnRate, 3*time.Second)
	defInt(&c.Workers, 64)
	def(&c.Stuck, 2*time.Second)
	defInt(&c.Connects, 1000)
	defInt(&c.Idle, 15000)
	def(&c.IdleTimeWait, 10*time.Second)
	def(&c.IdleAfter, 10*time.Second)
	if c.Progress == nil {
		c.Progress = io.Discard
	}
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
	// TCPDLogBytes is the size of the main tcpd instance's log output.
	TCPDLogBytes   int     `json:"tcpd_log_bytes"`
	RuntimeSeconds float64 `json:"runtime_seconds"`
}

// Machine describes where the run happened.
type Machine struct {
	NProc     int    `json:"nproc"`
	Kernel    string `json:"kernel"`
	GoVersion string `json:"go_version"`
	Hostname  string `json:"hostname"`
}

// Row is one line of the table: a metric on both paths.
type Row struct {
	Metric string `json:"metric"`
	Unit   string `json:"unit"`
	// Better is "higher", "lower" or "" when the row is a count or a
	// setting rather than a score.
	Better string `json:"better"`
	// Aggregate says how Kernel and TCPD summarise the runs: "median",
	// "total" (summed over the runs) or "final" (a counter at the end).
	Aggregate string `json:"aggregate"`
	// Kernel and TCPD are nil where the metric does not apply (n/a).
	Kernel *float64 `json:"kernel"`
	TCPD   *float64 `json:"tcpd"`
	// Ratio is TCPD/Kernel, nil when either is n/a or Kernel is zero.
	Ratio *float64 `json:"ratio"`
	// KernelRuns and TCPDRuns are the values of the single runs, null for
	// a run that failed.
	KernelRuns []*float64 `json:"kernel_runs,omitempty"`
	TCPDRuns   []*float64 `json:"tcpd_runs,omitempty"`
}

// newRow builds a row from the per-run values of both paths; a nil slice
// makes that side n/a.
func newRow(metric, unit, better, agg string, kernel, tcpd []float64) Row {
	r := Row{Metric: metric, Unit: unit, Better: better, Aggregate: agg, KernelRuns: runs(kernel), TCPDRuns: runs(tcpd)}
	r.Kernel = aggregate(agg, kernel)
	r.TCPD = aggregate(agg, tcpd)
	if r.Kernel != nil && r.TCPD != nil && *r.Kernel != 0 && better != "" {
		v := *r.TCPD / *r.Kernel
		r.Ratio = &v
	}
	return r
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
// numbers right aligned, followed by the notes.
func (r *Report) WriteTable(w io.Writer) error {
	lines := [][]string{{"metric", "kernel", "tcpd", "tcpd/kernel", "better"}}
	for _, row := range r.Rows {
		name := row.Metric
		if row.Unit != "" {
			name += " (" + row.Unit + ")"
		}
		better := row.Better
		if row.Aggregate == "total" {
			better = "(sum of runs)"
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
	return map[string]any{
		"runs":            c.Runs,
		"bulk_seconds":    c.Bulk.Seconds(),
		"streams":         c.Streams,
		"conn_rate_secs":  c.ConnRate.Seconds(),
		"workers":         c.Workers,
		"stuck_after_sec": c.Stuck.Seconds(),
		"connects":        c.Connects,
		"idle_wanted":     c.Idle,
		"idle_time_wait":  c.IdleTimeWait.String(),
		"idle_after":      c.IdleAfter.String(),
		"profile_cmd":     c.ProfileCmd,
		"tcpd_offload":    c.Offload,
		"tcpd":            c.TCPD,
		"measured_paths":  strings.Join([]string{"kernel", "tcpd"}, ","),
	}
}
