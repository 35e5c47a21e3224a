package stack

import (
	"sync/atomic"

	"tcpd/conntrack"
)

// DropReason says why a packet or a connection attempt was dropped or
// refused. String gives its label value; range over NumDropReasons to visit
// every one.
type DropReason uint8

const (
	// DropSpoofedSource: the source address is outside the client
	// prefixes, and the packet is not a router's ICMP error about a
	// segment tcpd sent a client (quotedClient).
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
	// DropMalformed: not an IPv4 or IPv6 packet, or shorter than its
	// header or its length field says (ipSource).
	DropMalformed
	// DropBadChecksum: a packet the kernel did not vouch for failed
	// tcpd's own checksum check.
	DropBadChecksum
	// DropUnverifiable: a packet the kernel did not vouch for whose
	// transport checksum tcpd cannot check before the netstack sees it: an
	// IP fragment, or an IPv6 routing or fragment header before the
	// transport's (hop-by-hop and destination options are walked past).
	DropUnverifiable
	// DropTUNReadError: a read from the TUN failed (a malformed virtio-net
	// frame, for example).
	DropTUNReadError
	// DropTUNWriteError: a write to the TUN failed.
	DropTUNWriteError
	// DropUntracked: a SYN that had no tracking entry when its handler
	// ran (the table was full when it came, or the entry had ended
	// already): refused with RST.
	DropUntracked
	// DropNotTCP: a client's packet that is neither TCP nor an ICMP error
	// (UDP, ICMP echo, other protocols): tcpd terminates TCP only, and
	// README's routing sends it nothing else.
	DropNotTCP
	// DropFDLimit: the open-file limit leaves no descriptor for one more
	// upstream socket after tcpd's own reserve (answered RST).
	DropFDLimit
	// DropStaleSYN: an old duplicate of a SYN whose connection has ended,
	// ignored: one conntrack knows for the SYN of the 4-tuple's last
	// connection (conntrack.ActionStale), or one that reached the
	// netstack again while the 4-tuple's tracking entry was another
	// SYN's (the client's next connection) or claimed. Answered, it would
	// dial the destination for a connection the client has closed, or
	// refuse the client's next connection on the 4-tuple.
	DropStaleSYN
	// DropReuseWait: a SYN that opened a 4-tuple whose last connection's
	// netstack endpoint, or forwarder request, was still there after
	// reuseSYN's wait (the machine stalled, or the endpoint lingers):
	// ignored rather than queued on that endpoint, which would answer it
	// with RST; the client retransmits.
	DropReuseWait
	// DropSYNInFlight: a SYN of a 4-tuple whose last SYN the netstack's
	// forwarder is still answering (the client's retransmission while
	// the destination is dialled, or a SYN that reopened the 4-tuple
	// while the last connection's request was completing for longer than
	// reuseSYN waits): ignored, as the forwarder ignores it; the client
	// retransmits.
	DropSYNInFlight
	// DropMaxInFlight: a SYN that found limits.max_in_flight handshakes
	// in progress, ignored as the netstack's forwarder ignores it (its
	// own counter has it too); the client retransmits.
	DropMaxInFlight
	// DropICMPOutOfWindow: an ICMP error quoting a TCP segment that no
	// connection of tcpd has in flight (the quoted sequence number is not
	// between SND.UNA and SND.NXT, or there is no such connection): forged
	// or stale, as Linux's OutOfWindowIcmps (icmp.go).
	DropICMPOutOfWindow
	// DropICMPMTUTooSmall: an IPv6 "packet too big" naming an MTU below
	// 1280, which IPv6 does not allow.
	DropICMPMTUTooSmall
	// DropUnacceptableACK: a client's segment whose acknowledgment no TCP
	// takes (conntrack.ActionReject): in SYN-RECEIVED one that is not of
	// tcpd's SYN-ACK (answered with RST, as Linux), which the netstack's
	// forwarder would complete the handshake on; or one that acknowledges
	// what tcpd never sent, or less than SND.UNA - MAX.SND.WND (RFC 5961
	// 5.2), whose data the netstack would take (answered with an ACK, at
	// most one per connection each half second).
	DropUnacceptableACK
	NumDropReasons
)

