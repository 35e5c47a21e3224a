package stack

import (
	"bytes"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"gvisor.dev/gvisor/pkg/tcpip"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"tcpd/conntrack"
)

// relayBufSize is the size of one pooled relay buffer: large enough that a
// bulk transfer moves tens of segments per system call.
const relayBufSize = 64 << 10

var relayBufs = sync.Pool{New: func() any { b := make([]byte, relayBufSize); return &b }}

// downReadMax bounds one read from the upstream to what the netstack sends
// as one segment. Each write to the client's endpoint is a segment of its
// own, which the netstack's sender cuts at gsoMaxPayload and merges only
// with whole writes that fit: a 64 KiB read left as a GSO segment and a
// runt of 418 bytes, two TUN writes and two packets through the kernel to
// the client where one does.
const downReadMax = min(relayBufSize, gsoMaxPayload)

// relayBudget is how many buffers a relay moves in one direction per turn
// on its shard before it lets the shard's other connections go first.
const relayBudget = 8

// A relay carries one connection's bytes both ways, between its netstack
// endpoint (the client leg) and its upstream socket, as events arrive: it
// has no goroutine. It lives on one shard (shard.go), whose goroutine alone
// runs its steps; everyone else asks it to do something by queueing it
// (post). The netstack's waiter callback only queues it. Its life:
//
//	connecting  the upstream connect is in progress; the handler waits
//	connected   the handler completes the client's handshake
//	relaying    bytes move; EOF on one side becomes a FIN on the other, an
//	            error on one side a reset of both
//	flushing    one side reset its leg: what it sent before goes to the
//	            other, then the other's leg is reset
//	done        both legs closed or reset; the stack has forgotten it
//
// Each direction borrows a buffer only while it holds bytes read from its
// source and not yet written to its sink, and reads nothing more from the
// source until they are written: backpressure holds both ways, and an idle
// relay holds no buffer.
type relay struct {
	s  *Stack
	sh *shard
	// id is the connection's tracking entry, client and dst its 4-tuple
	// (the destination as the client sees it).
	id          conntrack.ID
	client, dst netip.AddrPort
	tid         gvstack.TransportEndpointID

	// fd is the upstream socket; -1 once closed. token is its epoll key.
	fd    int
	token uint64
	// ep and wq are the client leg, set by the handler before it posts
	// reqStart.
	ep    tcpip.Endpoint
	wq    *waiter.Queue
	entry waiter.Entry
	// dialed carries the shard's decision on the connect (on the
	// socket's first event or the dial timeout) to the handler, which
	// waits for it; nil when the handler found the connect done before
	// it handed the socket to the shard.
	dialed chan error
	// attached says the handler attached the relay to its tracking entry
	// and counts it active (attach), before it posts reqStart: the end
	// must detach it.
	attached bool
	// killed says a kill came while the client's handshake was being
	// completed: the relay resets the connection instead of starting.
	// The shard's alone.
	killed bool

	// queued says the relay is in its shard's queue; guarded by the
	// shard's mu.
	queued bool
	// req holds requests from other goroutines (req* bits); abortEnd is
	// the End of a reqAbort plus one (0: none asked), set by the first
	// abort or by a kill before the handler registered the endpoint.
	req      atomic.Uint32
	abortEnd atomic.Int32

	// The state below belongs to the shard's goroutine.
	phase phase
	timer timer
	// upEvents are the upstream socket's readiness, from epoll: edge
	// triggered, so each is cleared once a call would block, or, for
	// reading, once a read comes back short before the peer's FIN has
	// been seen (upHangup): more bytes would raise a new edge.
	upReadable, upWritable, upError, upHangup bool
	// clientReadable says the client leg may have bytes or a FIN to
	// read: set when it signals, cleared when a read would block. A step
	// for the upstream's events then does not ask an endpoint that has
	// said nothing since.
	clientReadable bool
	// up is client → upstream, down upstream → client: each holds what
	// was read from its source and not yet written.
	up, down pending
	// eof: the source of that direction has ended with FIN; fin: the FIN
	// has been passed on.
	upEOF, downEOF, upFIN, downFIN bool
	rd                             bytes.Reader
	w                              tcpip.SliceWriter
	// lastActive is when a byte last moved; halfClosedAt when the first
	// FIN was passed on (zero: none yet).
	lastActive, halfClosedAt time.Time
	// flushAcked is how much of what tcpd sent the client had
	// acknowledged when a flush last looked (phaseFlushDown); flushOutQ
	// what the upstream socket had not had acknowledged (phaseFlushUp).
	flushAcked uint32
	flushOutQ  int

	// bytes is what the relay moved each way: written by the shard, read
	// for its last log line and by tcpd conns (the client leg's Send-Q);
	// the shard's counters (sh.stats) are the totals.
	bytes [conntrack.NumDirs]atomic.Uint64
	// end is how the relay ended, set on the shard before done.
	end End
	// local is the upstream socket's local address, looked up once asked.
	localMu sync.Mutex
	local   string
}

