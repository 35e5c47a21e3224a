package metrics

import (
	"strconv"
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
	{"tcpd_tcp_time_wait_acks_total", "ACKs tcpd sent for connections in TIME_WAIT: to a retransmitted FIN (the client lost tcpd's last ACK), an old duplicate segment or a SYN that may not reopen the 4-tuple.",
		prometheus.CounterValue, func(s *conntrack.Snapshot) float64 { return float64(s.TimeWaitAcks) }},
	{"tcpd_tcp_time_wait_acks_skipped_total", "ACKs to segments without data or FIN, or to SYNs, that tcpd did not send for a connection in TIME_WAIT because it had sent one less than 0.5 s before, as Linux counts TCPACKSkippedTimeWait.",
		prometheus.CounterValue, func(s *conntrack.Snapshot) float64 { return float64(s.TimeWaitAcksSkipped) }},
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

// netstackValues are gVisor's own counters and the netstack's endpoint
// gauges, read from a stack.NetstackStats.
var netstackValues = []struct {
	name, help string
	typ        prometheus.ValueType
	value      func(*stack.NetstackStats) uint64
}{
	{"tcpd_netstack_tcp_passive_opens_total", "TCP connections the netstack accepted (SYN-ACK sent).",
		prometheus.CounterValue, func(n *stack.NetstackStats) uint64 { return n.TCPPassiveOpens }},
	{"tcpd_netstack_tcp_failed_connection_attempts_total", "TCP handshakes the netstack abandoned.",
		prometheus.CounterValue, func(n *stack.NetstackStats) uint64 { return n.TCPFailedConnectionAttempts }},
	{"tcpd_netstack_tcp_established_resets_total", "Established or close-wait TCP connections reset.",
		prometheus.CounterValue, func(n *stack.NetstackStats) uint64 { return n.TCPEstablishedResets }},
	{"tcpd_netstack_tcp_established_timeouts_total", "TCP connections closed by a retransmission or keepalive timeout.",
		prometheus.CounterValue, func(n *stack.NetstackStats) uint64 { return n.TCPEstablishedTimeouts }},
	{"tcpd_netstack_tcp_segments_received_total", "Valid TCP segments the netstack received.",
		prometheus.CounterValue, func(n *stack.NetstackStats) uint64 { return n.TCPSegmentsReceived }},
	{"tcpd_netstack_tcp_invalid_segments_received_total", "TCP segments the netstack rejected as invalid.",
		prometheus.CounterValue, func(n *stack.NetstackStats) uint64 { return n.TCPInvalidSegmentsReceived }},
	{"tcpd_netstack_tcp_segments_sent_total", "TCP segments the netstack sent, retransmissions included.",
		prometheus.CounterValue, func(n *stack.NetstackStats) uint64 { return n.TCPSegmentsSent }},
	{"tcpd_netstack_tcp_segment_send_errors_total", "TCP segments the netstack failed to send.",
		prometheus.CounterValue, func(n *stack.NetstackStats) uint64 { return n.TCPSegmentSendErrors }},
	{"tcpd_netstack_tcp_resets_sent_total", "TCP RST segments the netstack sent.",
		prometheus.CounterValue, func(n *stack.NetstackStats) uint64 { return n.TCPResetsSent }},
	{"tcpd_netstack_tcp_resets_received_total", "TCP RST segments the netstack received.",
		prometheus.CounterValue, func(n *stack.NetstackStats) uint64 { return n.TCPResetsReceived }},
	{"tcpd_netstack_tcp_retransmits_total", "TCP segments the netstack retransmitted.",
		prometheus.CounterValue, func(n *stack.NetstackStats) uint64 { return n.TCPRetransmits }},
	{"tcpd_netstack_tcp_fast_retransmits_total", "TCP fast retransmissions.",
		prometheus.CounterValue, func(n *stack.NetstackStats) uint64 { return n.TCPFastRetransmits }},
	{"tcpd_netstack_tcp_timeouts_total", "TCP retransmission timer expiries.",
		prometheus.CounterValue, func(n *stack.NetstackStats) uint64 { return n.TCPTimeouts }},
	{"tcpd_netstack_tcp_sack_recoveries_total", "TCP SACK loss recoveries.",
		prometheus.CounterValue, func(n *stack.NetstackStats) uint64 { return n.TCPSACKRecoveries }},
	{"tcpd_netstack_tcp_tlp_recoveries_total", "TCP tail loss probe recoveries.",
		prometheus.CounterValue, func(n *stack.NetstackStats) uint64 { return n.TCPTLPRecoveries }},
	{"tcpd_netstack_tcp_spurious_recoveries_total", "TCP loss recoveries later found spurious.",
		prometheus.CounterValue, func(n *stack.NetstackStats) uint64 { return n.TCPSpuriousRecoveries }},
	{"tcpd_netstack_tcp_checksum_errors_total", "TCP segments with a bad checksum.",
		prometheus.CounterValue, func(n *stack.NetstackStats) uint64 { return n.TCPChecksumErrors }},
	{"tcpd_netstack_tcp_forward_max_in_flight_drops_total", "SYNs the forwarder dropped because max_in_flight handshakes were in progress.",
		prometheus.CounterValue, func(n *stack.NetstackStats) uint64 { return n.TCPForwardMaxInFlightDrops }},
	{"tcpd_netstack_ip_packets_received_total", "IP packets the netstack received.",
		prometheus.CounterValue, func(n *stack.NetstackStats) uint64 { return n.IPPacketsReceived }},
	{"tcpd_netstack_ip_malformed_packets_received_total", "IP packets the netstack dropped as malformed.",
		prometheus.CounterValue, func(n *stack.NetstackStats) uint64 { return n.IPMalformedPacketsReceived }},
	{"tcpd_netstack_ip_invalid_destination_addresses_received_total", "IP packets dropped for an invalid destination (loopback or martian).",
		prometheus.CounterValue, func(n *stack.NetstackStats) uint64 { return n.IPInvalidDestinationAddressesReceived }},
	{"tcpd_netstack_ip_invalid_source_addresses_received_total", "IP packets dropped for an invalid source address.",
		prometheus.CounterValue, func(n *stack.NetstackStats) uint64 { return n.IPInvalidSourceAddressesReceived }},
	{"tcpd_netstack_ip_packets_sent_total", "IP packets the netstack sent.",
		prometheus.CounterValue, func(n *stack.NetstackStats) uint64 { return n.IPPacketsSent }},
	{"tcpd_netstack_endpoints", "Transport endpoints registered in the netstack: connections in every state but TIME_WAIT, which tcpd keeps itself.",
		prometheus.GaugeValue, func(n *stack.NetstackStats) uint64 { return n.Endpoints }},
	{"tcpd_netstack_tracked_endpoints", "Netstack endpoints tcpd holds for reconciliation, kill and tcpd conns.",
		prometheus.GaugeValue, func(n *stack.NetstackStats) uint64 { return n.TrackedEndpoints }},
}

// Collector is a prometheus.Collector that reads tcpd's state when scraped.
// Its descriptors are fixed when it is made; each Collect takes one
// conntrack.Snapshot and reads each stack counter once. It is safe for
// concurrent scrapes.
type Collector struct {
	conntrack ConntrackSource
	stack     StackSource
	reload    ReloadSource
	health    Health
	log       LogSource
	// created stands for the time the configuration was loaded at start,
	// for tcpd_config_last_reload_success_timestamp_seconds until a reload
	// succeeds.
	created time.Time

	states, clientStates *prometheus.Desc
	values               []*prometheus.Desc // parallel to snapshotValues
	histograms           []*prometheus.Desc // parallel to snapshotHistograms

	tunPackets, tunBytes, relayBytes *prometheus.Desc
	queuePackets, queueBytes         *prometheus.Desc
	dropped, connections             *prometheus.Desc
	dialFailures, ended              *prometheus.Desc
	panics, active, inFlight         *prometheus.Desc
	bufferPressure                   *prometheus.Desc
	relayEntries                     *prometheus.Desc
	handshakeTimeouts, mssClamped    *prometheus.Desc

	netstack []*prometheus.Desc // parallel to netstackValues

	// nil without a ReloadSource
	reloadOK, reloadTime, restartPending *prometheus.Desc
	ready                                *prometheus.Desc // nil without a Health
	logLost                              *prometheus.Desc // nil without a LogSource
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a Collector for cfg. It panics if cfg.Conntrack or
// cfg.Stack is nil: that is a wiring bug, not a runtime condition.
func NewCollector(cfg Config) *Collector {
	if cfg.Conntrack == nil || cfg.Stack == nil {
		panic("metrics: Config.Conntrack and Config.Stack are required")
	}
	c := &Collector{
		conntrack: cfg.Conntrack,
		stack:     cfg.Stack,
		reload:    cfg.Reload,
		health:    cfg.Health,
		log:       cfg.Log,
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
		queuePackets: prometheus.NewDesc("tcpd_tun_queue_packets_total",
			"IP packets read from (in) and written to (out) each queue of the TUN device (tun.queues).",
			[]string{"queue", "direction"}, nil),
		queueBytes: prometheus.NewDesc("tcpd_tun_queue_bytes_total",
			"Bytes of whole IP packets read from (in) and written to (out) each queue of the TUN device.",
			[]string{"queue", "direction"}, nil),
		relayBytes: prometheus.NewDesc("tcpd_relay_bytes_total",
			"Payload bytes relayed, client to destination (in) and destination to client (out).",
			[]string{"direction"}, nil),
		dropped: prometheus.NewDesc("tcpd_dropped_total",
			"Packets, connection attempts and TIME_WAIT entries tcpd dropped or refused, by reason.",
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
			"Half-open connections aborted because the client did not acknowledge the SYN-ACK within tcp.handshake_timeout, or within 1s while SYNs found limits.max_in_flight handshakes in progress.",
			nil, nil),
		mssClamped: prometheus.NewDesc("tcpd_tcp_mss_clamped_total",
			"Client SYNs whose MSS tcpd lowered to what the kernel's route back to the client carries (tcp.mss_clamp), so that no segment is too big for the VPN interface.",
			nil, nil),
		panics: prometheus.NewDesc("tcpd_handler_panics_total",
			"Connection handlers that panicked; each reset only its own connection.",
			nil, nil),
		active: prometheus.NewDesc("tcpd_relays_active",
			"Relays in progress.",
			nil, nil),
		relayEntries: prometheus.NewDesc("tcpd_conntrack_relay_entries",
			"Tracking entries with a relay attached, read with tcpd_relays_active, which never exceeds it: an entry whose connection ended stays, in state close, until its relay has finished.",
			nil, nil),
		inFlight: prometheus.NewDesc("tcpd_handshakes_in_flight",
			"Handshakes in progress in tcpd's connection handler.",
			nil, nil),
		bufferPressure: prometheus.NewDesc("tcpd_tcp_buffer_pressure",
			"The netstack's TCP buffer level, as Linux's tcp_mem pressure: 0 none; 1 when the live heap passed 40% of the memory limit (new connections start with 64 KiB buffers, none grows past 256 KiB); 2 past 60% (16 KiB).",
			nil, nil),
	}
	for _, v := range snapshotValues {
		c.values = append(c.values, prometheus.NewDesc(v.name, v.help, nil, nil))
	}
	for _, h := range snapshotHistograms {
		c.histograms = append(c.histograms, prometheus.NewDesc(h.name, h.help, nil, nil))
	}
	for _, v := range netstackValues {
		c.netstack = append(c.netstack, prometheus.NewDesc(v.name, v.help, nil, nil))
	}
	if cfg.Health != nil {
		c.ready = prometheus.NewDesc("tcpd_ready",
			"1 while tcpd takes new clients (/readyz answers 200); 0 while it drains on SIGTERM, its data path is wedged, or its last start steps run (before them /metrics answers 503).",
			nil, nil)
	}
	if cfg.Log != nil {
		c.logLost = prometheus.NewDesc("tcpd_log_lines_lost_total",
			"Log lines tcpd could not write: refused by the log's output (write_failed: a full disk, a closed pipe) or dropped because the output did not take them as fast as they came (output_stalled: a stuck journal). Nothing else waits for the log.",
			[]string{"reason"}, nil)
	}
	if cfg.Reload != nil {
		c.reloadOK = prometheus.NewDesc("tcpd_config_last_reload_successful",
			"1 if the last configuration reload succeeded (or none was tried since start), 0 if it failed.",
			nil, nil)
		c.reloadTime = prometheus.NewDesc("tcpd_config_last_reload_success_timestamp_seconds",
			"Unix time the configuration in use was loaded, at start or by the last successful reload.",
			nil, nil)
		c.restartPending = prometheus.NewDesc("tcpd_config_restart_pending",
			"Settings whose value in the configuration file, as the last successful reload read it, differs from the one in force and takes effect only at restart.",
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
		c.tunPackets, c.tunBytes, c.queuePackets, c.queueBytes, c.relayBytes, c.dropped, c.connections,
		c.dialFailures, c.ended, c.panics, c.active, c.relayEntries, c.inFlight, c.bufferPressure, c.handshakeTimeouts, c.mssClamped,
	} {
		ch <- d
	}
	for _, d := range c.netstack {
		ch <- d
	}
	if c.health != nil {
		ch <- c.ready
	}
	if c.log != nil {
		ch <- c.logLost
	}
	if c.reload != nil {
		ch <- c.reloadOK
		ch <- c.reloadTime
		ch <- c.restartPending
	}
}

// Collect reads one Snapshot, the stack's counters and the reload status,
// and sends them as metrics.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	snap := c.conntrack.Snapshot()
	c.collectConntrack(ch, &snap)
	c.collectStack(ch, c.stack.Stats())
	active, tracked := c.stack.Relays()
	send(ch, c.active, prometheus.GaugeValue, float64(active))
	send(ch, c.relayEntries, prometheus.GaugeValue, float64(tracked))
	ns := c.stack.NetstackStats()
	for i, v := range netstackValues {
		send(ch, c.netstack[i], v.typ, float64(v.value(&ns)))
	}
	if c.health != nil {
		ok, _ := c.health.Ready()
		send(ch, c.ready, prometheus.GaugeValue, boolValue(ok))
	}
	if c.log != nil {
		failed, stalled := c.log.LogLinesLost()
		send(ch, c.logLost, prometheus.CounterValue, float64(failed), "write_failed")
		send(ch, c.logLost, prometheus.CounterValue, float64(stalled), "output_stalled")
	}
	if c.reload != nil {
		ok, at := c.reload.LastReload()
		if at.IsZero() {
			at = c.created
		}
		send(ch, c.reloadOK, prometheus.GaugeValue, boolValue(ok))
		send(ch, c.reloadTime, prometheus.GaugeValue, float64(at.Unix())+float64(at.Nanosecond())/1e9)
		send(ch, c.restartPending, prometheus.GaugeValue, float64(c.reload.RestartPending()))
	}
}

func (c *Collector) collectConntrack(ch chan<- prometheus.Metric, s *conntrack.Snapshot) {
	for st := range conntrack.NumStates {
		send(ch, c.states, prometheus.GaugeValue, float64(s.States[st]), st.String())
		send(ch, c.clientStates, prometheus.GaugeValue, float64(s.ClientStates[st]), st.String())
	}
	for i, v := range snapshotValues {
		send(ch, c.values[i], v.typ, v.value(s))
	}
	// Among the drops, as DESIGN.md lists them: a connection that skipped
	// TIME_WAIT because tcp.time_wait_limit entries were held
	// (tcpd_tcp_time_wait_overflow_total counts the same).
	send(ch, c.dropped, prometheus.CounterValue, float64(s.TimeWaitOverflow), "time_wait_overflow")
	for i, h := range snapshotHistograms {
		ch <- newHistogram(c.histograms[i], h.get(s))
	}
}

func (c *Collector) collectStack(ch chan<- prometheus.Metric, st *stack.Stats) {
	for d := range conntrack.NumDirs {
		packets, bytes := st.TUN(d)
		send(ch, c.tunPackets, prometheus.CounterValue, float64(packets), d.String())
		send(ch, c.tunBytes, prometheus.CounterValue, float64(bytes), d.String())
		send(ch, c.relayBytes, prometheus.CounterValue, float64(st.Relayed(d)), d.String())
		for i := range st.Queues {
			q := strconv.Itoa(i)
			send(ch, c.queuePackets, prometheus.CounterValue, float64(st.Queues[i].Packets[d].Load()), q, d.String())
			send(ch, c.queueBytes, prometheus.CounterValue, float64(st.Queues[i].Bytes[d].Load()), q, d.String())
		}
	}
	for r := range stack.NumDropReasons {
		send(ch, c.dropped, prometheus.CounterValue, float64(st.Drops(r)), r.String())
	}
	for r := range stack.NumResults {
		send(ch, c.connections, prometheus.CounterValue, float64(st.Connections[r].Load()), r.String())
	}
	for f := range stack.NumDialFailures {
		send(ch, c.dialFailures, prometheus.CounterValue, float64(st.DialFailures[f].Load()), f.String())
	}
	for e := range stack.NumEnds {
		send(ch, c.ended, prometheus.CounterValue, float64(st.Ended[e].Load()), e.String())
	}
	send(ch, c.panics, prometheus.CounterValue, float64(st.Panics.Load()))
	send(ch, c.handshakeTimeouts, prometheus.CounterValue, float64(st.HandshakeTimeouts.Load()))
	send(ch, c.mssClamped, prometheus.CounterValue, float64(st.MSSClamped.Load()))
	send(ch, c.inFlight, prometheus.GaugeValue, float64(st.InFlight.Load()))
	send(ch, c.bufferPressure, prometheus.GaugeValue, float64(st.BufferPressure.Load()))
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
