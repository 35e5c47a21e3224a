package stack

import (
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"
)

// warnEvery is how often a warning about one kind of exhausted resource is
// logged at most; the ones in between are counted into the next.
const warnEvery = 10 * time.Second

// rateLimit lets one event through per warnEvery and counts the rest.
type rateLimit struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

// allow reports whether an event at now may be logged, and how many were
// held back since the last one that was.
func (r *rateLimit) allow(now time.Time) (bool, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.last.IsZero() && now.Sub(r.last) < warnEvery {
		r.suppressed++
		return false, 0
	}
	n := r.suppressed
	r.last, r.suppressed = now, 0
	return true, n
}

// dialAdvice says what an operator can do about each failure that is
// tcpd's own resource running out rather than the destination's answer.
var dialAdvice = [NumDialFailures]string{
	DialNoDescriptor: "the process is out of file descriptors: raise its open-file limit (LimitNOFILE=) or lower limits.max_connections",
	DialNoLocalPort: "no local port is free toward this destination: widen net.ipv4.ip_local_port_range, set net.ipv4.tcp_tw_reuse=1, " +
		"or spread the connections over more upstream.source_addresses",
	DialSourceAddress: "a source address of upstream.source_addresses is no longer an address of this host: " +
		"restore it, or reload without it",
}

// warnDialFailure logs, at most once per warnEvery for each kind, an
// upstream connect that failed for want of a local resource. Other
// failures are the destination's business and only counted.
func (s *Stack) warnDialFailure(f DialFailure, dst netip.AddrPort, err error) {
	if dialAdvice[f] == "" {
		return
	}
	ok, held := s.dialWarn[f].allow(time.Now())
	if !ok {
		return
	}
	s.log.Warn("upstream connect failed: "+dialAdvice[f],
		zap.Stringer("reason", f), zap.Stringer("dst", dst), zap.Error(err),
		zap.Int("more_since_last_warning", held))
}
