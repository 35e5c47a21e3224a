package stack

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"tcpd/conntrack"
)

// relayBufSize is the size of one pooled relay buffer: large enough that a
// bulk transfer moves tens of segments per system call.
const relayBufSize = 64 << 10

var relayBufs = sync.Pool{New: func() any { b := make([]byte, relayBufSize); return &b }}

// errUpstreamFailed is what a write to the client reports when the watcher
// found the upstream socket failed and the client could not take the rest
// at once.
var errUpstreamFailed = errors.New("upstream failed while the client's window was closed")

// relay carries the bytes of one connection both ways. Two goroutines run
// it: the handler's own (client → destination) and relayUpstream
// (destination → client). EOF on one side becomes a half-close (FIN) on the
// other; any error becomes a reset of both legs, and so does a failure of
// one leg while the relay is blocked writing to the other (the watcher,
// watch.go, passes it on). A relay never reports a failed leg as EOF.
type relay struct {
	s        *Stack
	ep       tcpip.Endpoint
	wq       *waiter.Queue
	client   *gonet.TCPConn
	upstream net.Conn
	// upRaw waits for the upstream socket's readability without a buffer.
	upRaw syscall.RawConn
	// readable is signalled by readableEntry, registered on the client
	// endpoint's queue for the relay's life; clientTimer bounds a wait.
	readable      chan struct{}
	readableEntry waiter.Entry
	clientTimer   *time.Timer
	// errEntry, registered on the client endpoint's queue for the relay's
	// life, hands the relay to the watcher when the client leg fails.
	errEntry  waiter.Entry
	errQueued atomic.Bool
	// upToken is the upstream socket's token in the watcher; 0 if it is
	// not watched.
	upToken uint64
	// upFailed is set by the watcher when the upstream socket reported an
	// error; from then on a write to the client never blocks.
	upFailed atomic.Bool
	// upFIN is set before the relay half-closes the upstream socket.
	upFIN atomic.Bool
	// finished is set once run has closed both legs.
	finished atomic.Bool

	bytes [conntrack.NumDirs]atomic.Uint64
	// lastActive is the UnixNano time of the last byte moved either way.
	lastActive atomic.Int64
	// halfClosed is set once either direction has finished with EOF.
	halfClosed atomic.Bool

	abortOnce sync.Once
	// end is written once, by the first direction to fail or by abort, and
	// read after both directions have returned.
	endOnce sync.Once
	end     End
}

func newRelay(s *Stack, ep tcpip.Endpoint, wq *waiter.Queue, upstream net.Conn) *relay {
	r := &relay{s: s, ep: ep, wq: wq, client: gonet.NewTCPConn(wq, ep), upstream: upstream}
	r.lastActive.Store(time.Now().UnixNano())
	if sc, ok := upstream.(syscall.Conn); ok {
		r.upRaw, _ = sc.SyscallConn()
	}
	r.readable = make(chan struct{}, 1)
	r.readableEntry = waiter.NewFunctionEntry(waiter.ReadableEvents|waiter.EventHUp|waiter.EventErr, func(waiter.EventMask) {
		select {
		case r.readable <- struct{}{}:
		default:
		}
	})
	r.errEntry = waiter.NewFunctionEntry(waiter.EventErr, func(waiter.EventMask) {
		// The netstack notifies after releasing the endpoint's lock, so
		// the state is current; it may hold the queue's, so only enqueue.
		if r.clientFailed() && !r.finished.Load() && r.errQueued.CompareAndSwap(false, true) {
			s.watch.clientFailed(r)
		}
	})
	return r
}

// clientFailed reports whether the client leg has failed: reset by the
// client, or given up by keepalive, the user timeout or retransmissions.
// A leg that ended with FIN is in another state.
func (r *relay) clientFailed() bool {
	return tcp.EndpointState(r.ep.State()) == tcp.StateError
}

// upstreamFailed is the watcher's report of an error on the upstream
// socket. A relay reading the upstream will read it in its turn, after the
// bytes that came before it; a write to the client that is blocked on a
// closed window is interrupted, so that the reset is passed on now.
func (r *relay) upstreamFailed() {
	r.upFailed.Store(true)
	r.client.SetWriteDeadline(time.Unix(1, 0))
}

