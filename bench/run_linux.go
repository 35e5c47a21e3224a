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

	// queueClients is how many client addresses the queues phase's
	// connection rate uses.
	queueClients int

	mu    sync.Mutex
	notes []string
	// vals holds each metric's per-run values by path ("kernel", "tcpd",
	// "base").
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

// Run builds the labs, measures every path cfg.Runs times, interleaved, and
// removes everything it made before returning, also when ctx is cancelled
// or a step fails.
func Run(ctx context.Context, cfg Config) (rep *Report, err error) {
	if cfg.TCPD == "" {
		return nil, errors.New("no tcpd binary given")
	}
	for _, bin := range []string{cfg.TCPD, cfg.Base} {
		if bin == "" {
			continue
		}
		if _, err := os.Stat(bin); err != nil {
			return nil, fmt.Errorf("tcpd binary: %w", err)
		}
	}
	if err := cfg.checkOnly(); err != nil {
		return nil, err
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
	newPath := func(name, bin string) (*path, error) {
		l, srcs, err := newLab()
		if err != nil {
			return nil, err
		}
		labs = append(labs, l)
		return &path{name: name, bin: bin, lab: l, srcs: srcs}, nil
	}
	bins := map[string]string{"tcpd": cfg.TCPD, "base": cfg.Base}
	lossDetection := map[string]string{"tcpd": cfg.LossDetection, "base": cfg.BaseLossDetection}
	kernel, err := newPath("kernel", "")
	if err != nil {
		return nil, err
	}
	paths := []*path{kernel}
	var tcpds, idlePaths []*path
	for _, name := range []string{"tcpd", "base"} {
		if bins[name] == "" {
			continue
		}
		p, err := newPath(name, bins[name])
		if err != nil {
			return nil, err
		}
		p.lossDetection = lossDetection[name]
		paths, tcpds = append(paths, p), append(tcpds, p)
		if cfg.runs("idle") {
			ip, err := newPath(name, bins[name])
			if err != nil {
				return nil, err
			}
			idlePaths = append(idlePaths, ip)
		}
	}
	var queuePathsBuilt []*path
	if cfg.runs("queues") {
		for _, q := range queuePaths {
			p, err := newPath(q.name, cfg.TCPD)
			if err != nil {
				return nil, err
			}
			p.queues = q.queues
			queuePathsBuilt = append(queuePathsBuilt, p)
		}
		b.queueClients = len(kernel.srcs)
	}
	var wgKernel, wgTCPD *path
	if cfg.runs("wireguard") {
		for _, w := range []struct {
			p    **path
			name string
			bin  string
		}{{&wgKernel, "kernel", ""}, {&wgTCPD, "tcpd", cfg.TCPD}} {
			p, err := newWireGuardPath(w.name, w.bin)
			if err != nil {
				return nil, fmt.Errorf("WireGuard lab: %w", err)
			}
			labs = append(labs, p.lab)
			*w.p = p
		}
	}
	var soakPath *path
	if cfg.runs("soak") {
		if soakPath, err = newPath("tcpd", cfg.TCPD); err != nil {
			return nil, err
		}
	}
	var ids []string
	for _, l := range labs {
		ids = append(ids, l.ID)
	}
	b.progress("labs %s built (kernel, then per tcpd binary its main lab and its idle-test lab, then tun.queues 1 and auto, then the WireGuard labs)", strings.Join(ids, ", "))

	mainTests := slices.ContainsFunc([]string{"bulk", "rate", "count", "latency"}, cfg.runs)
	final := map[string]series{}
	if mainTests {
		for _, p := range tcpds {
			if err := b.startTCPD(ctx, p, p.name+"-main", mainTimeWait); err != nil {
				return nil, err
			}
			b.progress("%s running as pid %d (%s), offload %v", p.name, p.pid, p.bin, offload(p.tcpd))
		}
		defer func() {
			// After Ctrl-C or a failure the lab's Close kills them,
			// without waiting up to 30 s for a drain that may never come.
			if err == nil && ctx.Err() == nil {
				for _, p := range tcpds {
					b.stopTCPD(p, p.name+" main")
				}
			}
		}()
		if cfg.Offload != "" {
			b.notef("tcpd ran with tun.offload: %s (given with --offload; the default is auto)", cfg.Offload)
		}
		if cfg.Queues != "" {
			b.notef("tcpd ran with tun.queues: %s outside the queues phase (given with --queues; the default is auto)", cfg.Queues)
		}
		for _, p := range paths {
			if err := b.check(ctx, p); err != nil {
				if p.tcpd != nil {
					err = fmt.Errorf("%w\n--- %s log (last lines) ---\n%s", err, p.name, lastLines(p.tcpd.Logs(), 20))
				}
				return nil, err
			}
		}
		if err := b.interleaved(ctx, paths); err != nil {
			return nil, err
		}
		// The counters the issue asks for, from each main instance, which
		// has carried all the traffic above.
		for _, p := range tcpds {
			m, err := p.scrape(ctx)
			if err != nil {
				return nil, err
			}
			final[p.name] = m
			b.record("corrections", p.name, m.sum("tcpd_conntrack_corrections_total"))
			b.record("reused", p.name, m.sum("tcpd_tcp_time_wait_reused_total"))
			b.record("overflow", p.name, m.sum("tcpd_tcp_time_wait_overflow_total"))
			b.record("segs_sent", p.name, m.sum("tcpd_netstack_tcp_segments_sent_total"))
			b.record("retransmits", p.name, m.sum("tcpd_netstack_tcp_retransmits_total"))
			for _, k := range slices.Sorted(maps.Keys(m)) {
				if v := m[k]; strings.HasPrefix(k, "tcpd_dropped_total{") && v > 0 {
					b.notef("%s main: %s %v", p.name, k, v)
				}
			}
		}
	}
	logBytes := 0
	if p := tcpds[0]; p.tcpd != nil {
		logBytes = len(p.tcpd.Logs())
	}
	tcpdFiles := int64(limit)
	for _, p := range tcpds {
		if p.tcpd == nil {
			continue
		}
		files, err := maxOpenFiles(p.pid)
		if err != nil {
			return nil, err
		}
		tcpdFiles = min(tcpdFiles, files)
		b.stopTCPD(p, p.name+" main")
	}

	if cfg.runs("queues") {
		start := time.Now()
		if err := b.queuesPhase(ctx, kernel, queuePathsBuilt); err != nil {
			return nil, err
		}
		b.queuesNote(start)
	}
	if cfg.runs("idle") {
		n := b.idleCount(int(limit), int(tcpdFiles))
		if err := b.idlePhase(ctx, kernel, idlePaths, n); err != nil {
			return nil, err
		}
	}
	if cfg.runs("wireguard") {
		if err := b.wireguardPhase(ctx, wgKernel, wgTCPD); err != nil {
			return nil, err
		}
	}
	var soak *SoakResult
	if cfg.runs("soak") {
		if soak, err = b.soakPhase(ctx, soakPath); err != nil {
			return nil, err
		}
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
		TCPDMetrics:  selectMetrics(final["tcpd"]),
		TCPDLogBytes: logBytes,
		Soak:         soak,
	}
	if m, ok := final["base"]; ok {
		rep.BaseMetrics = selectMetrics(m)
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
// each time on every path back to back, rotating which goes first, so that
// the machine's noise falls on all alike.
func (b *bencher) interleaved(ctx context.Context, paths []*path) error {
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
			r, err := b.connRate(ctx, p, serverFirst, nil, nil)
			if err != nil {
				b.record(id, p.name, math.NaN())
				return err
			}
			b.record(id, p.name, r.rate())
			b.record(id+"_err", p.name, float64(r.errs))
			b.record(id+"_stuck", p.name, float64(r.stuck))
			msg := fmt.Sprintf("%.0f conn/s, %d errors, %d stuck", r.rate(), r.errs, r.stuck)
			if p.tcpd != nil {
				c := r.cost.perConn(r.ok)
				b.record(id+"_user", p.name, c.user)
				b.record(id+"_sys", p.name, c.sys)
				b.record(id+"_vcsw", p.name, c.vol)
				b.record(id+"_ivcsw", p.name, c.invol)
				msg += fmt.Sprintf("; tcpd per conn: CPU %.0f µs user + %.0f µs system, %.1f voluntary + %.1f involuntary context switches",
					c.user, c.sys, c.vol, c.invol)
			}
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
	var tests []test
	if b.cfg.runs("bulk") {
		tests = append(tests, bulk("up1", true, 1), bulk("down1", false, 1))
		if s := b.cfg.Streams; s > 1 {
			tests = append(tests, bulk("upN", true, s), bulk("downN", false, s))
		}
	}
	if b.cfg.runs("rate") {
		tests = append(tests, crr("crr_cf", false), crr("crr_sf", true))
	}
	if b.cfg.runs("count") {
		if c := b.newCounting(paths); c != nil {
			defer c.close()
			tests = append(tests, test{"syscalls, goroutines", func(p *path, rep int) error {
				if p.tcpd == nil {
					return nil
				}
				return b.count(ctx, c, p, rep)
			}})
		}
	}
	if b.cfg.runs("latency") {
		tests = append(tests, test{"connect latency", func(p *path, rep int) error {
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
	}

	for rep := range b.cfg.Runs {
		// Rotate which path goes first.
		k := rep % len(paths)
		order := append(slices.Clone(paths[k:]), paths[:k]...)
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

// idleCount is how many idle connections fit: this process holds one
// descriptor per connection (the client's end; the server's is in the idle
// server's process), and so does tcpd (its upstream socket).
func (b *bencher) idleCount(limit, tcpdLimit int) int {
	open, err := openFiles()
	if err != nil {
		open = 64
	}
	n := b.cfg.Idle
	if fit := limit - open - fdReserve; n > fit {
		b.notef("idle: %d connections, what this process's open-file limit holds: one descriptor per connection, limit %d, %d already open, %d kept spare",
			fit, limit, open, fdReserve)
		n = fit
	}
	if fit := tcpdLimit - fdReserve; n > fit {
		b.notef("idle: %d connections, what tcpd's open-file limit %d holds", fit, tcpdLimit)
		n = fit
	}
	return n
}

// idlePhase runs the idle test cfg.Runs times on the kernel path and on a
// fresh instance of each tcpd binary each time (tcp.time_wait
// cfg.IdleTimeWait), so that every tcpd run starts from a cold process.
func (b *bencher) idlePhase(ctx context.Context, kernel *path, tcpds []*path, n int) error {
	b.notef("idle: separate tcpd instances with tcp.time_wait %v (main instance %v), one fresh per run; "+
		"connections spread over %d client addresses (default limits.max_connections_per_client is 4096); "+
		"the server closes first, so tcpd's client legs go through TIME_WAIT",
		b.cfg.IdleTimeWait, mainTimeWait, len(kernel.srcs))
	corrections := map[string]float64{}
	paths := append([]*path{kernel}, tcpds...)
	for rep := range b.cfg.Runs {
		k := rep % len(paths)
		order := append(slices.Clone(paths[k:]), paths[:k]...)
		for _, p := range order {
			name := fmt.Sprintf("%s-idle-%d", p.name, rep+1)
			if p != kernel {
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
						b.notef("idle (%s) run %d: tcpd reported %v active relays with %d connections open", p.name, rep+1, r.relaysActive, r.n)
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
					corrections[p.name] += m.sum("tcpd_conntrack_corrections_total")
				}
				b.stopTCPD(p, name)
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(corrections)) {
		if c := corrections[name]; c > 0 {
			b.notef("idle: the idle-test %s instances counted %v conntrack corrections together", name, c)
		}
	}
	return nil
}

// rows turns the recorded values into the table, in reading order, for
// the measurements that ran.
func (b *bencher) rows() []Row {
	get := func(id, path string) []float64 { return b.vals[id][path] }
	row := func(metric, unit, better, agg, id string) Row {
		return newRow(metric, unit, better, agg, get(id, "kernel"), get(id, "tcpd"), get(id, "base"))
	}
	var rows []Row
	s := b.cfg.Streams
	if b.cfg.runs("bulk") {
		rows = append(rows,
			row("bulk upload, 1 stream", "Gbit/s", "higher", "median", "up1"),
			row("bulk download, 1 stream", "Gbit/s", "higher", "median", "down1"))
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
	}
	w := b.cfg.Workers
	if b.cfg.runs("rate") {
		for _, o := range []struct{ id, name string }{{"crr_cf", "client closes first"}, {"crr_sf", "server closes first"}} {
			rows = append(rows,
				row(fmt.Sprintf("new conns, %s, %d workers", o.name, w), "conn/s", "higher", "median", o.id),
				row("  errors", "", "", "total", o.id+"_err"),
				row(fmt.Sprintf("  stuck > %v", b.cfg.Stuck), "", "", "total", o.id+"_stuck"),
				row("  tcpd CPU per conn, user", "µs", "lower", "median", o.id+"_user"),
				row("  tcpd CPU per conn, system", "µs", "lower", "median", o.id+"_sys"),
				row("  tcpd voluntary context switches per conn", "", "lower", "median", o.id+"_vcsw"),
				row("  tcpd involuntary context switches per conn", "", "lower", "median", o.id+"_ivcsw"))
		}
	}
	if b.cfg.runs("count") && b.vals["sys_total"] != nil {
		rows = append(rows,
			row("tcpd goroutines created per conn (perf)", "", "lower", "median", "goroutines"),
			row("tcpd system calls per conn (perf)", "", "lower", "median", "sys_total"))
		for _, k := range append(slices.Clone(syscallKinds), "other") {
			r := row("  "+k, "", "lower", "median", "sys_"+k)
			if busy(r.TCPD) || busy(r.Base) {
				rows = append(rows, r)
			}
		}
	}
	if b.cfg.runs("queues") {
		rows = append(rows, b.queueRows()...)
	}
	if b.cfg.runs("latency") {
		rows = append(rows,
			row("connect latency p50", "µs", "lower", "median", "lat50"),
			row("connect latency p99", "µs", "lower", "median", "lat99"),
			row("  failed connects", "", "", "total", "lat_err"))
	}
	if b.cfg.runs("idle") {
		rows = append(rows,
			row("idle connections open", "", "", "median", "idle_n"),
			row("tcpd RSS before opening", "MiB", "", "median", "idle_rss0"),
			row("tcpd RSS with all open", "MiB", "", "median", "idle_rss1"),
			row("tcpd RSS per idle connection", "KiB", "lower", "median", "idle_kb"),
			row("tcpd TIME_WAIT drain after close", "s", "", "median", "idle_drain"),
			row(fmt.Sprintf("tcpd RSS %v after drain", b.cfg.IdleAfter), "MiB", "", "median", "idle_rss2"),
			row("  ratio to RSS before opening", "x", "lower", "median", "idle_after"),
			row("tcpd Go heap in use, all open", "MiB", "", "median", "idle_heap1"),
			row(fmt.Sprintf("tcpd Go heap in use %v after drain", b.cfg.IdleAfter), "MiB", "", "median", "idle_heap2"),
			row("kernel Slab per idle conn, machine-wide", "KiB", "lower", "median", "idle_slab"))
	}
	if b.cfg.runs("wireguard") {
		rows = append(rows,
			row(fmt.Sprintf("WireGuard download, client MSS %d, tunnel MTU %d", wgClientMSS, wgMTU), "Gbit/s", "higher", "median", "wg_down"),
			row("  tcpd CPU per GB", "CPU s/GB", "lower", "median", "wg_cpu"),
			row("  tcpd_tcp_mss_clamped_total", "", "", "final", "wg_clamped"))
	}
	if b.vals["corrections"] != nil {
		rows = append(rows,
			row("tcpd_conntrack_corrections_total", "", "", "final", "corrections"),
			row("tcpd_tcp_time_wait_reused_total", "", "", "final", "reused"),
			row("tcpd_tcp_time_wait_overflow_total", "", "", "final", "overflow"),
			row("tcpd_netstack_tcp_segments_sent_total", "", "", "final", "segs_sent"),
			row("tcpd_netstack_tcp_retransmits_total", "", "", "final", "retransmits"))
	}
	// A row with nothing measured on any path (a failed test) still shows,
	// as n/a; "total" rows that are zero everywhere stay too, so that "no
	// errors" is visible.
	return rows
}

// busy reports a per-connection count worth a row of its own.
func busy(v *float64) bool { return v != nil && *v >= perfQuiet }

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
