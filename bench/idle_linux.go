//go:build linux

package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// idleOpeners is how many connections the idle test opens at once; well
// under tcpd's per-client in-flight cap (256), so no SYN is ignored.
const idleOpeners = 64

// idleResult is one run of the idle test. RSS values are tcpd's, in KiB,
// zero on the kernel path; Slab is the machine's (/proc/meminfo).
type idleResult struct {
	n                            int
	rssBefore, rssOpen, rssAfter int64
	slabBefore, slabOpen         int64
	drain                        time.Duration // close to tcpd's table empty
	relaysActive                 float64       // tcpd's view with all open
	heapOpen, heapAfter          float64       // tcpd's go_memstats_heap_inuse_bytes
	noEOF                        int64         // client ends that saw no FIN
}

func (r idleResult) kbPerConn() float64 { return float64(r.rssOpen-r.rssBefore) / float64(r.n) }
func (r idleResult) slabPerConn() float64 {
	return float64(r.slabOpen-r.slabBefore) / float64(r.n)
}
func (r idleResult) afterRatio() float64 { return float64(r.rssAfter) / float64(r.rssBefore) }

// idle opens n idle connections at once, round-robin from the path's
// client addresses, and reads tcpd's RSS before and with all of them open.
// Then the server closes each connection, the client closes its end on the
// FIN, so tcpd's client leg ends in TIME_WAIT; on the tcpd path it waits
// until tcpd's table is empty and reads the RSS again cfg.IdleAfter later.
func (b *bencher) idle(ctx context.Context, p *path, n int) (idleResult, error) {
	res := idleResult{}
	srv, err := b.startIdleServer(ctx, p.lab.Server, p.lab.ServerAddr4)
	if err != nil {
		return res, err
	}
	defer srv.stop()
	addr := srv.addr
	if p.tcpd != nil {
		if res.rssBefore, err = p.rss(); err != nil {
			return res, err
		}
	}
	if res.slabBefore, err = meminfoKB("Slab"); err != nil {
		return res, err
	}

	conns := make([]net.Conn, n)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	var next, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	doErrs := make(chan error, idleOpeners)
	for range idleOpeners {
		wg.Go(func() {
			doErrs <- p.lab.Client.Do(func() error {
				for ctx.Err() == nil {
					i := int(next.Add(1) - 1)
					if i >= n {
						return nil
					}
					src := p.srcs[i%len(p.srcs)]
					d := net.Dialer{FallbackDelay: -1, Timeout: 10 * time.Second,
						LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
					c, err := d.DialContext(ctx, "tcp", addr)
					if err != nil {
						failed.Add(1)
						firstErr.CompareAndSwap(nil, err.Error())
						continue
					}
					conns[i] = c
				}
				return nil
			})
		})
	}
	wg.Wait()
	close(doErrs)
	for err := range doErrs {
		if err != nil {
			return res, err
		}
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	res.n = n - int(failed.Load())
	if f := failed.Load(); f > 0 {
		msg, _ := firstErr.Load().(string)
		b.notef("idle (%s): %d of %d connects failed, first: %s", p.name, f, n, msg)
	}
	if res.n < n*9/10 {
		return res, fmt.Errorf("only %d of %d idle connections opened", res.n, n)
	}
	// Every connection the client sees open must be accepted by the server.
	deadline := time.Now().Add(15 * time.Second)
	for {
		got, err := srv.accepted()
		if err != nil {
			return res, err
		}
		if got >= res.n {
			break
		}
		if time.Now().After(deadline) {
			return res, fmt.Errorf("server accepted %d of %d idle connections", got, res.n)
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return res, err
		}
	}
	// Let tcpd finish its per-connection bookkeeping before reading.
	if err := sleep(ctx, time.Second); err != nil {
		return res, err
	}
	if p.tcpd != nil {
		if res.rssOpen, err = p.rss(); err != nil {
			return res, err
		}
		if m, err := p.scrape(ctx); err == nil {
			res.relaysActive = m.sum("tcpd_relays_active")
			res.heapOpen = m.sum("go_memstats_heap_inuse_bytes")
		}
	}
	if res.slabOpen, err = meminfoKB("Slab"); err != nil {
		return res, err
	}

	// Server first; each client end closes once it has read the FIN.
	closeStart := time.Now()
	if err := srv.closeConns(); err != nil {
		return res, err
	}
	var next2, noEOF atomic.Int64
	for range idleOpeners {
		wg.Go(func() {
			buf := make([]byte, 1)
			for {
				i := int(next2.Add(1) - 1)
				if i >= n {
					return
				}
				c := conns[i]
				if c == nil {
					continue
				}
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				if _, err := c.Read(buf); !errors.Is(err, io.EOF) {
					noEOF.Add(1)
				}
				c.Close()
				conns[i] = nil
			}
		})
	}
	wg.Wait()
	res.noEOF = noEOF.Load()
	if p.tcpd == nil {
		return res, ctx.Err()
	}
	// tcpd's table empties when the last TIME_WAIT expires.
	deadline = time.Now().Add(b.cfg.IdleTimeWait + 30*time.Second)
	for {
		m, err := p.scrape(ctx)
		if err != nil {
			return res, err
		}
		if m.sum("tcpd_conntrack_entries") == 0 && m.sum("tcpd_relays_active") == 0 {
			break
		}
		if time.Now().After(deadline) {
			return res, fmt.Errorf("tcpd still tracks %v connections (%v in TIME_WAIT) %v after closing",
				m.sum("tcpd_conntrack_entries"), m.sum("tcpd_tcp_time_wait_connections"), time.Since(closeStart).Round(time.Second))
		}
		if err := sleep(ctx, 250*time.Millisecond); err != nil {
			return res, err
		}
	}
	res.drain = time.Since(closeStart)
	if err := sleep(ctx, b.cfg.IdleAfter); err != nil {
		return res, err
	}
	if res.rssAfter, err = p.rss(); err != nil {
		return res, err
	}
	if m, err := p.scrape(ctx); err == nil {
		res.heapAfter = m.sum("go_memstats_heap_inuse_bytes")
	}
	return res, nil
}

// sleep waits for d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
