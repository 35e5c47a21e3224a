//go:build linux

package netlab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ImpairTable is the routing table ImpairClientLink fills on the gateway: it
// sends traffic for the client prefixes into the gateway-side impair TUN.
const ImpairTable = 101

// Rule preferences ImpairClientLink uses on the gateway, for IPv4 and IPv6.
// They come after LocalRulePref (and after preference 0), so the local
// table is always consulted first, whether or not RouteIntoTUN has moved it.
const (
	ImpairSkipRulePref = 300 // iif <GatewayClientLink> goto ImpairNopRulePref
	ImpairRulePref     = 301 // to <client prefix> lookup ImpairTable
	ImpairNopRulePref  = 302 // nop: the goto's target
)

const (
	impairTxQueueLength = 4096 // of the impair TUNs (the default is 500)
	in6AddrGenModeNone  = 1    // IN6_ADDR_GEN_MODE_NONE: no link-local address
	frActNop            = 3    // FR_ACT_NOP in linux/fib_rules.h: rule action "nop"
)

// Impairment describes what happens to packets crossing the client link in
// one direction, like netem's parameters. The zero value passes packets
// unchanged (though through userspace).
type Impairment struct {
	// Each packet is held Delay ± Jitter (uniformly distributed, never
	// less than zero). As with netem, jitter reorders packets: they leave
	// in the order of their release times.
	Delay, Jitter time.Duration
	// Loss is the probability (0..1) that a packet is dropped.
	Loss float64
	// Duplicate is the probability (0..1) that a packet that was not
	// dropped is sent twice. The copy gets its own delay sample.
	Duplicate float64
	// Reorder is the probability (0..1) that a packet skips the delay and
	// is sent at once, overtaking the packets still held (netem's
	// "reorder"). Without Delay and Jitter it has no effect.
	Reorder float64
	// Seed seeds the random decisions; 0 means a random seed. The two
	// directions use different streams of the same seed.
	Seed uint64
}

func (m Impairment) validate() error {
	if m.Delay < 0 || m.Jitter < 0 {
		return fmt.Errorf("negative delay %v or jitter %v", m.Delay, m.Jitter)
	}
	for _, p := range []struct {
		name string
		v    float64
	}{{"loss", m.Loss}, {"duplicate", m.Duplicate}, {"reorder", m.Reorder}} {
		if !(p.v >= 0 && p.v <= 1) {
			return fmt.Errorf("%s probability %v not in [0, 1]", p.name, p.v)
		}
	}
	return nil
}

// ImpairStats counts what an impaired direction did.
type ImpairStats struct {
	Packets    uint64 // packets that entered the impairment
	Dropped    uint64 // packets dropped by Loss
	Duplicated uint64 // extra copies sent by Duplicate
	Reordered  uint64 // packets Reorder sent at once instead of delaying
}

// Impairer is an impaired client link; see [Lab.ImpairClientLink].
type Impairer struct {
	// ClientTUN is the impair TUN in the client namespace (packets towards
	// the gateway), GatewayTUN the one in the gateway namespace (packets
	// towards the client).
	ClientTUN, GatewayTUN string

	lab       *Lab
	toGateway *impairDir
	toClient  *impairDir
	mu        sync.Mutex     // held by ImpairClientLink's setup and by Close
	undo      []func() error // run in reverse order by Close
	once      sync.Once
	err       error
}

