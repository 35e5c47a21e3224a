package stack

import (
	"context"
	"errors"
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

// errKilled ends a connect that `tcpd conns kill` ended (Kill).
var errKilled = errors.New("connect: killed")

// request wraps a ForwarderRequest so that it is completed exactly once on
// every path: the handler completes it explicitly, and a deferred finish
// answers RST if a panic or an early return left it open. Completing it
// takes its SYN out of the stack's in-flight set after the forwarder's
// (synFlight).
type request struct {
	r    *tcp.ForwarderRequest
	s    *Stack
	tid  gvstack.TransportEndpointID
	done bool
}

func (q *request) complete(rst bool) {
	if q.done {
		return
	}
	q.done = true
	q.r.Complete(rst)
	q.s.adm.syns.remove(q.tid)
}

// forwardSYN returns the netstack's handler of the TCP packets that no
// endpoint took: fwd's, behind synFlight, which notes each SYN's sequence
// number for the handler fwd starts for it. The netstack calls it on the
// goroutine that delivers the packet, a TUN queue's packet loop or a kept
// SYN's (reuseSYN).
func (s *Stack) forwardSYN(fwd *tcp.Forwarder) func(gvstack.TransportEndpointID, *gvstack.PacketBuffer) bool {
	return func(id gvstack.TransportEndpointID, pkt *gvstack.PacketBuffer) bool {
		h := header.TCP(pkt.TransportHeader().Slice())
		if len(h) < header.TCPMinimumSize || h.Flags()&(header.TCPFlagSyn|header.TCPFlagAck) != header.TCPFlagSyn {
			// Not a SYN: the forwarder would decline it too.
			return false
		}
		switch s.adm.syns.add(id, h.SequenceNumber()) {
		case synBusy:
			// As the forwarder does: the client retransmits.
			s.stats.Dropped[DropSYNInFlight].Add(1)
			return true
		case synFull:
			s.ns.Stats().TCP.ForwardMaxInFlightDrop.Increment()
			s.stats.Dropped[DropMaxInFlight].Add(1)
			s.table.Unanswered(conntrack.Tuple{
				Client: netip.AddrPortFrom(addrFrom(id.RemoteAddress), id.RemotePort),
				Dst:    netip.AddrPortFrom(addrFrom(id.LocalAddress), id.LocalPort),
			}, h.SequenceNumber())
			s.adm.squeeze()
			return true
		}
		if !fwd.HandlePacket(id, pkt) {
			// Malformed, or its checksum bad: no request was made.
			s.adm.syns.remove(id)
			return false
		}
		return true
	}
}

// handle runs on the goroutine the netstack's forwarder starts for every
// SYN it accepts, the only goroutine a connection ever has, and only until
// its relay starts. It checks policy and limits, connects to the
// destination (the connect runs on a shard; the handler waits for its
// outcome), and only then completes the client's handshake, so that a
// client of a closed port sees RST exactly as it would from the
// destination itself. Then it hands the connection to its relay, on the
// same shard, and returns.
//
// The netstack's CreateEndpoint blocks this goroutine for the client's
// round trip (SYN-ACK out, ACK in): the forwarder offers no other way to
// finish a handshake. A variant that returned the endpoint once the
// SYN-ACK is out and signalled the handshake's end on its waiter queue
// would let the handler return at once: no goroutine, stack or park held
// through the client's round trip.
func (s *Stack) handle(fr *tcp.ForwarderRequest) {
	growStack()
	s.conns.Add(1)
	defer s.conns.Done()
	tid := fr.ID()
	req := &request{r: fr, s: s, tid: tid}
	client := netip.AddrPortFrom(addrFrom(tid.RemoteAddress), tid.RemotePort)
	dst := netip.AddrPortFrom(addrFrom(tid.LocalAddress), tid.LocalPort)
	log := s.log
	var (
		id    conntrack.ID
		stale bool
	)
	// The SYN's number is always there (synFlight); were it not, nothing
	// would be claimed.
	if seq, ok := s.adm.syns.seq(tid); ok {
		id, stale = s.table.Claim(conntrack.Tuple{Client: client, Dst: dst}, seq)
	}
	// connect makes the relay known to Kill; it stays so until the
	// endpoint is registered, or the handler gives up.
	defer s.reg.connectEnded(id)
	var (
		ep tcpip.Endpoint
		// r is the connection's relay once connected; handedOff says its
		// shard has been told what to do with it.
		r         *relay
		handedOff bool
	)
	defer func() {
		if p := recover(); p != nil {
			s.stats.Panics.Add(1)
			log.Error("connection handler panicked; connection reset",
				zap.Stringer("client", client), zap.Stringer("dst", dst), zap.Any("panic", p), zap.Stack("stack"))
		}
		req.complete(true)
		if r != nil && !handedOff {
			r.abort(EndAborted)
		}
		if ep == nil && id != 0 {
			// No endpoint and no segment will end this entry: the SYN was
			// refused (its RST usually closed the entry already) or the
			// handshake failed.
			s.table.Gone(id)
		}
	}()

	if stale {
		// This SYN reached the netstack again after its connection had
		// ended (a kept copy, or a request whose goroutine started late),
		// and the 4-tuple's entry is the client's next connection, or
		// another handler's. Answering the old ISN would refuse that
		// connection: say nothing, touch nothing. Counted once the request
		// is complete and out of the in-flight set, so that whoever sees
		// the count can send the 4-tuple's next SYN and have it taken.
		req.complete(false)
		s.stats.Dropped[DropStaleSYN].Add(1)
		return
	}
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
	if reason, ok := s.adm.admit(client.Addr()); !ok {
		if reason == DropMaxInFlightPerClient {
			// Like a full SYN queue: say nothing, and forget the SYN; the
			// client's retransmission starts afresh. (The link drops most
			// such SYNs before they get this far.)
			s.stats.Dropped[reason].Add(1)
			req.complete(false)
			return
		}
		s.refuse(req, reason)
		s.adm.warnRefused(reason, client.Addr())
		return
	}
	admitted := true
	defer func() {
		if admitted {
			s.adm.release(client.Addr())
		}
	}()

	start := time.Now()
	r, err := s.connect(tid, id, client, dst)
	if errors.Is(err, errKilled) {
		// As a failed dial: the client gets RST; the shard has closed the
		// socket. Not the destination's failure: counted with the
		// connections that ended before their relay started.
		s.stats.Connections[ResultHandshakeFailed].Add(1)
		req.complete(true)
		if ce := log.Check(zap.DebugLevel, "killed while dialling"); ce != nil {
			ce.Write(zap.Stringer("client", client), zap.Stringer("dst", dst))
		}
		return
	}
	if err != nil {
		r = nil
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

	// The relay's shard aborts the half-open endpoint if the client's ACK
	// does not come within tcp.handshake_timeout, which makes
	// CreateEndpoint return: the netstack alone would retransmit its
	// SYN-ACK for two minutes.
	wq := new(waiter.Queue)
	newEP, terr := fr.CreateEndpoint(wq)
	req.complete(false)
	if terr != nil {
		// The client went away or never finished its handshake: the
		// destination, which accepted, must not read that as a clean
		// end (FIN) of a request; the shard resets it (reqDrop).
		r.post(reqDrop)
		handedOff = true
		s.stats.Connections[ResultHandshakeFailed].Add(1)
		if ce := log.Check(zap.DebugLevel, "client handshake failed"); ce != nil {
			ce.Write(zap.Stringer("client", client), zap.Stringer("dst", dst), zap.String("error", terr.String()))
		}
		return
	}
	ep = newEP
	s.setKeepalive(ep)
	r.ep, r.wq = ep, wq
	r.entry = waiter.NewFunctionEntry(waiter.ReadableEvents|waiter.WritableEvents|waiter.EventHUp|waiter.EventErr, r.clientEvent)
	wq.EventRegister(&r.entry)
	s.reg.register(id, ep, r)

	// The handshake is done: the slot moves from in-flight to connections,
	// and the relay is attached to the connection's tracking entry.
	admitted = false
	if !s.adm.attach(client.Addr(), id, r) {
		// The entry claimed above has ended: the client reset the
		// connection as its handshake completed. Its own doing, not a
		// refusal of tcpd's: counted with the handshakes that failed. A
		// relay nobody can see is not started; the destination's leg is
		// reset, and the client's endpoint ends on the client's RST
		// (reqGone), which the netstack may not have taken yet.
		s.stats.Connections[ResultHandshakeFailed].Add(1)
		s.reg.unregister(id)
		r.post(reqGone)
		handedOff = true
		if ce := log.Check(zap.DebugLevel, "client reset as its handshake completed"); ce != nil {
			ce.Write(zap.Stringer("client", client), zap.Stringer("dst", dst))
		}
		return
	}
	s.conns.Add(1) // the relay's, until relayEnded
	s.stats.Connections[ResultRelayed].Add(1)
	if ce := log.Check(zap.DebugLevel, "connection established"); ce != nil {
		ce.Write(zap.Stringer("client", client), zap.Stringer("dst", dst), zap.Duration("dial", dialed))
	}
	// After EventRegister: reqStart makes the relay read the client leg
	// once, which takes whatever arrived before the entry was there.
	r.post(reqStart)
	handedOff = true
}

// handlerStack is about the most stack the handler's goroutine uses:
// sending the SYN-ACK inside the netstack's CreateEndpoint goes deep. The
// goroutine starts with 2 KiB; grown on the way down, one doubling at a
// time, it would copy and re-adjust a deeper stack each time.
const handlerStack = 12 << 10

// growStack grows the calling goroutine's stack, while it is still
// shallow, to what the handler needs, in one step.
//
//go:noinline
func growStack() {
	var b [handlerStack]byte
	touchStack(b[:])
}

//go:noinline
func touchStack(b []byte) { b[len(b)-1] = 0 }

// connect opens the upstream socket for dst, starts its connect and puts
// the socket in a shard's epoll set. If the connect is done already the
// relay is returned at once; else the shard follows it, under
// upstream.dial_timeout, and the caller waits for the outcome or for the
// stack to close.
func (s *Stack) connect(tid gvstack.TransportEndpointID, id conntrack.ID, client, dst netip.AddrPort) (*relay, error) {
	target := dst
	if s.cfg.redirect != nil {
		t, err := s.cfg.redirect(dst)
		if err != nil {
			return nil, err
		}
		target = t
	}
	tune := s.tune.Load()
	fd, err := upstreamSocket(sourceFor(tune.SourceAddresses, s.srcSeed, client, target), target, tune)
	if err != nil {
		return nil, err
	}
	r := &relay{s: s, sh: s.pickShard(), id: id, client: client, dst: dst, tid: tid, fd: fd}
	r.timer.fire = r.onTimer
	// A nearby destination has often answered by now: then the connect
	// is settled here, before the shard knows of the socket, and a
	// refused one never reaches it. A connected socket is writable, so
	// adding it to the shard's epoll set raises the event on which the
	// shard starts timing the client's handshake (poller.add's EPOLLOUT):
	// no request, and no wake of the shard, is needed for it. Otherwise
	// the shard decides the connect and tells it on dialed, set before
	// the shard can see the socket.
	done, failed := connectPoll(fd)
	if done {
		if err := connectResult(fd, failed); err != nil {
			closeFD(fd, false)
			return nil, err
		}
	} else {
		r.dialed = make(chan error, 1)
	}
	if err := r.sh.add(r); err != nil {
		closeFD(fd, false)
		return nil, err
	}
	s.reg.connectStarted(id, r)
	if done {
		return r, nil
	}
	r.post(reqWatch)
	select {
	case err := <-r.dialed:
		if err != nil {
			return nil, err
		}
		return r, nil
	case <-s.ctx.Done():
		r.abort(EndAborted)
		return nil, s.ctx.Err()
	}
}

// pickShard spreads new connections over the shards in turn.
func (s *Stack) pickShard() *shard {
	return s.shards[s.nextShard.Add(1)%uint32(len(s.shards))]
}

// relayEnded is called on a relay's shard when the relay the handler
// attached has ended: the connection's slot, its tracking entry and its
// registration let go of it.
func (s *Stack) relayEnded(r *relay) {
	s.stats.Ended[r.end].Add(1)
	if e := s.reg.lookup(r.id); e != nil && e.relay == r {
		e.relayDone.Store(true)
	}
	s.adm.detach(r.client.Addr(), r.id, r)
	if ce := s.log.Check(zap.DebugLevel, "connection closed"); ce != nil {
		ce.Write(zap.Stringer("client", r.client), zap.Stringer("dst", r.dst),
			zap.Uint64("bytes_in", r.bytes[conntrack.FromClient].Load()), zap.Uint64("bytes_out", r.bytes[conntrack.ToClient].Load()),
			zap.Stringer("end", r.end))
	}
	s.conns.Done()
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

// Relays returns the relays in progress and the tracking entries that have
// a relay attached, read together. Every relay is attached to its entry
// before it counts as active and detached after it stops, so active never
// exceeds tracked: a relay without an entry would be one `tcpd conns` can
// neither show nor kill.
func (s *Stack) Relays() (active int64, tracked int) { return s.adm.relays() }

// setKeepalive turns on keepalive for the client leg of a connection.
func (s *Stack) setKeepalive(ep tcpip.Endpoint) {
	tune := s.tune.Load()
	ka := tune.Keepalive
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
	// (RFC 5482) instead, by default after as long as keepalive would
	// take. The netstack's default is none.
	if d := tune.userTimeout(); d > 0 {
		ut := tcpip.TCPUserTimeoutOption(d)
		_ = ep.SetSockOpt(&ut)
	}
}

// classifyDial maps a dial error to its failure class.
func classifyDial(err error) DialFailure {
	var (
		ne net.Error
		se *SourceAddressError
	)
	switch {
	case errors.As(err, &se) && se.NotLocal:
		return DialSourceAddress
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

// tcpipAddr converts a netip address to the netstack's without allocating,
// as tcpip.AddrFromSlice(a.AsSlice()) does.
func tcpipAddr(a netip.Addr) tcpip.Address {
	if a.Is4() {
		return tcpip.AddrFrom4(a.As4())
	}
	return tcpip.AddrFrom16(a.As16())
}

// addrFrom converts a netstack address to netip.
func addrFrom(a tcpip.Address) netip.Addr {
	if a.Len() == 4 {
		return netip.AddrFrom4(a.As4())
	}
	return netip.AddrFrom16(a.As16())
}
