package stack

import (
	"io"
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

	created := []metrics.Sample{{Name: "/sched/goroutines-created:goroutines"}}
	metrics.Read(created)
	before := created[0].Value.Uint64()
	for i := 1; i <= n; i++ {
		open(i)
	}
	waitFor(t, "all relays active", func() bool { return h.s.Stats().Active.Load() == n+1 })
	metrics.Read(created)
	perConn := float64(created[0].Value.Uint64()-before) / n
	// A few goroutines come and go on their own (the netstack's timers,
	// the Go net poller's, what earlier tests of this binary left
	// running): alone, 1.00-1.01 per connection; in a loaded full-suite
	// run once 1.28. The bound sits halfway between one (the forwarder's)
	// and two, which a goroutine per connection anywhere else would give
	// (the relay before d1ec37f: 2.01).
	t.Logf("%d connections made: %.2f goroutines created per connection", n, perConn)
	switch {
	case raceDetector:
		// Slowed by the detector, the in-process client acknowledges
		// late and the netstack's tail-loss probe timers fire, each on
		// a goroutine of its own (in one run 2.26 per connection, 308
		// probe timers' for 201 connections): not the relay's count.
		t.Logf("not checked under the race detector")
	case perConn > 1.5:
		t.Errorf("%d connections made: %.2f goroutines created per connection, want 1 (the forwarder's)", n, perConn)
	}
	if got := settled(base + slack); got > base+slack {
		t.Fatalf("%d idle connections: %d goroutines, %d with one: %d more, want at most %d",
			n+1, got, base, got-base, slack)
	}
}
