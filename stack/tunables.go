package stack

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"tcpd/conntrack"
)

// Tunables are the settings that may change while the stack runs. A change
// applies to what happens next: new connections take the new caps,
// timeouts, keepalive, congestion control and loss detection; every running
// relay takes new idle and half-close timeouts at once (SetTunables); a
// connection entering TIME_WAIT takes the new duration and cap. Each
// default is stated on its field; WithDefaults applies them.
type Tunables struct {
	// DialTimeout bounds the upstream connect. Zero means 10s.
	DialTimeout time.Duration
	// Interface, when set, binds upstream sockets to it (SO_BINDTODEVICE).
	// It must be an interface of this host.
	Interface string
	// Mark, when non-zero, is set on upstream sockets (SO_MARK).
	Mark uint32
	// SourceAddresses, when set, are the local addresses upstream sockets
	// are bound to: each connection takes one of its destination's family,
	// chosen by a hash of its 4-tuple, and the kernel picks its port only
	// at connect (IP_BIND_ADDRESS_NO_PORT), so that every address brings
	// a whole local port range toward every destination. A family with
	// none is left to the kernel's routing. Each must be an address of
	// this host.
	SourceAddresses []netip.Addr
	// Keepalive applies to both legs.
	Keepalive Keepalive
	// UserTimeout is how long a leg's sent data may go unacknowledged, or
	// its peer's window stay closed, before that leg is given up and the
	// connection reset (TCP_USER_TIMEOUT, RFC 5482), on both legs. Zero
	// means as long as keepalive takes to declare a silent peer dead:
	// Keepalive's Idle + Interval × Count. UserTimeoutOff (any negative
	// value) sets none, as a Linux socket has none by default: the TCP's
	// own retransmission limit gives a dead peer up (Linux's
	// tcp_retries2, about 15 minutes; the netstack's 15 retransmissions),
	// and a peer that answers window probes with its window closed is
	// kept for as long as it does.
	UserTimeout time.Duration
	// HalfCloseTimeout bounds how long a half-closed connection may go without
	// moving a byte in its open direction, counted from the half-close or
	// the last byte after it. Zero means 60s.
	HalfCloseTimeout time.Duration
	// IdleTimeout, when non-zero, closes a connection that moves no byte in
	// either direction for that long.
	IdleTimeout time.Duration
	// TimeWait is how long tcpd holds a closed connection in TIME_WAIT
	// (conntrack's record; the netstack lets the endpoint go at once).
	// Zero means 30s.
	TimeWait time.Duration
	// TimeWaitLimit caps connections in TIME_WAIT; more are cut short and
	// counted. Nil means 16384; zero keeps none.
	TimeWaitLimit *int
	// HandshakeTimeout bounds how long tcpd waits for the client's ACK of
	// its SYN-ACK; then the half-open connection is aborted and its in-flight
	// slot freed. The netstack alone would retransmit for about two minutes.
	// Zero means 10s.
	HandshakeTimeout time.Duration
	// CongestionControl is the netstack's algorithm: "reno" or "cubic".
	// Empty means reno, chosen by measurement: on a 20 ms path with 1 %
	// loss each way reno moved 7-9 Mbit/s to cubic's 5-6 (the Mathis bound
	// is about 7); on a clean path the two were within the noise.
	CongestionControl string
	// NoRACK turns RACK-TLP loss detection (RFC 8985) off, leaving the
	// classic three-duplicate-ACK rule.
	NoRACK bool
	// MaxConnections caps connections relayed and in their handshake,
	// together. Zero means 65536.
	MaxConnections int
	// MaxConnectionsPerClient caps them per client address. Zero means
	// 4096.
	MaxConnectionsPerClient int
	// MaxInFlightPerClient caps handshakes in progress per client address.
	// Zero means 256.
	MaxInFlightPerClient int
	// MSSClamp bounds the MSS tcpd accepts from a client's SYN, so that
	// the netstack never sends the client a segment the path back to it
	// cannot carry. Zero (MSSClampAuto) clamps to the MTU of the kernel's
	// route back to that client less 40 (IPv4) or 60 (IPv6) bytes of
	// headers; a positive value is a fixed MSS for both families;
	// MSSClampOff (any negative value) leaves the client's MSS alone.
	MSSClamp int
}

// UserTimeoutOff is the UserTimeout that sets none.
const UserTimeoutOff time.Duration = -1

// userTimeout is the TCP user timeout both legs get: 0 for none.
func (t *Tunables) userTimeout() time.Duration {
	switch {
	case t.UserTimeout < 0:
		return 0
	case t.UserTimeout == 0:
		return t.Keepalive.Idle + t.Keepalive.Interval*time.Duration(t.Keepalive.Count)
	}
	return t.UserTimeout
}

// CongestionControls are the values CongestionControl takes.
var CongestionControls = []string{"reno", "cubic"}