// ImpairClientLink impairs the client link, as netem on both veth ends would
// (this kernel has no netem): toGateway applies to every packet the client
// sends over the link, toClient to every packet the gateway sends to the
// client (forwarded, from tcpd's TUN, or its own). A zero Impairment passes
// packets unchanged, but still through userspace.
//
// Each direction gets a TUN in the sending namespace, read by a goroutine of
// this process; after the impairment the packets continue to the peer
// through an AF_PACKET socket on the real veth, addressed to the peer's MAC,
// so the receiver sees them arrive on the veth as before:
//
//   - client: the default routes and host routes for the gateway's client
//     addresses point into ClientTUN (keeping the client's addresses as
//     source);
//   - gateway: rules at [ImpairSkipRulePref]..[ImpairNopRulePref] send
//     traffic for the client prefixes that did not arrive from the client
//     into table [ImpairTable], whose routes point into GatewayTUN. They come
//     after the local table, and [Lab.RouteIntoTUN]'s iif rule still sees
//     everything the client sends. ARP and neighbour discovery stay on the
//     veth (and the neighbour entries are permanent anyway).
//
// Strict reverse-path filtering is turned off in the client while the link
// is impaired (replies arrive on the veth, the routes back point into the
// TUN). Each direction holds its packets in a min-heap by release time,
// served by one goroutine sleeping on a timerfd, so delays are accurate to
// tens of microseconds; the userspace path adds about as much per
// crossing. There is no rate limit.
//
// Only one Impairer per lab can be open. Close restores the direct path;
// Lab.Close closes it too.
func (l *Lab) ImpairClientLink(toGateway, toClient Impairment) (_ *Impairer, err error) {
	if l.Peers != nil {
		return nil, errors.New("netlab: ImpairClientLink impairs a veth lab's client link; this is a WireGuard lab")
	}
	if err := toGateway.validate(); err != nil {
		return nil, fmt.Errorf("netlab: impair towards the gateway: %w", err)
	}
	if err := toClient.validate(); err != nil {
		return nil, fmt.Errorf("netlab: impair towards the client: %w", err)
	}
	i := &Impairer{
		ClientTUN:  "tc" + l.ID + "ic",
		GatewayTUN: "tc" + l.ID + "ig",
		lab:        l,
	}
	// A concurrent Lab.Close (which calls Close) waits until the setup is
	// done.
	i.mu.Lock()
	l.mu.Lock()
	if l.closed || l.impair != nil {
		closed := l.closed
		l.mu.Unlock()
		i.mu.Unlock()
		if closed {
			return nil, errClosed
		}
		return nil, errors.New("netlab: the client link is already impaired")
	}
	l.impair = i
	l.mu.Unlock()
	defer func() {
		i.mu.Unlock()
		if err != nil {
			if cerr := i.Close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("cleanup: %w", cerr))
			}
			err = fmt.Errorf("netlab: impair client link: %w", err)
		}
	}()

	c, g := l.Client, l.Gateway
	cLink, err := c.nl.LinkByName(l.ClientLink)
	if err != nil {
		return nil, fmt.Errorf("find %s in %s: %w", l.ClientLink, c.Name, err)
	}
	gLink, err := g.nl.LinkByName(l.GatewayClientLink)
	if err != nil {
		return nil, fmt.Errorf("find %s in %s: %w", l.GatewayClientLink, g.Name, err)
	}

	// Replies reach the client on the veth while its routes point into
	// the TUN: strict reverse-path filtering would drop them. (The
	// gateway's is off already.)
	if err := i.setSysctls(c,
		[2]string{"net/ipv4/conf/all/rp_filter", "0"},
		[2]string{"net/ipv4/conf/" + l.ClientLink + "/rp_filter", "0"},
	); err != nil {
		return nil, err
	}

	seed := toGateway.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	i.toGateway, err = i.startDir(c, i.ClientTUN, cLink, gLink.Attrs().HardwareAddr, toGateway, rand.NewPCG(seed, 0x746f67))
	if err != nil {
		return nil, err
	}
	seed = toClient.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	i.toClient, err = i.startDir(g, i.GatewayTUN, gLink, cLink.Attrs().HardwareAddr, toClient, rand.NewPCG(seed, 0x746f63))
	if err != nil {
		return nil, err
	}

	l.routes.Lock()
	defer l.routes.Unlock()
	// Gateway first: until the client routes change, nothing crosses the
	// client link through the TUNs anyway.
	if err := i.routeGateway(); err != nil {
		return nil, err
	}
	if err := i.routeClient(); err != nil {
		return nil, err
	}
	return i, nil
}

