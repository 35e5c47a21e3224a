package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"

	"tcpd/admin"
	"tcpd/metrics"
	"tcpd/policy"
	"tcpd/stack"
)

func cmdRun(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("run", "Usage: tcpd run [--config FILE] [--log-level LEVEL] [--log-format FORMAT]\n\nRuns the daemon: creates the TUN, terminates client TCP connections in the\nnetstack and relays them. With no --config, the embedded default\nconfiguration (configs/tcpd.yaml) is used. SIGTERM or SIGINT drains live\nconnections for shutdown_grace, then resets the rest, removes the TUN and\nexits 0. SIGHUP re-reads the configuration.", args, stdout, stderr)
	path := fs.String("config", "", "configuration `file` (default: the embedded default)")
	level := fs.String("log-level", "", "override log.level: `level` debug, info, warn or error")
	format := fs.String("log-format", "", "override log.format: `format` auto, json or console")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to `file` (for go tool pprof)")
	if err := fs.Parse(args); err != nil {
		return flagError(stderr, "run", err)
	}
	if fs.NArg() != 0 {
		return usageError(stderr, "run", "unexpected argument %q", fs.Arg(0))
	}
	// A bad flag value is a usage error, found before anything starts.
	for _, f := range []struct{ flag, key, value string }{{"log-level", "log.level", *level}, {"log-format", "log.format", *format}} {
		if f.value == "" {
			continue
		}
		if err := defaultConfig().set(f.key, f.value); err != nil {
			return usageError(stderr, "run", "--%s: %v", f.flag, err)
		}
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		defer func() {
			pprof.StopCPUProfile()
			f.Close()
		}()
	}
	d := &daemon{path: *path, levelFlag: *level, formatFlag: *format,
		reloads: make(chan chan admin.ReloadResult), stopping: make(chan struct{})}
	return errors.Join(d.run(), checkLeaks())
}

// daemon is one run of tcpd: its configuration, logger and stack.
type daemon struct {
	path       string
	levelFlag  string
	formatFlag string

	cfg     *config
	level   zap.AtomicLevel
	log     *zap.Logger
	logOut  *logOutput
	st      *stack.Stack
	metrics *metrics.Server
	admin   *admin.Server
	health  *health
	// fd is how the open-file limit read at start divides; zero if the
	// limit is unknown.
	fd fdBudget

	// reloads carries the admin socket's reload requests to the loop that
	// also takes SIGHUP, so that reloads never overlap; stopping is closed
	// when that loop has ended.
	reloads  chan chan admin.ReloadResult
	stopping chan struct{}

	reloadMu sync.Mutex
	reloadOK bool
	reloadAt time.Time
	// pending counts the settings the last successful reload left for a
	// restart.
	pending int
}

// LastReload implements metrics.ReloadSource.
func (d *daemon) LastReload() (bool, time.Time) {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	return d.reloadOK, d.reloadAt
}

// RestartPending implements metrics.ReloadSource.
func (d *daemon) RestartPending() int {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	return d.pending
}

// setReload records a reload's outcome; pending counts the settings a
// successful one left for a restart.
func (d *daemon) setReload(ok bool, pending int) {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	d.reloadOK = ok
	if ok {
		d.reloadAt = time.Now()
		d.pending = pending
	}
}

// load reads the configuration and applies the command-line overrides.
func (d *daemon) load() (*config, error) {
	cfg, err := loadConfig(d.path)
	if err != nil {
		return nil, err
	}
	if d.levelFlag != "" {
		if err := cfg.set("log.level", d.levelFlag); err != nil {
			return nil, fmt.Errorf("--log-level: %w", err)
		}
	}
	if d.formatFlag != "" {
		if err := cfg.set("log.format", d.formatFlag); err != nil {
			return nil, fmt.Errorf("--log-format: %w", err)
		}
	}
	return cfg, nil
}

