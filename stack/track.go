package stack

import (
	"math"
	"time"

	"go.uber.org/zap"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"tcpd/conntrack"
)

// reconcileEvery is how often conntrack's tcpd-side states are compared
// with the netstack endpoints' own, and conntrack's timers run. A
// disagreement must persist across two ticks to count as a correction.
const reconcileEvery = time.Second

// timeWaitResolution is how late a TIME_WAIT entry may leave conntrack after
// its deadline (the dwell recorded is exact regardless).
const timeWaitResolution = 100 * time.Millisecond

// reconcile runs conntrack's timers, then compares every registered
// endpoint's state with conntrack's and forgets endpoints that are gone.
func (s *Stack) reconcile() {
	s.table.Tick()
	ids, eps := s.reg.snapshot(s.maint.ids[:0], s.maint.eps[:0])
	logged := 0
	for i, id := range ids {
		st := conntrackState(tcp.EndpointState(eps[i].State()))
		if corrected, was := s.table.Reconcile(id, st); corrected {
			// Corrections mean conntrack misread the wire: rare, and worth
			// a line each, up to a few per tick.
			if logged < 5 {
				s.log.Warn("conntrack corrected from the netstack's state",
					zap.Uint64("id", uint64(id)), zap.Stringer("conntrack", was), zap.Stringer("netstack", st))
			}
			logged++
		}
		if st == conntrack.StateClosed && s.reg.relayFinished(id) {
			s.reg.unregister(id)
		}
	}
	clear(eps)
	s.maint.ids, s.maint.eps = ids, eps
	s.compactMaps()
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

// Conns returns the rows of the live table that keep accepts (nil keeps
// all), in ID order, joined with the netstack's per-endpoint RTT and
// retransmission counts. keep runs under the table's lock: it must be quick
// and must not call back into the stack.
func (s *Stack) Conns(keep func(*conntrack.Conn) bool) []ConnInfo {
	cs := s.table.Conns(keep)
	out := make([]ConnInfo, len(cs))
	mtu := int(s.link.MTU())
	for i, c := range cs {
		out[i].Conn = c
		out[i].SendMSS = sendMSS(c.MSS, c.Tuple.Client.Addr().Is6(), mtu)
		e := s.reg.lookup(c.ID)
		if e == nil {
			continue
		}
		out[i].Upstream = e.relay.localAddr()
		var info tcpip.TCPInfoOption
		if err := e.ep.GetSockOpt(&info); err == nil {
			out[i].RTT, out[i].RTTVar, out[i].RTO = info.RTT, info.RTTVar, info.RTO
			out[i].Cwnd = info.SndCwnd
			if info.SndSsthresh < math.MaxInt32 { // the netstack's "infinite" until a loss
				out[i].Ssthresh = info.SndSsthresh
			}
		}
		if n, err := e.ep.GetSockOptInt(tcpip.ReceiveQueueSizeOption); err == nil {
			out[i].RecvQ = n
		}
		out[i].SendQ = e.relay.clientSendQ(s.table.Acknowledged(c.ID))
		if st, ok := e.ep.Stats().(*tcp.Stats); ok {
			out[i].Retransmits = st.SendErrors.Retransmits.Value()
		}
		var cc tcpip.CongestionControlOption
		if err := e.ep.GetSockOpt(&cc); err == nil {
			out[i].CongestionControl = string(cc)
		}
	}
	return out
}

// UpstreamTCP reads what the kernel says of connection id's upstream
// socket; false when tcpd holds none for it (not dialled yet, or closed).
// Each call costs three system calls, so listings ask for it only when
// told to (`tcpd conns -i`).
func (s *Stack) UpstreamTCP(id conntrack.ID) (UpstreamTCP, bool) {
	e := s.reg.lookup(id)
	if e == nil {
		return UpstreamTCP{}, false
	}
	return e.relay.upstreamTCP()
}

// sendMSS is the MSS the netstack sends with, given the MSS option of the
// client's SYN (0: none) and the TUN's MTU.
func sendMSS(opt uint16, v6 bool, mtu int) int {
	mss := int(opt)
	if mss == 0 {
		mss = defaultMSS
	}
	hdr := ipv4TCPHeaders
	if v6 {
		hdr = ipv6TCPHeaders
	}
	return max(min(mss, mtu-hdr), 0)
}

// defaultMSS is what a sender assumes of a SYN without the MSS option (RFC
// 9293 3.7.1), and what the netstack assumes for IPv6 too.
const defaultMSS = 536

// Kill ends the connection id, as `ss -K` does, and reports whether tcpd
// held anything of it: a registered endpoint, whose legs are both reset; a
// connection whose upstream connect or client handshake is in progress,
// which ends as a failed connect does, with RST to the client (relay.kill);
// or conntrack's TIME_WAIT record, which is dropped: the connection is
// over, nothing is sent.
func (s *Stack) Kill(id conntrack.ID) bool {
	killed := false
	if e := s.reg.lookup(id); e != nil {
		// Its shard resets both legs, or the client's alone once the
		// relay has ended. A relay that has ended with its endpoint
		// closed is gone, though the reconcile tick has not forgotten it
		// yet; one killed already is being reset.
		gone := e.relayDone.Load() && conntrackState(tcp.EndpointState(e.ep.State())) == conntrack.StateClosed
		if !gone && e.relay.abort(EndAborted) {
			killed = true
		}
		s.reg.unregister(id)
	} else if r := s.reg.connectingRelay(id); r != nil && r.abortEnd.CompareAndSwap(0, int32(EndAborted)+1) {
		// The first kill of a connection its handler has not
		// registered yet.
		r.post(reqKill)
		killed = true
	}
	// An endpoint entering TIME_WAIT leaves the netstack at once but the
	// registry only at the next reconcile: the record may be all there is
	// even when an endpoint was found.
	if s.table.DropTimeWait(id) {
		killed = true
	}
	return killed
}
