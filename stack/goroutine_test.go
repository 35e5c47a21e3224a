package stack

import (
	"fmt"
	"io"
	"math"
	"net"
	"runtime"
	"runtime/metrics"
	"testing"
	"time"
)

// TestConnectionGoroutines: a connection costs one goroutine, the one the
// netstack's forwarder starts for its SYN, and only until its relay starts.
//
//   - Setup: the goroutines created while 200 connections are made and move
//     a byte each way are one per connection (the forwarder's): the upstream
//     connect and the relay start none.
//   - Idle: those 200 connections, now idle, leave the process's goroutine
//     count where one such connection left it, give or take a few
//     (goroutines that come and go on their own, such as timers'): a relay
//     holds none.
//
// The upstream's ends are accepted and held by one goroutine, so that the
// test itself adds none per connection.
func TestConnectionGoroutines(t *testing.T) {
	const n, slack = 200, 10
	h := newHarness(t, Config{}, clientAddr)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, n+1)
	held := make(chan []net.Conn, 1)
	go func() {
		var conns []net.Conn
		for {
			c, err := ln.Accept()
			if err != nil {
				held <- conns
				return
			}
			conns = append(conns, c)
			accepted <- c
		}
	}()
	// Registered before the harness's, so they run after it: tcpd resets
	// what is left while the upstream ends are still open.
	t.Cleanup(func() {
		ln.Close()
		for _, c := range <-held {
			c.Close()
		}
	})
	h.mu.Lock()
	h.upstream = ln.Addr()
	h.mu.Unlock()

	// open makes one connection through tcpd and moves a byte each way on
	// it.
	open := func(i int) {
		t.Helper()
		c, err := h.dial(t, 80)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		var up net.Conn
		select {
		case up = <-accepted:
		case <-time.After(10 * time.Second):
			t.Fatalf("connection %d: the upstream accepted nothing", i)
		}
		b := make([]byte, 1)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		up.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte{'q'}); err != nil {
			t.Fatalf("connection %d: client write: %v", i, err)
		}
		if _, err := io.ReadFull(up, b); err != nil || b[0] != 'q' {
			t.Fatalf("connection %d: upstream read %q, %v", i, b, err)
		}
		if _, err := up.Write([]byte{'a'}); err != nil {
			t.Fatalf("connection %d: upstream write: %v", i, err)
		}
		if _, err := io.ReadFull(c, b); err != nil || b[0] != 'a' {
			t.Fatalf("connection %d: client read %q, %v", i, b, err)
		}
		c.SetDeadline(time.Time{})
		up.SetDeadline(time.Time{})
	}

	// settled waits until the goroutine count is at most limit, and
	// returns the count.
	settled := func(limit int) int {
		deadline := time.Now().Add(10 * time.Second)
		for {
			got := runtime.NumGoroutine()
			if got <= limit || time.Now().After(deadline) {
				return got
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	open(0)
	waitFor(t, "one active relay", func() bool { return h.s.Stats().Active.Load() == 1 })
	// The handshake's goroutine (the netstack forwarder's) ends once the
	// relay has started; wait for the count to stop falling.
	base := runtime.NumGoroutine()
	for {
		time.Sleep(100 * time.Millisecond)
		now := runtime.NumGoroutine()
		if now >= base {
			break
		}
		base = now
	}

	// Goroutines created per connection, counted over bursts of
	// connections made one after another, the fewest of any burst. The
	// netstack fires its timers on goroutines of their own, and a timer
	// it stopped still fires, unheeded, when it was due: a retransmission
	// timer armed for a segment since acknowledged 200 ms or more after it
	// was armed, a handshake's one second after. Counted over all 200
	// connections at once those fires came to 1.28 and 1.75 per connection
	// in loaded full-suite runs; a burst that starts once the last
	// burst's timers have come due and ends within 200 ms sees none of
	// them, and one such burst is enough.
	const bursts = 4
	created := []metrics.Sample{{Name: "/sched/goroutines-created:goroutines"}}
	perConn := math.Inf(1)
	var counts []string
	for b := range bursts {
		time.Sleep(1100 * time.Millisecond)
		metrics.Read(created)
		before := created[0].Value.Uint64()
		for i := 1; i <= n/bursts; i++ {
			open(b*n/bursts + i)
		}
		metrics.Read(created)
		c := float64(created[0].Value.Uint64()-before) / (n / bursts)
		counts = append(counts, fmt.Sprintf("%.2f", c))
		perConn = min(perConn, c)
	}
	waitFor(t, "all relays active", func() bool { return h.s.Stats().Active.Load() == n+1 })
	// Alone, 1.00-1.01 per connection: the forwarder's. The bound sits
	// halfway between one and two, which a goroutine per connection
	// anywhere else would give in every burst (the relay before d1ec37f:
	// 2.01).
	t.Logf("%d connections made in %d bursts: %v goroutines created per connection", n, bursts, counts)
	switch {
	case raceDetector:
		// Slowed by the detector, a burst lasts long enough for its own
		// timers to come due (in one run 2.26 per connection): not the
		// relay's count.
		t.Logf("not checked under the race detector")
	case perConn > 1.5:
		t.Errorf("%d connections made in %d bursts: %v goroutines created per connection, want 1 (the forwarder's) in at least one", n, bursts, counts)
	}
	if got := settled(base + slack); got > base+slack {
		t.Fatalf("%d idle connections: %d goroutines, %d with one: %d more, want at most %d",
			n+1, got, base, got-base, slack)
	}
}
