package stack

import (
	"context"
	"encoding/binary"
	"errors"
	"hash/maphash"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"go.uber.org/zap"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"tcpd/conntrack"
)

// request wraps a ForwarderRequest so that it is completed exactly once on
// every path: the handler completes it explicitly, and a deferred finish
// answers RST if a panic or an early return left it open.
type request struct {
	r    *tcp.ForwarderRequest
	done bool
}

func (q *request) complete(rst bool) {
	if q.done {
		return
	}
	q.done = true
	q.r.Complete(rst)
}

// handle runs on its own goroutine for every SYN the forwarder accepts. It
// checks policy and limits, dials the destination, and only then completes
// the client's handshake, so that a client of a closed port sees RST exactly
// as it would from the destination itself.
func (s *Stack) handle(fr *tcp.ForwarderRequest) {
	s.conns.Add(1)
	defer s.conns.Done()
	req := &request{r: fr}
	tid := fr.ID()
	client := netip.AddrPortFrom(addrFrom(tid.RemoteAddress), tid.RemotePort)
	dst := netip.AddrPortFrom(addrFrom(tid.LocalAddress), tid.LocalPort)
	log := s.log
	id := s.table.Claim(conntrack.Tuple{Client: client, Dst: dst})
	var ep tcpip.Endpoint
	defer func() {
		if p := recover(); p != nil {
			s.stats.Panics.Add(1)
			log.Error("connection handler panicked; connection reset",
				zap.Stringer("client", client), zap.Stringer("dst", dst), zap.Any("panic", p))
		}
		req.complete(true)
		if ep == nil && id != 0 {
			// No endpoint and no segment will end this entry: the SYN was
			// refused (its RST usually closed the entry already) or the
			// handshake failed.
			s.table.Gone(id)
		}
	}()

	if s.draining.Load() {
		s.refuse(req, DropShuttingDown)
		return
	}
	if id == 0 && !s.cfg.noTrack {
		// The SYN is not tracked (the table is full, or its entry is gone
		// already): a connection nobody could see is not made.
		s.refuse(req, DropUntracked)
		return
	}
	if v := s.policy.Load().Check(dst.Addr()); !v.Allowed {
		s.refuse(req, DropDeniedDestination)
		if ce := log.Check(zap.DebugLevel, "destination denied"); ce != nil {
			ce.Write(zap.Stringer("client", client), zap.Stringer("dst", dst), zap.Stringer("reason", v.Reason))
		}
		return
	}
	if reason, ok := s.admit(client.Addr()); !ok {
		if reason == DropMaxInFlightPerClient {
			// Like a full SYN queue: say nothing, and forget the SYN; the
			// client's retransmission starts afresh. (The link drops most
			// such SYNs before they get this far.)
			s.stats.Dropped[reason].Add(1)
			req.complete(false)
			return
		}
		s.refuse(req, reason)
		return
	}
	admitted := true
	defer func() {
		if admitted {
			s.release(client.Addr())
		}
	}()

	start := time.Now()
	upstream, err := s.dial(client, dst)
	if err != nil {
		s.stats.Connections[ResultUpstreamFailed].Add(1)
		f := classifyDial(err)
		s.stats.DialFailures[f].Add(1)
		req.complete(true)
		s.warnDialFailure(f, dst, err)
		if ce := log.Check(zap.DebugLevel, "upstream dial failed"); ce != nil {
			ce.Write(zap.Stringer("client", client), zap.Stringer("dst", dst), zap.Error(err))
		}
		return
	}
	dialed := time.Since(start)
	s.table.Dialled(id, dialed)

	var wq waiter.Queue
	// CreateEndpoint blocks until the client's ACK; a client that never
	// sends it would hold the slot for the netstack's ~2 minutes of SYN-ACK
	// retransmissions.
	expire := time.AfterFunc(s.tune.Load().HandshakeTimeout, func() { s.abortHandshake(tid) })
	newEP, terr := fr.CreateEndpoint(&wq)
	expire.Stop()
	req.complete(false)
	if terr != nil {
		// The client went away or never finished its handshake: the
		// destination, which accepted, must not read that as a clean
		// end (FIN) of a request; it gets a reset.
		resetConn(upstream)
		s.stats.Connections[ResultHandshakeFailed].Add(1)
		if ce := log.Check(zap.DebugLevel, "client handshake failed"); ce != nil {
			ce.Write(zap.Stringer("client", client), zap.Stringer("dst", dst), zap.String("error", terr.String()))
		}
		return
	}
	ep = newEP
	rec := s.register(id, ep, upstream.LocalAddr().String())
	defer close(rec.done)
	s.setKeepalive(ep)

	// The handshake is done: the slot moves from in-flight to connections,
	// and the relay is attached to the connection's tracking entry.
	r := newRelay(s, ep, &wq, upstream)
	admitted = false
	if !s.attach(client.Addr(), id, r) {
		// No entry to attach to: the table was full when the SYN came,
		// or the client reset the connection as its handshake completed.
		// A relay nobody can see is not started.
		s.stats.Dropped[DropUntracked].Add(1)
		s.stats.Connections[ResultDenied].Add(1)
		r.abort()
		return
	}
	defer s.detach(client.Addr(), id, r)
	rec.relay.Store(r)
	s.stats.Connections[ResultRelayed].Add(1)

	if ce := log.Check(zap.DebugLevel, "connection established"); ce != nil {
		ce.Write(zap.Stringer("client", client), zap.Stringer("dst", dst), zap.Duration("dial", dialed))
	}
	r.run()
	if ce := log.Check(zap.DebugLevel, "connection closed"); ce != nil {
		ce.Write(zap.Stringer("client", client), zap.Stringer("dst", dst),
			zap.Uint64("bytes_in", r.bytes[conntrack.FromClient].Load()), zap.Uint64("bytes_out", r.bytes[conntrack.ToClient].Load()),
			zap.Stringer("end", r.end))
	}
}

