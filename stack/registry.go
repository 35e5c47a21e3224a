package stack

import (
	"sync"
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"

	"tcpd/conntrack"
)

// registry maps each tracked connection to its netstack endpoint, and its
// relay once it runs, from the end of the client's handshake until the
// endpoint is closed and the relay has finished: for reconciliation with
// conntrack, `tcpd conns` and `tcpd conns kill`.
type registry struct {
	mu  sync.Mutex
	eps map[conntrack.ID]*endpoint
	// peak is the most entries eps has held since it was last built.
	peak int
	// connecting maps each tracked connection whose handler holds a relay
	// but has not registered its endpoint yet (the upstream connect, then
	// the client's handshake, are in progress) to that relay, so that
	// kill can end it there too. connectingPeak is its peak.
	connecting     map[conntrack.ID]*relay
	connectingPeak int
}

// endpoint is the netstack side of a tracked connection.
type endpoint struct {
	ep tcpip.Endpoint
	// relay is the connection's relay, never nil: an endpoint is
	// registered only once its relay exists.
	relay *relay
	// relayDone is set when the relay has finished: nothing is left in
	// the endpoint that tcpd still has to read.
	relayDone atomic.Bool
}

func newRegistry() *registry {
	return &registry{eps: make(map[conntrack.ID]*endpoint), connecting: make(map[conntrack.ID]*relay)}
}

// connectStarted remembers r as id's relay until connectEnded (id 0:
// untracked, nothing to remember).
func (g *registry) connectStarted(id conntrack.ID, r *relay) {
	if id == 0 {
		return
	}
	g.mu.Lock()
	g.connecting[id] = r
	g.connectingPeak = max(g.connectingPeak, len(g.connecting))
	g.mu.Unlock()
}

// connectEnded forgets id's relay of connectStarted: the handler has
// registered the endpoint, or given up.
func (g *registry) connectEnded(id conntrack.ID) {
	if id == 0 {
		return
	}
	g.mu.Lock()
	delete(g.connecting, id)
	g.mu.Unlock()
}

// connectingRelay returns id's relay of connectStarted, nil if none.
func (g *registry) connectingRelay(id conntrack.ID) *relay {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.connecting[id]
}

// register remembers ep and its relay r for id (0: untracked, nothing to
// remember), in place of the relay connectStarted remembered.
func (g *registry) register(id conntrack.ID, ep tcpip.Endpoint, r *relay) {
	if id == 0 {
		return
	}
	g.mu.Lock()
	g.eps[id] = &endpoint{ep: ep, relay: r}
	g.peak = max(g.peak, len(g.eps))
	// Under the same lock: a Kill finds the connection in one place or
	// the other, never in the connecting map after the endpoint was
	// killed and unregistered while its handler had not returned yet.
	delete(g.connecting, id)
	g.mu.Unlock()
}

func (g *registry) lookup(id conntrack.ID) *endpoint {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.eps[id]
}

func (g *registry) unregister(id conntrack.ID) {
	g.mu.Lock()
	delete(g.eps, id)
	g.mu.Unlock()
}

func (g *registry) len() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.eps)
}

// snapshot appends every registered connection's ID and endpoint.
func (g *registry) snapshot(ids []conntrack.ID, eps []tcpip.Endpoint) ([]conntrack.ID, []tcpip.Endpoint) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for id, e := range g.eps {
		ids = append(ids, id)
		eps = append(eps, e.ep)
	}
	return ids, eps
}

// relayFinished reports whether id's relay, if it had one, has finished.
// An endpoint stays registered while its relay runs, so that kill can end
// it.
func (g *registry) relayFinished(id conntrack.ID) bool {
	e := g.lookup(id)
	return e == nil || e.relayDone.Load()
}

// compact rebuilds the map once it holds a quarter of its peak.
func (g *registry) compact() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if shrunk(len(g.eps), g.peak) {
		g.eps, g.peak = compacted(g.eps), len(g.eps)
	}
	if shrunk(len(g.connecting), g.connectingPeak) {
		g.connecting, g.connectingPeak = compacted(g.connecting), len(g.connecting)
	}
}
