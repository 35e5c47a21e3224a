package conntrack

import (
	"net/netip"
	"time"
)

// Counters are cumulative since the table was created.
type Counters struct {
	// Opened counts connections tracked from their first SYN.
	Opened uint64
	// Established counts connections whose handshake completed on tcpd's side.
	Established uint64
	// Closed counts entries removed, whatever the reason.
	Closed uint64
	// Resets counts entries closed by an acceptable RST, from either side.
	Resets uint64
	// TimeWaitEntered counts tcpd-side entries into TIME_WAIT.
	TimeWaitEntered uint64
	// TimeWaitOverflow counts TIME_WAIT entries cut short because the
	// table held TimeWaitLimit of them already.
	TimeWaitOverflow uint64
	// TimeWaitReused counts TIME_WAIT entries retired early by a new SYN on
	// the same 4-tuple (RFC 6191).
	TimeWaitReused uint64
	// TimeWaitAcks counts the ACKs tcpd sent for connections in TIME_WAIT:
	// answers to a retransmitted FIN (the client lost tcpd's last ACK), to
	// an old duplicate segment or to a SYN that may not reopen the 4-tuple.
	TimeWaitAcks uint64
	// TimeWaitAcksSkipped counts the ACKs TIME_WAIT did not send because
	// it had sent one for the connection less than half a second before
	// (Linux's TCPACKSkippedTimeWait).
	TimeWaitAcksSkipped uint64
	// RSTIgnored counts RSTs that the receiver would not accept
	// (RFC 5961 3.2): out of window, or in window but not at RCV.NXT.
	RSTIgnored uint64
	// Untracked counts segments that matched no entry and opened none.
	Untracked uint64
	// TableFull counts SYNs not tracked because the table was full.
	TableFull uint64
	// Expired counts entries removed by a timer other than TIME_WAIT's
	// (a handshake that never completed, an entry the stack abandoned).
	Expired uint64
	// Corrections counts tcpd-side states that disagreed with the
	// netstack's own endpoint state and were corrected to it.
	Corrections uint64
}

// Snapshot is what the table knows at one moment, for exporters.
type Snapshot struct {
	// States counts live entries by tcpd's state (the netstack side).
	States [NumStates]uint64
	// ClientStates counts live entries by the client's state.
	ClientStates [NumStates]uint64
	// Live is the number of entries.
	Live int
	// Relays is the number of entries with a relay attached; an entry
	// whose connection is over stays (in state closed) until its relay
	// has finished.
	Relays int
	// TimeWait is States[StateTimeWait]; TimeWaitLimit and TimeWaitTimeout
	// are the configured cap and duration.
	TimeWait        int
	TimeWaitLimit   int
	TimeWaitTimeout time.Duration
	Counters
	// Handshake is the client leg: SYN-ACK sent → the client's ACK.
	Handshake HistogramSnapshot
	// Dial is the upstream connect.
	Dial HistogramSnapshot
	// Setup is what the client sees: its first SYN → established on tcpd.
	Setup HistogramSnapshot
	// TimeWaitDwell is how long entries stayed in TIME_WAIT.
	TimeWaitDwell HistogramSnapshot
	// Lifetime is established → closed, for connections that established.
	Lifetime HistogramSnapshot
}

// ID identifies one tracked connection for as long as the process runs.
// IDs are never reused, so a stale ID never reaches a newer connection on
// the same 4-tuple.
type ID uint64

// Tuple is a connection's 4-tuple as the client sees it.
type Tuple struct {
	// Client is the client's address and port (the netstack's remote).
	Client netip.AddrPort
	// Dst is the original destination (the netstack's local address).
	Dst netip.AddrPort
}

// Conn is one row of the live table.
type Conn struct {
	ID    ID
	Tuple Tuple
	// State is tcpd's state; ClientState the client's, as inferred from the
	// segments crossing the TUN.
	State       State
	ClientState State
	// Opened is when the first SYN arrived; Since when State was entered.
	Opened time.Time
	Since  time.Time
	// BytesIn counts payload bytes from the client, BytesOut to it, by
	// sequence space (retransmissions are not counted twice).
	BytesIn, BytesOut uint64
	// Handshake is the client leg and Dial the upstream connect; zero until
	// known.
	Handshake, Dial time.Duration
	// TimeWaitLeft is how long the entry stays in TIME_WAIT; zero otherwise.
	TimeWaitLeft time.Duration
	// MSS is the MSS option of the client's SYN as tcpd's netstack read
	// it, 0 if it had none; ClampedFrom, when tcpd lowered it, the value
	// the client sent (else 0). AdvMSS is the MSS tcpd's SYN-ACK offered
	// the client, 0 before it was sent.
	MSS, ClampedFrom, AdvMSS uint16
}

// key is a Tuple packed for the table: 38 bytes where a Tuple takes 64
// (netip.Addr carries a zone handle, which addresses from the TUN never
// have). The table holds one per entry and one per map slot.
type key struct {
	client, dst  [16]byte
	cport, dport uint16
	v4           bool
}

func keyOf(tu Tuple) key {
	return key{
		client: tu.Client.Addr().As16(), dst: tu.Dst.Addr().As16(),
		cport: tu.Client.Port(), dport: tu.Dst.Port(),
		v4: tu.Client.Addr().Is4(),
	}
}

func (k key) addr(a [16]byte) netip.Addr {
	if k.v4 {
		return netip.AddrFrom4([4]byte(a[12:]))
	}
	return netip.AddrFrom16(a)
}

func (k key) clientAddr() netip.Addr { return k.addr(k.client) }

func (k key) tuple() Tuple {
	return Tuple{Client: netip.AddrPortFrom(k.addr(k.client), k.cport), Dst: netip.AddrPortFrom(k.addr(k.dst), k.dport)}
}
