package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"tcpd/conntrack"
	"tcpd/stack"
)

// snapshotValues are the unlabelled gauges and counters read from a
// conntrack.Snapshot.
var snapshotValues = []struct {
	name, help string
	typ        prometheus.ValueType
	value      func(*conntrack.Snapshot) float64
}{
	{"tcpd_conntrack_entries", "Entries in tcpd's connection tracking table, in any state.",
		prometheus.GaugeValue, func(s *conntrack.Snapshot) float64 { return float64(s.Live) }},
	{"tcpd_conntrack_opened_total", "TCP connections tracked from their first SYN.",
		prometheus.CounterValue, func(s *conntrack.Snapshot) float64 { return float64(s.Opened) }},
	{"tcpd_conntrack_established_total", "TCP connections whose handshake completed on tcpd's side.",
		prometheus.CounterValue, func(s *conntrack.Snapshot) float64 { return float64(s.Established) }},
	{"tcpd_conntrack_closed_total", "Connection tracking entries removed, for any reason.",
		prometheus.CounterValue, func(s *conntrack.Snapshot) float64 { return float64(s.Closed) }},
	{"tcpd_conntrack_resets_total", "Tracked connections closed by an acceptable RST from either side.",
		prometheus.CounterValue, func(s *conntrack.Snapshot) float64 { return float64(s.Resets) }},
	{"tcpd_conntrack_rst_ignored_total", "RST segments their receiver would not accept (RFC 5961 section 3.2): out of window, or in window but not at RCV.NXT.",
		prometheus.CounterValue, func(s *conntrack.Snapshot) float64 { return float64(s.RSTIgnored) }},
	{"tcpd_conntrack_untracked_segments_total", "TCP segments that matched no tracked connection and opened none.",
		prometheus.CounterValue, func(s *conntrack.Snapshot) float64 { return float64(s.Untracked) }},
	{"tcpd_conntrack_table_full_total", "SYNs not tracked because the connection tracking table was full.",
		prometheus.CounterValue, func(s *conntrack.Snapshot) float64 { return float64(s.TableFull) }},
	{"tcpd_conntrack_expired_total", "Tracking entries removed by a timer other than TIME_WAIT's: a handshake that never completed, or an entry the netstack abandoned.",
		prometheus.CounterValue, func(s *conntrack.Snapshot) float64 { return float64(s.Expired) }},
	{"tcpd_conntrack_corrections_total", "Times the tracked state of tcpd's end disagreed with the netstack's own endpoint state and was corrected to it.",
		prometheus.CounterValue, func(s *conntrack.Snapshot) float64 { return float64(s.Corrections) }},

	{"tcpd_tcp_time_wait_connections", "Connections in TIME_WAIT on tcpd's side.",
		prometheus.GaugeValue, func(s *conntrack.Snapshot) float64 { return float64(s.TimeWait) }},
	{"tcpd_tcp_time_wait_limit", "Configured cap on connections in TIME_WAIT; entries beyond it are cut short and counted in tcpd_tcp_time_wait_overflow_total.",
		prometheus.GaugeValue, func(s *conntrack.Snapshot) float64 { return float64(s.TimeWaitLimit) }},
	{"tcpd_tcp_time_wait_timeout_seconds", "Configured time a closed connection is held in TIME_WAIT.",
		prometheus.GaugeValue, func(s *conntrack.Snapshot) float64 { return s.TimeWaitTimeout.Seconds() }},
	{"tcpd_tcp_time_wait_entered_total", "Connections that entered TIME_WAIT on tcpd's side.",
		prometheus.CounterValue, func(s *conntrack.Snapshot) float64 { return float64(s.TimeWaitEntered) }},
	{"tcpd_tcp_time_wait_overflow_total", "TIME_WAIT entries cut short because tcpd_tcp_time_wait_limit of them were held already.",
		prometheus.CounterValue, func(s *conntrack.Snapshot) float64 { return float64(s.TimeWaitOverflow) }},
	{"tcpd_tcp_time_wait_reused_total", "TIME_WAIT entries retired early by a new SYN on the same 4-tuple (RFC 6191).",
		prometheus.CounterValue, func(s *conntrack.Snapshot) float64 { return float64(s.TimeWaitReused) }},
}

// snapshotHistograms are the duration histograms of a conntrack.Snapshot.
var snapshotHistograms = []struct {
	name, help string
	get        func(*conntrack.Snapshot) *conntrack.HistogramSnapshot
}{
	{"tcpd_tcp_handshake_duration_seconds", "Client leg of the TCP handshake: tcpd's SYN-ACK sent to the client's ACK received.",
		func(s *conntrack.Snapshot) *conntrack.HistogramSnapshot { return &s.Handshake }},
	{"tcpd_upstream_connect_duration_seconds", "Duration of the upstream connect (the dial to the destination).",
		func(s *conntrack.Snapshot) *conntrack.HistogramSnapshot { return &s.Dial }},
	{"tcpd_tcp_connection_setup_duration_seconds", "Connection setup as the client sees it: its first SYN to established on tcpd's side.",
		func(s *conntrack.Snapshot) *conntrack.HistogramSnapshot { return &s.Setup }},
	{"tcpd_tcp_time_wait_duration_seconds", "Time connections stayed in TIME_WAIT on tcpd's side.",
		func(s *conntrack.Snapshot) *conntrack.HistogramSnapshot { return &s.TimeWaitDwell }},
	{"tcpd_connection_duration_seconds", "Lifetime of connections that established: established to closed.",
		func(s *conntrack.Snapshot) *conntrack.HistogramSnapshot { return &s.Lifetime }},
}

