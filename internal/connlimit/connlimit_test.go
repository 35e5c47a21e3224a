package connlimit_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"tcpd/internal/connlimit"
)

// serve starts an HTTP server on a capped loopback listener. Its handler
// answers /slow only once release is closed.
func serve(t *testing.T, max int, release chan struct{}) (*connlimit.Listener, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := connlimit.New(ln, max)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				<-release
			}
			io.WriteString(w, "ok")
		}),
		ConnState: l.ConnState,
	}
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(l) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return l, ln.Addr().String()
}

// get sends one request on c and reads the answer's status line.
func get(c net.Conn, path string) (string, error) {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	return resp.Status, nil
}

func waitOpen(t *testing.T, l *connlimit.Listener, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for l.Open() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections open, want %d", l.Open(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestIdleConnectionsNeverLockOut holds the cap's worth of idle
// connections, some that sent a request and kept the connection alive and
// some that sent nothing, and then connects again and again: each new
// client is answered at once, an idle connection is closed for it (the
// one idle longest first), and no more than the cap are ever open.
func TestIdleConnectionsNeverLockOut(t *testing.T) {
	const max = 4
	l, addr := serve(t, max, nil)
	var idle []net.Conn
	for i := range max {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if i%2 == 0 {
			if st, err := get(c, "/"); err != nil || st != "200 OK" {
				t.Fatalf("request %d: %q, %v", i, st, err)
			}
		}
		idle = append(idle, c)
		waitOpen(t, l, i+1)
	}
	// Past the grace of the ones that sent nothing.
	time.Sleep(connlimit.NewGrace + 100*time.Millisecond)
	closed := func(c net.Conn) bool {
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		_, err := c.Read(make([]byte, 1))
		return err != nil && !strings.Contains(err.Error(), "timeout")
	}
	for round := range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		start := time.Now()
		st, err := get(c, "/")
		if err != nil || st != "200 OK" {
			t.Fatalf("round %d: new client got %q, %v with %d idle connections held", round, st, err, max)
		}
		if took := time.Since(start); took > time.Second {
			t.Fatalf("round %d: new client waited %v", round, took)
		}
		if round == 0 && !closed(idle[0]) {
			// Say what happened instead, for a failure seen once on a
			// loaded machine: which were closed, how many evictions.
			var which []int
			for i, c := range idle[1:] {
				if closed(c) {
					which = append(which, i+1)
				}
			}
			t.Fatalf("the connection idle longest was not the one closed: closed instead %v of the idle 0-%d (0 and 2 sent a request), %d evictions, %d open, new client answered in %v",
				which, max-1, l.Evicted(), l.Open(), time.Since(start))
		}
		if n := l.Open(); n > max {
			t.Fatalf("%d connections open, cap %d", n, max)
		}
	}
	n := 0
	for _, c := range idle {
		if closed(c) {
			n++
		}
	}
	if n != 3 || l.Evicted() != 3 {
		t.Fatalf("%d of the %d idle connections closed, %d evictions; want 3 and 3", n, max, l.Evicted())
	}
}

// TestBusyConnectionsAreNotEvicted fills the cap with requests in
// progress: the next client waits, unserved and without a descriptor, and
// is answered as soon as one of them ends (and its connection, idle, makes
// room).
func TestBusyConnectionsAreNotEvicted(t *testing.T) {
	const max = 3
	release := make(chan struct{})
	l, addr := serve(t, max, release)
	var wg sync.WaitGroup
	for range max {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		wg.Add(1)
		go func() { defer wg.Done(); get(c, "/slow") }()
	}
	waitOpen(t, l, max)
	c, err := net.Dial("tcp", addr) // the kernel completes it from the backlog
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	answered := make(chan string, 1)
	go func() { st, _ := get(c, "/"); answered <- st }()
	select {
	case st := <-answered:
		t.Fatalf("served %q while %d requests held the cap", st, max)
	case <-time.After(300 * time.Millisecond):
	}
	if n := l.Open(); n != max {
		t.Fatalf("%d connections open while waiting, want %d", n, max)
	}
	if l.Evicted() != 0 {
		t.Fatalf("evicted %d busy connections", l.Evicted())
	}
	close(release)
	select {
	case st := <-answered:
		if st != "200 OK" {
			t.Fatalf("after the busy requests ended: %q", st)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("never served after the busy requests ended")
	}
	wg.Wait()
}

// TestCloseUnblocksAccept: a server whose listener waits for room stops.
func TestCloseUnblocksAccept(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := connlimit.New(ln, 1)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ac, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	l.ConnState(ac, http.StateActive)
	errc := make(chan error, 1)
	go func() { _, err := l.Accept(); errc <- err }()
	time.Sleep(50 * time.Millisecond)
	l.Close()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("Accept succeeded on a closed listener")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Accept still waits after Close")
	}
}