// An idle connection must not pin a relay buffer: each direction borrows
// a buffer from the pool only once its source has bytes (or EOF, or an
// error) to hand over, and returns it after the write. Idle connections then
// cost the netstack endpoint, the socket and two goroutine stacks, not
// 128 KiB.

// readClient waits until the client's endpoint is readable, then reads into
// a borrowed buffer. The caller returns the buffer to relayBufs.
func (r *relay) readClient() (*[]byte, int, error) {
	r.waitClient()
	bp := relayBufs.Get().(*[]byte)
	n, err := r.client.Read(*bp)
	return bp, n, err
}

// waitClient returns once the client's endpoint is readable (data, FIN,
// reset) or the relay's inactivity deadline passed; the Read that follows
// reports which. armDeadline wakes it, so that a deadline set by the other
// direction (the half-close timeout) takes effect while it waits.
func (r *relay) waitClient() {
	mask := waiter.ReadableEvents | waiter.EventHUp | waiter.EventErr
	for r.ep.Readiness(mask) == 0 {
		var expired <-chan time.Time
		if t := r.timeout(); t > 0 {
			wait := time.Until(time.Unix(0, r.lastActive.Load()).Add(t))
			if wait <= 0 {
				return
			}
			if r.clientTimer == nil {
				r.clientTimer = time.NewTimer(wait)
			} else {
				r.clientTimer.Reset(wait)
			}
			expired = r.clientTimer.C
		}
		select {
		case <-r.readable:
		case <-expired:
			return
		}
		if r.clientTimer != nil {
			r.clientTimer.Stop()
		}
	}
}

// run relays until both directions are done, then closes both legs.
func (r *relay) run() {
	r.wq.EventRegister(&r.readableEntry)
	defer r.wq.EventUnregister(&r.readableEntry)
	r.wq.EventRegister(&r.errEntry)
	defer r.wq.EventUnregister(&r.errEntry)
	if r.clientFailed() {
		// Failed before the entry was registered: no notification will
		// come, and the reads and writes report it anyway.
		r.fail(EndClientReset)
	}
	r.s.watch.add(r)
	defer r.s.watch.remove(r)
	defer r.finished.Store(true)
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.relayUpstream()
	}()
	r.relayClient()
	<-done
	// A read deadline still armed (the half-close timeout) would keep its
	// timer, and what it holds, for up to a minute after the close.
	r.client.SetDeadline(time.Time{})
	r.endOnce.Do(func() { r.end = EndClean })
	r.s.stats.Ended[r.end].Add(1)
	if r.end == EndClean {
		r.client.Close()
		r.upstream.Close()
	}
}

func (r *relay) relayClient() {
	defer r.recoverPanic()
	r.copy(conntrack.FromClient, r.upstream, r.client)
}

func (r *relay) relayUpstream() {
	defer r.recoverPanic()
	r.copy(conntrack.ToClient, r.client, r.upstream)
}

// closeWriter is the half-close both legs support.
type closeWriter interface {
	CloseWrite() error
}

// copy moves bytes from src to dst until EOF or an error.
func (r *relay) copy(d conntrack.Dir, dst, src net.Conn) {
	srcEnd, dstEnd := EndClientReset, EndUpstreamReset
	read := r.readClient
	if d == conntrack.ToClient {
		srcEnd, dstEnd = EndUpstreamReset, EndClientReset
		read = r.readUpstream
	}
	r.armDeadline(src)
	for {
		bp, n, err := read()
		if n > 0 {
			r.lastActive.Store(time.Now().UnixNano())
			var werr error
			if d == conntrack.ToClient {
				werr = r.writeClient((*bp)[:n])
			} else {
				_, werr = dst.Write((*bp)[:n])
			}
			if werr != nil {
				relayBufs.Put(bp)
				if errors.Is(werr, errUpstreamFailed) {
					r.fail(EndUpstreamReset)
				} else {
					r.fail(dstEnd)
				}
				return
			}
			r.bytes[d].Add(uint64(n))
			r.s.stats.RelayBytes[d].Add(uint64(n))
		}
		if bp != nil {
			relayBufs.Put(bp)
		}
		switch {
		case err == nil:
			continue
		case errors.Is(err, io.EOF):
			// A leg whose error the other direction took first reads as
			// EOF; only a FIN is passed on as one.
			if d == conntrack.FromClient && r.clientFailed() || d == conntrack.ToClient && !r.upstreamFIN() {
				r.fail(srcEnd)
				return
			}
			if d == conntrack.FromClient {
				r.upFIN.Store(true)
			}
			if cw, ok := dst.(closeWriter); ok {
				if cerr := cw.CloseWrite(); cerr != nil {
					r.fail(dstEnd)
					return
				}
			}
			// The other direction now runs under the half-close timeout,
			// counted from this half-close.
			r.lastActive.Store(time.Now().UnixNano())
			r.halfClosed.Store(true)
			r.armDeadline(r.other(src))
			return
		case isTimeout(err):
			if r.stillActive() {
				r.armDeadline(src)
				continue
			}
			r.fail(EndTimeout)
			return
		default:
			r.fail(srcEnd)
			return
		}
	}
}

