package stack

import "sync/atomic"

// Direction names the two directions of the TUN and of a relay.
type Direction int

const (
	// In is client → tcpd on the TUN; client → destination in a relay.
	In Direction = iota
	// Out is tcpd → client on the TUN; destination → client in a relay.
	Out
	numDirections
)

// String gives the Prometheus label value.
func (d Direction) String() string {
	switch d {
	case In:
		return "in"
	case Out:
		return "out"
	}
	return "unknown"
}

// DropReason says why a packet or a connection attempt was dropped or
// refused.
type DropReason int

const (
	// DropSpoofedSource: the source address is outside the client prefixes.
	DropSpoofedSource DropReason = iota
	// DropDeniedDestination: the destination policy denied it (answered RST).
	DropDeniedDestination
	// DropMaxConnections: the global connection cap (answered RST).
	DropMaxConnections
	// DropMaxConnectionsPerClient: the per-client connection cap (RST).
	DropMaxConnectionsPerClient
	// DropMaxInFlightPerClient: the per-client handshake cap (SYN ignored,
	// the client retransmits).
	DropMaxInFlightPerClient
	// DropShuttingDown: SYN during shutdown (answered RST).
	DropShuttingDown
	// DropMalformed: not an IPv4 or IPv6 packet, or shorter than its header.
	DropMalformed
	// DropBadChecksum: a packet the kernel did not vouch for failed
	// tcpd's own checksum check (offload path).
	DropBadChecksum
	// DropTUNReadError: a read from the TUN failed (a malformed virtio-net
	// frame, for example).
	DropTUNReadError
	// DropTUNWriteError: a write to the TUN failed.
	DropTUNWriteError
	numDropReasons
)

var dropReasonNames = [numDropReasons]string{
	DropSpoofedSource:           "spoofed_source",
	DropDeniedDestination:       "denied_destination",
	DropMaxConnections:          "max_connections",
	DropMaxConnectionsPerClient: "max_connections_per_client",
	DropMaxInFlightPerClient:    "max_in_flight_per_client",
	DropShuttingDown:            "shutting_down",
	DropMalformed:               "malformed",
	DropBadChecksum:             "bad_checksum",
	DropTUNReadError:            "tun_read_error",
	DropTUNWriteError:           "tun_write_error",
}

// String gives the Prometheus label value.
func (r DropReason) String() string { return dropReasonNames[r] }

// DropReasons lists every reason, for exporters that must show all of them.
func DropReasons() []DropReason {
	rs := make([]DropReason, numDropReasons)
	for i := range rs {
		rs[i] = DropReason(i)
	}
	return rs
}

// Result is how a connection attempt ended.
type Result int

const (
	// ResultRelayed: the handshake completed and the relay ran.
	ResultRelayed Result = iota
	// ResultDenied: refused by policy or a cap.
	ResultDenied
	// ResultUpstreamFailed: the upstream dial failed; the client got RST.
	ResultUpstreamFailed
	// ResultHandshakeFailed: the upstream was dialled but the client's
	// handshake did not complete.
	ResultHandshakeFailed
	numResults
)

var resultNames = [numResults]string{
	ResultRelayed:         "relayed",
	ResultDenied:          "denied",
	ResultUpstreamFailed:  "upstream_failed",
	ResultHandshakeFailed: "handshake_failed",
}

// String gives the Prometheus label value.
func (r Result) String() string { return resultNames[r] }

// Results lists every result.
func Results() []Result {
	rs := make([]Result, numResults)
	for i := range rs {
		rs[i] = Result(i)
	}
	return rs
}

// DialFailure classifies an upstream dial failure.
type DialFailure int

const (
	// DialRefused: the destination answered RST (ECONNREFUSED).
	DialRefused DialFailure = iota
	// DialTimeout: no answer within the dial timeout.
	DialTimeout
	// DialUnreachable: no route, or an ICMP unreachable.
	DialUnreachable
	// DialDenied: the dialler's control hook refused the address.
	DialDenied
	// DialOther: anything else.
	DialOther
	numDialFailures
)

var dialFailureNames = [numDialFailures]string{
	DialRefused:     "refused",
	DialTimeout:     "timeout",
	DialUnreachable: "unreachable",
	DialDenied:      "denied",
	DialOther:       "other",
}

// String gives the Prometheus label value.
func (f DialFailure) String() string { return dialFailureNames[f] }

// DialFailures lists every dial failure class.
func DialFailures() []DialFailure {
	fs := make([]DialFailure, numDialFailures)
	for i := range fs {
		fs[i] = DialFailure(i)
	}
	return fs
}