// setSysctls sets sysctls in ns and has Close restore their old values.
func (i *Impairer) setSysctls(ns *NS, kvs ...[2]string) error {
	for _, kv := range kvs {
		old, err := ns.ReadSysctl(kv[0])
		if err != nil {
			return err
		}
		if old == kv[1] {
			continue
		}
		if err := ns.Sysctl(kv[0], kv[1]); err != nil {
			return err
		}
		i.undo = append(i.undo, func() error { return ns.Sysctl(kv[0], old) })
	}
	return nil
}

// startDir creates the TUN name in ns and the AF_PACKET socket sending out
// of link to peer, and starts the goroutines moving packets between them.
func (i *Impairer) startDir(ns *NS, name string, link netlink.Link, peer net.HardwareAddr, m Impairment, src rand.Source) (*impairDir, error) {
	mtu := link.Attrs().MTU
	d := &impairDir{
		m:             m,
		rng:           rand.New(src),
		readerDone:    make(chan struct{}),
		schedulerDone: make(chan struct{}),
	}
	d.pool.New = func() any {
		b := make([]byte, mtu)
		return &b
	}
	for _, sa := range []struct {
		sa    *unix.SockaddrLinklayer
		proto uint16
	}{{&d.sa4, unix.ETH_P_IP}, {&d.sa6, unix.ETH_P_IPV6}} {
		*sa.sa = unix.SockaddrLinklayer{
			Protocol: htons(sa.proto),
			Ifindex:  link.Attrs().Index,
			Halen:    uint8(len(peer)),
		}
		copy(sa.sa.Addr[:], peer)
	}

	// Sockets belong to the namespace of the thread that creates them
	// (TUNSETIFF creates the device in the namespace of the thread that
	// opened /dev/net/tun); both keep working from any thread.
	err := ns.Do(func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != nil {
			return fmt.Errorf("open /dev/net/tun in %s: %w", ns.Name, err)
		}
		ifr, err := unix.NewIfreq(name)
		if err == nil {
			ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
			err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
		}
		if err != nil {
			unix.Close(fd)
			return fmt.Errorf("TUNSETIFF %s in %s: %w", name, ns.Name, err)
		}
		// Only now hand the descriptor to the Go poller: a TUN file polled
		// before TUNSETIFF never reports readiness.
		d.tun = os.NewFile(uintptr(fd), name)
		// Protocol 0: the socket only sends and never receives.
		d.pkt, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			d.tun.Close()
			return fmt.Errorf("AF_PACKET socket in %s: %w", ns.Name, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	d.timerq, err = unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		d.tun.Close()
		unix.Close(d.pkt)
		return nil, fmt.Errorf("timerfd: %w", err)
	}
	d.timer = os.NewFile(uintptr(d.timerq), "timerfd")
	go d.read()
	go d.schedule()
	i.undo = append(i.undo, d.stop)

	tun, err := ns.nl.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("find %s in %s: %w", name, ns.Name, err)
	}
	// No link-local address, hence no router solicitations or MLD reports
	// of the TUN's own, and no duplicate address detection.
	if err := ns.nl.LinkSetIP6AddrGenMode(tun, in6AddrGenModeNone); err != nil {
		return nil, fmt.Errorf("addrgenmode none on %s in %s: %w", name, ns.Name, err)
	}
	if err := ns.sysctls(
		[2]string{"net/ipv6/conf/" + name + "/accept_dad", "0"},
		[2]string{"net/ipv6/conf/" + name + "/accept_ra", "0"},
		[2]string{"net/ipv4/conf/" + name + "/rp_filter", "0"},
	); err != nil {
		return nil, err
	}
	if err := ns.nl.LinkSetMTU(tun, mtu); err != nil {
		return nil, fmt.Errorf("MTU %d on %s in %s: %w", mtu, name, ns.Name, err)
	}
	if err := ns.nl.LinkSetTxQLen(tun, impairTxQueueLength); err != nil {
		return nil, fmt.Errorf("txqueuelen on %s in %s: %w", name, ns.Name, err)
	}
	if err := ns.nl.LinkSetUp(tun); err != nil {
		return nil, fmt.Errorf("set %s up in %s: %w", name, ns.Name, err)
	}
	// (A TUN's operational state stays "unknown", and with no addresses
	// there is nothing to settle.)
	d.link = tun.Attrs().Index
	return d, nil
}