type phase uint8

const (
	phaseConnecting phase = iota
	phaseConnected
	phaseRelaying
	// phaseFlushDown: the upstream leg was reset; the client's leg takes
	// what the destination sent before it, then is reset (flushDown).
	phaseFlushDown
	// phaseFlushUp: the client's leg was reset; the upstream leg takes
	// what the client sent before it, then is reset (flushUp).
	phaseFlushUp
	// phaseGone: the client reset the connection as its handshake
	// completed; the upstream leg is reset, and the client's endpoint
	// waits for the netstack to take the client's RST (clientGone).
	phaseGone
	phaseDone
)

// Requests other goroutines post to a relay.
const (
	// reqWatch: the handler has started the connect: the shard times it,
	// and once it is connected, the client's handshake.
	reqWatch uint32 = 1 << iota
	// reqStart: the handler has set ep and wq; relay.
	reqStart
	// reqDrop: the connect failed or the client's handshake did; close
	// the upstream socket, with a reset once it is connected: the
	// destination must not read a FIN, a clean end of a request it never
	// got whole.
	reqDrop
	// reqAbort: reset both legs (shutdown, tcpd conns kill), with the End
	// in abortEnd.
	reqAbort
	// reqClient: the client leg signalled (data, window, FIN, error).
	reqClient
	// reqGone: the handler has set ep and wq, but the client reset the
	// connection as its handshake completed (its tracking entry ended
	// before the relay was attached): reset the upstream leg, and let the
	// client's endpoint end on the client's RST (clientGone).
	reqGone
	// reqKill: tcpd conns kill, before the handler registered the
	// endpoint: end the connection in whatever phase it is (kill).
	reqKill
	// reqRetune: the idle or half-close timeout changed (a reload): a
	// relaying relay takes the new inactivity deadline at once.
	reqRetune
	// reqBuffers: the buffer level changed (buffers.go): a relaying relay
	// sets its client leg's buffers to the level's default.
	reqBuffers
)

// pending is what one direction holds between a read and a write.
type pending struct {
	buf  *[]byte // borrowed from relayBufs; nil when nothing is held
	data []byte  // the part of *buf not yet written
}

func (p *pending) held() bool { return p.buf != nil }

func (p *pending) take(n int) {
	p.data = p.data[n:]
	if len(p.data) == 0 {
		p.release()
	}
}

func (p *pending) release() {
	if p.buf != nil {
		relayBufs.Put(p.buf)
		p.buf, p.data = nil, nil
	}
}

// post asks the relay's shard to act on req.
func (r *relay) post(req uint32) {
	r.req.Or(req)
	r.sh.queue(r)
}

// abort asks for a reset of both legs, ending the relay with e (the first
// abort's End counts). It reports whether it was the first: a kill before
// the endpoint was registered counts as one.
func (r *relay) abort(e End) bool {
	first := r.abortEnd.CompareAndSwap(0, int32(e)+1)
	r.post(reqAbort)
	return first
}

// clientEvent is the waiter callback on the client endpoint's queue. The
// netstack may hold its locks while it notifies: it only queues the relay.
func (r *relay) clientEvent(waiter.EventMask) { r.post(reqClient) }

