package stack

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"tcpd/conntrack"
)

// admission holds the connection slots: a handshake in progress takes an
// in-flight slot (admit), an established connection moves it to a
// connection slot and its relay is attached to its tracking entry
// (attach), and the relay's end gives it back (detach). The caps are
// checked against it, globally and per client address, and Shutdown finds
// the relays to reset in it. Before all that, syns holds the SYNs the
// netstack's forwarder has a request in flight for (synFlight).
type admission struct {
	s    *Stack
	syns *synFlight

	mu sync.Mutex
	// active holds the relays in progress, for draining and for reset at
	// shutdown.
	active map[*relay]struct{}
	// perClient counts relays and handshakes per client address.
	perClient map[netip.Addr]*clientCount
	// activePeak and perClientPeak are the most entries each map has held
	// since it was last built (compact).
	activePeak, perClientPeak int

	// capWarn rate-limits warnRefused, per cap.
	capWarn [3]rateLimit

	// squeezed is when squeeze last asked the shards to squeeze (ns since
	// the Unix epoch); synWarn rate-limits its warning.
	squeezed atomic.Int64
	synWarn  rateLimit
}

type clientCount struct {
	conns, inFlight int
}

func newAdmission(s *Stack) *admission {
	return &admission{s: s, active: make(map[*relay]struct{}), perClient: make(map[netip.Addr]*clientCount)}
}

// admit reserves an in-flight slot for client, checking the connection caps.
func (a *admission) admit(client netip.Addr) (DropReason, bool) {
	s := a.s
	a.mu.Lock()
	defer a.mu.Unlock()
	tune := s.tune.Load()
	open := int(s.stats.Active.Load() + s.stats.InFlight.Load())
	if open >= tune.MaxConnections {
		return DropMaxConnections, false
	}
	if b := s.cfg.FDBudget; b > 0 && open >= b {
		return DropFDLimit, false
	}
	c := a.perClient[client]
	if c == nil {
		c = new(clientCount)
		a.perClient[client] = c
		a.perClientPeak = max(a.perClientPeak, len(a.perClient))
	}
	switch {
	case c.conns+c.inFlight >= tune.MaxConnectionsPerClient:
		a.forgetClientLocked(client, c)
		return DropMaxConnectionsPerClient, false
	case c.inFlight >= tune.MaxInFlightPerClient:
		return DropMaxInFlightPerClient, false
	}
	c.inFlight++
	s.stats.InFlight.Add(1)
	return 0, true
}

// release gives back an in-flight slot.
func (a *admission) release(client netip.Addr) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.perClient[client]
	c.inFlight--
	a.s.stats.InFlight.Add(-1)
	a.forgetClientLocked(client, c)
}

// attach moves an established connection's in-flight slot to the client's
// connection count and attaches its relay r to the tracking entry id. It
// reports false, giving the slot back, when id has no live entry. The
// attachment, the count of relays and the set of relays change together
// under mu, so that relays reads them consistently, and r.attached is set
// under it too, before Shutdown can see r.
func (a *admission) attach(client netip.Addr, id conntrack.ID, r *relay) bool {
	s := a.s
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.perClient[client]
	c.inFlight--
	s.stats.InFlight.Add(-1)
	ok := s.cfg.noTrack || s.table.Relaying(id)
	if ok {
		c.conns++
		s.stats.Active.Add(1)
		a.active[r] = struct{}{}
		a.activePeak = max(a.activePeak, len(a.active))
		r.attached = true
	}
	a.forgetClientLocked(client, c)
	return ok
}

// detach undoes attach once r has finished: the entry, if its connection
// is over, leaves the table.
func (a *admission) detach(client netip.Addr, id conntrack.ID, r *relay) {
	s := a.s
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.perClient[client]
	c.conns--
	s.stats.Active.Add(-1)
	delete(a.active, r)
	if !s.cfg.noTrack {
		s.table.Released(id)
	}
	a.forgetClientLocked(client, c)
}