var dropReasonNames = [NumDropReasons]string{
	DropSpoofedSource:           "spoofed_source",
	DropDeniedDestination:       "denied_destination",
	DropMaxConnections:          "max_connections",
	DropMaxConnectionsPerClient: "max_connections_per_client",
	DropMaxInFlightPerClient:    "max_in_flight_per_client",
	DropShuttingDown:            "shutting_down",
	DropMalformed:               "malformed",
	DropBadChecksum:             "bad_checksum",
	DropUnverifiable:            "unverifiable",
	DropTUNReadError:            "tun_read_error",
	DropTUNWriteError:           "tun_write_error",
	DropUntracked:               "untracked",
	DropNotTCP:                  "not_tcp",
	DropFDLimit:                 "fd_limit",
	DropStaleSYN:                "stale_syn",
	DropReuseWait:               "reuse_wait",
	DropSYNInFlight:             "syn_in_flight",
	DropMaxInFlight:             "max_in_flight",
	DropICMPOutOfWindow:         "icmp_out_of_window",
	DropICMPMTUTooSmall:         "icmp_mtu_too_small",
	DropUnacceptableACK:         "unacceptable_ack",
}

// String gives the label value.
func (r DropReason) String() string { return enumName(dropReasonNames[:], r) }

// Result is how a connection attempt ended. String gives its label value;
// range over NumResults to visit every one.
type Result uint8

const (
	// ResultRelayed: the handshake completed and the relay ran.
	ResultRelayed Result = iota
	// ResultDenied: refused by policy or a cap.
	ResultDenied
	// ResultUpstreamFailed: the upstream dial failed; the client got RST.
	ResultUpstreamFailed
	// ResultHandshakeFailed: the upstream was dialled but the client's
	// handshake did not complete, or the client reset the connection as
	// it completed, before its relay started; the upstream leg is reset.
	// A connection killed (Kill) before the client's handshake completed
	// counts here too; one killed after it, before its relay started, was
	// counted relayed already and ends aborted.
	ResultHandshakeFailed
	NumResults
)

var resultNames = [NumResults]string{
	ResultRelayed:         "relayed",
	ResultDenied:          "denied",
	ResultUpstreamFailed:  "upstream_failed",
	ResultHandshakeFailed: "handshake_failed",
}

// String gives the label value.
func (r Result) String() string { return enumName(resultNames[:], r) }

// DialFailure classifies an upstream dial failure. String gives its label
// value; range over NumDialFailures to visit every one.
type DialFailure uint8

const (
	// DialRefused: the destination answered RST (ECONNREFUSED).
	DialRefused DialFailure = iota
	// DialTimeout: no answer within the dial timeout.
	DialTimeout
	// DialUnreachable: no route, or an ICMP unreachable.
	DialUnreachable
	// DialNoDescriptor: the process or the system is out of file
	// descriptors (EMFILE, ENFILE).
	DialNoDescriptor
	// DialNoLocalPort: no local address and port free toward the
	// destination (EADDRNOTAVAIL, or EADDRINUSE binding a source address).
	DialNoLocalPort
	// DialSourceAddress: the source address the connection was to come
	// from is no longer an address of this host (bind: EADDRNOTAVAIL).
	DialSourceAddress
	// DialOther: anything else.
	DialOther
	NumDialFailures
)

var dialFailureNames = [NumDialFailures]string{
	DialRefused:       "refused",
	DialTimeout:       "timeout",
	DialUnreachable:   "unreachable",
	DialNoDescriptor:  "no_descriptor",
	DialNoLocalPort:   "no_local_port",
	DialSourceAddress: "source_address",
	DialOther:         "other",
}

// String gives the label value.
func (f DialFailure) String() string { return enumName(dialFailureNames[:], f) }

// End says how a relay ended. String gives its label value; range over
// NumEnds to visit every one.
type End uint8

