//go:build linux

package bench

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"tcpd/internal/netlab"
)

// fdReserve is the number of descriptors the idle test leaves to the rest
// of this process: the labs' namespace and netlink handles, listeners,
// epoll, scrapes.
const fdReserve = 512

// mainTimeWait is tcp.time_wait of the main tcpd instance: tcpd's default.
const mainTimeWait = 30 * time.Second

// bencher carries one run's state.
type bencher struct {
	cfg   Config
	ticks float64   // clock ticks per second of /proc/<pid>/stat
	tmp   string    // admin sockets
	start time.Time // of the run

	mu    sync.Mutex
	notes []string
	// vals holds each metric's per-run values by path ("kernel", "tcpd").
	vals map[string]map[string][]float64
}

func (b *bencher) notef(format string, args ...any) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.notes = append(b.notes, fmt.Sprintf(format, args...))
}

func (b *bencher) record(id, path string, v float64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.vals[id] == nil {
		b.vals[id] = map[string][]float64{}
	}
	b.vals[id][path] = append(b.vals[id][path], v)
}

func (b *bencher) progress(format string, args ...any) {
	fmt.Fprintf(b.cfg.Progress, "[%5.1fs] %s\n", time.Since(b.start).Seconds(), fmt.Sprintf(format, args...))
}

// Run builds the labs, measures both paths cfg.Runs times, interleaved, and
// removes everything it made before returning, also when ctx is cancelled
// or a step fails.
func Run(ctx context.Context, cfg Config) (rep *Report, err error) {
	if cfg.TCPD == "" {
		return nil, errors.New("no tcpd binary given")
	}
	if _, err := os.Stat(cfg.TCPD); err != nil {
		return nil, fmt.Errorf("tcpd binary: %w", err)
	}
	if why := netlab.Available(); why != "" {
		return nil, fmt.Errorf("cannot build network labs here: %s (needs root and /dev/net/tun)", why)
	}
	cfg.setDefaults()
	switch cfg.Offload {
	case "", "auto", "on", "off":
	default:
		return nil, fmt.Errorf("offload %q: want auto, on or off", cfg.Offload)
	}
	b := &bencher{cfg: cfg, ticks: clockTicks(), start: time.Now(), vals: map[string]map[string][]float64{}}

	limit, err := raiseNoFile()
	if err != nil {
		return nil, err
	}
	if b.tmp, err = os.MkdirTemp("", "tcpdbench-"); err != nil {
		return nil, err
	}
	defer os.RemoveAll(b.tmp)

	// All labs are built before any tcpd starts. netlab starts tcpd with
	// PR_SET_PDEATHSIG, which fires when the starting OS thread exits, and
	// building a namespace ends the thread it ran on.
	var labs []*netlab.Lab
	defer func() {
		for _, l := range labs {
			if cerr := l.Close(); cerr != nil {
				err = errors.Join(err, cerr)
			}
		}
	}()
	newPath := func(name string) (*path, error) {
		l, srcs, err := newLab()
		if err != nil {
			return nil, err
		}
		labs = append(labs, l)
		return &path{name: name, lab: l, srcs: srcs}, nil
	}
	kernel, err := newPath("kernel")
	if err != nil {
		return nil, err
	}
	tcpd, err := newPath("tcpd")
	if err != nil {
		return nil, err
	}
	idleTCPD, err := newPath("tcpd")
	if err != nil {
		return nil, err
	}
	b.progress("labs %s (kernel), %s (tcpd), %s (tcpd, idle test) built", kernel.lab.ID, tcpd.lab.ID, idleTCPD.lab.ID)

	if err := b.startTCPD(ctx, tcpd, "tcpd-main", mainTimeWait); err != nil {
		return nil, err
	}
	defer func() {
		// After Ctrl-C or a failure the lab's Close kills it, without
		// waiting up to 30 s for a drain that may never come.
		if err == nil && ctx.Err() == nil {
			b.stopTCPD(tcpd, "main tcpd")
		}
	}()
	b.progress("tcpd running as pid %d, offload %v", tcpd.pid, offload(tcpd.tcpd))
	if cfg.Offload != "" {
		b.notef("tcpd ran with tun.offload: %s (given with --offload; the default is auto)", cfg.Offload)
	}
	for _, p := range []*path{kernel, tcpd} {
		if err := b.check(ctx, p); err != nil {
			if p.tcpd != nil {
				err = fmt.Errorf("%w\n--- tcpd log (last lines) ---\n%s", err, lastLines(p.tcpd.Logs(), 20))
			}
			return nil, err
		}
	}

	if err := b.interleaved(ctx, kernel, tcpd); err != nil {
		return nil, err
	}

	// The counters the issue asks for, from the main instance, which has
	// carried all the traffic above.
	final, err := tcpd.scrape(ctx)
	if err != nil {
		return nil, err
	}
	b.record("corrections", "tcpd", final.sum("tcpd_conntrack_corrections_total"))
	b.record("reused", "tcpd", final.sum("tcpd_tcp_time_wait_reused_total"))
	b.record("overflow", "tcpd", final.sum("tcpd_tcp_time_wait_overflow_total"))
	for _, k := range slices.Sorted(maps.Keys(final)) {
		if v := final[k]; strings.HasPrefix(k, "tcpd_dropped_total{") && v > 0 {
			b.notef("main tcpd: %s %v", k, v)
		}
	}
	logBytes := len(tcpd.tcpd.Logs())
	tcpdFiles, err := maxOpenFiles(tcpd.pid)
	if err != nil {
		return nil, err
	}
	b.stopTCPD(tcpd, "main tcpd")

	n := b.idleCount(int(limit), int(tcpdFiles))
	if err := b.idlePhase(ctx, kernel, idleTCPD, n); err != nil {
		return nil, err
	}

	rep = &Report{
		Date: b.start.UTC().Format(time.RFC3339),
		Machine: Machine{
			NProc:     runtime.NumCPU(),
			Kernel:    kernelRelease(),
			GoVersion: runtime.Version(),
		},
		Settings:     cfg.settings(),
		Rows:         b.rows(),
		Notes:        b.notes,
		TCPDMetrics:  selectMetrics(final),
		TCPDLogBytes: logBytes,
	}
	rep.Machine.Hostname, _ = os.Hostname()
	rep.RuntimeSeconds = time.Since(b.start).Seconds()
	return rep, nil
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(l[max(0, len(l)-n):], "\n")
}

