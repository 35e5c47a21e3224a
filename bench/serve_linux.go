//go:build linux

package bench

import (
	"errors"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"tcpd/internal/netlab"
)

// server accepts on one or more ports of the server namespace and runs a
// handler per connection. Close stops it and closes every connection it
// still holds.
type server struct {
	lns   []net.Listener
	addrs []string // host:port to dial, one per listener
	// handle runs on its own goroutine per connection, which the server
	// closes afterwards; an error is counted in errs. A nil handle keeps
	// every connection open until closeConns or Close.
	handle   func(net.Conn) error
	accepted atomic.Int64
	errs     atomic.Int64

	wg sync.WaitGroup
	mu sync.Mutex
	// conns are the accepted connections not yet closed; closing is set
	// once Close or closeConns has taken them.
	conns   map[net.Conn]struct{}
	closing bool
}

// serve listens on n ports of host in ns.
func serve(ns *netlab.NS, host netip.Addr, n int, handle func(net.Conn) error) (*server, error) {
	s := &server{handle: handle, conns: map[net.Conn]struct{}{}}
	for range n {
		ln, err := ns.Listen("tcp", netip.AddrPortFrom(host, 0).String())
		if err != nil {
			s.Close()
			return nil, err
		}
		s.lns = append(s.lns, ln)
		port := ln.Addr().(*net.TCPAddr).Port
		s.addrs = append(s.addrs, net.JoinHostPort(host.String(), strconv.Itoa(port)))
	}
	for _, ln := range s.lns {
		s.wg.Add(1)
		go s.acceptLoop(ln)
	}
	return s, nil
}

func (s *server) acceptLoop(ln net.Listener) {
	defer s.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return // closed
		}
		s.accepted.Add(1)
		if !s.track(c) {
			c.Close()
			continue
		}
		if s.handle == nil {
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.handle(c); err != nil {
				s.errs.Add(1)
			}
			s.untrack(c)
			c.Close()
		}()
	}
}

func (s *server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *server) untrack(c net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
}

// settle waits up to timeout for the handlers of the connections accepted
// so far to return, so that Close does not cut short a handler that is
// about to finish on its own.
func (s *server) settle(timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		n := len(s.conns)
		s.mu.Unlock()
		if n == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// closeConns closes every connection held, first, and lets no new one in.
func (s *server) closeConns() {
	s.mu.Lock()
	s.closing = true
	conns := s.conns
	s.conns = map[net.Conn]struct{}{}
	s.mu.Unlock()
	for c := range conns {
		c.Close()
	}
}

// Close stops accepting, closes every connection and waits for the
// handlers. It may be called more than once.
func (s *server) Close() {
	for _, ln := range s.lns {
		ln.Close()
	}
	s.closeConns()
	s.wg.Wait()
}