const (
	// EndClean: both sides closed with FIN.
	EndClean End = iota
	// EndClientReset: the client reset or its leg failed (keepalive, RTO).
	EndClientReset
	// EndUpstreamReset: the destination reset or its leg failed.
	EndUpstreamReset
	// EndTimeout: the idle or half-close timeout expired.
	EndTimeout
	// EndAborted: tcpd reset it (shutdown, a kill, a panic).
	EndAborted
	NumEnds
)

var endNames = [NumEnds]string{
	EndClean:         "clean",
	EndClientReset:   "client_reset",
	EndUpstreamReset: "upstream_reset",
	EndTimeout:       "timeout",
	EndAborted:       "aborted",
}

// String gives the label value.
func (e End) String() string { return enumName(endNames[:], e) }

// enumName looks v up in its enum's name table.
func enumName[T ~uint8](names []string, v T) string {
	if int(v) < len(names) {
		return names[v]
	}
	return "unknown"
}

// Stats are the stack's counters. Every field is updated atomically on the
// data path and read at scrape time.
type Stats struct {
	// Queues are the per-queue counters of the TUN, one per queue, set
	// when the stack is built: the packet path counts only there.
	Queues []QueueStats
	// Relays are the relay shards' counters, one per shard, set when the
	// stack is built: the relays count only there.
	Relays []RelayStats
	// BufferPressure is the netstack's buffer level (buffers.go): 0 none,
	// 1 pressure, 2 severe.
	BufferPressure atomic.Uint32
	// Dropped counts what the connection handler refused or dropped; what
	// the packet loops drop is in Queues. Drops sums both.
	Dropped      [NumDropReasons]atomic.Uint64
	Connections  [NumResults]atomic.Uint64
	DialFailures [NumDialFailures]atomic.Uint64
	// Ended counts finished relays by how they ended.
	Ended [NumEnds]atomic.Uint64
	// Panics counts connection handlers that panicked; each reset its own
	// connection only.
	Panics atomic.Uint64
	// HandshakeTimeouts counts half-open connections aborted because the
	// client did not ACK the SYN-ACK within the handshake timeout.
	HandshakeTimeouts atomic.Uint64
	// MSSClamped counts client SYNs whose MSS tcpd lowered to what the path
	// back to the client carries (Tunables.MSSClamp).
	MSSClamped atomic.Uint64
	// Active is the number of relays in progress.
	Active atomic.Int64
	// InFlight is the number of handshakes in progress in tcpd's handler.
	InFlight atomic.Int64
}

// cacheLine separates counters that different cores write: 64 bytes on
// amd64 and arm64, 128 where adjacent-line prefetch pairs lines; the larger
// is safe.
const cacheLine = 128

// QueueStats are one TUN queue's counters: its read loop counts what it
// reads and drops, and the netstack's writers what they write to it. No
// other queue's loop writes them, so loops on different cores never share
// their cache lines; a scrape sums them.
type QueueStats struct {
	// Packets and Bytes count whole IP packets read from the queue
	// (conntrack.FromClient) and written to it (conntrack.ToClient).
	Packets, Bytes [conntrack.NumDirs]atomic.Uint64
	// Dropped counts the packets the queue's loop, or a write to the
	// queue, dropped.
	Dropped [NumDropReasons]atomic.Uint64
	_       [cacheLine]byte
}

// RelayStats are one relay shard's counters, written only by that shard's
// goroutine, so that shards on different cores share no cache line; a
// scrape sums them.
type RelayStats struct {
	// Bytes counts payload bytes relayed: FromClient is client →
	// destination.
	Bytes [conntrack.NumDirs]atomic.Uint64
	_     [cacheLine]byte
}

// Relayed returns the payload bytes relayed in direction d, by every shard.
func (s *Stats) Relayed(d conntrack.Dir) uint64 {
	var n uint64
	for i := range s.Relays {
		n += s.Relays[i].Bytes[d].Load()
	}
	return n
}

// TUN returns the packets and bytes of every queue together in direction d.
func (s *Stats) TUN(d conntrack.Dir) (packets, bytes uint64) {
	for i := range s.Queues {
		packets += s.Queues[i].Packets[d].Load()
		bytes += s.Queues[i].Bytes[d].Load()
	}
	return packets, bytes
}

