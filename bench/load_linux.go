//go:build linux

package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// bulkBuf is the size of one read or write of the bulk test: large enough
// that the load generator's own system calls are not what limits a
// multi-gigabit stream.
const bulkBuf = 256 << 10

// bulkResult is one bulk transfer, measured at the receiving end.
type bulkResult struct {
	bytes int64
	dur   time.Duration // first byte received to EOF, over all streams
	cpu   time.Duration // tcpd's CPU time during the transfer; 0 on the kernel path
}

func (r bulkResult) gbps() float64 { return float64(r.bytes) * 8 / r.dur.Seconds() / 1e9 }

// cpuPerGB is tcpd's CPU seconds per 10^9 bytes relayed.
func (r bulkResult) cpuPerGB() float64 { return r.cpu.Seconds() / (float64(r.bytes) / 1e9) }

// received is what one receiver saw.
type received struct {
	n           int64
	first, last time.Time
	err         error
}

// receive reads c to EOF, counting bytes.
func receive(c net.Conn) received {
	buf := make([]byte, bulkBuf)
	var r received
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if r.n == 0 {
				r.first = time.Now()
			}
			r.n += int64(n)
		}
		if errors.Is(err, io.EOF) {
			r.last = time.Now()
			return r
		}
		if err != nil {
			r.err = err
			return r
		}
	}
}