// step runs on the shard: it acts on what was asked and on the upstream
// socket's readiness.
func (r *relay) step() {
	req := r.req.Swap(0)
	if req&(reqClient|reqStart) != 0 {
		r.clientReadable = true
	}
	if r.phase == phaseDone {
		switch {
		case req&reqStart != 0 && r.ep != nil:
			// Handed an endpoint after it ended (a panic while the
			// handshake ran): reset it and account for the relay.
			r.ep.Abort()
			r.ep.Close()
			r.wq.EventUnregister(&r.entry)
			r.s.relayEnded(r)
		case req&reqAbort != 0 && r.ep != nil && r.end == EndClean:
			// Killed after a clean end, while the endpoint may still wait
			// for the client's last ACK: reset it all the same. (Any
			// other end has reset it already.)
			r.ep.Abort()
		}
		return
	}
	if req&reqAbort != 0 {
		r.reset(End(r.abortEnd.Load() - 1))
		return
	}
	if r.phase == phaseConnecting {
		r.connecting(req)
	}
	if req&reqKill != 0 {
		r.kill()
	}
	switch r.phase {
	case phaseConnecting:
		if req&reqDrop != 0 {
			r.closeUpstream(false)
			r.phase = phaseDone
		}
	case phaseConnected:
		switch {
		case req&reqDrop != 0:
			r.closeUpstream(true)
			r.done(EndAborted)
		case req&reqGone != 0:
			r.closeUpstream(true)
			r.phase = phaseGone
			r.sh.wheel.set(&r.timer, time.Now().Add(goneGrace))
			r.clientGone(false)
		case req&reqStart != 0 && r.killed:
			r.reset(EndAborted)
		case req&reqStart != 0:
			r.sh.wheel.stop(&r.timer)
			r.phase = phaseRelaying
			r.lastActive = time.Now()
			if r.s.stats.BufferPressure.Load() != uint32(bufNormal) {
				// The netstack's forwarder gives a new endpoint a
				// receive buffer of its own, not the level's; and a
				// reqBuffers before now found no relaying.
				r.setBuffers()
			}
			r.pump()
		}
	case phaseRelaying:
		if req&reqBuffers != 0 {
			r.setBuffers()
		}
		if req&reqRetune != 0 {
			// The deadline armed, or none, was the old timeout's:
			// as the timer would, with the new one. A relay whose new
			// deadline has passed ends now, unless it is stalled.
			r.inactive() // re-arms (set replaces), stops, or ends it
			if r.phase != phaseRelaying {
				return
			}
		}
		r.pump()
	case phaseFlushDown:
		r.flushDown()
	case phaseFlushUp:
		r.flushUp()
	case phaseGone:
		r.clientGone(false)
	}
}

// kill ends the connection for `tcpd conns kill` while its handler may
// still hold it (Kill found no registered endpoint), as far as its phase
// allows. A connect in progress ends as a failed one does: the socket is
// closed and the handler, told errKilled, answers the client's SYN with
// RST. During the client's handshake, the half-open endpoint is aborted
// as the handshake timeout does (the handler then drops the relay), or,
// if the handshake has just completed, the relay resets both legs when
// the handler starts it. A relay that runs is reset.
func (r *relay) kill() {
	switch r.phase {
	case phaseConnecting:
		if r.dialed != nil {
			r.closeUpstream(false)
			r.done(EndAborted)
			r.dialed <- errKilled
		}
	case phaseConnected:
		r.killed = true
		r.s.abortIfIn(r.tid, tcp.StateSynRecv)
	case phaseRelaying, phaseFlushDown, phaseFlushUp:
		r.reset(EndAborted)
	}
}

// goneGrace bounds how long the endpoint of a client that reset the
// connection as its handshake completed waits for the netstack to take
// that RST. conntrack saw it before the netstack did, on the packet loop
// that then queued it on the endpoint, so it is microseconds away; the
// grace only matters if the netstack does not accept what conntrack did.
const goneGrace = time.Second