// routeGateway points the gateway's forwarded and locally generated traffic
// for the client prefixes into the gateway-side TUN:
//
//	ip rule add pref 302 nop
//	ip rule add pref 301 to <client prefix> lookup 101
//	ip rule add pref 300 iif <GatewayClientLink> goto 302
//	ip route replace <client prefix> dev <GatewayTUN> table 101
//
// The connected routes on the veth stay as they are; so do ARP and
// neighbour discovery, which do not consult these rules for their replies.
func (i *Impairer) routeGateway() error {
	l, h := i.lab, i.lab.Gateway.nl
	for _, pfx := range []netip.Prefix{gatewayClientAddr4.Masked(), gatewayClientAddr6.Masked()} {
		r := &netlink.Route{
			Dst:       ipNet(pfx),
			LinkIndex: i.toClient.link,
			Table:     ImpairTable,
			Scope:     netlink.SCOPE_LINK,
		}
		if err := h.RouteReplace(r); err != nil {
			return fmt.Errorf("route %s dev %s table %d in %s: %w", pfx, i.GatewayTUN, ImpairTable, l.Gateway.Name, err)
		}
		i.undo = append(i.undo, func() error {
			if err := h.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENODEV) {
				return fmt.Errorf("delete route %s table %d in %s: %w", pfx, ImpairTable, l.Gateway.Name, err)
			}
			return nil
		})

		fam := netlink.FAMILY_V4
		if pfx.Addr().Is6() {
			fam = netlink.FAMILY_V6
		}
		nop := netlink.NewRule()
		nop.Family, nop.Priority, nop.Type = fam, ImpairNopRulePref, frActNop
		to := netlink.NewRule()
		to.Family, to.Priority, to.Dst, to.Table = fam, ImpairRulePref, ipNet(pfx), ImpairTable
		skip := netlink.NewRule()
		skip.Family, skip.Priority, skip.IifName, skip.Goto = fam, ImpairSkipRulePref, l.GatewayClientLink, ImpairNopRulePref
		// The goto's target first, so the goto is never unresolved.
		for _, rule := range []*netlink.Rule{nop, to, skip} {
			if err := h.RuleAdd(rule); err != nil {
				return fmt.Errorf("add rule %s in %s: %w", rule, l.Gateway.Name, err)
			}
			i.undo = append(i.undo, func() error {
				if err := h.RuleDel(rule); err != nil && !errors.Is(err, unix.ENOENT) {
					return fmt.Errorf("delete rule %s in %s: %w", rule, l.Gateway.Name, err)
				}
				return nil
			})
		}
	}
	return nil
}

// routeClient points the client's default routes, and host routes for the
// gateway's client-side addresses, into the client-side TUN, with the
// client's addresses as preferred source. Close puts the original default
// routes back.
func (i *Impairer) routeClient() error {
	l, h := i.lab, i.lab.Client.nl
	for _, fam := range families {
		v6 := fam == netlink.FAMILY_V6
		src, gw := l.ClientAddr4, l.GatewayClientAddr4
		if v6 {
			src, gw = l.ClientAddr6, l.GatewayClientAddr6
		}
		all, err := h.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return fmt.Errorf("list routes (%s) in %s: %w", famName(fam), l.Client.Name, err)
		}
		var orig []netlink.Route
		for _, r := range all {
			if r.Dst == nil || r.Dst.IP.IsUnspecified() && maskBits(r.Dst) == 0 {
				orig = append(orig, r)
			}
		}
		def := &netlink.Route{
			Dst:       defaultDst(v6),
			LinkIndex: i.toGateway.link,
			Src:       src.AsSlice(),
			Scope:     netlink.SCOPE_LINK,
		}
		if len(orig) > 0 {
			// Same metric: "replace" swaps the route atomically.
			def.Priority = orig[0].Priority
		}
		if err := h.RouteReplace(def); err != nil {
			return fmt.Errorf("default dev %s src %s in %s: %w", i.ClientTUN, src, l.Client.Name, err)
		}
		i.undo = append(i.undo, func() error {
			if len(orig) == 0 {
				if err := h.RouteDel(def); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENODEV) {
					return fmt.Errorf("delete default dev %s in %s: %w", i.ClientTUN, l.Client.Name, err)
				}
				return nil
			}
			// The first has our route's metric and replaces it.
			var errs []error
			for _, r := range orig {
				if err := h.RouteReplace(restorable(r)); err != nil {
					errs = append(errs, fmt.Errorf("restore %s in %s: %w", r, l.Client.Name, err))
				}
			}
			return errors.Join(errs...)
		})
		// Other default routes (other metrics) would bypass the TUN.
		for _, r := range orig[min(1, len(orig)):] {
			if err := h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("delete %s in %s: %w", r, l.Client.Name, err)
			}
		}

		host := &netlink.Route{
			Dst:       ipNet(netip.PrefixFrom(gw, gw.BitLen())),
			LinkIndex: i.toGateway.link,
			Src:       src.AsSlice(),
			Scope:     netlink.SCOPE_LINK,
		}
		if err := h.RouteReplace(host); err != nil {
			return fmt.Errorf("route %s dev %s in %s: %w", gw, i.ClientTUN, l.Client.Name, err)
		}
		i.undo = append(i.undo, func() error {
			if err := h.RouteDel(host); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENODEV) {
				return fmt.Errorf("delete route %s dev %s in %s: %w", gw, i.ClientTUN, l.Client.Name, err)
			}
			return nil
		})
	}
	return nil
}

