package stack

import "sync"

// A relay blocked writing to one leg does not read the other, so it would
// not notice that leg fail: a client that resets while the destination
// reads nothing, a destination that resets (or dies) while the client's
// window is closed. The watcher notices for it. Client legs report through
// a waiter callback on their endpoint, which only enqueues here (the
// netstack may hold locks while it notifies); upstream sockets, on Linux,
// through an epoll set of the watcher's own (watch_linux.go). One goroutine,
// watchFailures, acts on both.
type watcher struct {
	sys watchSys

	mu sync.Mutex
	// failed holds relays whose client leg failed, for watchFailures.
	failed []*relay
	// relays maps each watched upstream socket's token to its relay.
	relays  map[uint64]*relay
	next    uint64
	closing bool
	done    chan struct{}
}

func newWatcher() (*watcher, error) {
	w := &watcher{relays: make(map[uint64]*relay), done: make(chan struct{})}
	if err := w.sys.open(); err != nil {
		return nil, err
	}
	go func() {
		defer close(w.done)
		w.watchFailures()
	}()
	return w, nil
}

// clientFailed queues r, whose client leg failed, for a reset of both legs.
// It is called from the netstack's waiter callback and does nothing else.
func (w *watcher) clientFailed(r *relay) {
	w.mu.Lock()
	if w.closing {
		w.mu.Unlock()
		return
	}
	w.failed = append(w.failed, r)
	w.mu.Unlock()
	w.sys.wake()
}

// add watches r's upstream socket until remove.
func (w *watcher) add(r *relay) {
	w.mu.Lock()
	w.next++
	tok := w.next
	w.relays[tok] = r
	w.mu.Unlock()
	if w.sys.watch(r, tok) {
		r.upToken = tok
		return
	}
	w.mu.Lock()
	delete(w.relays, tok)
	w.mu.Unlock()
}

// remove stops watching r's upstream socket. Closing the socket takes it
// out of the epoll set; an event already on its way finds no relay.
func (w *watcher) remove(r *relay) {
	if r.upToken == 0 {
		return
	}
	w.mu.Lock()
	delete(w.relays, r.upToken)
	w.mu.Unlock()
}

// takeFailed returns the queued relays and whether the watcher is closing.
func (w *watcher) takeFailed() ([]*relay, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	f := w.failed
	w.failed = nil
	return f, w.closing
}

// upstreamFailed acts on an error the kernel reported on token's socket.
func (w *watcher) upstreamFailed(token uint64) {
	w.mu.Lock()
	r := w.relays[token]
	w.mu.Unlock()
	if r != nil {
		r.upstreamFailed()
	}
}

// resetFailed resets both legs of every relay whose client leg failed.
func resetFailed(rs []*relay) {
	for _, r := range rs {
		r.fail(EndClientReset)
	}
}

// close stops watchFailures, after acting on what was queued, and waits
// for it. Called once every relay has ended.
func (w *watcher) close() {
	w.mu.Lock()
	w.closing = true
	w.mu.Unlock()
	w.sys.wake()
	<-w.done
	w.sys.close()
}
