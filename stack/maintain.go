package stack

import (
	"fmt"
	"runtime/debug"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"gvisor.dev/gvisor/pkg/tcpip"

	"tcpd/conntrack"
)

// maintenance is what the stack's maintenance loop (maintain) keeps
// between its ticks.
type maintenance struct {
	// lastTick is when the loop last ran (unix nanoseconds); Healthy
	// reads it from any goroutine.
	lastTick atomic.Int64
	// mem decides when a burst is over and the heap goes back
	// (returnMemory).
	mem memReturn
	// gcCycles is the garbage collections checkBuffers last saw, gcSeen
	// when it saw them change (unix nanoseconds).
	gcCycles atomic.Uint64
	gcSeen   atomic.Int64
	// ids and eps are reconcile's scratch, kept between ticks.
	ids []conntrack.ID
	eps []tcpip.Endpoint
}

// hostAddrRefresh is how often the policy re-reads the host's addresses, so
// that an address added to any interface is denied as a destination within
// this time.
const hostAddrRefresh = 5 * time.Second

// maintain runs the stack's periodic work until Close.
func (s *Stack) maintain() {
	defer s.bg.Done()
	hosts := time.NewTicker(hostAddrRefresh)
	defer hosts.Stop()
	tick := time.NewTicker(reconcileEvery)
	defer tick.Stop()
	tw := time.NewTicker(timeWaitResolution)
	defer tw.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-tw.C:
			s.table.ExpireTimeWait()
			s.checkBuffers()
		case <-tick.C:
			s.reconcile()
			s.maint.lastTick.Store(time.Now().UnixNano())
			s.returnMemory()
		case <-hosts.C:
			if err := s.policy.Load().RefreshHostAddrs(); err != nil {
				s.log.Warn("refresh host addresses for the destination policy", zap.Error(err))
			}
		}
	}
}

// returnMemory gives the heap back to the operating system when
// memReturn says a burst is over.
func (s *Stack) returnMemory() {
	live := s.stats.Active.Load() + s.stats.InFlight.Load() + int64(s.table.Len())
	if s.maint.mem.due(live, time.Now()) {
		debug.FreeOSMemory()
	}
}

// wedgedAfter is how long the packet loop may spend on one batch, or the
// maintenance loop may go without a tick, before the stack calls itself
// unhealthy. A batch normally takes microseconds; a tick comes every second.
const wedgedAfter = 5 * time.Second

// TUNLost is closed when the TUN's interface is deleted from under tcpd
// (a read finds the device detached): no packet can reach a client or come
// from one again, and only a restart, which creates the TUN anew, recovers.
func (s *Stack) TUNLost() <-chan struct{} { return s.link.lost }

// Healthy reports whether the data path is making progress: the TUN is
// there, the packet loop is not stuck inside a batch and the maintenance
// loop is ticking. An idle stack is healthy. The daemon pings systemd's
// watchdog only while it is.
func (s *Stack) Healthy() (bool, string) {
	select {
	case <-s.link.lost:
		return false, fmt.Sprintf("TUN %s is gone: %v", s.Name(), s.link.lostErr)
	default:
	}
	now := time.Now().UnixNano()
	if b := s.link.busySince(); b != 0 && time.Duration(now-b) > wedgedAfter {
		return false, fmt.Sprintf("packet loop stuck on one batch for %v", time.Duration(now-b).Round(time.Second))
	}
	if t := s.maint.lastTick.Load(); time.Duration(now-t) > wedgedAfter {
		return false, fmt.Sprintf("maintenance loop silent for %v", time.Duration(now-t).Round(time.Second))
	}
	return true, ""
}