// WithDefaults returns t with each unset field that has a default set to it.
func (t Tunables) WithDefaults() Tunables {
	if t.DialTimeout == 0 {
		t.DialTimeout = 10 * time.Second
	}
	if t.Keepalive.Idle == 0 {
		t.Keepalive.Idle = 120 * time.Second
	}
	if t.Keepalive.Interval == 0 {
		t.Keepalive.Interval = 30 * time.Second
	}
	if t.Keepalive.Count == 0 {
		t.Keepalive.Count = 4
	}
	if t.HalfCloseTimeout == 0 {
		t.HalfCloseTimeout = 60 * time.Second
	}
	if t.TimeWait == 0 {
		t.TimeWait = 30 * time.Second
	}
	if t.TimeWaitLimit == nil {
		t.TimeWaitLimit = new(16384)
	}
	if t.HandshakeTimeout == 0 {
		t.HandshakeTimeout = 10 * time.Second
	}
	if t.CongestionControl == "" {
		t.CongestionControl = "reno"
	}
	if t.MaxConnections == 0 {
		t.MaxConnections = 65536
	}
	if t.MaxConnectionsPerClient == 0 {
		t.MaxConnectionsPerClient = 4096
	}
	if t.MaxInFlightPerClient == 0 {
		t.MaxInFlightPerClient = 256
	}
	if t.MSSClamp < 0 {
		t.MSSClamp = MSSClampOff
	}
	if t.UserTimeout < 0 {
		t.UserTimeout = UserTimeoutOff
	}
	return t
}

// conntrackConfig is the connection manager's share of t (defaulted).
func (t *Tunables) conntrackConfig() conntrack.Config {
	return conntrack.Config{
		TimeWait:      t.TimeWait,
		TimeWaitLimit: t.TimeWaitLimit,
		// A SYN no handler took is given as long as a handshake.
		Unclaimed: t.HandshakeTimeout,
		// The link drops a client's SYNs beyond its in-flight cap.
		MaxSynRecvPerClient: t.MaxInFlightPerClient,
	}
}

// Tunables returns the settings in force.
func (s *Stack) Tunables() Tunables { return *s.tune.Load() }

// SetTunables applies new settings to the running stack. Zero values take
// the same defaults as Config. On an error nothing has changed.
func (s *Stack) SetTunables(t Tunables) error {
	t = t.WithDefaults()
	if err := t.check(); err != nil {
		return err
	}
	s.tuneMu.Lock()
	defer s.tuneMu.Unlock()
	if err := s.setTunableTCPOptions(&t); err != nil {
		// Unreachable after check; undo what was set all the same.
		s.setTunableTCPOptions(s.tune.Load())
		return err
	}
	s.table.Tune(t.conntrackConfig())
	old := s.tune.Swap(&t)
	if old == nil || old.IdleTimeout != t.IdleTimeout || old.HalfCloseTimeout != t.HalfCloseTimeout {
		// Running relays re-arm with the new timeouts now: one that had
		// none (idle_timeout 0s) would otherwise never take one, and
		// one armed with the old would keep its deadline.
		for _, sh := range s.shards {
			sh.postAll(reqRetune)
		}
	}
	return nil
}

// check rejects what the netstack would refuse, and an upstream source
// address or interface that every dial would fail on.
func (t *Tunables) check() error {
	if !slices.Contains(CongestionControls, t.CongestionControl) {
		return fmt.Errorf("congestion control %q: not one of %v", t.CongestionControl, CongestionControls)
	}
	if t.TimeWait < 0 {
		return fmt.Errorf("TIME_WAIT timeout %v: negative", t.TimeWait)
	}
	if err := checkSourceAddresses(t.SourceAddresses); err != nil {
		return err
	}
	return checkInterface(t.Interface)
}

// setTunableTCPOptions sets the netstack's stack-wide TCP options that t
// holds. A new endpoint reads them when it is created (congestion control)
// and when its handshake completes (loss detection), so they apply to new
// connections. TIME_WAIT is conntrack's: Tune gives it the new duration.
func (s *Stack) setTunableTCPOptions(t *Tunables) error {
	cc := tcpip.CongestionControlOption(t.CongestionControl)
	recovery := tcpip.TCPRACKLossDetection
	if t.NoRACK {
		recovery = 0
	}
	return s.setTransportOptions([]transportOption{
		{"congestion control", &cc},
		{"loss detection", &recovery},
	})
}

// lossDetectionRACK reports whether new connections take RACK-TLP loss
// detection, as the netstack's stack-wide option says.
func (s *Stack) lossDetectionRACK() bool {
	var r tcpip.TCPRecovery
	s.ns.TransportProtocolOption(tcp.ProtocolNumber, &r)
	return r&tcpip.TCPRACKLossDetection != 0
}
