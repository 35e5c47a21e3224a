package metrics_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"tcpd/conntrack"
	"tcpd/metrics"
	"tcpd/stack"
)

// testSources returns a Snapshot and stack counters with distinct values, so
// that a field exported under the wrong name shows up in a comparison.
func testSources() (*fakeConntrack, *fakeStack) {
	var s conntrack.Snapshot
	s.States[conntrack.StateEstablished] = 7
	s.States[conntrack.StateSynRecv] = 2
	s.States[conntrack.StateTimeWait] = 3
	s.States[conntrack.StateCloseWait] = 1
	s.ClientStates[conntrack.StateEstablished] = 6
	s.ClientStates[conntrack.StateSynSent] = 2
	s.ClientStates[conntrack.StateFinWait2] = 4
	s.ClientStates[conntrack.StateClosed] = 1
	s.Live = 13
	s.TimeWait = 3
	s.TimeWaitLimit = 16384
	s.TimeWaitTimeout = 30 * time.Second
	s.Counters = conntrack.Counters{
		Opened:              101,
		Established:         88,
		Closed:              90,
		Resets:              11,
		TimeWaitEntered:     40,
		TimeWaitOverflow:    5,
		TimeWaitReused:      6,
		TimeWaitAcks:        7,
		TimeWaitAcksSkipped: 3,
		RSTIgnored:          4,
		Untracked:           17,
		TableFull:           2,
		Expired:             9,
		Corrections:         1,
	}
	st := &fakeStack{ns: netstackStats()}
	// Two queues; the totals are their sums, and drops are counted by
	// the queues' loops and by the handler alike.
	st.stats.Queues = make([]stack.QueueStats, 2)
	st.stats.Queues[0].Packets[conntrack.FromClient].Store(600)
	st.stats.Queues[1].Packets[conntrack.FromClient].Store(400)
	st.stats.Queues[0].Packets[conntrack.ToClient].Store(500)
	st.stats.Queues[1].Packets[conntrack.ToClient].Store(400)
	st.stats.Queues[0].Bytes[conntrack.FromClient].Store(90000)
	st.stats.Queues[1].Bytes[conntrack.FromClient].Store(60000)
	st.stats.Queues[0].Bytes[conntrack.ToClient].Store(700000)
	st.stats.Queues[1].Bytes[conntrack.ToClient].Store(500000)
	st.stats.Queues[1].Dropped[stack.DropSpoofedSource].Store(2)
	st.stats.Queues[0].Dropped[stack.DropTUNWriteError].Store(1)
	// The relayed bytes are summed over the relay shards alike.
	st.stats.Relays = make([]stack.RelayStats, 2)
	st.stats.Relays[0].Bytes[conntrack.FromClient].Store(60000)
	st.stats.Relays[1].Bytes[conntrack.FromClient].Store(40000)
	st.stats.Relays[0].Bytes[conntrack.ToClient].Store(1000000)
	st.stats.Relays[1].Bytes[conntrack.ToClient].Store(100000)
	st.stats.Dropped[stack.DropSpoofedSource].Store(1)
	st.stats.Dropped[stack.DropDeniedDestination].Store(8)
	st.stats.Connections[stack.ResultRelayed].Store(80)
	st.stats.Connections[stack.ResultDenied].Store(8)
	st.stats.Connections[stack.ResultUpstreamFailed].Store(5)
	st.stats.DialFailures[stack.DialRefused].Store(4)
	st.stats.DialFailures[stack.DialTimeout].Store(1)
	st.stats.Ended[stack.EndClean].Store(70)
	st.stats.Ended[stack.EndClientReset].Store(3)
	st.stats.Ended[stack.EndTimeout].Store(2)
	st.stats.Panics.Store(1)
	st.stats.HandshakeTimeouts.Store(3)
	st.stats.MSSClamped.Store(7)
	st.stats.Dropped[stack.DropNotTCP].Store(2)
	st.stats.Active.Store(4)
	st.relayEntries = 5
	st.stats.InFlight.Store(2)
	st.stats.BufferPressure.Store(1)
	return &fakeConntrack{snap: s}, st
}