// Drops returns the drops for reason r, by the handler and every queue.
func (s *Stats) Drops(r DropReason) uint64 {
	n := s.Dropped[r].Load()
	for i := range s.Queues {
		n += s.Queues[i].Dropped[r].Load()
	}
	return n
}

// NetstackStats are gVisor's own counters, read at one moment, and two
// gauges of the netstack's endpoints. Gauges among gVisor's statistics
// (current established) are left out: conntrack reports states.
type NetstackStats struct {
	TCPPassiveOpens             uint64
	TCPFailedConnectionAttempts uint64
	TCPEstablishedResets        uint64
	TCPEstablishedTimeouts      uint64
	TCPSegmentsReceived         uint64
	TCPInvalidSegmentsReceived  uint64
	TCPSegmentsSent             uint64
	TCPSegmentSendErrors        uint64
	TCPResetsSent               uint64
	TCPResetsReceived           uint64
	TCPRetransmits              uint64
	TCPFastRetransmits          uint64
	TCPTimeouts                 uint64
	TCPSACKRecoveries           uint64
	TCPTLPRecoveries            uint64
	TCPSpuriousRecoveries       uint64
	TCPChecksumErrors           uint64
	TCPForwardMaxInFlightDrops  uint64

	IPPacketsReceived                     uint64
	IPMalformedPacketsReceived            uint64
	IPInvalidDestinationAddressesReceived uint64
	IPInvalidSourceAddressesReceived      uint64
	IPPacketsSent                         uint64

	// Endpoints is the number of transport endpoints registered in the
	// netstack: connections in every state but TIME_WAIT, which conntrack
	// keeps itself.
	Endpoints uint64
	// TrackedEndpoints is the number of netstack endpoints tcpd holds for
	// reconciliation, kill and `tcpd conns`.
	TrackedEndpoints uint64
}

// NetstackStats reads the netstack's counters.
func (s *Stack) NetstackStats() NetstackStats {
	tcp := s.ns.Stats().TCP
	ip := s.ns.Stats().IP
	return NetstackStats{
		TCPPassiveOpens:             tcp.PassiveConnectionOpenings.Value(),
		TCPFailedConnectionAttempts: tcp.FailedConnectionAttempts.Value(),
		TCPEstablishedResets:        tcp.EstablishedResets.Value(),
		TCPEstablishedTimeouts:      tcp.EstablishedTimedout.Value(),
		TCPSegmentsReceived:         tcp.ValidSegmentsReceived.Value(),
		TCPInvalidSegmentsReceived:  tcp.InvalidSegmentsReceived.Value(),
		TCPSegmentsSent:             tcp.SegmentsSent.Value(),
		TCPSegmentSendErrors:        tcp.SegmentSendErrors.Value(),
		TCPResetsSent:               tcp.ResetsSent.Value(),
		TCPResetsReceived:           tcp.ResetsReceived.Value(),
		TCPRetransmits:              tcp.Retransmits.Value(),
		TCPFastRetransmits:          tcp.FastRetransmit.Value(),
		TCPTimeouts:                 tcp.Timeouts.Value(),
		TCPSACKRecoveries:           tcp.SACKRecovery.Value(),
		TCPTLPRecoveries:            tcp.TLPRecovery.Value(),
		TCPSpuriousRecoveries:       tcp.SpuriousRecovery.Value(),
		TCPChecksumErrors:           tcp.ChecksumErrors.Value(),
		TCPForwardMaxInFlightDrops:  tcp.ForwardMaxInFlightDrop.Value(),

		IPPacketsReceived:                     ip.PacketsReceived.Value(),
		IPMalformedPacketsReceived:            ip.MalformedPacketsReceived.Value(),
		IPInvalidDestinationAddressesReceived: ip.InvalidDestinationAddressesReceived.Value(),
		IPInvalidSourceAddressesReceived:      ip.InvalidSourceAddressesReceived.Value(),
		IPPacketsSent:                         ip.PacketsSent.Value(),

		Endpoints:        uint64(len(s.ns.RegisteredEndpoints())),
		TrackedEndpoints: uint64(s.reg.len()),
	}
}