// clientGone ends a relay in phaseGone once the netstack has taken the
// client's RST: the endpoint is closed without a word, as a reset
// connection is. Aborting it before that would send the client an RST
// for a connection it has reset itself (RFC 9293: a reset is never
// answered with one), and the client's late segments would find no
// endpoint and draw more RSTs; a client that has reused the 4-tuple at
// once reads such an RST in SYN-SENT and retransmits its SYN. Only when
// the grace has run out (late) is the endpoint reset.
func (r *relay) clientGone(late bool) {
	switch tcp.EndpointState(r.ep.State()) {
	case tcp.StateError, tcp.StateClose:
	default:
		if !late {
			return
		}
		r.ep.Abort()
	}
	r.ep.Close()
	r.done(EndAborted)
}

// connecting follows the upstream connect on the shard: the socket's first
// events say how it went (writable: connected; an error: failed, SO_ERROR
// says why), unless the handler found it connected already; the dial
// timeout bounds it. A connected relay waits for the client's handshake,
// within tcp.handshake_timeout.
func (r *relay) connecting(req uint32) {
	if r.dialed == nil {
		r.connected()
		return
	}
	if r.upError || r.upWritable {
		r.sh.wheel.stop(&r.timer)
		if err := connectResult(r.fd, r.upError); err != nil {
			r.closeUpstream(false)
			r.phase = phaseDone
			r.dialed <- err
			return
		}
		r.connected()
		r.dialed <- nil
		return
	}
	if req&reqWatch != 0 && !r.timer.armed {
		r.sh.wheel.set(&r.timer, time.Now().Add(r.s.tune.Load().DialTimeout))
	}
}

func (r *relay) connected() {
	r.phase = phaseConnected
	r.sh.wheel.set(&r.timer, time.Now().Add(r.s.tune.Load().HandshakeTimeout))
}

// onTimer is the relay's timer: the dial, handshake or inactivity
// timeout, as its phase says.
func (r *relay) onTimer() {
	switch r.phase {
	case phaseConnecting:
		r.dialTimedOut()
	case phaseConnected:
		r.handshakeTimedOut()
	case phaseRelaying:
		r.inactive()
	case phaseFlushDown:
		r.flushDown()
	case phaseFlushUp:
		r.flushUp()
	case phaseGone:
		r.clientGone(true)
	}
}

func (r *relay) dialTimedOut() {
	r.closeUpstream(false)
	r.phase = phaseDone
	r.dialed <- errDialTimeout
}

// handshakeTimedOut aborts the client's half-open endpoint, which makes the
// handler's CreateEndpoint return: a client that never ACKs tcpd's SYN-ACK
// would otherwise hold its slot for the netstack's two minutes of SYN-ACK
// retransmissions.
func (r *relay) handshakeTimedOut() {
	if r.phase == phaseConnected && r.s.abortIfIn(r.tid, tcp.StateSynRecv) {
		r.s.stats.HandshakeTimeouts.Add(1)
	}
}

// pump moves bytes both ways until each direction would block, has ended
// or has used its budget, then decides what comes next.
func (r *relay) pump() {
	if r.clientReset() {
		r.clientLegReset()
		return
	}
	if r.upError {
		// The destination reset its leg, or the leg died: what it sent
		// before goes to the client first (upstreamReset).
		r.upstreamReset()
		return
	}
	more := false
	if !r.moveUp(&more) || !r.moveDown(&more) {
		return
	}
	if r.upFIN && r.downFIN && !r.up.held() && !r.down.held() {
		r.closeUpstream(false)
		r.ep.Close()
		r.done(EndClean)
		return
	}
	if more {
		r.sh.queue(r)
	}
	r.armInactivity()
}

// clientReset reports whether the client's leg was reset, or given up by
// keepalive, the user timeout or retransmissions. The netstack takes a RST
// in CLOSE-WAIT (the client's, after its own FIN) to CLOSED rather than to
// its error state, as Linux does: closed before tcpd sent its FIN, the leg
// was reset.
func (r *relay) clientReset() bool {
	switch tcp.EndpointState(r.ep.State()) {
	case tcp.StateError:
		return true
	case tcp.StateClose:
		return !r.downFIN
	}
	return false
}

