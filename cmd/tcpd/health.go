package main

import (
	"fmt"
	"net/http"
	"sync/atomic"

	"tcpd/metrics"
	"tcpd/stack"
)

// phase is where the daemon is in its life, as /readyz tells it.
type phase int32

const (
	phaseStarting phase = iota // binding, creating the TUN and the netstack, opening the admin socket
	phaseServing               // everything up: new clients welcome
	phaseDraining              // SIGTERM or SIGINT: new SYNs refused, live connections finishing
)

// health answers /healthz and /readyz (metrics.Health) and serves /metrics
// once the stack exists. The metrics listener is bound before anything
// else, so that probes get an answer while tcpd starts and keep getting one
// through the drain; health is therefore read concurrently with start and
// shutdown, and holds only atomics.
type health struct {
	phase atomic.Int32
	// step says what start is doing, while phase is phaseStarting.
	step atomic.Pointer[string]
	// st is the running stack, set once it exists.
	st atomic.Pointer[stack.Stack]
	// scrape serves /metrics, set once the stack exists.
	scrape atomic.Pointer[http.Handler]
}

var _ metrics.Health = (*health)(nil)

func newHealth() *health {
	h := &health{}
	h.starting("binding the metrics listener")
	return h
}

// starting records what start is doing now.
func (h *health) starting(step string) { h.step.Store(&step) }

// serve publishes the stack and its metrics handler.
func (h *health) serve(st *stack.Stack, scrape http.Handler) {
	h.st.Store(st)
	if scrape != nil {
		h.scrape.Store(&scrape)
	}
}

func (h *health) setPhase(p phase) { h.phase.Store(int32(p)) }

// Live reports whether the packet loop and the maintenance loop make
// progress: the same test, stack.Healthy, that decides the systemd watchdog
// pings. While the stack is being created there is no loop to be stuck yet,
// and tcpd is alive; a start that never ends is the start timeout's
// business (TimeoutStartSec, a Kubernetes startup probe), not liveness's.
func (h *health) Live() (bool, string) {
	st := h.st.Load()
	if st == nil {
		return true, ""
	}
	return st.Healthy()
}

// Ready reports whether new clients should come here: not while starting,
// not while draining, and not while the data path is wedged.
func (h *health) Ready() (bool, string) {
	switch phase(h.phase.Load()) {
	case phaseStarting:
		return false, "starting: " + *h.step.Load()
	case phaseDraining:
		n := int64(0)
		if st := h.st.Load(); st != nil {
			n = st.Stats().Active.Load()
		}
		return false, fmt.Sprintf("draining: shutting down, %d connections left", n)
	}
	if ok, why := h.st.Load().Healthy(); !ok {
		return false, "data path wedged: " + why
	}
	return true, ""
}

// ServeHTTP serves /metrics, or 503 until the stack exists.
func (h *health) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s := h.scrape.Load(); s != nil {
		(*s).ServeHTTP(w, r)
		return
	}
	http.Error(w, "tcpd is starting: metrics follow once the TUN and the netstack are up", http.StatusServiceUnavailable)
}