func offload(p *netlab.Proc) any {
	for _, m := range p.LogLines() {
		if m["msg"] == "ready" {
			return m["offload"]
		}
	}
	return "?"
}

// interleaved runs every measurement but the idle test cfg.Runs times,
// each time on the kernel and on tcpd back to back, alternating which goes
// first, so that the machine's noise falls on both alike.
func (b *bencher) interleaved(ctx context.Context, kernel, tcpd *path) error {
	type test struct {
		name string
		run  func(p *path, rep int) error
	}
	bulk := func(id string, upload bool, streams int) test {
		dir := "download"
		if upload {
			dir = "upload"
		}
		name := fmt.Sprintf("bulk %s, %d stream(s)", dir, streams)
		return test{name, func(p *path, rep int) error {
			r, err := b.bulk(ctx, p, upload, streams, fmt.Sprintf("%s-%s-%d-%d", p.name, dir, streams, rep+1))
			if err != nil {
				b.record(id, p.name, math.NaN())
				return err
			}
			b.record(id, p.name, r.gbps())
			msg := fmt.Sprintf("%.2f Gbit/s (%d MB in %.1fs)", r.gbps(), r.bytes/1e6, r.dur.Seconds())
			if p.tcpd != nil {
				b.record("cpu_"+id, p.name, r.cpuPerGB())
				msg += fmt.Sprintf(", tcpd %.2f CPU s/GB", r.cpuPerGB())
			}
			b.progress("%-6s %-26s run %d: %s", p.name, name, rep+1, msg)
			return nil
		}}
	}
	crr := func(id string, serverFirst bool) test {
		name := "conn rate, client closes"
		if serverFirst {
			name = "conn rate, server closes"
		}
		return test{name, func(p *path, rep int) error {
			r, err := b.connRate(ctx, p, serverFirst)
			if err != nil {
				b.record(id, p.name, math.NaN())
				return err
			}
			b.record(id, p.name, r.rate())
			b.record(id+"_err", p.name, float64(r.errs))
			b.record(id+"_stuck", p.name, float64(r.stuck))
			msg := fmt.Sprintf("%.0f conn/s, %d errors, %d stuck", r.rate(), r.errs, r.stuck)
			if r.firstErr != "" {
				msg += ", first: " + r.firstErr
				b.notef("%s %s run %d: %d errors, %d stuck; first: %s", p.name, name, rep+1, r.errs, r.stuck, r.firstErr)
			}
			if r.serverErrs > 0 {
				msg += fmt.Sprintf(", %d server-side errors", r.serverErrs)
				b.notef("%s %s run %d: %d server-side errors", p.name, name, rep+1, r.serverErrs)
			}
			b.progress("%-6s %-26s run %d: %s", p.name, name, rep+1, msg)
			return nil
		}}
	}
	tests := []test{bulk("up1", true, 1), bulk("down1", false, 1)}
	if s := b.cfg.Streams; s > 1 {
		tests = append(tests, bulk("upN", true, s), bulk("downN", false, s))
	}
	tests = append(tests, crr("crr_cf", false), crr("crr_sf", true),
		test{"connect latency", func(p *path, rep int) error {
			r, err := b.connectLatency(ctx, p)
			if err != nil {
				b.record("lat50", p.name, math.NaN())
				b.record("lat99", p.name, math.NaN())
				return err
			}
			b.record("lat50", p.name, float64(r.p50.Nanoseconds())/1e3)
			b.record("lat99", p.name, float64(r.p99.Nanoseconds())/1e3)
			b.record("lat_err", p.name, float64(r.errs))
			b.progress("%-6s %-26s run %d: p50 %v, p99 %v, %d errors", p.name, "connect latency", rep+1,
				r.p50.Round(time.Microsecond), r.p99.Round(time.Microsecond), r.errs)
			return nil
		}})

	for rep := range b.cfg.Runs {
		order := []*path{kernel, tcpd}
		if rep%2 == 1 {
			order = []*path{tcpd, kernel}
		}
		for _, t := range tests {
			for _, p := range order {
				if err := b.measure(ctx, p, t.name, rep, func() error { return t.run(p, rep) }); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// measure runs one measurement. A failure is noted and the run goes on,
// unless ctx is done or tcpd has exited, which end the run.
func (b *bencher) measure(ctx context.Context, p *path, name string, rep int, run func() error) error {
	err := run()
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if p.tcpd != nil {
		select {
		case <-p.tcpd.Exited():
			return fmt.Errorf("%s run %d: tcpd exited: %v\n--- tcpd output ---\n%s", name, rep+1, p.tcpd.Wait(), p.tcpd.Logs())
		default:
		}
	}
	b.notef("%s %s run %d failed: %v", p.name, name, rep+1, err)
	b.progress("%-6s %-26s run %d: FAILED: %v", p.name, name, rep+1, err)
	return nil
}

// idleCount is how many idle connections fit: this process holds two
// descriptors per connection (client and server end), tcpd one (its
// upstream socket).
func (b *bencher) idleCount(limit, tcpdLimit int) int {
	open, err := openFiles()
	if err != nil {
		open = 64
	}
	n := b.cfg.Idle
	fit := (limit - open - fdReserve) / 2
	if n > fit {
		b.notef("idle: %d connections wanted, %d opened: this process holds 2 descriptors per connection and its open-file limit is %d (%d already open, %d kept spare)",
			n, fit, limit, open, fdReserve)
		n = fit
	}
	if fit := tcpdLimit - fdReserve; n > fit {
		b.notef("idle: reduced to %d connections by tcpd's open-file limit %d", fit, tcpdLimit)
		n = fit
	}
	return n
}

// idlePhase runs the idle test cfg.Runs times on the kernel path and on a
// fresh tcpd each time (tcp.time_wait cfg.IdleTimeWait), so that every
// tcpd run starts from a cold process.
func (b *bencher) idlePhase(ctx context.Context, kernel, tcpd *path, n int) error {
	b.notef("idle: separate tcpd instances with tcp.time_wait %v (main instance %v), one fresh per run; "+
		"connections spread over %d client addresses (default limits.max_connections_per_client is 4096); "+
		"the server closes first, so tcpd's client legs go through TIME_WAIT",
		b.cfg.IdleTimeWait, mainTimeWait, len(tcpd.srcs))
	var corrections float64
	for rep := range b.cfg.Runs {
		for _, p := range []*path{kernel, tcpd} {
			name := fmt.Sprintf("tcpd-idle-%d", rep+1)
			if p.tcpd == nil && p != kernel {
				if err := b.startTCPD(ctx, p, name, b.cfg.IdleTimeWait); err != nil {
					return err
				}
			}
			err := b.measure(ctx, p, "idle", rep, func() error {
				r, err := b.idle(ctx, p, n)
				if err != nil {
					return err
				}
				b.record("idle_n", p.name, float64(r.n))
				b.record("idle_slab", p.name, r.slabPerConn())
				msg := fmt.Sprintf("%d open, Slab %+.2f KiB/conn (machine-wide)", r.n, r.slabPerConn())
				if p.tcpd != nil {
					b.record("idle_kb", p.name, r.kbPerConn())
					b.record("idle_rss0", p.name, float64(r.rssBefore)/1024)
					b.record("idle_rss1", p.name, float64(r.rssOpen)/1024)
					b.record("idle_rss2", p.name, float64(r.rssAfter)/1024)
					b.record("idle_after", p.name, r.afterRatio())
					b.record("idle_drain", p.name, r.drain.Seconds())
					b.record("idle_heap1", p.name, r.heapOpen/(1<<20))
					b.record("idle_heap2", p.name, r.heapAfter/(1<<20))
					msg += fmt.Sprintf(", tcpd RSS %.1f -> %.1f MiB (%.2f KiB/conn), relays %v; drained in %.1fs, RSS %v later %.1f MiB (%.2fx)",
						float64(r.rssBefore)/1024, float64(r.rssOpen)/1024, r.kbPerConn(), r.relaysActive,
						r.drain.Seconds(), b.cfg.IdleAfter, float64(r.rssAfter)/1024, r.afterRatio())
					if int(r.relaysActive) != r.n {
						b.notef("idle run %d: tcpd reported %v active relays with %d connections open", rep+1, r.relaysActive, r.n)
					}
				}
				if r.noEOF > 0 {
					b.notef("idle (%s) run %d: %d client ends saw no FIN within 10s of the server's close", p.name, rep+1, r.noEOF)
				}
				b.progress("%-6s %-26s run %d: %s", p.name, "idle connections", rep+1, msg)
				return nil
			})
			if err != nil {
				return err
			}
			if p.tcpd != nil {
				if m, err := p.scrape(ctx); err == nil {
					corrections += m.sum("tcpd_conntrack_corrections_total")
				}
				b.stopTCPD(p, name)
			}
		}
	}
	if corrections > 0 {
		b.notef("idle: the idle-test tcpd instances counted %v conntrack corrections together", corrections)
	}
	return nil
}

// rows turns the recorded values into the table, in reading order.
func (b *bencher) rows() []Row {
	get := func(id, path string) []float64 { return b.vals[id][path] }
	row := func(metric, unit, better, agg, id string) Row {
		return newRow(metric, unit, better, agg, get(id, "kernel"), get(id, "tcpd"))
	}
	s := b.cfg.Streams
	rows := []Row{
		row("bulk upload, 1 stream", "Gbit/s", "higher", "median", "up1"),
		row("bulk download, 1 stream", "Gbit/s", "higher", "median", "down1"),
	}
	if s > 1 {
		rows = append(rows,
			row(fmt.Sprintf("bulk upload, %d streams", s), "Gbit/s", "higher", "median", "upN"),
			row(fmt.Sprintf("bulk download, %d streams", s), "Gbit/s", "higher", "median", "downN"))
	}
	rows = append(rows,
		row("tcpd CPU per GB, upload", "CPU s/GB", "lower", "median", "cpu_up1"),
		row("tcpd CPU per GB, download", "CPU s/GB", "lower", "median", "cpu_down1"))
	if s > 1 {
		rows = append(rows,
			row(fmt.Sprintf("tcpd CPU per GB, upload, %d streams", s), "CPU s/GB", "lower", "median", "cpu_upN"),
			row(fmt.Sprintf("tcpd CPU per GB, download, %d streams", s), "CPU s/GB", "lower", "median", "cpu_downN"))
	}
	w := b.cfg.Workers
	rows = append(rows,
		row(fmt.Sprintf("new conns, client closes first, %d workers", w), "conn/s", "higher", "median", "crr_cf"),
		row("  errors", "", "", "total", "crr_cf_err"),
		row(fmt.Sprintf("  stuck > %v", b.cfg.Stuck), "", "", "total", "crr_cf_stuck"),
		row(fmt.Sprintf("new conns, server closes first, %d workers", w), "conn/s", "higher", "median", "crr_sf"),
		row("  errors", "", "", "total", "crr_sf_err"),
		row(fmt.Sprintf("  stuck > %v", b.cfg.Stuck), "", "", "total", "crr_sf_stuck"),
		row("connect latency p50", "µs", "lower", "median", "lat50"),
		row("connect latency p99", "µs", "lower", "median", "lat99"),
		row("  failed connects", "", "", "total", "lat_err"),
		row("idle connections open", "", "", "median", "idle_n"),
		row("tcpd RSS before opening", "MiB", "", "median", "idle_rss0"),
		row("tcpd RSS with all open", "MiB", "", "median", "idle_rss1"),
		row("tcpd RSS per idle connection", "KiB", "lower", "median", "idle_kb"),
		row("tcpd TIME_WAIT drain after close", "s", "", "median", "idle_drain"),
		row(fmt.Sprintf("tcpd RSS %v after drain", b.cfg.IdleAfter), "MiB", "", "median", "idle_rss2"),
		row("  ratio to RSS before opening", "x", "lower", "median", "idle_after"),
		row("tcpd Go heap in use, all open", "MiB", "", "median", "idle_heap1"),
		row(fmt.Sprintf("tcpd Go heap in use %v after drain", b.cfg.IdleAfter), "MiB", "", "median", "idle_heap2"),
		row("kernel Slab per idle conn, machine-wide", "KiB", "lower", "median", "idle_slab"),
		row("tcpd_conntrack_corrections_total", "", "", "final", "corrections"),
		row("tcpd_tcp_time_wait_reused_total", "", "", "final", "reused"),
		row("tcpd_tcp_time_wait_overflow_total", "", "", "final", "overflow"),
	)
	// A row with nothing measured on either side (a failed test) still
	// shows, as n/a; "total" rows that are zero on both sides stay too, so
	// that "no errors" is visible.
	return rows
}

// selectMetrics keeps tcpd's own series, the process ones and the Go heap's,
// without histogram buckets.
func selectMetrics(s series) map[string]float64 {
	out := map[string]float64{}
	for k, v := range s {
		keep := strings.HasPrefix(k, "tcpd_") || strings.HasPrefix(k, "process_") || strings.HasPrefix(k, "go_memstats_heap_")
		if keep && !strings.Contains(k, "_bucket") {
			out[k] = v
		}
	}
	return out
}