// abortHandshake aborts the half-open endpoint of id if it is still waiting
// for the client's ACK, which makes its CreateEndpoint return.
func (s *Stack) abortHandshake(id gvstack.TransportEndpointID) {
	if s.abortIfIn(id, tcp.StateSynRecv) {
		s.stats.HandshakeTimeouts.Add(1)
	}
}

// abortIfIn aborts the netstack's endpoint for id if it is in state st, and
// reports whether it did.
func (s *Stack) abortIfIn(id gvstack.TransportEndpointID, st tcp.EndpointState) bool {
	proto := header.IPv4ProtocolNumber
	if id.LocalAddress.Len() == 16 {
		proto = header.IPv6ProtocolNumber
	}
	tep := s.ns.FindTransportEndpoint(proto, tcp.ProtocolNumber, id, nicID)
	ep, ok := tep.(tcpip.Endpoint)
	if !ok || tcp.EndpointState(ep.State()) != st {
		return false
	}
	tep.Abort()
	return true
}

// refuse answers the SYN with RST and counts why.
func (s *Stack) refuse(req *request, reason DropReason) {
	s.stats.Dropped[reason].Add(1)
	s.stats.Connections[ResultDenied].Add(1)
	req.complete(true)
}

// admit reserves an in-flight slot for client, checking the connection caps.
func (s *Stack) admit(client netip.Addr) (DropReason, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	tune := s.tune.Load()
	open := int(s.stats.Active.Load() + s.stats.InFlight.Load())
	if open >= tune.MaxConnections {
		return DropMaxConnections, false
	}
	if b := s.cfg.FDBudget; b > 0 && open >= b {
		return DropFDLimit, false
	}
	c := s.perClient[client]
	if c == nil {
		c = new(clientCount)
		s.perClient[client] = c
		s.perClientPeak = max(s.perClientPeak, len(s.perClient))
	}
	switch {
	case c.conns+c.inFlight >= tune.MaxConnectionsPerClient:
		s.forgetClientLocked(client, c)
		return DropMaxConnectionsPerClient, false
	case c.inFlight >= tune.MaxInFlightPerClient:
		return DropMaxInFlightPerClient, false
	}
	c.inFlight++
	s.stats.InFlight.Add(1)
	return 0, true
}

// release gives back an in-flight slot.
func (s *Stack) release(client netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.perClient[client]
	c.inFlight--
	s.stats.InFlight.Add(-1)
	s.forgetClientLocked(client, c)
}

// attach moves an established connection's in-flight slot to the client's
// connection count and attaches its relay r to the tracking entry id. It
// reports false, giving the slot back, when id has no live entry. The
// attachment, the count of relays and the set of relays change together
// under s.mu, so that Relays reads them consistently.
func (s *Stack) attach(client netip.Addr, id conntrack.ID, r *relay) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.perClient[client]
	c.inFlight--
	s.stats.InFlight.Add(-1)
	ok := s.cfg.noTrack || s.table.Relaying(id)
	if ok {
		c.conns++
		s.stats.Active.Add(1)
		s.active[r] = struct{}{}
		s.activePeak = max(s.activePeak, len(s.active))
	}
	s.forgetClientLocked(client, c)
	return ok
}