// Stats are the stack's counters. Every field is updated atomically on the
// data path and read at scrape time.
type Stats struct {
	TUNPackets [numDirections]atomic.Uint64
	TUNBytes   [numDirections]atomic.Uint64
	// RelayBytes counts payload bytes relayed: In is client → destination.
	RelayBytes   [numDirections]atomic.Uint64
	Dropped      [numDropReasons]atomic.Uint64
	Connections  [numResults]atomic.Uint64
	DialFailures [numDialFailures]atomic.Uint64
	// Ended counts finished relays by how they ended.
	Ended [numEnds]atomic.Uint64
	// Panics counts connection handlers that panicked; each reset its own
	// connection only.
	Panics atomic.Uint64
	// HandshakeTimeouts counts half-open connections aborted because the
	// client did not ACK the SYN-ACK within the handshake timeout.
	HandshakeTimeouts atomic.Uint64
	// Active is the number of relays in progress.
	Active atomic.Int64
	// InFlight is the number of handshakes in progress in tcpd's handler.
	InFlight atomic.Int64
}

// Counter is one of the netstack's own cumulative counters, for export.
type Counter struct {
	// Name is the metric name's stem, e.g. "tcp_retransmits".
	Name string
	// Help says what it counts.
	Help  string
	Value uint64
	// Gauge marks a current value rather than a cumulative count.
	Gauge bool
}

// NetstackCounters reads gVisor's TCP counters. Gauges among gVisor's
// statistics (current established) are left out: conntrack reports states.
func (s *Stack) NetstackCounters() []Counter {
	tcp := s.ns.Stats().TCP
	ip := s.ns.Stats().IP
	return []Counter{
		{"tcp_passive_opens", "TCP connections the netstack accepted (SYN-ACK sent).", tcp.PassiveConnectionOpenings.Value(), false},
		{"tcp_failed_connection_attempts", "TCP handshakes the netstack abandoned.", tcp.FailedConnectionAttempts.Value(), false},
		{"tcp_established_resets", "Established or close-wait TCP connections reset.", tcp.EstablishedResets.Value(), false},
		{"tcp_established_timeouts", "TCP connections closed by a retransmission or keepalive timeout.", tcp.EstablishedTimedout.Value(), false},
		{"tcp_segments_received", "Valid TCP segments the netstack received.", tcp.ValidSegmentsReceived.Value(), false},
		{"tcp_invalid_segments_received", "TCP segments the netstack rejected as invalid.", tcp.InvalidSegmentsReceived.Value(), false},
		{"tcp_segments_sent", "TCP segments the netstack sent, retransmissions included.", tcp.SegmentsSent.Value(), false},
		{"tcp_segment_send_errors", "TCP segments the netstack failed to send.", tcp.SegmentSendErrors.Value(), false},
		{"tcp_resets_sent", "TCP RST segments the netstack sent.", tcp.ResetsSent.Value(), false},
		{"tcp_resets_received", "TCP RST segments the netstack received.", tcp.ResetsReceived.Value(), false},
		{"tcp_retransmits", "TCP segments the netstack retransmitted.", tcp.Retransmits.Value(), false},
		{"tcp_fast_retransmits", "TCP fast retransmissions.", tcp.FastRetransmit.Value(), false},
		{"tcp_timeouts", "TCP retransmission timer expiries.", tcp.Timeouts.Value(), false},
		{"tcp_sack_recoveries", "TCP SACK loss recoveries.", tcp.SACKRecovery.Value(), false},
		{"tcp_tlp_recoveries", "TCP tail loss probe recoveries.", tcp.TLPRecovery.Value(), false},
		{"tcp_spurious_recoveries", "TCP loss recoveries later found spurious.", tcp.SpuriousRecovery.Value(), false},
		{"tcp_checksum_errors", "TCP segments with a bad checksum.", tcp.ChecksumErrors.Value(), false},
		{"tcp_forward_max_in_flight_drops", "SYNs the forwarder dropped because max_in_flight handshakes were in progress.", tcp.ForwardMaxInFlightDrop.Value(), false},
		{"ip_packets_received", "IP packets the netstack received.", ip.PacketsReceived.Value(), false},
		{"ip_malformed_packets_received", "IP packets the netstack dropped as malformed.", ip.MalformedPacketsReceived.Value(), false},
		{"ip_invalid_destination_addresses_received", "IP packets dropped for an invalid destination (loopback or martian).", ip.InvalidDestinationAddressesReceived.Value(), false},
		{"ip_invalid_source_addresses_received", "IP packets dropped for an invalid source address.", ip.InvalidSourceAddressesReceived.Value(), false},
		{"ip_packets_sent", "IP packets the netstack sent.", ip.PacketsSent.Value(), false},
		{"endpoints", "Transport endpoints registered in the netstack (connections in any state, TIME_WAIT included).", uint64(len(s.ns.RegisteredEndpoints())), true},
		{"tracked_endpoints", "Netstack endpoints tcpd holds for reconciliation, kill and tcpd conns.", uint64(s.trackedEndpoints()), true},
	}
}