// writeClient writes b to the client, waiting while its window is closed,
// unless the upstream has failed: then what the client can take at once is
// written and the rest reported as errUpstreamFailed, so that the reset
// is passed on without waiting for a client that may never read again.
func (r *relay) writeClient(b []byte) error {
	if !r.upFailed.Load() {
		n, err := r.client.Write(b)
		if err == nil || !r.upFailed.Load() || !isTimeout(err) {
			return err
		}
		// The watcher interrupted the write.
		b = b[n:]
	}
	var rd bytes.Reader
	rd.Reset(b)
	if n, terr := r.ep.Write(&rd, tcpip.WriteOptions{}); terr != nil || int(n) < len(b) {
		return errUpstreamFailed
	}
	return nil
}

// isTimeout reports a read deadline expiry, from either leg (gonet's
// timeout error is its own type, not os.ErrDeadlineExceeded). A socket
// error that calls itself a timeout (ETIMEDOUT: keepalive or the user
// timeout gave up on the destination) is the leg's death, not a deadline.
func isTimeout(err error) bool {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return false
	}
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

func (r *relay) other(c net.Conn) net.Conn {
	if c == r.upstream {
		return r.client
	}
	return r.upstream
}

// timeout is the inactivity limit in force: the half-close timeout once a
// direction has finished, else the idle timeout (zero: none).
func (r *relay) timeout() time.Duration {
	tune := r.s.tune.Load()
	if r.halfClosed.Load() {
		return tune.HalfCloseTimeout
	}
	return tune.IdleTimeout
}

// armDeadline sets c's read deadline to the inactivity limit counted from
// the last byte moved. Deadlines are only re-armed when they fire, so a busy
// connection pays nothing per read.
func (r *relay) armDeadline(c net.Conn) {
	t := r.timeout()
	if t == 0 {
		return
	}
	c.SetReadDeadline(time.Unix(0, r.lastActive.Load()).Add(t))
	if c == net.Conn(r.client) {
		select {
		case r.readable <- struct{}{}:
		default:
		}
	}
}

func (r *relay) stillActive() bool {
	t := r.timeout()
	return t == 0 || time.Since(time.Unix(0, r.lastActive.Load())) < t
}

// fail ends the relay with a reset of both legs.
func (r *relay) fail(e End) {
	r.endOnce.Do(func() { r.end = e })
	r.abort()
}

// abort resets both legs: RST to the client from the netstack, RST to the
// destination through SO_LINGER 0. Blocked reads and writes return at once.
func (r *relay) abort() {
	r.endOnce.Do(func() { r.end = EndAborted })
	r.abortOnce.Do(func() {
		r.ep.Abort()
		resetConn(r.upstream)
		r.ep.Close()
	})
}

// resetConn closes c with a reset (SO_LINGER 0) rather than a FIN.
func resetConn(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

func (r *relay) recoverPanic() {
	if p := recover(); p != nil {
		r.s.stats.Panics.Add(1)
		r.s.log.Error("relay panicked; connection reset", zap.Any("panic", p), zap.Stack("stack"))
		r.fail(EndAborted)
	}
}