func (d *daemon) run() error {
	cfg, err := d.load()
	if err != nil {
		return refusedConfig{err}
	}
	d.cfg = cfg
	// A write to a stderr whose reader has gone (the journal restarted, a
	// pipe closed) fails with EPIPE and costs that log line; Go's default
	// for stdout and stderr would be to die of SIGPIPE.
	signal.Ignore(syscall.SIGPIPE)
	d.level = zap.NewAtomicLevelAt(cfg.logLevel())
	d.log, d.logOut, err = newLogger(cfg.logFormat(), d.level)
	if err != nil {
		return err
	}
	defer d.logOut.Close()

	pol, err := policy.New(cfg.policyConfig())
	if err != nil {
		return refusedConfig{fmt.Errorf("destination policy: %w", err)}
	}
	d.reloadOK = true
	// The metrics listener comes first, so that a port already taken
	// fails the start before the TUN exists, and /readyz answers 503
	// while the rest starts.
	d.health = newHealth()
	if err := d.listenMetrics(cfg); err != nil {
		d.log.Error("start failed", zap.Error(err))
		return err
	}
	// The open-file limit bounds the connections tcpd can hold; what it
	// keeps for itself keeps the metrics listener, the admin socket and
	// the log working when the connections reach it.
	var budget int
	if lim := openFileLimit(); lim > 0 {
		b := newFDBudget(lim, cfg)
		warning, err := b.check(cfg)
		if err != nil {
			d.log.Error("start failed", zap.Error(err))
			d.stopEndpoints()
			return refusedConfig{err}
		}
		if warning != "" {
			d.log.Warn(warning, zap.Int("open_file_limit", lim), zap.Int("needed", fdNeed(cfg)), zap.Int("fd_budget", b.conns))
		}
		budget = b.conns
		d.fd = b
	}
	// A second tcpd started by mistake stops here, before it takes the
	// first one's TUN (see stack.ErrTUNInUse for one with another admin
	// socket).
	if path := cfg.adminSocket(); path != "" {
		if err := admin.CheckFree(path); err != nil {
			err = fmt.Errorf("admin.socket %s: %w", path, err)
			d.log.Error("start failed", zap.Error(err))
			d.stopEndpoints()
			return err
		}
	}
	d.health.starting("creating the TUN and the netstack")
	d.holdStartForTest()
	memLimit, memSource := applyMemoryLimit(cfg, budget)
	sc := cfg.stackConfig(pol, d.log)
	sc.FDBudget = budget
	d.st, err = stack.New(sc)
	if err != nil {
		err = keyedStackError(err)
		d.log.Error("start failed", zap.Error(err))
		d.stopEndpoints()
		return err
	}
	for _, w := range stack.ForwardingWarnings(d.st.Name(), cfg.clientPrefixes()) {
		d.log.Warn(w)
	}
	if k, err := readPortSysctls(); err == nil {
		for _, w := range portWarnings(k, cfg.stack.SourceAddresses, cfg.stack.MaxConnections) {
			d.log.Warn(w)
		}
	}
	var scrape http.Handler
	if d.metrics != nil {
		reg := metrics.NewRegistry(metrics.Config{Conntrack: d.st, Stack: d.st, Reload: d, Health: d.health, Log: d.logOut, Version: buildVersion(), FDBudget: budget})
		scrape = metrics.Handler(reg)
	}
	d.health.serve(d.st, scrape)
	d.health.starting("opening the admin socket")
	if err := d.listenAdmin(cfg); err != nil {
		d.log.Error("start failed", zap.Error(err))
		d.stopEndpoints()
		d.st.Close()
		return err
	}
	// Signals are handled before readiness is announced: a SIGTERM from
	// here on drains.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	d.wedgeOnSignal()
	d.health.setPhase(phaseServing)
	d.log.Info("ready",
		zap.String("version", buildVersion()),
		zap.String("tun", d.st.Name()),
		zap.Int("mtu", cfg.tunMTU()),
		zap.Bool("offload", d.st.Offload()),
		zap.Int("queues", d.st.Queues()),
		zap.String("mss_clamp", cfg.mssClampString()),
		zap.Strings("addresses", prefixStrings(cfg.tunAddresses())),
		zap.Strings("clients", prefixStrings(cfg.clientPrefixes())),
		zap.String("policy", pol.Summary()),
		zap.String("metrics", cfg.metricsListen()),
		zap.String("admin_socket", cfg.adminSocket()),
		zap.String("memory_limit", fmtMemLimit(memLimit)),
		zap.String("memory_limit_from", memSource),
		zap.String("config", d.source()),
	)

	d.notify("READY=1\nSTATUS=" + status(d.st.Snapshot(), 0))
	done := make(chan struct{})
	supervised := make(chan struct{})
	go func() {
		defer close(supervised)
		d.supervise(done)
	}()
	defer func() {
		close(done)
		<-supervised
	}()
	for {
		select {
		case <-hup:
			d.reloadNotifying()
		case reply := <-d.reloads:
			// Answered after READY=1: systemd has the unit running again
			// by the time systemctl reload returns.
			reply <- d.reloadNotifying()
		case <-ctx.Done():
			close(d.stopping)
			d.notify(sd.SdNotifyStopping)
			return d.shutdown()
		case <-d.st.TUNLost():
			close(d.stopping)
			// Every connection is cut from its client, and the routes
			// into the TUN went with it: exit non-zero, so that the
			// supervisor restarts tcpd, which creates the TUN anew.
			_, why := d.st.Healthy()
			d.log.Error("the TUN was deleted from under tcpd; exiting so that a restart creates it again",
				zap.String("tun", d.st.Name()), zap.String("health", why))
			d.notify(sd.SdNotifyStopping)
			d.stopWithin(0)
			return fmt.Errorf("TUN %s deleted while tcpd ran", d.st.Name())
		}
	}
}

