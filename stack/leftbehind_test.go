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

	"tcpd/conntrack"
)

// TestNothingLeftBehind runs 2,000 connections in each close order through
// the stack and, once every one is over (TIME_WAIT expired, relays ended,
// endpoints gone), checks that the Go heap is back where it was after a
// first round of the same traffic: no per-connection allocation outlives
// its connection, not even for a while (a timer that holds it for a
// minute counts). Before the relay stopped its deadline when it ended,
// this found 426 bytes a connection.
func TestNothingLeftBehind(t *testing.T) {
	if testing.Short() {
		t.Skip("4,000 connections")
	}
	h := newHarness(t, Config{Tunables: Tunables{TimeWait: time.Second}}, clientAddr)
	h.listen(t, func(c net.Conn) {
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return
		}
		c.Write(b[:])
		if b[0] == 's' {
			return // the server closes first: tcpd's client leg gets TIME_WAIT
		}
		io.Copy(io.Discard, c)
	})
	round := func(n int) {
		var wg sync.WaitGroup
		next := make(chan byte, n)
		for i := range n {
			next <- "sc"[i%2]
		}
		close(next)
		for range 32 {
			wg.Go(func() {
				for mode := range next {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					c, err := h.client.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(dstAddr, 80))
					cancel()
					if err != nil {
						t.Error(err)
						return
					}
					c.SetDeadline(time.Now().Add(10 * time.Second))
					c.Write([]byte{mode})
					var b [1]byte
					io.ReadFull(c, b[:])
					if mode == 's' {
						io.Copy(io.Discard, c) // the server's FIN first
					}
					c.SetDeadline(time.Time{}) // the test's own timers
					c.Close()
				}
			})
		}
		wg.Wait()
		waitFor(t, "every connection to be over, on both sides", func() bool {
			ns := h.s.NetstackStats()
			return h.s.Snapshot().Live == 0 && ns.Endpoints == 0 && ns.TrackedEndpoints == 0 && h.s.Stats().Active.Load() == 0 &&
				len(h.client.s.RegisteredEndpoints()) == 0
		})
	}
	heap := func() uint64 {
		// The harness's record of dialled addresses is the test's.
		h.mu.Lock()
		h.dialed = nil
		h.mu.Unlock()
		// conntrack remembers an ended connection's queue for
		// EndedLinger, and the maintenance loop expires those records
		// within timeWaitResolution after: they are not left behind.
		time.Sleep(conntrack.EndedLinger + 2*timeWaitResolution)
		var ms runtime.MemStats
		// Two cycles: the first moves sync.Pool contents to the victim
		// cache, the second frees them.
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	const n = 4000
	// The same traffic first: pools, the netstack's tables and both
	// stacks' maps grow to what it needs (maps never shrink below a size
	// not worth rebuilding), so that what grows after is what stays.
	round(n)
	before := heap()
	round(n)
	after := heap()
	per := (float64(after) - float64(before)) / n
	t.Logf("Go heap %d KiB after the warm-up, %d KiB after %d more connections: %+.0f bytes a connection",
		before>>10, after>>10, n, per)
	// The noise measured is 3-50 bytes (maps between sizes, the
	// runtime's own); the leak this guards against was 300.
	if per > 100 {
		t.Errorf("%.0f bytes of Go heap left behind per connection, want none", per)
	}
}