// moveUp moves bytes from the client to the upstream. It reports false if
// the relay ended.
func (r *relay) moveUp(more *bool) bool {
	for range relayBudget {
		if r.upError {
			return true // nowhere to go: moveDown reads the socket to its end
		}
		if r.up.held() {
			if !r.upWritable {
				return true
			}
			n, err := writeFD(r.fd, r.up.data)
			switch {
			case err == errAgain:
				r.upWritable = false
				return true
			case err != nil:
				// The write took the socket's error: a destination
				// that answered and reset (an upload it would not
				// finish reading) has its answer still in the socket.
				r.upError, r.upReadable = true, true
				return true
			}
			r.moved(conntrack.FromClient, n)
			r.up.take(n)
			continue
		}
		if r.upEOF {
			if !r.upFIN {
				if err := shutdownWrite(r.fd); err != nil {
					r.upError, r.upReadable = true, true
					return true
				}
				r.upFIN = true
				r.halfClosed()
			}
			return true
		}
		if !r.clientReadable {
			return true
		}
		switch terr := r.readClient(); terr.(type) {
		case nil:
			// Receive moderation grows the leg's buffer, and the
			// window offered to the client, from what the reader
			// takes per round trip; without this the window of every
			// upload stays at the 1 MiB default.
			r.ep.ModerateRecvBuf(len(r.up.data))
		case *tcpip.ErrWouldBlock:
			r.clientReadable = false
			return true
		case *tcpip.ErrClosedForReceive:
			// A leg whose error the other direction took first reads
			// as closed too; only a FIN is passed on as one.
			if r.clientReset() {
				r.clientLegReset()
				return false
			}
			r.upEOF = true
		default:
			r.clientLegReset()
			return false
		}
	}
	*more = true
	return true
}

// moveDown moves bytes from the upstream to the client. It reports false
// if the relay ended.
func (r *relay) moveDown(more *bool) bool {
	for range relayBudget {
		if r.upError {
			r.upstreamReset()
			return false
		}
		if r.down.held() {
			if !r.writeClient() {
				return r.phase == phaseRelaying
			}
			continue
		}
		if r.downEOF {
			if !r.downFIN {
				if terr := r.ep.Shutdown(tcpip.ShutdownWrite); terr != nil {
					r.clientLegReset()
					return false
				}
				r.downFIN = true
				r.halfClosed()
			}
			return true
		}
		if !r.upReadable {
			return true
		}
		n, err := r.readUpstream()
		switch {
		case err == errAgain:
			r.upReadable = false
			return true
		case err != nil:
			r.upstreamReset()
			return false
		case n == 0:
			// read returns 0 only for the peer's FIN; an error is an
			// error.
			r.downEOF = true
		default:
			if n < downReadMax && !r.upHangup {
				// The socket is drained: skip the read that would
				// say EAGAIN.
				r.upReadable = false
			}
		}
	}
	*more = true
	return true
}

// flushStall bounds how long a flush waits for the client to take or
// acknowledge another byte before it resets the client's leg: a client
// that reads keeps its window moving, one whose window stays closed learns
// of the reset at once, as it would from the destination itself.
const flushStall = 500 * time.Millisecond

// flushPoll is how often a flush looks at what the client acknowledged:
// the netstack says when its send buffer has room, not when it is empty.
const flushPoll = 20 * time.Millisecond

// upstreamReset follows the destination's reset of its leg (or the leg's
// death: keepalive, the user timeout, unreachable). tcpd's kernel has
// acknowledged to the destination what is in the socket, and tcpd what it
// read, and the destination's TCP takes those bytes as delivered, as a
// direct connection's would have been: on Linux an application reads
// every byte its TCP acknowledged before the reset. So the client's leg
// gets them first (the socket read to its end, which a reset makes final),
// and is reset once the client has acknowledged them all, or has taken
// nothing for flushStall. What the client sends meanwhile has nowhere to
// go. A connection conntrack does not track, whose acknowledgments tcpd
// cannot see, is reset at once.
func (r *relay) upstreamReset() {
	r.up.release()
	if r.id == 0 {
		r.reset(EndUpstreamReset)
		return
	}
	r.phase = phaseFlushDown
	r.lastActive = time.Now()
	r.flushAcked, _ = r.s.table.Acknowledged(r.id)
	r.flushDown()
}