// detach undoes attach once r has finished: the entry, if its connection
// is over, leaves the table.
func (s *Stack) detach(client netip.Addr, id conntrack.ID, r *relay) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.perClient[client]
	c.conns--
	s.stats.Active.Add(-1)
	delete(s.active, r)
	if !s.cfg.noTrack {
		s.table.Released(id)
	}
	s.forgetClientLocked(client, c)
}

// Relays returns the relays in progress and the tracking entries that have
// a relay attached, read together. Every relay is attached to its entry
// before it counts as active and detached after it stops, so active never
// exceeds tracked: a relay without an entry would be one `tcpd conns` can
// neither show nor kill.
func (s *Stack) Relays() (active int64, tracked int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats.Active.Load(), s.table.Relays()
}

func (s *Stack) forgetClientLocked(client netip.Addr, c *clientCount) {
	if c.conns == 0 && c.inFlight == 0 {
		delete(s.perClient, client)
	}
}

// dial connects to dst for client with the configured timeout, from the
// source address the connection's hash picks, if any are configured.
func (s *Stack) dial(client, dst netip.AddrPort) (net.Conn, error) {
	tune := s.tune.Load()
	ctx, cancel := context.WithTimeout(s.ctx, tune.DialTimeout)
	defer cancel()
	return s.dialer(ctx, sourceFor(tune.SourceAddresses, s.srcSeed, client, dst), dst)
}

// sourceFor picks the source address of the connection from client to
// dst among addrs, by a hash of the 4-tuple, so that connections to one
// destination spread evenly over the addresses of its family. It returns
// the invalid address when addrs has none of that family.
func sourceFor(addrs []netip.Addr, seed maphash.Seed, client, dst netip.AddrPort) netip.Addr {
	v4 := dst.Addr().Unmap().Is4()
	n := 0
	for _, a := range addrs {
		if a.Is4() == v4 {
			n++
		}
	}
	if n == 0 {
		return netip.Addr{}
	}
	var h maphash.Hash
	h.SetSeed(seed)
	var b [2*16 + 4]byte
	c16, d16 := client.Addr().As16(), dst.Addr().As16()
	copy(b[:], c16[:])
	copy(b[16:], d16[:])
	binary.BigEndian.PutUint16(b[32:], client.Port())
	binary.BigEndian.PutUint16(b[34:], dst.Port())
	h.Write(b[:])
	k := int(h.Sum64() % uint64(n))
	for _, a := range addrs {
		if a.Is4() == v4 {
			if k == 0 {
				return a
			}
			k--
		}
	}
	return netip.Addr{} // unreachable
}

// setKeepalive turns on keepalive for the client leg of a connection.
func (s *Stack) setKeepalive(ep tcpip.Endpoint) {
	ka := s.tune.Load().Keepalive
	ep.SocketOptions().SetKeepAlive(true)
	idle := tcpip.KeepaliveIdleOption(ka.Idle)
	interval := tcpip.KeepaliveIntervalOption(ka.Interval)
	// Errors are impossible for these options on a TCP endpoint; a failure
	// would leave the stack default, which is still keepalive.
	_ = ep.SetSockOpt(&idle)
	_ = ep.SetSockOpt(&interval)
	_ = ep.SetSockOptInt(tcpip.KeepaliveCountOption, ka.Count)
	// Keepalive probes only while nothing is in flight; a client that
	// vanishes in the middle of a download is noticed by the user timeout
	// (RFC 5482) instead, after as long as keepalive would take.
	ut := tcpip.TCPUserTimeoutOption(ka.userTimeout())
	_ = ep.SetSockOpt(&ut)
}

// classifyDial maps a dial error to its failure class.
func classifyDial(err error) DialFailure {
	var ne net.Error
	switch {
	case errors.Is(err, errDialDenied):
		return DialDenied
	case errors.Is(err, syscall.ECONNREFUSED):
		return DialRefused
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.Is(err, syscall.ETIMEDOUT), errors.As(err, &ne) && ne.Timeout():
		return DialTimeout
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return DialNoDescriptor
	case errors.Is(err, syscall.EADDRNOTAVAIL), errors.Is(err, syscall.EADDRINUSE):
		return DialNoLocalPort
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH),
		errors.Is(err, syscall.EHOSTDOWN), errors.Is(err, syscall.ENETDOWN):
		return DialUnreachable
	}
	return DialOther
}

// addrFrom converts a netstack address to netip.
func addrFrom(a tcpip.Address) netip.Addr {
	if a.Len() == 4 {
		return netip.AddrFrom4(a.As4())
	}
	return netip.AddrFrom16(a.As16())
}
