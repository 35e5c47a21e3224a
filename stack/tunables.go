package stack

import (
	"fmt"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// Tunables are the settings that may change while the stack runs. A change
// applies to what happens next: new connections take the new caps and
// keepalive, a running relay re-reads its timeouts at its next deadline,
// and a connection entering TIME_WAIT takes the new duration.
type Tunables struct {
	DialTimeout             time.Duration
	Keepalive               Keepalive
	HalfCloseTimeout        time.Duration
	IdleTimeout             time.Duration
	TimeWait                time.Duration
	TimeWaitLimit           int
	MaxConnections          int
	MaxConnectionsPerClient int
	MaxInFlightPerClient    int
}

// tunables returns the Tunables part of a (defaulted) Config.
func (c *Config) tunables() Tunables {
	return Tunables{
		DialTimeout:             c.DialTimeout,
		Keepalive:               c.Keepalive,
		HalfCloseTimeout:        c.HalfCloseTimeout,
		IdleTimeout:             c.IdleTimeout,
		TimeWait:                c.TimeWait,
		TimeWaitLimit:           c.TimeWaitLimit,
		MaxConnections:          c.MaxConnections,
		MaxConnectionsPerClient: c.MaxConnectionsPerClient,
		MaxInFlightPerClient:    c.MaxInFlightPerClient,
	}
}

// Tunables returns the settings in force.
func (s *Stack) Tunables() Tunables { return *s.tune.Load() }

// SetTunables applies new settings to the running stack. Zero values take
// the same defaults as Config.
func (s *Stack) SetTunables(t Tunables) error {
	c := Config{
		DialTimeout:             t.DialTimeout,
		Keepalive:               t.Keepalive,
		HalfCloseTimeout:        t.HalfCloseTimeout,
		IdleTimeout:             t.IdleTimeout,
		TimeWait:                t.TimeWait,
		TimeWaitLimit:           t.TimeWaitLimit,
		MaxConnections:          t.MaxConnections,
		MaxConnectionsPerClient: t.MaxConnectionsPerClient,
		MaxInFlightPerClient:    t.MaxInFlightPerClient,
	}
	c.setDefaults()
	nt := c.tunables()
	tw := tcpip.TCPTimeWaitTimeoutOption(nt.TimeWait)
	if terr := s.ns.SetTransportProtocolOption(tcp.ProtocolNumber, &tw); terr != nil {
		return fmt.Errorf("set TCP TIME_WAIT timeout: %s", terr)
	}
	s.table.SetTimeWait(nt.TimeWait, nt.TimeWaitLimit)
	s.tune.Store(&nt)
	return nil
}