// send writes to c until the deadline, half-closes it and waits for the
// receiver's close, so that when it returns every byte has been read.
func send(c net.Conn, until time.Time) error {
	buf := make([]byte, bulkBuf)
	for time.Now().Before(until) {
		if _, err := c.Write(buf); err != nil {
			return err
		}
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	if _, err := io.Copy(io.Discard, c); err != nil {
		return err
	}
	return nil
}

// bulk moves data over streams parallel connections for cfg.Bulk, client to
// server (upload) or server to client, and measures the receivers.
func (b *bencher) bulk(ctx context.Context, p *path, upload bool, streams int, name string) (bulkResult, error) {
	d := b.cfg.Bulk
	// The transfer's own length plus a generous allowance for draining
	// tcpd's buffers; only a wedged transfer gets anywhere near it.
	limit := d + 30*time.Second
	results := make(chan received, streams)
	srv, err := serve(p.lab.Server, p.lab.ServerAddr4, 1, func(c net.Conn) error {
		c.SetDeadline(time.Now().Add(limit))
		if upload {
			r := receive(c)
			results <- r
			return r.err
		}
		return send(c, time.Now().Add(d))
	})
	if err != nil {
		return bulkResult{}, err
	}
	defer srv.Close()
	stopProfile := b.startProfile(p, name)
	defer stopProfile()

	cpu0, err := p.cpu(b.ticks)
	if err != nil {
		return bulkResult{}, err
	}
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range streams {
		c, err := p.lab.Client.DialTimeout("tcp", srv.addrs[0], 10*time.Second)
		if err != nil {
			return bulkResult{}, fmt.Errorf("dial %s: %w", srv.addrs[0], err)
		}
		c.SetDeadline(time.Now().Add(limit))
		conns = append(conns, c)
	}
	// Ctrl-C ends the transfer at once.
	stop := context.AfterFunc(ctx, func() {
		for _, c := range conns {
			c.SetDeadline(time.Now())
		}
	})
	defer stop()

	var wg sync.WaitGroup
	sendErrs := make(chan error, streams)
	for _, c := range conns {
		wg.Go(func() {
			if upload {
				sendErrs <- send(c, time.Now().Add(d))
				return
			}
			r := receive(c)
			c.Close()
			results <- r
		})
	}
	wg.Wait()
	close(sendErrs)
	var errs []error
	for err := range sendErrs {
		errs = append(errs, err)
	}
	var res bulkResult
	var first, last time.Time
	for range streams {
		var r received
		select {
		case r = <-results:
		case <-time.After(limit):
			errs = append(errs, errors.New("a receiver never finished"))
		}
		errs = append(errs, r.err)
		res.bytes += r.n
		if first.IsZero() || r.first.Before(first) {
			first = r.first
		}
		if r.last.After(last) {
			last = r.last
		}
	}
	if err := errors.Join(append(errs, ctx.Err())...); err != nil {
		return bulkResult{}, err
	}
	cpu1, err := p.cpu(b.ticks)
	if err != nil {
		return bulkResult{}, err
	}
	res.dur, res.cpu = last.Sub(first), cpu1-cpu0
	if res.bytes == 0 || res.dur <= 0 {
		return bulkResult{}, errors.New("no data moved")
	}
	return res, nil
}

// crrResult is one connection-rate run.
type crrResult struct {
	ok, errs, stuck int64
	dur             time.Duration
	serverErrs      int64
	firstErr        string
	// cost is what tcpd spent while the clients ran; zero on the kernel
	// path.
	cost procCost
}

func (r crrResult) rate() float64 { return float64(r.ok) / r.dur.Seconds() }

// crrPorts is how many server ports the connection-rate test spreads its
// clients over. Each closed connection holds its 4-tuple in TIME_WAIT for
// 60 s on the side that closed first (the client ns, or tcpd's upstream
// socket in the gateway ns), and one 4-tuple space has 28232 ephemeral
// ports (32768-60999, Linux's default ip_local_port_range); eight of them
// keep a few seconds at kernel speed well clear of exhausting it.
const crrPorts = 8

// meter measures something about tcpd over a connection-rate run: start
// is called just before the clients start, stop once they have all
// finished.
type meter interface {
	start() error
	stop() error
}

// connRate runs cfg.Workers clients for cfg.ConnRate, each repeating:
// connect, send 1 byte, read 1 byte, close. With serverFirst the server
// closes right after writing its byte and the client waits for that FIN
// before closing; otherwise the client closes first and the server closes
// on the client's FIN. On a tcpd path it reads tcpd's CPU time and context
// switches before and after, and runs m (if not nil) around the clients.
// With srcs, worker i connects from srcs[i%len(srcs)]; without, from the
// client's own address.
func (b *bencher) connRate(ctx context.Context, p *path, serverFirst bool, m meter, srcs []netip.Addr) (crrResult, error) {
	stuck := b.cfg.Stuck
	srv, err := serve(p.lab.Server, p.lab.ServerAddr4, crrPorts, func(c net.Conn) error {
		c.SetDeadline(time.Now().Add(stuck + time.Second))
		var one [1]byte
		if _, err := io.ReadFull(c, one[:]); err != nil {
			return err
		}
		if _, err := c.Write(one[:]); err != nil {
			return err
		}
		if serverFirst {
			return nil
		}
		if n, err := c.Read(one[:]); n != 0 || !errors.Is(err, io.EOF) {
			return fmt.Errorf("want EOF, got %d bytes, %v", n, err)
		}
		return nil
	})
	if err != nil {
		return crrResult{}, err
	}
	defer srv.Close()

	var cost0 procCost
	if p.tcpd != nil {
		if cost0, err = readCost(p.pid, b.ticks); err != nil {
			return crrResult{}, err
		}
	}
	if m != nil {
		if err := m.start(); err != nil {
			return crrResult{}, err
		}
	}
	var ok, errs, stuckN atomic.Int64
	var firstErr atomic.Value
	start := time.Now()
	end := start.Add(b.cfg.ConnRate)
	var wg sync.WaitGroup
	doErrs := make(chan error, b.cfg.Workers)
	for i := range b.cfg.Workers {
		addr := srv.addrs[i%len(srv.addrs)]
		d := net.Dialer{FallbackDelay: -1}
		if len(srcs) > 0 {
			d.LocalAddr = &net.TCPAddr{IP: srcs[i%len(srcs)].AsSlice()}
		}
		wg.Go(func() {
			// The whole loop runs in the client namespace on one locked
			// thread, so connecting costs no namespace switch.
			doErrs <- p.lab.Client.Do(func() error {
				for time.Now().Before(end) && ctx.Err() == nil {
					err := oneCRR(ctx, &d, addr, serverFirst, stuck)
					switch {
					case err == nil:
						ok.Add(1)
						continue
					case ctx.Err() != nil:
						return nil
					case isTimeout(err):
						stuckN.Add(1)
					default:
						errs.Add(1)
					}
					firstErr.CompareAndSwap(nil, err.Error())
					// An error that comes back at once (no ports left)
					// must not spin.
					time.Sleep(time.Millisecond)
				}
				return nil
			})
		})
	}
	wg.Wait()
	close(doErrs)
	r := crrResult{ok: ok.Load(), errs: errs.Load(), stuck: stuckN.Load(), dur: time.Since(start)}
	for err := range doErrs {
		if err != nil {
			return r, err
		}
	}
	if err := ctx.Err(); err != nil {
		return r, err
	}
	// The server's handlers end once the last closes have crossed tcpd,
	// whose work for them is then done too.
	srv.settle(stuck + time.Second)
	if m != nil {
		if err := m.stop(); err != nil {
			return r, err
		}
	}
	if p.tcpd != nil {
		cost1, err := readCost(p.pid, b.ticks)
		if err != nil {
			return r, err
		}
		r.cost = cost1.sub(cost0)
	}
	srv.Close()
	r.serverErrs = srv.errs.Load()
	if v, _ := firstErr.Load().(string); v != "" {
		r.firstErr = v
	}
	return r, nil
}

// oneCRR is one connection of the connection-rate test, which must finish
// within stuck of its start.
func oneCRR(ctx context.Context, d *net.Dialer, addr string, serverFirst bool, stuck time.Duration) error {
	deadline := time.Now().Add(stuck)
	dctx, cancel := context.WithDeadline(ctx, deadline)
	c, err := d.DialContext(dctx, "tcp", addr)
	cancel()
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(deadline)
	one := []byte{'x'}
	if _, err := c.Write(one); err != nil {
		return err
	}
	if _, err := io.ReadFull(c, one); err != nil {
		return err
	}
	if serverFirst {
		if n, err := c.Read(one); n != 0 || !errors.Is(err, io.EOF) {
			return fmt.Errorf("want EOF, got %d bytes, %w", n, err)
		}
	}
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) ||
		(errors.As(err, &ne) && ne.Timeout())
}

