package stack

import (
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"tcpd/conntrack"
)

// reconcileEvery is how often conntrack's tcpd-side states are compared
// with the netstack endpoints' own, and conntrack's timers run. A
// disagreement must persist across two ticks to count as a correction.
const reconcileEvery = time.Second

// retireQueue bounds endpoints waiting to be torn down by the maintenance
// loop. If it is full, an endpoint simply runs out its own TIME_WAIT.
const retireQueue = 4096

// endpoint is the netstack side of a tracked connection.
type endpoint struct {
	ep       tcpip.Endpoint
	upstream string
}

// register remembers ep for id, for reconciliation, `tcpd conns` and kill.
func (s *Stack) register(id conntrack.ID, ep tcpip.Endpoint, upstream string) {
	if id == 0 {
		return
	}
	s.epMu.Lock()
	s.eps[id] = &endpoint{ep: ep, upstream: upstream}
	s.epMu.Unlock()
}

func (s *Stack) trackedEndpoints() int {
	s.epMu.Lock()
	defer s.epMu.Unlock()
	return len(s.eps)
}

func (s *Stack) endpointOf(id conntrack.ID) *endpoint {
	s.epMu.Lock()
	defer s.epMu.Unlock()
	return s.eps[id]
}

func (s *Stack) unregister(id conntrack.ID) {
	s.epMu.Lock()
	delete(s.eps, id)
	s.epMu.Unlock()
}

// retire tears down the endpoint of a connection conntrack retired from
// TIME_WAIT. Abort takes the endpoint out of the demuxer synchronously; the
// RST it sends carries the old connection's numbers, which a client that has
// moved on ignores (RFC 9293 3.10.7.3), and conntrack ignores too.
func (s *Stack) retire(id conntrack.ID, now bool) {
	if !now {
		select {
		case s.retireQ <- id:
		default:
		}
		return
	}
	if e := s.endpointOf(id); e != nil {
		e.ep.Abort()
		s.unregister(id)
	}
}

// reconcile runs conntrack's timers, then compares every registered
// endpoint's state with conntrack's and forgets endpoints that are gone.
func (s *Stack) reconcile() {
	s.table.Tick()
	s.epMu.Lock()
	ids := s.reconcileIDs[:0]
	eps := s.reconcileEPs[:0]
	for id, e := range s.eps {
		ids = append(ids, id)
		eps = append(eps, e.ep)
	}
	s.epMu.Unlock()
	for i, id := range ids {
		st := conntrackState(tcp.EndpointState(eps[i].State()))
		s.table.Reconcile(id, st)
		if st == conntrack.StateClosed {
			s.unregister(id)
		}
	}
	clear(eps)
	s.reconcileIDs, s.reconcileEPs = ids, eps
}

// conntrackState maps a netstack endpoint state. States an endpoint passes
// through only before or after its life as a connection map to closed.
func conntrackState(st tcp.EndpointState) conntrack.State {
	switch st {
	case tcp.StateEstablished:
		return conntrack.StateEstablished
	case tcp.StateSynSent:
		return conntrack.StateSynSent
	case tcp.StateSynRecv:
		return conntrack.StateSynRecv
	case tcp.StateFinWait1:
		return conntrack.StateFinWait1
	case tcp.StateFinWait2:
		return conntrack.StateFinWait2
	case tcp.StateTimeWait:
		return conntrack.StateTimeWait
	case tcp.StateCloseWait:
		return conntrack.StateCloseWait
	case tcp.StateLastAck:
		return conntrack.StateLastAck
	case tcp.StateClosing:
		return conntrack.StateClosing
	case tcp.StateListen:
		return conntrack.StateListen
	}
	return conntrack.StateClosed
}

// Snapshot returns conntrack's counts, counters and histograms.
func (s *Stack) Snapshot() conntrack.Snapshot { return s.table.Snapshot() }

// Conns returns the live table joined with the netstack's per-endpoint RTT
// and retransmission counts.
func (s *Stack) Conns() []ConnInfo {
	cs := s.table.Conns(nil)
	out := make([]ConnInfo, len(cs))
	for i, c := range cs {
		out[i].Conn = c
		e := s.endpointOf(c.ID)
		if e == nil {
			continue
		}
		out[i].Upstream = e.upstream
		var info tcpip.TCPInfoOption
		if err := e.ep.GetSockOpt(&info); err == nil {
			out[i].RTT, out[i].RTTVar = info.RTT, info.RTTVar
		}
		if st, ok := e.ep.Stats().(*tcp.Stats); ok {
			out[i].Retransmits = st.SendErrors.Retransmits.Value()
		}
	}
	return out
}

// Kill resets the connection id on both legs. It reports whether tcpd held
// an endpoint for it.
func (s *Stack) Kill(id conntrack.ID) bool {
	e := s.endpointOf(id)
	if e == nil {
		return false
	}
	e.ep.Abort() // the relay sees the error and resets the upstream leg
	s.unregister(id)
	return true
}
