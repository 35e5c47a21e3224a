package stack

import (
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
	"gvisor.dev/gvisor/pkg/waiter"

	"tcpd/conntrack"
)

// relayBufSize is the size of one pooled relay buffer: large enough that a
// bulk transfer moves tens of segments per system call.
const relayBufSize = 64 << 10

var relayBufs = sync.Pool{New: func() any { b := make([]byte, relayBufSize); return &b }}

// relay carries the bytes of one connection both ways. Two goroutines run
// it: the handler's own (client → destination) and relayUpstream
// (destination → client). EOF on one side becomes a half-close (FIN) on the
// other; any error becomes a reset of both legs.
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
	return r
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
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.relayUpstream()
	}()
	r.relayClient()
	<-done
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
			if _, werr := dst.Write((*bp)[:n]); werr != nil {
				relayBufs.Put(bp)
				r.fail(dstEnd)
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
			if cw, ok := dst.(closeWriter); ok {
				if cerr := cw.CloseWrite(); cerr != nil {
					r.fail(dstEnd)
					return
				}
			}
			r.halfClosed.Store(true)
			// The other direction now runs under the half-close timeout.
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

// isTimeout reports a read deadline expiry, from either leg (gonet's
// timeout error is its own type, not os.ErrDeadlineExceeded).
func isTimeout(err error) bool {
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
		if tc, ok := r.upstream.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		r.upstream.Close()
		r.ep.Close()
	})
}

func (r *relay) recoverPanic() {
	if p := recover(); p != nil {
		r.s.stats.Panics.Add(1)
		r.s.log.Error("relay panicked; connection reset", zap.Any("panic", p), zap.Stack("stack"))
		r.fail(EndAborted)
	}
}