// restorable copies what identifies a listed route and what it does, for
// putting it back.
func restorable(r netlink.Route) *netlink.Route {
	return &netlink.Route{
		LinkIndex: r.LinkIndex,
		Dst:       r.Dst,
		Gw:        r.Gw,
		Src:       r.Src,
		Priority:  r.Priority,
		Protocol:  r.Protocol,
		Scope:     r.Scope,
		Table:     r.Table,
		Type:      r.Type,
		Flags:     r.Flags &^ (unix.RTNH_F_LINKDOWN | unix.RTNH_F_DEAD | unix.RTNH_F_OFFLOAD),
	}
}

func maskBits(n *net.IPNet) int {
	ones, _ := n.Mask.Size()
	return ones
}

// Stats returns the counts of both directions so far.
func (i *Impairer) Stats() (toGateway, toClient ImpairStats) {
	return i.toGateway.stats(), i.toClient.stats()
}

// Close restores the direct path (the original default routes in the
// client, no impair rules in the gateway), deletes the TUNs and stops the
// goroutines; packets still held are dropped. It is idempotent and every
// call returns the first call's result.
func (i *Impairer) Close() error {
	i.once.Do(func() {
		i.mu.Lock()
		defer i.mu.Unlock()
		l := i.lab
		l.routes.Lock()
		var errs []error
		for j := len(i.undo) - 1; j >= 0; j-- {
			if err := i.undo[j](); err != nil {
				errs = append(errs, err)
			}
		}
		i.undo = nil
		l.routes.Unlock()
		l.mu.Lock()
		if l.impair == i {
			l.impair = nil
		}
		l.mu.Unlock()
		if err := errors.Join(errs...); err != nil {
			i.err = fmt.Errorf("netlab: close impairer of lab %s: %w", l.ID, err)
		}
	})
	return i.err
}

// impairDir is one impaired direction: a reader goroutine takes packets
// from the TUN and decides their fate, a scheduler goroutine sends them out
// of the veth when they are due.
//
// The scheduler sleeps on a timerfd (read through the Go poller) armed for
// the earliest held packet, rather than on a Go timer: Go timers wake up to
// a millisecond or more late, a timerfd within tens of microseconds, which
// keeps Delay and Jitter accurate.
type impairDir struct {
	m    Impairment
	rng  *rand.Rand // reader goroutine only
	tun  *os.File
	link int // the TUN's ifindex
	pkt  int // AF_PACKET socket
	sa4  unix.SockaddrLinklayer
	sa6  unix.SockaddrLinklayer
	pool sync.Pool // *[]byte of the link MTU

	timer  *os.File // timerfd, CLOCK_MONOTONIC
	timerq int      // its descriptor, only used under mu while !closed

	mu     sync.Mutex
	q      pktHeap
	seq    uint64
	armed  time.Duration // release time the timer is armed for; 0: none
	closed bool          // the timer is closed

	readerDone, schedulerDone chan struct{}
	stopOnce                  sync.Once

	packets, dropped, duplicated, reordered atomic.Uint64
}