// pedantic registers c in a pedantic registry, which checks every
// collected metric against the descriptors c described.
func pedantic(t *testing.T, c prometheus.Collector) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatalf("register: %v", err)
	}
	return reg
}

func TestCollector(t *testing.T) {
	ct, st := testSources()
	c := metrics.NewCollector(metrics.Config{Conntrack: ct, Stack: st})
	reg := pedantic(t, c)

	tests := []struct {
		name string
		want string
	}{
		{"states", `
# HELP tcpd_tcp_connection_states Tracked TCP connections by the state of tcpd's own end (the netstack side), with node_exporter's tcpstat label values.
# TYPE tcpd_tcp_connection_states gauge
tcpd_tcp_connection_states{state="close"} 0
tcpd_tcp_connection_states{state="close_wait"} 1
tcpd_tcp_connection_states{state="closing"} 0
tcpd_tcp_connection_states{state="established"} 7
tcpd_tcp_connection_states{state="fin_wait1"} 0
tcpd_tcp_connection_states{state="fin_wait2"} 0
tcpd_tcp_connection_states{state="last_ack"} 0
tcpd_tcp_connection_states{state="listen"} 0
tcpd_tcp_connection_states{state="syn_recv"} 2
tcpd_tcp_connection_states{state="syn_sent"} 0
tcpd_tcp_connection_states{state="time_wait"} 3
`},
		{"client states", `
# HELP tcpd_tcp_client_connection_states Tracked TCP connections by the state of the client's end, as inferred from the segments crossing the TUN.
# TYPE tcpd_tcp_client_connection_states gauge
tcpd_tcp_client_connection_states{state="close"} 1
tcpd_tcp_client_connection_states{state="close_wait"} 0
tcpd_tcp_client_connection_states{state="closing"} 0
tcpd_tcp_client_connection_states{state="established"} 6
tcpd_tcp_client_connection_states{state="fin_wait1"} 0
tcpd_tcp_client_connection_states{state="fin_wait2"} 4
tcpd_tcp_client_connection_states{state="last_ack"} 0
tcpd_tcp_client_connection_states{state="listen"} 0
tcpd_tcp_client_connection_states{state="syn_recv"} 0
tcpd_tcp_client_connection_states{state="syn_sent"} 2
tcpd_tcp_client_connection_states{state="time_wait"} 0
`},
		{"conntrack", `
# HELP tcpd_conntrack_entries Entries in tcpd's connection tracking table, in any state.
# TYPE tcpd_conntrack_entries gauge
tcpd_conntrack_entries 13
# HELP tcpd_conntrack_opened_total TCP connections tracked from their first SYN.
# TYPE tcpd_conntrack_opened_total counter
tcpd_conntrack_opened_total 101
# HELP tcpd_conntrack_established_total TCP connections whose handshake completed on tcpd's side.
# TYPE tcpd_conntrack_established_total counter
tcpd_conntrack_established_total 88
# HELP tcpd_conntrack_closed_total Connection tracking entries removed, for any reason.
# TYPE tcpd_conntrack_closed_total counter
tcpd_conntrack_closed_total 90
# HELP tcpd_conntrack_resets_total Tracked connections closed by an acceptable RST from either side.
# TYPE tcpd_conntrack_resets_total counter
tcpd_conntrack_resets_total 11
# HELP tcpd_conntrack_rst_ignored_total RST segments their receiver would not accept (RFC 5961 section 3.2): out of window, or in window but not at RCV.NXT.
# TYPE tcpd_conntrack_rst_ignored_total counter
tcpd_conntrack_rst_ignored_total 4
# HELP tcpd_conntrack_untracked_segments_total TCP segments that matched no tracked connection and opened none.
# TYPE tcpd_conntrack_untracked_segments_total counter
tcpd_conntrack_untracked_segments_total 17
# HELP tcpd_conntrack_table_full_total SYNs not tracked because the connection tracking table was full.
# TYPE tcpd_conntrack_table_full_total counter
tcpd_conntrack_table_full_total 2
# HELP tcpd_conntrack_expired_total Tracking entries removed by a timer other than TIME_WAIT's: a handshake that never completed, or an entry the netstack abandoned.
# TYPE tcpd_conntrack_expired_total counter
tcpd_conntrack_expired_total 9
# HELP tcpd_conntrack_corrections_total Times the tracked state of tcpd's end disagreed with the netstack's own endpoint state and was corrected to it.
# TYPE tcpd_conntrack_corrections_total counter
tcpd_conntrack_corrections_total 1
`},
		{"time_wait", `
# HELP tcpd_tcp_time_wait_connections Connections in TIME_WAIT on tcpd's side.
# TYPE tcpd_tcp_time_wait_connections gauge
tcpd_tcp_time_wait_connections 3
# HELP tcpd_tcp_time_wait_limit Configured cap on connections in TIME_WAIT; entries beyond it are cut short and counted in tcpd_tcp_time_wait_overflow_total.
# TYPE tcpd_tcp_time_wait_limit gauge
tcpd_tcp_time_wait_limit 16384
# HELP tcpd_tcp_time_wait_timeout_seconds Configured time a closed connection is held in TIME_WAIT.
# TYPE tcpd_tcp_time_wait_timeout_seconds gauge
tcpd_tcp_time_wait_timeout_seconds 30
# HELP tcpd_tcp_time_wait_entered_total Connections that entered TIME_WAIT on tcpd's side.
# TYPE tcpd_tcp_time_wait_entered_total counter
tcpd_tcp_time_wait_entered_total 40
# HELP tcpd_tcp_time_wait_overflow_total TIME_WAIT entries cut short because tcpd_tcp_time_wait_limit of them were held already.
# TYPE tcpd_tcp_time_wait_overflow_total counter
tcpd_tcp_time_wait_overflow_total 5
# HELP tcpd_tcp_time_wait_reused_total TIME_WAIT entries retired early by a new SYN on the same 4-tuple (RFC 6191).
# TYPE tcpd_tcp_time_wait_reused_total counter
tcpd_tcp_time_wait_reused_total 6
# HELP tcpd_tcp_time_wait_acks_total ACKs tcpd sent for connections in TIME_WAIT: to a retransmitted FIN (the client lost tcpd's last ACK), an old duplicate segment or a SYN that may not reopen the 4-tuple.
# TYPE tcpd_tcp_time_wait_acks_total counter
tcpd_tcp_time_wait_acks_total 7
# HELP tcpd_tcp_time_wait_acks_skipped_total ACKs to segments without data or FIN, or to SYNs, that tcpd did not send for a connection in TIME_WAIT because it had sent one less than 0.5 s before, as Linux counts TCPACKSkippedTimeWait.
# TYPE tcpd_tcp_time_wait_acks_skipped_total counter
tcpd_tcp_time_wait_acks_skipped_total 3
`},
		{"tun and relay", `
# HELP tcpd_tun_packets_total IP packets read from (in) and written to (out) the TUN device.
# TYPE tcpd_tun_packets_total counter
tcpd_tun_packets_total{direction="in"} 1000
tcpd_tun_packets_total{direction="out"} 900
# HELP tcpd_tun_bytes_total Bytes of whole IP packets read from (in) and written to (out) the TUN device.
# TYPE tcpd_tun_bytes_total counter
tcpd_tun_bytes_total{direction="in"} 150000
tcpd_tun_bytes_total{direction="out"} 1.2e+06
# HELP tcpd_tun_queue_packets_total IP packets read from (in) and written to (out) each queue of the TUN device (tun.queues).
# TYPE tcpd_tun_queue_packets_total counter
tcpd_tun_queue_packets_total{direction="in",queue="0"} 600
tcpd_tun_queue_packets_total{direction="in",queue="1"} 400
tcpd_tun_queue_packets_total{direction="out",queue="0"} 500
tcpd_tun_queue_packets_total{direction="out",queue="1"} 400
# HELP tcpd_tun_queue_bytes_total Bytes of whole IP packets read from (in) and written to (out) each queue of the TUN device.
# TYPE tcpd_tun_queue_bytes_total counter
tcpd_tun_queue_bytes_total{direction="in",queue="0"} 90000
tcpd_tun_queue_bytes_total{direction="in",queue="1"} 60000
tcpd_tun_queue_bytes_total{direction="out",queue="0"} 700000
tcpd_tun_queue_bytes_total{direction="out",queue="1"} 500000
# HELP tcpd_relay_bytes_total Payload bytes relayed, client to destination (in) and destination to client (out).
# TYPE tcpd_relay_bytes_total counter
tcpd_relay_bytes_total{direction="in"} 100000
tcpd_relay_bytes_total{direction="out"} 1.1e+06
# HELP tcpd_relays_active Relays in progress.
# TYPE tcpd_relays_active gauge
tcpd_relays_active 4
# HELP tcpd_conntrack_relay_entries Tracking entries with a relay attached, read with tcpd_relays_active, which never exceeds it: an entry whose connection ended stays, in state close, until its relay has finished.
# TYPE tcpd_conntrack_relay_entries gauge
tcpd_conntrack_relay_entries 5
# HELP tcpd_handshakes_in_flight Handshakes in progress in tcpd's connection handler.
# TYPE tcpd_handshakes_in_flight gauge
tcpd_handshakes_in_flight 2
# HELP tcpd_tcp_buffer_pressure The netstack's TCP buffer level, as Linux's tcp_mem pressure: 0 none; 1 when the live heap passed 40% of the memory limit (new connections start with 64 KiB buffers, none grows past 256 KiB); 2 past 60% (16 KiB).
# TYPE tcpd_tcp_buffer_pressure gauge
tcpd_tcp_buffer_pressure 1
# HELP tcpd_handler_panics_total Connection handlers that panicked; each reset only its own connection.
# TYPE tcpd_handler_panics_total counter
tcpd_handler_panics_total 1
# HELP tcpd_handshake_timeouts_total Half-open connections aborted because the client did not acknowledge the SYN-ACK within tcp.handshake_timeout, or within 1s while SYNs found limits.max_in_flight handshakes in progress.
# TYPE tcpd_handshake_timeouts_total counter
tcpd_handshake_timeouts_total 3
# HELP tcpd_tcp_mss_clamped_total Client SYNs whose MSS tcpd lowered to what the kernel's route back to the client carries (tcp.mss_clamp), so that no segment is too big for the VPN interface.
# TYPE tcpd_tcp_mss_clamped_total counter
tcpd_tcp_mss_clamped_total 7
`},
		{"drops", `
# HELP tcpd_dropped_total Packets, connection attempts and TIME_WAIT entries tcpd dropped or refused, by reason.
# TYPE tcpd_dropped_total counter
tcpd_dropped_total{reason="bad_checksum"} 0
tcpd_dropped_total{reason="denied_destination"} 8
tcpd_dropped_total{reason="fd_limit"} 0
tcpd_dropped_total{reason="icmp_mtu_too_small"} 0
tcpd_dropped_total{reason="icmp_out_of_window"} 0
tcpd_dropped_total{reason="malformed"} 0
tcpd_dropped_total{reason="max_connections"} 0
tcpd_dropped_total{reason="max_connections_per_client"} 0
tcpd_dropped_total{reason="max_in_flight"} 0
tcpd_dropped_total{reason="max_in_flight_per_client"} 0
tcpd_dropped_total{reason="not_tcp"} 2
tcpd_dropped_total{reason="reuse_wait"} 0
tcpd_dropped_total{reason="shutting_down"} 0
tcpd_dropped_total{reason="spoofed_source"} 3
tcpd_dropped_total{reason="stale_syn"} 0
tcpd_dropped_total{reason="syn_in_flight"} 0
tcpd_dropped_total{reason="time_wait_overflow"} 5
tcpd_dropped_total{reason="tun_read_error"} 0
tcpd_dropped_total{reason="tun_write_error"} 1
tcpd_dropped_total{reason="unacceptable_ack"} 0
tcpd_dropped_total{reason="unverifiable"} 0
tcpd_dropped_total{reason="untracked"} 0
`},
		{"connections", `
# HELP tcpd_connections_total Connection attempts by how they ended: relayed, denied by policy or a cap, upstream connect failed, or client handshake not completed.
# TYPE tcpd_connections_total counter
tcpd_connections_total{result="denied"} 8
tcpd_connections_total{result="handshake_failed"} 0
tcpd_connections_total{result="relayed"} 80
tcpd_connections_total{result="upstream_failed"} 5
# HELP tcpd_upstream_connect_failures_total Failed upstream connects, by cause.
# TYPE tcpd_upstream_connect_failures_total counter
tcpd_upstream_connect_failures_total{reason="no_descriptor"} 0
tcpd_upstream_connect_failures_total{reason="no_local_port"} 0
tcpd_upstream_connect_failures_total{reason="other"} 0
tcpd_upstream_connect_failures_total{reason="refused"} 4
tcpd_upstream_connect_failures_total{reason="source_address"} 0
tcpd_upstream_connect_failures_total{reason="timeout"} 1
tcpd_upstream_connect_failures_total{reason="unreachable"} 0
# HELP tcpd_relay_ended_total Finished relays, by how they ended.
# TYPE tcpd_relay_ended_total counter
tcpd_relay_ended_total{end="aborted"} 0
tcpd_relay_ended_total{end="clean"} 70
tcpd_relay_ended_total{end="client_reset"} 3
tcpd_relay_ended_total{end="timeout"} 2
tcpd_relay_ended_total{end="upstream_reset"} 0
`},
		{"netstack", `
# HELP tcpd_netstack_tcp_passive_opens_total TCP connections the netstack accepted (SYN-ACK sent).
# TYPE tcpd_netstack_tcp_passive_opens_total counter
tcpd_netstack_tcp_passive_opens_total 1
# HELP tcpd_netstack_tcp_failed_connection_attempts_total TCP handshakes the netstack abandoned.
# TYPE tcpd_netstack_tcp_failed_connection_attempts_total counter
tcpd_netstack_tcp_failed_connection_attempts_total 2
# HELP tcpd_netstack_tcp_established_resets_total Established or close-wait TCP connections reset.
# TYPE tcpd_netstack_tcp_established_resets_total counter
tcpd_netstack_tcp_established_resets_total 3
# HELP tcpd_netstack_tcp_established_timeouts_total TCP connections closed by a retransmission or keepalive timeout.
# TYPE tcpd_netstack_tcp_established_timeouts_total counter
tcpd_netstack_tcp_established_timeouts_total 4
# HELP tcpd_netstack_tcp_segments_received_total Valid TCP segments the netstack received.
# TYPE tcpd_netstack_tcp_segments_received_total counter
tcpd_netstack_tcp_segments_received_total 5
# HELP tcpd_netstack_tcp_invalid_segments_received_total TCP segments the netstack rejected as invalid.
# TYPE tcpd_netstack_tcp_invalid_segments_received_total counter
tcpd_netstack_tcp_invalid_segments_received_total 6
# HELP tcpd_netstack_tcp_segments_sent_total TCP segments the netstack sent, retransmissions included.
# TYPE tcpd_netstack_tcp_segments_sent_total counter
tcpd_netstack_tcp_segments_sent_total 7
# HELP tcpd_netstack_tcp_segment_send_errors_total TCP segments the netstack failed to send.
# TYPE tcpd_netstack_tcp_segment_send_errors_total counter
tcpd_netstack_tcp_segment_send_errors_total 8
# HELP tcpd_netstack_tcp_resets_sent_total TCP RST segments the netstack sent.
# TYPE tcpd_netstack_tcp_resets_sent_total counter
tcpd_netstack_tcp_resets_sent_total 9
# HELP tcpd_netstack_tcp_resets_received_total TCP RST segments the netstack received.
# TYPE tcpd_netstack_tcp_resets_received_total counter
tcpd_netstack_tcp_resets_received_total 10
# HELP tcpd_netstack_tcp_retransmits_total TCP segments the netstack retransmitted.
# TYPE tcpd_netstack_tcp_retransmits_total counter
tcpd_netstack_tcp_retransmits_total 11
# HELP tcpd_netstack_tcp_fast_retransmits_total TCP fast retransmissions.
# TYPE tcpd_netstack_tcp_fast_retransmits_total counter
tcpd_netstack_tcp_fast_retransmits_total 12
# HELP tcpd_netstack_tcp_timeouts_total TCP retransmission timer expiries.
# TYPE tcpd_netstack_tcp_timeouts_total counter
tcpd_netstack_tcp_timeouts_total 13
# HELP tcpd_netstack_tcp_sack_recoveries_total TCP SACK loss recoveries.
# TYPE tcpd_netstack_tcp_sack_recoveries_total counter
tcpd_netstack_tcp_sack_recoveries_total 14
# HELP tcpd_netstack_tcp_tlp_recoveries_total TCP tail loss probe recoveries.
# TYPE tcpd_netstack_tcp_tlp_recoveries_total counter
tcpd_netstack_tcp_tlp_recoveries_total 15
# HELP tcpd_netstack_tcp_spurious_recoveries_total TCP loss recoveries later found spurious.
# TYPE tcpd_netstack_tcp_spurious_recoveries_total counter
tcpd_netstack_tcp_spurious_recoveries_total 16
# HELP tcpd_netstack_tcp_checksum_errors_total TCP segments with a bad checksum.
# TYPE tcpd_netstack_tcp_checksum_errors_total counter
tcpd_netstack_tcp_checksum_errors_total 17
# HELP tcpd_netstack_tcp_forward_max_in_flight_drops_total SYNs the forwarder dropped because max_in_flight handshakes were in progress.
# TYPE tcpd_netstack_tcp_forward_max_in_flight_drops_total counter
tcpd_netstack_tcp_forward_max_in_flight_drops_total 18
# HELP tcpd_netstack_ip_packets_received_total IP packets the netstack received.
# TYPE tcpd_netstack_ip_packets_received_total counter
tcpd_netstack_ip_packets_received_total 19
# HELP tcpd_netstack_ip_malformed_packets_received_total IP packets the netstack dropped as malformed.
# TYPE tcpd_netstack_ip_malformed_packets_received_total counter
tcpd_netstack_ip_malformed_packets_received_total 20
# HELP tcpd_netstack_ip_invalid_destination_addresses_received_total IP packets dropped for an invalid destination (loopback or martian).
# TYPE tcpd_netstack_ip_invalid_destination_addresses_received_total counter
tcpd_netstack_ip_invalid_destination_addresses_received_total 21
# HELP tcpd_netstack_ip_invalid_source_addresses_received_total IP packets dropped for an invalid source address.
# TYPE tcpd_netstack_ip_invalid_source_addresses_received_total counter
tcpd_netstack_ip_invalid_source_addresses_received_total 22
# HELP tcpd_netstack_ip_packets_sent_total IP packets the netstack sent.
# TYPE tcpd_netstack_ip_packets_sent_total counter
tcpd_netstack_ip_packets_sent_total 23
# HELP tcpd_netstack_endpoints Transport endpoints registered in the netstack: connections in every state but TIME_WAIT, which tcpd keeps itself.
# TYPE tcpd_netstack_endpoints gauge
tcpd_netstack_endpoints 24
# HELP tcpd_netstack_tracked_endpoints Netstack endpoints tcpd holds for reconciliation, kill and tcpd conns.
# TYPE tcpd_netstack_tracked_endpoints gauge
tcpd_netstack_tracked_endpoints 25
`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := testutil.GatherAndCompare(reg, strings.NewReader(tt.want), metricNames(tt.want)...); err != nil {
				t.Error(err)
			}
		})
	}
	t.Run("CollectAndCompare", func(t *testing.T) {
		// The same through testutil's own pedantic registry.
		want := tests[0].want
		if err := testutil.CollectAndCompare(c, strings.NewReader(want), metricNames(want)...); err != nil {
			t.Error(err)
		}
	})
}