// readClient reads what the client's endpoint holds into the up
// direction, in a buffer borrowed only if it read something; an empty read
// is ErrWouldBlock.
func (r *relay) readClient() tcpip.Error {
	bp := relayBufs.Get().(*[]byte)
	r.w = tcpip.SliceWriter(*bp)
	res, terr := r.ep.Read(&r.w, tcpip.ReadOptions{})
	r.w = nil
	if terr == nil && res.Count == 0 {
		terr = &tcpip.ErrWouldBlock{}
	}
	if terr != nil {
		relayBufs.Put(bp)
		return terr
	}
	r.up = pending{buf: bp, data: (*bp)[:res.Count]}
	return nil
}

// readUpstream reads at most downReadMax bytes of the upstream socket into
// the down direction, in a buffer borrowed only if it read something.
func (r *relay) readUpstream() (int, error) {
	bp := relayBufs.Get().(*[]byte)
	n, err := readFD(r.fd, (*bp)[:downReadMax])
	if err != nil || n == 0 {
		relayBufs.Put(bp)
		return n, err
	}
	r.down = pending{buf: bp, data: (*bp)[:n]}
	return n, nil
}

// sentToClient is how much of its sequence space after the SYN tcpd has
// given the client's leg: the bytes the relay wrote, and its FIN. The
// client has acknowledged all of it when conntrack's Acknowledged says as
// much (both modulo 2^32).
func (r *relay) sentToClient() uint32 {
	sent := uint32(r.bytes[conntrack.ToClient].Load())
	if r.downFIN {
		sent++
	}
	return sent
}

// clientLegReset follows the client's reset of its leg (or the leg's
// death: keepalive, the user timeout, retransmissions), as upstreamReset
// the destination's: tcpd acknowledged to the client what it read, so the
// destination gets it first, and its leg is reset once its TCP has
// acknowledged it all (SIOCOUTQ 0), or has taken nothing for flushStall.
// In phaseFlushDown, with the upstream leg gone already, it ends the
// relay.
func (r *relay) clientLegReset() {
	switch {
	case r.phase == phaseFlushDown:
		r.reset(EndUpstreamReset) // the first cause
		return
	case r.phase != phaseRelaying || r.fd < 0:
		r.reset(EndClientReset)
		return
	}
	r.down.release()
	r.phase = phaseFlushUp
	r.lastActive = time.Now()
	r.flushOutQ = -1
	r.flushUp()
}

// flushUp is a step of phaseFlushUp: it writes what it holds to the
// destination and resets the upstream leg once the destination's TCP has
// acknowledged all of it, or has stalled, or the leg has failed.
func (r *relay) flushUp() {
	for !r.upError {
		if !r.up.held() {
			// The netstack hands out what it queued before the reset
			// first, then the error.
			if r.upEOF || r.readClient() != nil {
				r.upEOF = true
				break
			}
		}
		if !r.upWritable {
			break
		}
		n, err := writeFD(r.fd, r.up.data)
		if err == errAgain {
			r.upWritable = false
			break
		}
		if err != nil {
			r.upError = true
			break
		}
		r.moved(conntrack.FromClient, n)
		r.up.take(n)
	}
	now := time.Now()
	q, ok := unsentUpstream(r.fd)
	if ok && q != r.flushOutQ {
		r.flushOutQ, r.lastActive = q, now
	}
	if !ok || r.upError || (r.upEOF && !r.up.held() && q == 0) || now.Sub(r.lastActive) >= flushStall {
		r.reset(EndClientReset)
		return
	}
	r.sh.wheel.set(&r.timer, now.Add(flushPoll))
}

