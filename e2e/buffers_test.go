//go:build linux

package e2e_test

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tcpd/internal/netlab"
)

// TestStalledUploadsMemoryBounded: one client opens stalledConns
// connections to a destination that reads nothing and pushes into each
// until it stalls. Each fills its client leg's netstack receive buffer (1 MiB
// to begin with, more in the heap), which without a bound on those buffers
// took tcpd's RSS to several times its memory limit. With buffer pressure
// (tcpd's tcp_mem) the connections opened once the live heap passes 40 % of
// the limit get small buffers, and those open already shrink: RSS stays
// within twice the limit, and tcpd_tcp_buffer_pressure says it was under
// pressure.
func TestStalledUploadsMemoryBounded(t *testing.T) {
	const stalledConns = 300
	const limit = 128 * mib
	g := startGateway(t, netlab.Options{}, gwConfig{Metrics: true, Memory: "128MiB", IdleTimeout: "1h"})
	hold := make(chan struct{})
	defer close(hold)
	port := serve(t, g.Server, func(c net.Conn) { <-hold })
	addr := net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port))

	var pushed atomic.Int64
	var wg sync.WaitGroup
	conns := make([]net.Conn, 0, stalledConns)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
		wg.Wait()
	}()
	buf := make([]byte, 64<<10)
	for range stalledConns {
		c, err := g.Client.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("connection %d: %v", len(conns), err)
		}
		conns = append(conns, c)
		wg.Go(func() {
			c.SetWriteDeadline(time.Now().Add(30 * time.Second))
			for {
				n, err := c.Write(buf)
				pushed.Add(int64(n))
				if err != nil {
					return
				}
			}
		})
		time.Sleep(5 * time.Millisecond)
	}
	// Stalled: nothing more moves for 2 s.
	var peakRSS, peakLevel float64
	last, still := pushed.Load(), 0
	for deadline := time.Now().Add(40 * time.Second); time.Now().Before(deadline) && still < 4; {
		time.Sleep(500 * time.Millisecond)
		m := scrape(t, g)
		peakRSS = max(peakRSS, m["process_resident_memory_bytes"])
		peakLevel = max(peakLevel, m["tcpd_tcp_buffer_pressure"])
		if p := pushed.Load(); p == last {
			still++
		} else {
			last, still = p, 0
		}
	}
	t.Logf("%d connections pushed %s in all into a destination that reads nothing; tcpd's RSS at most %s (memory limit %s), buffer pressure level at most %v",
		stalledConns, mibs(float64(pushed.Load())), mibs(peakRSS), mibs(limit), peakLevel)
	if peakLevel == 0 {
		t.Error("tcpd_tcp_buffer_pressure stayed 0")
	}
	if peakRSS > 2*limit {
		t.Errorf("tcpd's RSS reached %s, want at most twice the memory limit of %s", mibs(peakRSS), mibs(limit))
	}
}