// metricNames lists the families in an expected exposition, so that the
// comparison also fails when one of them is missing from the scrape.
func metricNames(text string) []string {
	var names []string
	for line := range strings.Lines(text) {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "#" && f[1] == "TYPE" {
			names = append(names, f[2])
		}
	}
	return names
}

// TestCollectorEveryFamily checks that the Collector emits exactly the
// documented families, each with a HELP text, and one Snapshot per scrape.
func TestCollectorEveryFamily(t *testing.T) {
	_, st := testSources()
	ct := &countingConntrack{}
	c := metrics.NewCollector(metrics.Config{Conntrack: ct, Stack: st, Reload: fakeReload{ok: true}, Health: &fakeHealth{ready: true}})
	fams, err := pedantic(t, c).Gather()
	if err != nil {
		t.Fatal(err)
	}
	if ct.calls != 1 {
		t.Errorf("one scrape took %d snapshots, want 1", ct.calls)
	}
	want := []string{
		"tcpd_config_last_reload_success_timestamp_seconds",
		"tcpd_config_last_reload_successful",
		"tcpd_config_restart_pending",
		"tcpd_connection_duration_seconds",
		"tcpd_connections_total",
		"tcpd_conntrack_closed_total",
		"tcpd_conntrack_corrections_total",
		"tcpd_conntrack_entries",
		"tcpd_conntrack_established_total",
		"tcpd_conntrack_expired_total",
		"tcpd_conntrack_opened_total",
		"tcpd_conntrack_relay_entries",
		"tcpd_conntrack_resets_total",
		"tcpd_conntrack_rst_ignored_total",
		"tcpd_conntrack_table_full_total",
		"tcpd_conntrack_untracked_segments_total",
		"tcpd_dropped_total",
		"tcpd_handler_panics_total",
		"tcpd_handshake_timeouts_total",
		"tcpd_handshakes_in_flight",
		"tcpd_netstack_endpoints",
		"tcpd_netstack_ip_invalid_destination_addresses_received_total",
		"tcpd_netstack_ip_invalid_source_addresses_received_total",
		"tcpd_netstack_ip_malformed_packets_received_total",
		"tcpd_netstack_ip_packets_received_total",
		"tcpd_netstack_ip_packets_sent_total",
		"tcpd_netstack_tcp_checksum_errors_total",
		"tcpd_netstack_tcp_established_resets_total",
		"tcpd_netstack_tcp_established_timeouts_total",
		"tcpd_netstack_tcp_failed_connection_attempts_total",
		"tcpd_netstack_tcp_fast_retransmits_total",
		"tcpd_netstack_tcp_forward_max_in_flight_drops_total",
		"tcpd_netstack_tcp_invalid_segments_received_total",
		"tcpd_netstack_tcp_passive_opens_total",
		"tcpd_netstack_tcp_resets_received_total",
		"tcpd_netstack_tcp_resets_sent_total",
		"tcpd_netstack_tcp_retransmits_total",
		"tcpd_netstack_tcp_sack_recoveries_total",
		"tcpd_netstack_tcp_segment_send_errors_total",
		"tcpd_netstack_tcp_segments_received_total",
		"tcpd_netstack_tcp_segments_sent_total",
		"tcpd_netstack_tcp_spurious_recoveries_total",
		"tcpd_netstack_tcp_timeouts_total",
		"tcpd_netstack_tcp_tlp_recoveries_total",
		"tcpd_netstack_tracked_endpoints",
		"tcpd_ready",
		"tcpd_relay_bytes_total",
		"tcpd_relay_ended_total",
		"tcpd_relays_active",
		"tcpd_tcp_buffer_pressure",
		"tcpd_tcp_client_connection_states",
		"tcpd_tcp_connection_setup_duration_seconds",
		"tcpd_tcp_connection_states",
		"tcpd_tcp_handshake_duration_seconds",
		"tcpd_tcp_mss_clamped_total",
		"tcpd_tcp_time_wait_acks_skipped_total",
		"tcpd_tcp_time_wait_acks_total",
		"tcpd_tcp_time_wait_connections",
		"tcpd_tcp_time_wait_duration_seconds",
		"tcpd_tcp_time_wait_entered_total",
		"tcpd_tcp_time_wait_limit",
		"tcpd_tcp_time_wait_overflow_total",
		"tcpd_tcp_time_wait_reused_total",
		"tcpd_tcp_time_wait_timeout_seconds",
		"tcpd_tun_bytes_total",
		"tcpd_tun_packets_total",
		"tcpd_tun_queue_bytes_total",
		"tcpd_tun_queue_packets_total",
		"tcpd_upstream_connect_duration_seconds",
		"tcpd_upstream_connect_failures_total",
	}
	var got []string
	for _, f := range fams {
		got = append(got, f.GetName())
		if f.GetHelp() == "" {
			t.Errorf("%s has no HELP", f.GetName())
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				// queue is bounded by tun.queues (at most 256).
				case "state", "direction", "reason", "result", "end", "queue":
				default:
					t.Errorf("%s has unexpected label %q", f.GetName(), l.GetName())
				}
			}
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("families:\n got %v\nwant %v", got, want)
	}
}

