// Package connlimit caps the connections an HTTP server holds open, so that
// the descriptors it may take are known in advance and clients that connect
// and then sit idle cannot take them all. It must not decide anything about
// requests: that is the handlers' business.
package connlimit

import (
	"net"
	"net/http"
	"sync"
	"time"
)

// Listener accepts at most a fixed number of connections at once. At the
// cap it closes the connection that has been idle longest (between two
// requests, or for NewGrace since it was accepted without sending one), so
// that idle keep-alive connections never lock a new client out; while every
// connection is busy with a request (or new), Accept waits, holding the one
// new connection, and the clients after it wait in the kernel's backlog,
// costing no descriptor: at most one more than the cap is ever open. Pass its ConnState
// to the http.Server that serves it: that is how it learns which
// connections are idle.
type Listener struct {
	net.Listener
	max int

	mu sync.Mutex
	// conns holds every connection accepted and not yet closed.
	conns map[*conn]struct{}
	// freed is signalled when a connection ends or turns idle.
	freed chan struct{}
	// evicted counts idle connections closed to make room.
	evicted uint64
	// done is closed by Close, so that an Accept waiting for room returns.
	done      chan struct{}
	closeOnce sync.Once
}

// New wraps ln so that at most max of its connections are open at once.
func New(ln net.Listener, max int) *Listener {
	return &Listener{Listener: ln, max: max, conns: make(map[*conn]struct{}), freed: make(chan struct{}, 1), done: make(chan struct{})}
}

// Close closes the listener; an Accept waiting for room returns its error.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// NewGrace is how long a connection that has sent no request yet is safe
// from eviction: time enough for a client to send its request.
const NewGrace = time.Second

// conn is an accepted connection and what the server last said of it.
type conn struct {
	net.Conn
	l *Listener
	// idleSince is when the connection may be evicted from: when it turned
	// idle, or NewGrace after it was accepted; zero while a request is
	// being served. Guarded by l.mu.
	idleSince time.Time
	closeOnce sync.Once
}

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() { c.l.release(c) })
	return err
}

func (l *Listener) release(c *conn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
	l.signal()
}

func (l *Listener) signal() {
	select {
	case l.freed <- struct{}{}:
	default:
	}
}

// Accept waits for a connection, then for room for it: it closes the
// oldest idle connection, or waits until one ends or turns idle. Between
// the two, one connection more than the cap is open, unserved.
func (l *Listener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	for {
		l.mu.Lock()
		if len(l.conns) < l.max {
			c := &conn{Conn: nc, l: l, idleSince: time.Now().Add(NewGrace)}
			l.conns[c] = struct{}{}
			l.mu.Unlock()
			return c, nil
		}
		victim, next := l.oldestIdleLocked(time.Now())
		if victim != nil {
			l.evicted++
		}
		l.mu.Unlock()
		if victim != nil {
			victim.Close()
			continue
		}
		var later <-chan time.Time
		var t *time.Timer
		if !next.IsZero() {
			t = time.NewTimer(time.Until(next))
			later = t.C
		}
		select {
		case <-l.freed:
		case <-later:
		case <-l.done:
			nc.Close()
			return nil, net.ErrClosed
		}
		if t != nil {
			t.Stop()
		}
	}
}

// oldestIdleLocked returns the connection idle longest at now, or, when
// none may be evicted yet, the earliest time one may.
func (l *Listener) oldestIdleLocked(now time.Time) (oldest *conn, next time.Time) {
	for c := range l.conns {
		switch {
		case c.idleSince.IsZero():
		case c.idleSince.After(now):
			if next.IsZero() || c.idleSince.Before(next) {
				next = c.idleSince
			}
		case oldest == nil || c.idleSince.Before(oldest.idleSince):
			oldest = c
		}
	}
	return oldest, next
}

// ConnState is the http.Server's ConnState hook.
func (l *Listener) ConnState(nc net.Conn, st http.ConnState) {
	c, ok := nc.(*conn)
	if !ok {
		return
	}
	switch st {
	case http.StateActive:
		l.mu.Lock()
		c.idleSince = time.Time{}
		l.mu.Unlock()
	case http.StateIdle:
		l.mu.Lock()
		c.idleSince = time.Now()
		l.mu.Unlock()
		l.signal()
	case http.StateHijacked, http.StateClosed:
		c.closeOnce.Do(func() { l.release(c) })
	}
}

// Open returns the connections open now.
func (l *Listener) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.conns)
}

// Evicted returns how many idle connections were closed to make room.
func (l *Listener) Evicted() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.evicted
}