func (d *daemon) source() string {
	if d.path == "" {
		return "embedded default"
	}
	return d.path
}

// shutdown stops accepting, drains for shutdown_grace, resets the rest and
// removes the TUN.
func (d *daemon) shutdown() error {
	d.stopWithin(d.cfg.shutdownGrace())
	return nil
}

// stopWithin stops accepting, drains live connections for grace (none with
// a grace of 0, as when the TUN is gone and nothing could drain), resets
// the rest and removes the TUN.
func (d *daemon) stopWithin(grace time.Duration) {
	// /readyz answers 503 from here on, while the listener stays up
	// through the drain, so that a load balancer sends new clients
	// elsewhere while these finish; before the log line says so.
	d.health.setPhase(phaseDraining)
	active := d.st.Stats().Active.Load()
	d.log.Info("shutting down", zap.Int64("active_connections", active), zap.Duration("grace", grace))
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	reset, err := d.st.Shutdown(ctx)
	select {
	case <-d.st.TUNLost(): // closing a TUN that is gone may fail: nothing to add
	default:
		if err != nil {
			d.log.Error("close TUN", zap.Error(err))
		}
	}
	d.stopEndpoints()
	d.log.Info("stopped", zap.Int("reset_connections", reset))
}

// reload re-reads the configuration and applies the keys a reload applies
// (the table's apply column): the destination policy, the stack's
// tunables, the log level and shutdown_grace. Live connections keep what
// they have, except as the table says (a running relay takes new idle and
// half-close timeouts). The other keys keep their running values, and every
// reload names those that differ in the file until tcpd restarts. A bad file
// changes nothing.
//
// It returns what the reload did, for `tcpd reload` (the admin socket's
// POST /v1/reload); the log and the metrics say the same.
func (d *daemon) reload() admin.ReloadResult {
	start := time.Now()
	res := admin.ReloadResult{Config: d.source()}
	reject := func(msg string, err error) admin.ReloadResult {
		d.setReload(false, 0)
		why := strings.ReplaceAll(err.Error(), "\n", "; ")
		res.Error = msg + ": " + why
		d.log.Error(msg, zap.String("config", d.source()), zap.String("error", why))
		return res
	}
	file, err := d.load()
	if err != nil {
		return reject("reload rejected; the running configuration stays in force", err)
	}
	next, changed, err := reloaded(d.cfg, file)
	if err != nil {
		return reject("reload rejected; the running configuration stays in force", err)
	}
	pol, err := policy.New(next.policyConfig())
	if err != nil {
		return reject("reload rejected: destination policy", err)
	}
	if err := d.st.SetTunables(next.stack.Tunables); err != nil {
		if keyed := keyedStackError(err); keyed != err {
			return reject("reload rejected; the running configuration stays in force", keyed)
		}
		return reject("reload rejected: apply settings", err)
	}
	d.st.SetPolicy(pol)
	// The level follows the file when the file (or --log-level) changes
	// it: a level set through the admin socket stays across reloads that
	// leave log.level as it was, as every other key's running value does.
	if next.logLevel() != d.cfg.logLevel() {
		d.level.SetLevel(next.logLevel())
	}
	before := debug.SetMemoryLimit(-1)
	if limit, source := applyMemoryLimit(next, d.fd.conns); limit != before {
		d.log.Info("memory limit changed", zap.String("memory_limit", fmtMemLimit(limit)),
			zap.String("was", fmtMemLimit(before)), zap.String("memory_limit_from", source))
	}
	d.cfg = next
	d.setReload(true, len(changed))
	if len(changed) > 0 {
		d.log.Warn("reload: these settings need a restart and keep their running values",
			zap.Strings("keys", changed))
	}
	if d.fd.limit > 0 {
		if warning, _ := d.fd.check(next); warning != "" {
			d.log.Warn(warning, zap.Int("open_file_limit", d.fd.limit), zap.Int("needed", fdNeed(next)))
		}
	}
	d.log.Info("reloaded", zap.String("config", d.source()), zap.Stringer("log_level", d.level.Level()),
		zap.String("policy", pol.Summary()), zap.Duration("took", time.Since(start)))
	res.OK, res.RestartPending = true, append([]string{}, changed...)
	return res
}