func TestCollectorReady(t *testing.T) {
	_, st := testSources()
	ct := &fakeConntrack{}
	t.Run("absent without a Health", func(t *testing.T) {
		c := metrics.NewCollector(metrics.Config{Conntrack: ct, Stack: st})
		if n := testutil.CollectAndCount(c, "tcpd_ready"); n != 0 {
			t.Errorf("%d tcpd_ready, want none", n)
		}
	})
	h := &fakeHealth{}
	c := metrics.NewCollector(metrics.Config{Conntrack: ct, Stack: st, Health: h})
	for _, ready := range []bool{false, true, false} {
		h.set(true, "", ready, "draining: shutting down, 3 connections left")
		want := fmt.Sprintf(`
# HELP tcpd_ready 1 while tcpd takes new clients (/readyz answers 200); 0 while it drains on SIGTERM, its data path is wedged, or its last start steps run (before them /metrics answers 503).
# TYPE tcpd_ready gauge
tcpd_ready %d
`, map[bool]int{false: 0, true: 1}[ready])
		if err := testutil.GatherAndCompare(pedantic(t, c), strings.NewReader(want), "tcpd_ready"); err != nil {
			t.Errorf("ready %v: %v", ready, err)
		}
	}
}

func TestCollectorReload(t *testing.T) {
	_, st := testSources()
	ct := &fakeConntrack{}
	names := []string{"tcpd_config_last_reload_successful", "tcpd_config_last_reload_success_timestamp_seconds", "tcpd_config_restart_pending"}

	t.Run("absent without a ReloadSource", func(t *testing.T) {
		c := metrics.NewCollector(metrics.Config{Conntrack: ct, Stack: st})
		if n := testutil.CollectAndCount(c, names...); n != 0 {
			t.Errorf("%d reload metrics, want none", n)
		}
	})
	t.Run("failed", func(t *testing.T) {
		c := metrics.NewCollector(metrics.Config{Conntrack: ct, Stack: st,
			Reload: fakeReload{ok: false, at: time.Unix(1700000000, 500e6), pending: 2}})
		want := `
# HELP tcpd_config_last_reload_successful 1 if the last configuration reload succeeded (or none was tried since start), 0 if it failed.
# TYPE tcpd_config_last_reload_successful gauge
tcpd_config_last_reload_successful 0
# HELP tcpd_config_last_reload_success_timestamp_seconds Unix time the configuration in use was loaded, at start or by the last successful reload.
# TYPE tcpd_config_last_reload_success_timestamp_seconds gauge
tcpd_config_last_reload_success_timestamp_seconds 1.7000000005e+09
# HELP tcpd_config_restart_pending Settings whose value in the configuration file, as the last successful reload read it, differs from the one in force and takes effect only at restart.
# TYPE tcpd_config_restart_pending gauge
tcpd_config_restart_pending 2
`
		if err := testutil.GatherAndCompare(pedantic(t, c), strings.NewReader(want), names...); err != nil {
			t.Error(err)
		}
	})
	t.Run("never reloaded reports the start", func(t *testing.T) {
		before := time.Now()
		c := metrics.NewCollector(metrics.Config{Conntrack: ct, Stack: st, Reload: fakeReload{ok: true}})
		after := time.Now()
		fams, err := pedantic(t, c).Gather()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]float64{}
		for _, f := range fams {
			if m := f.GetMetric(); len(m) == 1 && m[0].Gauge != nil {
				got[f.GetName()] = m[0].GetGauge().GetValue()
			}
		}
		if got[names[0]] != 1 {
			t.Errorf("%s = %v, want 1", names[0], got[names[0]])
		}
		ts := got[names[1]]
		if lo, hi := float64(before.Unix()), float64(after.Unix()+1); ts < lo || ts > hi {
			t.Errorf("%s = %v, want within [%v, %v]", names[1], ts, lo, hi)
		}
	})
}

func TestNewCollectorRequiresSources(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("NewCollector without a StackSource did not panic")
		}
	}()
	metrics.NewCollector(metrics.Config{Conntrack: &fakeConntrack{}})
}