// Collector is a prometheus.Collector that reads tcpd's state when scraped.
// Its descriptors are fixed when it is made; each Collect takes one
// conntrack.Snapshot and reads each stack counter once. It is safe for
// concurrent scrapes.
type Collector struct {
	conntrack ConntrackSource
	stack     StackSource
	reload    ReloadSource
	// created stands for the time the configuration was loaded at start,
	// for tcpd_config_last_reload_success_timestamp_seconds until a reload
	// succeeds.
	created time.Time

	states, clientStates *prometheus.Desc
	values               []*prometheus.Desc // parallel to snapshotValues
	histograms           []*prometheus.Desc // parallel to snapshotHistograms

	tunPackets, tunBytes, relayBytes *prometheus.Desc
	dropped, connections             *prometheus.Desc
	dialFailures, ended              *prometheus.Desc
	panics, active, inFlight         *prometheus.Desc
	handshakeTimeouts                *prometheus.Desc

	// netstack maps a stack.Counter's Name to its descriptor; netstackOrder
	// lists them for Describe.
	netstack      map[string]*prometheus.Desc
	netstackOrder []*prometheus.Desc

	reloadOK, reloadTime *prometheus.Desc // nil without a ReloadSource
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a Collector for cfg. It reads cfg.Stack's
// NetstackCounters once to describe them. It panics if cfg.Conntrack or
// cfg.Stack is nil: that is a wiring bug, not a runtime condition.
func NewCollector(cfg Config) *Collector {
	if cfg.Conntrack == nil || cfg.Stack == nil {
		panic("metrics: Config.Conntrack and Config.Stack are required")
	}
	c := &Collector{
		conntrack: cfg.Conntrack,
		stack:     cfg.Stack,
		reload:    cfg.Reload,
		created:   time.Now(),

		states: prometheus.NewDesc("tcpd_tcp_connection_states",
			"Tracked TCP connections by the state of tcpd's own end (the netstack side), with node_exporter's tcpstat label values.",
			[]string{"state"}, nil),
		clientStates: prometheus.NewDesc("tcpd_tcp_client_connection_states",
			"Tracked TCP connections by the state of the client's end, as inferred from the segments crossing the TUN.",
			[]string{"state"}, nil),

		tunPackets: prometheus.NewDesc("tcpd_tun_packets_total",
			"IP packets read from (in) and written to (out) the TUN device.",
			[]string{"direction"}, nil),
		tunBytes: prometheus.NewDesc("tcpd_tun_bytes_total",
			"Bytes of whole IP packets read from (in) and written to (out) the TUN device.",
			[]string{"direction"}, nil),
		relayBytes: prometheus.NewDesc("tcpd_relay_bytes_total",
			"Payload bytes relayed, client to destination (in) and destination to client (out).",
			[]string{"direction"}, nil),
		dropped: prometheus.NewDesc("tcpd_dropped_total",
			"Packets and connection attempts tcpd dropped or refused, by reason.",
			[]string{"reason"}, nil),
		connections: prometheus.NewDesc("tcpd_connections_total",
			"Connection attempts by how they ended: relayed, denied by policy or a cap, upstream connect failed, or client handshake not completed.",
			[]string{"result"}, nil),
		dialFailures: prometheus.NewDesc("tcpd_upstream_connect_failures_total",
			"Failed upstream connects, by cause.",
			[]string{"reason"}, nil),
		ended: prometheus.NewDesc("tcpd_relay_ended_total",
			"Finished relays, by how they ended.",
			[]string{"end"}, nil),
		handshakeTimeouts: prometheus.NewDesc("tcpd_handshake_timeouts_total",
			"Half-open connections aborted because the client did not acknowledge the SYN-ACK within tcp.handshake_timeout.",
			nil, nil),
		panics: prometheus.NewDesc("tcpd_handler_panics_total",
			"Connection handlers that panicked; each reset only its own connection.",
			nil, nil),
		active: prometheus.NewDesc("tcpd_relays_active",
			"Relays in progress.",
			nil, nil),
		inFlight: prometheus.NewDesc("tcpd_handshakes_in_flight",
			"Handshakes in progress in tcpd's connection handler.",
			nil, nil),
		netstack: map[string]*prometheus.Desc{},
	}
	for _, v := range snapshotValues {
		c.values = append(c.values, prometheus.NewDesc(v.name, v.help, nil, nil))
	}
	for _, h := range snapshotHistograms {
		c.histograms = append(c.histograms, prometheus.NewDesc(h.name, h.help, nil, nil))
	}
	for _, n := range cfg.Stack.NetstackCounters() {
		if _, dup := c.netstack[n.Name]; dup {
			continue
		}
		name := "tcpd_netstack_" + n.Name + "_total"
		if n.Gauge {
			name = "tcpd_netstack_" + n.Name
		}
		d := prometheus.NewDesc(name, n.Help, nil, nil)
		c.netstack[n.Name] = d
		c.netstackOrder = append(c.netstackOrder, d)
	}
	if cfg.Reload != nil {
		c.reloadOK = prometheus.NewDesc("tcpd_config_last_reload_successful",
			"1 if the last configuration reload succeeded (or none was tried since start), 0 if it failed.",
			nil, nil)
		c.reloadTime = prometheus.NewDesc("tcpd_config_last_reload_success_timestamp_seconds",
			"Unix time the configuration in use was loaded, at start or by the last successful reload.",
			nil, nil)
	}
	return c
}

// Describe sends every descriptor the Collector can emit.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.states
	ch <- c.clientStates
	for _, d := range c.values {
		ch <- d
	}
	for _, d := range c.histograms {
		ch <- d
	}
	for _, d := range []*prometheus.Desc{
		c.tunPackets, c.tunBytes, c.relayBytes, c.dropped, c.connections,
		c.dialFailures, c.ended, c.panics, c.active, c.inFlight, c.handshakeTimeouts,
	} {
		ch <- d
	}
	for _, d := range c.netstackOrder {
		ch <- d
	}
	if c.reload != nil {
		ch <- c.reloadOK
		ch <- c.reloadTime
	}
}

