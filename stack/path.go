package stack

import (
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// MSS clamping (Config.MSSClamp). tcpd speaks to clients from the
// destinations' addresses, so an ICMP "fragmentation needed" for one of its
// segments goes to the real destination and never reaches tcpd: path-MTU
// discovery cannot rescue a segment too big for the VPN interface, and the
// connection stalls. Like `iptables ... TCPMSS --clamp-mss-to-pmtu` on a
// router, tcpd lowers the MSS a client's SYN offers to what the kernel's
// route back to that client carries, before the netstack reads it.
const (
	// MSSClampAuto clamps to the MTU of the kernel's route back to each
	// client.
	MSSClampAuto = 0
	// MSSClampOff leaves the client's MSS alone.
	MSSClampOff = -1
)

// Sizes of the IP and TCP headers without options (RFC 791, RFC 8200, RFC
// 9293): an MSS is the MTU less these.
const (
	ipv4TCPHeaders = 40
	ipv6TCPHeaders = 60
)

// pathCacheSize bounds the cache of routes back to clients: as many client
// addresses as limits.max_connections allows connections by default. A
// full cache forgets an arbitrary entry.
const pathCacheSize = 65536

// pathTTL is how long a looked-up route is trusted without a change
// notification: path-MTU exceptions the kernel learns come with none.
// pathRetry is that time for a route the kernel would not use for tcpd's
// replies.
const (
	pathTTL   = time.Minute
	pathRetry = 5 * time.Second
)

// pathWarnEvery rate-limits the warnings about routes back to clients that
// the kernel would not use for tcpd's replies.
const pathWarnEvery = 10 * time.Second

// pathQuerier is what paths needs from the kernel (kernelRoutes on Linux).
type pathQuerier interface {
	replyRoute(tun int, client, dst netip.AddrPort) (dev, mtu int, err error)
	outputRoute(client netip.Addr) (dev, mtu int, err error)
	linkMTU(idx int) (int, error)
}

// startPaths sets up the MSS clamp's view of the routes back to clients:
// the kernel's, kept fresh by a watch on route changes, or the test's.
// Without one (other systems) automatic clamping is off, which is logged.
func (s *Stack) startPaths() {
	p := &paths{q: s.cfg.routes, log: s.log, now: time.Now, m: map[netip.Addr]pathEntry{},
		rpFilter: func() string { return rpFilterMode(s.Name()) }}
	switch {
	case p.q != nil:
	case s.cfg.dev != nil:
		return // a test device: no kernel routes lead to it
	default:
		q, idx, changed, closeFn, err := openRoutes(s.Name())
		if err != nil {
			if s.cfg.MSSClamp == MSSClampAuto {
				s.log.Warn("cannot look up routes back to clients; tcp.mss_clamp auto clamps nothing", zap.Error(err))
			}
			return
		}
		p.q, p.tun, p.changed, p.stop = q, idx, changed, closeFn
	}
	s.paths = p
}

// paths caches, per client address, the largest MSS the kernel's route
// back to that client carries: the route's MTU (its own metric, or its
// device's) less the IP and TCP headers. Entries expire after pathTTL and
// whenever gen moves, which it does when changed reports a change of
// routes, rules, links or their settings.
type paths struct {
	q   pathQuerier
	tun int // the TUN's interface index
	// rpFilter returns the reverse-path filter mode in force for packets
	// from the TUN (the larger of "all" and the TUN's own), "" if unknown.
	rpFilter func() string
	log      *zap.Logger
	now      func() time.Time
	// changed reports changes the kernel announced since its last call;
	// nil in tests, which move gen themselves.
	changed func() bool
	gen     atomic.Uint64
	// stop closes the route-change socket once the packet loop has
	// ended; nil in tests.
	stop func()

	mu sync.Mutex
	m  map[netip.Addr]pathEntry
	// lastWarn and suppressed rate-limit the warnings.
	lastWarn   time.Time
	suppressed int
}

type pathEntry struct {
	mss uint16 // 0: unknown, leave the SYN alone
	gen uint64
	// until is when the entry expires without a change notification.
	until time.Time
}

// mss returns the largest MSS the route back to client carries, 0 if the
// kernel would not route tcpd's replies to it (which is logged). dst is the
// connection's destination: the source of those replies.
func (p *paths) mss(client, dst netip.AddrPort) uint16 {
	now := p.now()
	if p.changed != nil && p.changed() {
		p.gen.Add(1)
	}
	gen := p.gen.Load()
	p.mu.Lock()
	e, ok := p.m[client.Addr()]
	p.mu.Unlock()
	if ok && e.gen == gen && now.Before(e.until) {
		return e.mss
	}
	mss, refused := p.lookup(client, dst)
	e = pathEntry{mss: mss, gen: gen, until: now.Add(pathTTL)}
	if refused {
		e.until = now.Add(pathRetry)
	}
	p.mu.Lock()
	if _, ok := p.m[client.Addr()]; !ok && len(p.m) >= pathCacheSize {
		for a := range p.m {
			delete(p.m, a)
			break
		}
	}
	p.m[client.Addr()] = e
	p.mu.Unlock()
	return e.mss
}

// lookup asks the kernel how it forwards tcpd's replies to client (see
// kernelRoutes.replyRoute). If it would not, that is logged, and the MTU
// comes from the route the kernel gives its own packets to client: the
// clamp must hold as soon as whatever stops the replies is fixed. refused
// reports the first case.
func (p *paths) lookup(client, dst netip.AddrPort) (mss uint16, refused bool) {
	dev, mtu, err := p.q.replyRoute(p.tun, client, dst)
	if err != nil {
		p.warn(client, dst, err)
		refused = true
		if dev, mtu, err = p.q.outputRoute(client.Addr()); err != nil {
			return 0, true
		}
	}
	if mtu == 0 {
		if mtu, err = p.q.linkMTU(dev); err != nil {
			p.warn(client, dst, err)
			return 0, true
		}
	}
	hdr := ipv4TCPHeaders
	if client.Addr().Is6() {
		hdr = ipv6TCPHeaders
	}
	if mtu <= hdr {
		return 0, refused
	}
	return uint16(min(mtu-hdr, 65535)), refused
}

// warn says why the kernel would not deliver tcpd's replies to client, at
// most once per pathWarnEvery.
func (p *paths) warn(client, dst netip.AddrPort, err error) {
	now := p.now()
	p.mu.Lock()
	if !p.lastWarn.IsZero() && now.Sub(p.lastWarn) < pathWarnEvery {
		p.suppressed++
		p.mu.Unlock()
		return
	}
	p.lastWarn = now
	suppressed := p.suppressed
	p.suppressed = 0
	p.mu.Unlock()
	fields := []zap.Field{zap.Stringer("client", client), zap.Stringer("dst", dst), zap.Error(err)}
	if suppressed > 0 {
		fields = append(fields, zap.Int("suppressed", suppressed))
	}
	rp := ""
	if p.rpFilter != nil && client.Addr().Is4() {
		rp = p.rpFilter()
	}
	switch {
	// The kernel answers EXDEV for a reverse-path failure; since Linux
	// 6.13 every input drop is EINVAL, and strict mode says which.
	case errors.Is(err, syscall.EXDEV), errors.Is(err, syscall.EINVAL) && rp == "1":
		p.log.Warn("the kernel's reverse-path filter would drop tcpd's replies to this client: "+
			"route clients into the TUN with an iif rule as README says, or set net.ipv4.conf.all.rp_filter to 2 (loose)",
			append(fields, zap.String("rp_filter", rp))...)
	case errors.Is(err, syscall.EINVAL):
		p.log.Warn("the kernel would drop tcpd's replies to this client as martians: "+
			"is the destination one of the gateway's own addresses?", fields...)
	case errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EHOSTUNREACH):
		p.log.Warn("the kernel would not forward tcpd's replies to this client: "+
			"check forwarding (net.ipv4.ip_forward, net.ipv6.conf.all.forwarding) and the route to the clients' prefix", fields...)
	default:
		p.log.Warn("could not look up the route back to this client", fields...)
	}
}