type heldPkt struct {
	at  time.Duration // release time on CLOCK_MONOTONIC
	seq uint64        // FIFO among equal release times
	buf *[]byte
	n   int
}

// monotonic returns CLOCK_MONOTONIC, the timerfd's clock.
func monotonic() time.Duration {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Duration(ts.Nano())
}

func (d *impairDir) stats() ImpairStats {
	if d == nil {
		return ImpairStats{}
	}
	return ImpairStats{
		Packets:    d.packets.Load(),
		Dropped:    d.dropped.Load(),
		Duplicated: d.duplicated.Load(),
		Reordered:  d.reordered.Load(),
	}
}

// read takes packets from the TUN until it is closed.
func (d *impairDir) read() {
	defer close(d.readerDone)
	for {
		bp := d.pool.Get().(*[]byte)
		n, err := d.tun.Read(*bp)
		if err != nil {
			d.pool.Put(bp)
			if errors.Is(err, os.ErrClosed) {
				return
			}
			// Nothing else is expected from a TUN; don't spin if it
			// happens anyway.
			time.Sleep(time.Millisecond)
			continue
		}
		if !crossesLink((*bp)[:n]) {
			d.pool.Put(bp)
			continue
		}
		d.packets.Add(1)
		if d.m.Loss > 0 && d.rng.Float64() < d.m.Loss {
			d.dropped.Add(1)
			d.pool.Put(bp)
			continue
		}
		now := monotonic()
		at := now
		if d.m.Delay > 0 || d.m.Jitter > 0 {
			if d.m.Reorder > 0 && d.rng.Float64() < d.m.Reorder {
				d.reordered.Add(1)
			} else {
				at += d.delay()
			}
		}
		var dup *[]byte
		var dupAt time.Duration
		if d.m.Duplicate > 0 && d.rng.Float64() < d.m.Duplicate {
			d.duplicated.Add(1)
			dup = d.pool.Get().(*[]byte)
			copy(*dup, (*bp)[:n])
			dupAt = now + d.delay()
		}
		d.mu.Lock()
		d.hold(at, bp, n)
		if dup != nil {
			d.hold(dupAt, dup, n)
		}
		d.mu.Unlock()
	}
}

// delay samples Delay ± uniform Jitter, at least zero.
func (d *impairDir) delay() time.Duration {
	t := d.m.Delay
	if j := int64(d.m.Jitter); j > 0 {
		t += time.Duration(d.rng.Int64N(2*j+1) - j)
	}
	return max(t, 0)
}

// hold queues a packet for release at at. d.mu must be held.
func (d *impairDir) hold(at time.Duration, bp *[]byte, n int) {
	d.seq++
	d.q.push(heldPkt{at: at, seq: d.seq, buf: bp, n: n})
	// The timer only ever moves earlier here: an expiry that is pending
	// but not yet read by the scheduler is never replaced by a later one.
	if d.armed == 0 || at < d.armed {
		d.arm(at)
	}
}

// arm sets the timer to expire at at (at once if that has passed). d.mu
// must be held.
func (d *impairDir) arm(at time.Duration) {
	if d.closed {
		return
	}
	at = max(at, 1) // a zero expiry would disarm the timer
	its := unix.ItimerSpec{Value: unix.NsecToTimespec(int64(at))}
	if err := unix.TimerfdSettime(d.timerq, unix.TFD_TIMER_ABSTIME, &its, nil); err != nil {
		// Cannot happen with a valid descriptor and time; should it
		// anyway, the scheduler must not sleep forever.
		its.Value = unix.NsecToTimespec(int64(monotonic() + time.Millisecond))
		unix.TimerfdSettime(d.timerq, unix.TFD_TIMER_ABSTIME, &its, nil)
	}
	d.armed = at
}