// latencyResult is one connect-latency run.
type latencyResult struct {
	p50, p99 time.Duration
	errs     int
}

// connectLatency times cfg.Connects sequential connects from the client
// namespace: from just before socket() to connect() returning, with plain
// blocking system calls so that no scheduler wake-up is included. Each
// connection is closed at once.
func (b *bencher) connectLatency(ctx context.Context, p *path) (latencyResult, error) {
	srv, err := serve(p.lab.Server, p.lab.ServerAddr4, 1, func(c net.Conn) error { return nil })
	if err != nil {
		return latencyResult{}, err
	}
	defer srv.Close()
	ap, err := netip.ParseAddrPort(srv.addrs[0])
	if err != nil {
		return latencyResult{}, err
	}
	sa := &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	// A connect that takes this long is broken, not slow.
	tv := unix.NsecToTimeval(int64(5 * time.Second))
	var samples []time.Duration
	var errs int
	err = p.lab.Client.Do(func() error {
		for range b.cfg.Connects {
			if err := ctx.Err(); err != nil {
				return err
			}
			t0 := time.Now()
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("socket: %w", err)
			}
			// SO_SNDTIMEO bounds a blocking connect (socket(7)).
			if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
				unix.Close(fd)
				return err
			}
			err = unix.Connect(fd, sa)
			dt := time.Since(t0)
			unix.Close(fd)
			if err != nil {
				errs++
				continue
			}
			samples = append(samples, dt)
		}
		return nil
	})
	if err != nil {
		return latencyResult{}, err
	}
	if len(samples) == 0 {
		return latencyResult{}, fmt.Errorf("all %d connects failed", errs)
	}
	return latencyResult{p50: percentile(samples, 50), p99: percentile(samples, 99), errs: errs}, nil
}
