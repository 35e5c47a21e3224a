package stack

import (
	"time"

	"tcpd/conntrack"
)

// ConnInfo is one row of `tcpd conns`: conntrack's view of a connection
// joined with what the netstack's endpoint knows about it.
type ConnInfo struct {
	conntrack.Conn
	// RTT is the netstack's smoothed round-trip time to the client, and
	// RTTVar its variation; zero when no endpoint exists (yet).
	RTT, RTTVar time.Duration
	// Retransmits counts segments the netstack retransmitted to the client.
	Retransmits uint64
	// CongestionControl is the algorithm of the netstack's endpoint, as
	// tcp.congestion_control was when the connection was opened; "" when no
	// endpoint exists (yet).
	CongestionControl string
	// Upstream is the local address of the upstream socket, "" before the
	// dial completed.
	Upstream string
	// SendMSS is the MSS tcpd sends to the client with: the client's (as
	// clamped; 536 bytes without the option) bounded by the TUN's MTU. The
	// netstack's segments carry up to that much payload less the space of
	// their TCP options.
	SendMSS int
	// RTO is the netstack's retransmission timeout toward the client;
	// Cwnd its congestion window and Ssthresh its slow-start threshold,
	// in segments (0: not set yet, still slow start). RecvQ is what the
	// client sent that tcpd has not read yet, and SendQ what tcpd has
	// written to the client that the client has not acknowledged (sent or
	// still in the netstack's send buffer), in bytes, as ss's Recv-Q and
	// Send-Q.
	RTO            time.Duration
	Cwnd, Ssthresh uint32
	RecvQ, SendQ   int
}

// UpstreamTCP is what the kernel says of a connection's upstream socket,
// as `ss -ti` shows it.
type UpstreamTCP struct {
	// RTT is the kernel's smoothed round-trip time to the destination, and
	// RTTVar its variation.
	RTT, RTTVar time.Duration
	// Retransmits counts the segments the kernel retransmitted.
	Retransmits uint64
	// Cwnd is the congestion window, in segments.
	Cwnd uint32
	// RecvQ is what the destination sent that tcpd has not read yet, and
	// SendQ what tcpd wrote that the destination has not acknowledged, in
	// bytes (ss's Recv-Q and Send-Q).
	RecvQ, SendQ int
}
