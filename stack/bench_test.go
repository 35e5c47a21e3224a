package stack

import (
	"context"
	"io"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"
)

// BenchmarkRelayBulk moves bytes from a loopback upstream through tcpd's
// netstack to an in-memory client stack, with conntrack on and bypassed,
// to price connection tracking on the data path. MB/s is per direction.
func BenchmarkRelayBulk(b *testing.B) {
	for _, tc := range []struct {
		name    string
		noTrack bool
	}{{"tracking=on", false}, {"tracking=off", true}} {
		b.Run(tc.name, func(b *testing.B) {
			h := newHarness(b, Config{noTrack: tc.noTrack}, clientAddr)
			const chunk = 1 << 20
			h.listen(b, func(c net.Conn) {
				buf := make([]byte, chunk)
				for {
					if _, err := c.Write(buf); err != nil {
						return
					}
				}
			})
			c, err := h.dial(b, 80)
			if err != nil {
				b.Fatal(err)
			}
			buf := make([]byte, 64<<10)
			b.SetBytes(chunk)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				for got := 0; got < chunk; {
					n, err := c.Read(buf)
					if err != nil {
						b.Fatal(err)
					}
					got += n
				}
			}
			b.StopTimer()
			c.Close()
		})
	}
}

// BenchmarkTimeWaitHeld closes 16,384 connections into TIME_WAIT on tcpd's
// side (the upstream closes first) and reports the Go heap tcpd holds for
// each once their relays are done and the netstack has let their endpoints
// go: what a connection in TIME_WAIT costs, all of tcpd included.
func BenchmarkTimeWaitHeld(b *testing.B) {
	const n = 16384
	h := newHarness(b, Config{Tunables: Tunables{TimeWait: time.Hour, TimeWaitLimit: new(n)}}, clientAddr)
	h.listen(b, func(c net.Conn) { c.Write([]byte{'x'}) })
	connect := func(count int) {
		var wg sync.WaitGroup
		next := make(chan struct{}, count)
		for range count {
			next <- struct{}{}
		}
		close(next)
		for range 32 {
			wg.Go(func() {
				for range next {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					c, err := h.client.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(dstAddr, 80))
					cancel()
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, c) // "x", then the upstream's FIN
					c.Close()
				}
			})
		}
		wg.Wait()
	}
	// settled waits until every connection is in TIME_WAIT with nothing
	// else left of it, and returns how many are. (The client stack reuses
	// a port now and then, which reopens a 4-tuple in TIME_WAIT.)
	settled := func() int {
		deadline := time.Now().Add(time.Minute)
		for last := -1; ; time.Sleep(100 * time.Millisecond) {
			snap, ns := h.s.Snapshot(), h.s.NetstackStats()
			if snap.Live == snap.TimeWait && ns.Endpoints == 0 && ns.TrackedEndpoints == 0 && h.s.Stats().Active.Load() == 0 {
				if snap.TimeWait == last {
					return last
				}
				last = snap.TimeWait
				continue
			}
			if time.Now().After(deadline) {
				b.Fatalf("not settled: %d in TIME_WAIT, %d live, %d netstack endpoints, %d tracked, %d relays",
					snap.TimeWait, snap.Live, ns.Endpoints, ns.TrackedEndpoints, h.s.Stats().Active.Load())
			}
		}
	}
	heap := func() uint64 {
		var ms runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	// Warm up pools and the netstack's own structures.
	connect(1000)
	tw0 := settled()
	before := heap()
	var per float64
	for b.Loop() {
		connect(n - 1000)
		tw := settled()
		b.StopTimer()
		per = float64(heap()-before) / float64(tw-tw0)
		b.Logf("%d connections in TIME_WAIT, %d of them held for this measure: %.0f B each", tw, tw-tw0, per)
		b.StartTimer()
	}
	b.ReportMetric(per, "B/time_wait")
}