// schedule sends held packets when they are due, in order of release time,
// until the timer is closed.
func (d *impairDir) schedule() {
	defer close(d.schedulerDone)
	var ticks [8]byte
	var due []heldPkt
	for {
		if _, err := d.timer.Read(ticks[:]); err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			time.Sleep(time.Millisecond)
			continue
		}
		d.mu.Lock()
		d.armed = 0
		now := monotonic()
		for len(d.q) > 0 && d.q[0].at <= now {
			due = append(due, d.q.pop())
		}
		if len(d.q) > 0 {
			d.arm(d.q[0].at)
		}
		d.mu.Unlock()
		for j, p := range due {
			d.send((*p.buf)[:p.n])
			d.pool.Put(p.buf)
			due[j] = heldPkt{}
		}
		due = due[:0]
	}
}

// send puts an IP packet on the veth, to the peer's MAC. Errors (the peer's
// backlog full, say) lose the packet, as on a real link.
func (d *impairDir) send(p []byte) {
	sa := &d.sa4
	if p[0]>>4 == 6 {
		sa = &d.sa6
	}
	_ = unix.Sendto(d.pkt, p, 0, sa)
}

// stop ends both goroutines, deletes the TUN (by closing its descriptor)
// and closes the AF_PACKET socket and the timer. Held packets are dropped.
func (d *impairDir) stop() error {
	var err error
	d.stopOnce.Do(func() {
		err = d.tun.Close()
		<-d.readerDone
		d.mu.Lock()
		d.closed = true
		err = errors.Join(err, d.timer.Close())
		d.mu.Unlock()
		<-d.schedulerDone
		err = errors.Join(err, unix.Close(d.pkt))
		for _, p := range d.q {
			d.pool.Put(p.buf)
		}
		d.q = nil
	})
	return err
}

// crossesLink reports whether a packet from the TUN belongs on the link: an
// IPv4 or IPv6 packet that is not multicast, broadcast or link-local. (The
// routes only send unicast traffic into the TUN; this keeps anything the
// kernel says on the TUN itself off the veth.)
func crossesLink(p []byte) bool {
	if len(p) == 0 {
		return false
	}
	switch p[0] >> 4 {
	case 4:
		if len(p) < 20 {
			return false
		}
		dst := netip.AddrFrom4([4]byte(p[16:20]))
		return !dst.IsMulticast() && dst != netip.AddrFrom4([4]byte{255, 255, 255, 255})
	case 6:
		if len(p) < 40 {
			return false
		}
		src, dst := netip.AddrFrom16([16]byte(p[8:24])), netip.AddrFrom16([16]byte(p[24:40]))
		return !dst.IsMulticast() && !dst.IsLinkLocalUnicast() && !src.IsLinkLocalUnicast()
	}
	return false
}

func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

// pktHeap is a min-heap of held packets by (release time, sequence), kept by
// hand to avoid container/heap's boxing of every element.
type pktHeap []heldPkt

func (h pktHeap) less(a, b int) bool {
	return h[a].at < h[b].at || h[a].at == h[b].at && h[a].seq < h[b].seq
}

// push adds p and reports whether it is now the earliest.
func (h *pktHeap) push(p heldPkt) bool {
	*h = append(*h, p)
	q := *h
	j := len(q) - 1
	for j > 0 {
		parent := (j - 1) / 2
		if !q.less(j, parent) {
			break
		}
		q[j], q[parent] = q[parent], q[j]
		j = parent
	}
	return j == 0
}

// pop removes and returns the earliest packet; the heap must not be empty.
func (h *pktHeap) pop() heldPkt {
	q := *h
	top := q[0]
	last := len(q) - 1
	q[0] = q[last]
	q[last] = heldPkt{}
	q = q[:last]
	j := 0
	for {
		c := 2*j + 1
		if c >= len(q) {
			break
		}
		if c+1 < len(q) && q.less(c+1, c) {
			c++
		}
		if !q.less(c, j) {
			break
		}
		q[j], q[c] = q[c], q[j]
		j = c
	}
	*h = q
	return top
}