// relays returns the relays in progress and the tracking entries that have
// a relay attached, read together.
func (a *admission) relays() (active int64, tracked int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.s.stats.Active.Load(), a.s.table.Relays()
}

// abortAll asks every relay in progress for a reset and returns how many.
func (a *admission) abortAll() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	for r := range a.active {
		r.abort(EndAborted)
	}
	return len(a.active)
}

func (a *admission) forgetClientLocked(client netip.Addr, c *clientCount) {
	if c.conns == 0 && c.inFlight == 0 {
		delete(a.perClient, client)
	}
}

// compact rebuilds the maps that have shrunk to a quarter of their peak.
func (a *admission) compact() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if shrunk(len(a.active), a.activePeak) {
		a.active, a.activePeak = compacted(a.active), len(a.active)
	}
	if shrunk(len(a.perClient), a.perClientPeak) {
		a.perClient, a.perClientPeak = compacted(a.perClient), len(a.perClient)
	}
}

// warnRefused logs, at most once per warnEvery for each cap, a new
// connection refused because a connection cap is reached, as Linux logs
// "table full, dropping packet" for its connection tracking: the counter
// says how many, the log says so where an operator reads first. The
// per-client cap names the client.
func (a *admission) warnRefused(reason DropReason, client netip.Addr) {
	var i int
	var msg string
	var fields []zap.Field
	tune := a.s.tune.Load()
	switch reason {
	case DropMaxConnections:
		i, msg = 0, "new connections refused with RST: limits.max_connections connections and handshakes are open; raise it if memory allows, or move clients to another gateway"
		fields = append(fields, zap.Int("limit", tune.MaxConnections))
	case DropFDLimit:
		i, msg = 1, "new connections refused with RST: the open-file limit leaves no descriptor for one more (tcpd_fd_budget); raise the unit's LimitNOFILE= or lower limits.max_connections"
		fields = append(fields, zap.Int("fd_budget", a.s.cfg.FDBudget))
	case DropMaxConnectionsPerClient:
		i, msg = 2, "new connections from a client refused with RST: it holds limits.max_connections_per_client connections and handshakes"
		fields = append(fields, zap.Int("limit", tune.MaxConnectionsPerClient))
	default:
		return
	}
	ok, held := a.capWarn[i].allow(time.Now())
	if !ok {
		return
	}
	a.s.log.Warn(msg, append(fields, zap.Stringer("client", client), zap.Int("more_since_last_warning", held))...)
}

// squeezeEvery bounds how often squeeze asks the shards to look.
const squeezeEvery = 100 * time.Millisecond

// squeezeAge is how long a half-open connection may wait for the client's
// ACK while SYNs find every handshake slot taken: past the netstack's
// first SYN-ACK retransmission (1 s), a client that is there has answered.
const squeezeAge = time.Second

// squeeze is called when a SYN found limits.max_in_flight handshakes in
// progress. As Linux cuts short the SYN-ACK retransmissions of its full
// queue (inet_csk_reqsk_queue_prune), each shard aborts the half-open
// connections that have waited squeezeAge for the client's ACK, instead of
// tcp.handshake_timeout: a flood of SYNs from addresses that never answer
// (spoofed, within the client prefixes) then holds the slots for a second
// each, not for the timeout, and other clients' SYNs find room. The SYN
// that found no slot is dropped all the same: its client retransmits it.
// A warning says so, at most once per warnEvery.
func (a *admission) squeeze() {
	now := time.Now()
	last := a.squeezed.Load()
	if now.UnixNano()-last < int64(squeezeEvery) || !a.squeezed.CompareAndSwap(last, now.UnixNano()) {
		return
	}
	for _, sh := range a.s.shards {
		sh.squeezeSoon()
	}
	if ok, held := a.synWarn.allow(now); ok {
		a.s.log.Warn("possible SYN flood: limits.max_in_flight handshakes are in progress and new SYNs are dropped; "+
			"half-open connections that have waited 1s for the client's ACK are aborted",
			zap.Int("max_in_flight", a.s.cfg.MaxInFlight), zap.Int("more_since_last_warning", held))
	}
}