// flushDown is a step of phaseFlushDown: it writes to the client what it
// holds and what the upstream socket still holds, closes the socket once
// drained, and resets the client's leg once the client has acknowledged
// all tcpd sent, or has stalled.
func (r *relay) flushDown() {
	if r.clientReset() {
		r.reset(EndUpstreamReset)
		return
	}
	for r.phase == phaseFlushDown {
		if r.down.held() {
			if !r.writeClient() {
				break
			}
			continue
		}
		if r.fd < 0 {
			break
		}
		if n, err := r.readUpstream(); err != nil || n == 0 {
			// Drained: after the reset nothing more comes (EAGAIN),
			// or the socket says so (its error, or 0).
			r.closeUpstream(true)
			break
		}
	}
	if r.phase != phaseFlushDown {
		return // the client's leg failed
	}
	now := time.Now()
	acked, ok := r.s.table.Acknowledged(r.id)
	if ok && acked != r.flushAcked {
		r.flushAcked, r.lastActive = acked, now
	}
	if !ok || (r.fd < 0 && !r.down.held() && acked == r.sentToClient()) || now.Sub(r.lastActive) >= flushStall {
		r.reset(EndUpstreamReset)
		return
	}
	r.sh.wheel.set(&r.timer, now.Add(flushPoll))
}

// writeClient writes what the down direction holds to the client, as much
// as its send buffer takes. It reports whether it wrote all of it.
func (r *relay) writeClient() bool {
	r.rd.Reset(r.down.data)
	n, terr := r.ep.Write(&r.rd, tcpip.WriteOptions{})
	if n > 0 {
		r.moved(conntrack.ToClient, int(n))
		r.down.take(int(n))
	}
	switch terr.(type) {
	case nil:
		return !r.down.held()
	case *tcpip.ErrWouldBlock:
		// The client's window or tcpd's send buffer is full: the
		// netstack signals when it has room.
		return false
	default:
		r.clientLegReset()
		return false
	}
}

func (r *relay) moved(d conntrack.Dir, n int) {
	r.lastActive = time.Now()
	r.bytes[d].Add(uint64(n))
	r.sh.stats.Bytes[d].Add(uint64(n))
}

func (r *relay) halfClosed() {
	if r.halfClosedAt.IsZero() {
		r.halfClosedAt = time.Now()
	}
}

// armInactivity keeps the relay's timer on its inactivity deadline: the
// half-close timeout once a direction has finished, counted from the
// half-close or the last byte after it, else the idle timeout (none if 0).
// A relay is inactive when it moves nothing and holds nothing to move.
// The deadline is re-read when the timer fires, so a busy relay costs the
// wheel nothing per byte.
func (r *relay) armInactivity() {
	t, from := r.inactivity()
	if t == 0 {
		r.sh.wheel.stop(&r.timer)
		return
	}
	if !r.timer.armed {
		r.sh.wheel.set(&r.timer, from.Add(t))
	}
}

func (r *relay) inactivity() (time.Duration, time.Time) {
	tune := r.s.tune.Load()
	if !r.halfClosedAt.IsZero() {
		from := r.halfClosedAt
		if r.lastActive.After(from) {
			from = r.lastActive
		}
		return tune.HalfCloseTimeout, from
	}
	return tune.IdleTimeout, r.lastActive
}

func (r *relay) inactive() {
	if r.phase != phaseRelaying {
		return
	}
	t, from := r.inactivity()
	if t == 0 {
		r.sh.wheel.stop(&r.timer)
		return
	}
	now := time.Now()
	if deadline := from.Add(t); now.Before(deadline) {
		r.sh.wheel.set(&r.timer, deadline)
		return
	}
	if r.holding() {
		// Stalled, not idle: bytes wait for a receiver that has no room
		// for them (a window closed, its TCP answering the probes).
		// Its leg's user timeout gives it up if the receiver stays so;
		// Linux gives up no socket its application holds open.
		r.sh.wheel.set(&r.timer, now.Add(t))
		return
	}
	r.reset(EndTimeout)
}

