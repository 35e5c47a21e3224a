// Package metrics exports tcpd's state to Prometheus at scrape time. A
// Collector reads one aggregated conntrack.Snapshot, the stack's atomic
// counters and the reload status through small interfaces when it is
// scraped, so nothing on the packet path touches a Prometheus object and a
// scrape costs the same whatever the number of connections. It keeps no
// global registry and never labels a metric with an address, a port or a
// connection.
package metrics

import (
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"tcpd/conntrack"
	"tcpd/stack"
)

// ConntrackSource gives the connection table's aggregated state.
type ConntrackSource interface {
	Snapshot() conntrack.Snapshot
}

// StackSource gives the stack's counters; *stack.Stack satisfies it.
type StackSource interface {
	Stats() *stack.Stats
	NetstackStats() stack.NetstackStats
	// Relays returns the relays in progress and the tracking entries with
	// a relay attached, read at one moment.
	Relays() (active int64, tracked int)
}

// ReloadSource tells how the last configuration reload went.
type ReloadSource interface {
	// LastReload reports whether the last reload succeeded, and when the
	// configuration was last loaded successfully. The zero time means no
	// reload has succeeded since start; the configuration in use is then
	// the one loaded at start.
	LastReload() (ok bool, at time.Time)
	// RestartPending reports how many settings of the configuration file,
	// as the last successful reload read it, differ from those in force
	// and wait for a restart.
	RestartPending() int
}

// LogSource counts the log lines the daemon could not write.
type LogSource interface {
	// LogLinesLost returns the lines lost since start: refused by the
	// log's output (a full disk, a closed pipe), and dropped because the
	// output did not take them as fast as they came.
	LogLinesLost() (writeFailed, outputStalled uint64)
}

// Config says where the metrics come from.
type Config struct {
	// Conntrack is read once per scrape. Required.
	Conntrack ConntrackSource
	// Stack is read once per scrape. Required.
	Stack StackSource
	// Reload, when not nil, adds the tcpd_config_last_reload_* metrics.
	Reload ReloadSource
	// Log, when not nil, adds tcpd_log_lines_lost_total.
	Log LogSource
	// Health, when not nil, adds tcpd_ready: what /readyz answers, for
	// Prometheus to see gateways that start, drain or are wedged.
	Health Health
	// Version is the value of tcpd_build_info's version label. Empty means
	// "unknown".
	Version string
	// FDBudget is the stack's FDBudget, for tcpd_fd_budget; zero when the
	// open-file limit caps nothing.
	FDBudget int
}

// NewRegistry returns a private registry holding a Collector for cfg, the Go
// runtime and process collectors, and tcpd_build_info. It panics if cfg
// lacks a required source, as NewCollector does.
func NewRegistry(cfg Config) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	version := cfg.Version
	if version == "" {
		version = "unknown"
	}
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "tcpd_build_info",
		Help:        "Always 1; the labels give tcpd's version and the Go release it was built with.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
	})
	buildInfo.Set(1)
	budget := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "tcpd_fd_budget",
		Help: "Relayed connections plus handshakes in progress that the open-file limit leaves room for after tcpd's own descriptors " +
			"(each holds one, its upstream socket); more are refused and counted in tcpd_dropped_total{reason=\"fd_limit\"}. " +
			"0 when the limit caps nothing. Compare process_max_fds and process_open_fds.",
	})
	budget.Set(float64(cfg.FDBudget))
	reg.MustRegister(
		NewCollector(cfg),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		buildInfo,
		budget,
	)
	return reg
}