// keyedStackError is err, from stack.New or SetTunables, said against the
// configuration key it comes from when it has one: the stack checks the
// source addresses and the upstream interface against the host's at start
// and at every reload, which check-config cannot (it may run on another
// host).
func keyedStackError(err error) error {
	if errors.Is(err, stack.ErrTUNInUse) {
		return fmt.Errorf("tun.name: %w; stop that process, or give this one another tun.name", err)
	}
	var se *stack.SourceAddressError
	var ie *stack.InterfaceError
	switch {
	case errors.As(err, &se) && se.NotLocal:
		return fmt.Errorf("upstream.source_addresses: %s is not an address of this host", se.Addr)
	case se != nil:
		return fmt.Errorf("upstream.source_addresses: %s: %w", se.Addr, se.Err)
	case errors.As(err, &ie) && ie.NotFound:
		return fmt.Errorf("upstream.interface: %q is not an interface of this host (allowed: an existing interface, or \"\" for none)", ie.Name)
	case ie != nil:
		return fmt.Errorf("upstream.interface: %q: upstream sockets cannot be bound to it: %w", ie.Name, ie.Err)
	}
	return err
}

// reloadNotifying is a reload, with systemd told it is under way.
func (d *daemon) reloadNotifying() admin.ReloadResult {
	d.notify("RELOADING=1\n" + sd.SdNotifyMonotonicUsec())
	res := d.reload()
	d.notify(sd.SdNotifyReady)
	return res
}

// requestReload runs a reload on the daemon's loop, as SIGHUP does, and
// waits for its outcome: the admin socket's POST /v1/reload, which `tcpd
// reload` (the unit's ExecReload) sends so that `systemctl reload` returns
// once the reload is done and fails when it was rejected.
func (d *daemon) requestReload(ctx context.Context) (admin.ReloadResult, error) {
	reply := make(chan admin.ReloadResult, 1)
	select {
	case d.reloads <- reply:
	case <-d.stopping:
		return admin.ReloadResult{}, errors.New("tcpd is stopping")
	case <-ctx.Done():
		return admin.ReloadResult{}, ctx.Err()
	}
	select {
	case r := <-reply:
		return r, nil
	case <-ctx.Done():
		return admin.ReloadResult{}, ctx.Err()
	}
}

// listenMetrics binds the metrics listener, which serves /healthz and
// /readyz at once and /metrics once the stack exists.
func (d *daemon) listenMetrics(cfg *config) error {
	addr := cfg.metricsListen()
	if addr == "" {
		return nil
	}
	srv, err := metrics.Listen(addr, d.health, d.health)
	if err != nil {
		return fmt.Errorf("metrics.listen %s: %w", addr, err)
	}
	d.metrics = srv
	return nil
}

// listenAdmin opens the admin socket, so that "ready" is logged only once
// it answers.
func (d *daemon) listenAdmin(cfg *config) error {
	path := cfg.adminSocket()
	if path == "" {
		return nil
	}
	srv, err := admin.Listen(admin.Config{Path: path, Source: d.st, Level: d.level, Logger: d.log, Reload: d.requestReload})
	if err != nil {
		return fmt.Errorf("admin.socket %s: %w", path, err)
	}
	d.admin = srv
	return nil
}

func (d *daemon) stopEndpoints() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if d.admin != nil {
		if err := d.admin.Close(ctx); err != nil {
			d.log.Warn("close admin socket", zap.Error(err))
		}
	}
	if d.metrics != nil {
		if err := d.metrics.Close(ctx); err != nil {
			d.log.Warn("close metrics listener", zap.Error(err))
		}
	}
}

func prefixStrings[T fmt.Stringer](ps []T) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}