// holding reports whether bytes wait to be taken by either side: in the
// relay's buffers, in the upstream socket's send queue, or sent to the
// client by the netstack and not yet acknowledged (conntrack's record; the
// netstack does not say what its send queue holds).
func (r *relay) holding() bool {
	if r.up.held() || r.down.held() {
		return true
	}
	if q, ok := unsentUpstream(r.fd); ok && q > 0 {
		return true
	}
	acked, ok := r.s.table.Acknowledged(r.id)
	return ok && acked != r.sentToClient()
}

// reset ends the relay with a reset of both legs: RST to the client from
// the netstack, RST to the destination through SO_LINGER 0.
func (r *relay) reset(e End) {
	if r.phase == phaseDone {
		return
	}
	if r.ep != nil {
		// A client leg that keepalive or the user timeout gave up is in
		// the netstack's error state, in which Abort sends nothing.
		dead := tcp.EndpointState(r.ep.State()) == tcp.StateError
		r.ep.Abort()
		r.ep.Close()
		if dead {
			r.s.resetClient(r.id)
		}
	}
	r.closeUpstream(true)
	r.done(e)
}

// closeUpstream closes the upstream socket, with a reset if rst.
func (r *relay) closeUpstream(rst bool) {
	if r.fd < 0 {
		return
	}
	r.sh.remove(r)
	r.localMu.Lock()
	closeFD(r.fd, rst)
	r.fd = -1
	r.localMu.Unlock()
}

// done is the end of the relay on its shard: buffers back, timer off, the
// endpoint's callback gone, and, for a relay the handler attached, the
// stack told.
func (r *relay) done(e End) {
	r.phase = phaseDone
	r.end = e
	r.sh.wheel.stop(&r.timer)
	r.up.release()
	r.down.release()
	if r.wq != nil {
		r.wq.EventUnregister(&r.entry)
	}
	if r.attached {
		r.s.relayEnded(r)
	}
}

// recoverPanic isolates a panic in one relay's step: the relay is reset,
// its shard goes on.
func (r *relay) recoverPanic() {
	p := recover()
	if p == nil {
		return
	}
	r.s.stats.Panics.Add(1)
	r.s.log.Error("relay panicked; connection reset", zap.Any("panic", p), zap.Stack("stack"),
		zap.Stringer("client", r.client), zap.Stringer("dst", r.dst))
	defer func() {
		if recover() != nil && r.phase != phaseDone {
			r.phase = phaseDone
		}
	}()
	switch r.phase {
	case phaseConnecting:
		// dialed holds one decision, and this is the only one; a
		// handler that found the connect done (dialed nil) is not
		// waiting for it.
		r.closeUpstream(true)
		r.phase = phaseDone
		if r.dialed != nil {
			r.dialed <- errRelayPanic
		}
	case phaseRelaying, phaseFlushDown, phaseFlushUp, phaseConnected:
		r.reset(EndAborted)
	}
}

// upstreamTCP reads the upstream socket's TCP_INFO and queues, under
// localMu so that the shard cannot close the descriptor (and the number be
// reused) meanwhile; false once it is closed.
func (r *relay) upstreamTCP() (UpstreamTCP, bool) {
	r.localMu.Lock()
	defer r.localMu.Unlock()
	if r.fd < 0 {
		return UpstreamTCP{}, false
	}
	return upstreamTCPInfo(r.fd)
}

// clientSendQ is what tcpd has written to the client's leg that the
// client has not acknowledged, data only, as ss's Send-Q: in the netstack's
// send buffer, sent or not. acked is conntrack's count of what the client
// acknowledged (Table.Acknowledged; ok false if nothing yet). Any
// goroutine may call it.
func (r *relay) clientSendQ(acked uint32, ok bool) int {
	sent := uint32(r.bytes[conntrack.ToClient].Load())
	if !ok {
		return int(sent)
	}
	// Modulo 2^32, as conntrack counts; the FIN, once acknowledged, is
	// one past the data.
	return int(max(int32(sent-acked), 0))
}

// localAddr is the upstream socket's local address, for tcpd conns: looked
// up on the first call, "" once the socket is closed.
func (r *relay) localAddr() string {
	r.localMu.Lock()
	defer r.localMu.Unlock()
	if r.local == "" && r.fd >= 0 {
		r.local = sockName(r.fd)
	}
	return r.local
}