// Collect reads one Snapshot, the stack's counters and the reload status,
// and sends them as metrics.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	snap := c.conntrack.Snapshot()
	c.collectConntrack(ch, &snap)
	c.collectStack(ch, c.stack.Stats())
	for _, n := range c.stack.NetstackCounters() {
		// A counter that appeared after NewCollector has no descriptor;
		// stack's list is fixed, so this cannot happen in tcpd.
		if d, ok := c.netstack[n.Name]; ok {
			kind := prometheus.CounterValue
			if n.Gauge {
				kind = prometheus.GaugeValue
			}
			send(ch, d, kind, float64(n.Value))
		}
	}
	if c.reload != nil {
		ok, at := c.reload.LastReload()
		if at.IsZero() {
			at = c.created
		}
		send(ch, c.reloadOK, prometheus.GaugeValue, boolValue(ok))
		send(ch, c.reloadTime, prometheus.GaugeValue, float64(at.Unix())+float64(at.Nanosecond())/1e9)
	}
}

func (c *Collector) collectConntrack(ch chan<- prometheus.Metric, s *conntrack.Snapshot) {
	for _, st := range conntrack.States() {
		send(ch, c.states, prometheus.GaugeValue, float64(s.States[st]), st.String())
		send(ch, c.clientStates, prometheus.GaugeValue, float64(s.ClientStates[st]), st.String())
	}
	for i, v := range snapshotValues {
		send(ch, c.values[i], v.typ, v.value(s))
	}
	for i, h := range snapshotHistograms {
		ch <- newHistogram(c.histograms[i], h.get(s))
	}
}

func (c *Collector) collectStack(ch chan<- prometheus.Metric, st *stack.Stats) {
	for d := range st.TUNPackets {
		dir := stack.Direction(d).String()
		send(ch, c.tunPackets, prometheus.CounterValue, float64(st.TUNPackets[d].Load()), dir)
		send(ch, c.tunBytes, prometheus.CounterValue, float64(st.TUNBytes[d].Load()), dir)
		send(ch, c.relayBytes, prometheus.CounterValue, float64(st.RelayBytes[d].Load()), dir)
	}
	for _, r := range stack.DropReasons() {
		send(ch, c.dropped, prometheus.CounterValue, float64(st.Dropped[r].Load()), r.String())
	}
	for _, r := range stack.Results() {
		send(ch, c.connections, prometheus.CounterValue, float64(st.Connections[r].Load()), r.String())
	}
	for _, f := range stack.DialFailures() {
		send(ch, c.dialFailures, prometheus.CounterValue, float64(st.DialFailures[f].Load()), f.String())
	}
	for _, e := range stack.Ends() {
		send(ch, c.ended, prometheus.CounterValue, float64(st.Ended[e].Load()), e.String())
	}
	send(ch, c.panics, prometheus.CounterValue, float64(st.Panics.Load()))
	send(ch, c.handshakeTimeouts, prometheus.CounterValue, float64(st.HandshakeTimeouts.Load()))
	send(ch, c.active, prometheus.GaugeValue, float64(st.Active.Load()))
	send(ch, c.inFlight, prometheus.GaugeValue, float64(st.InFlight.Load()))
}

// send emits one constant metric. A label mismatch is a bug in this file;
// it is reported to the scraper as an invalid metric rather than a panic.
func send(ch chan<- prometheus.Metric, d *prometheus.Desc, t prometheus.ValueType, v float64, labels ...string) {
	m, err := prometheus.NewConstMetric(d, t, v, labels...)
	if err != nil {
		m = prometheus.NewInvalidMetric(d, err)
	}
	ch <- m
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
