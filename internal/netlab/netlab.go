//go:build linux

package netlab

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// nsPrefix starts the name of every namespace netlab creates.
const nsPrefix = "tcpd-"

// TUNTable is the routing table RouteIntoTUN fills on the gateway.
const TUNTable = 100

// Rule preferences RouteIntoTUN uses on the gateway.
const (
	TUNRulePref   = 100 // iif <gateway client link> lookup TUNTable
	LocalRulePref = 200 // lookup local, moved here from preference 0
)

// settleTimeout bounds the wait for links to come up and IPv6 addresses to
// leave the tentative state.
const settleTimeout = 5 * time.Second

// The lab's fixed addressing.
var (
	clientAddr4        = netip.MustParsePrefix("100.64.1.2/24")
	clientAddr6        = netip.MustParsePrefix("fd64::2/64")
	gatewayClientAddr4 = netip.MustParsePrefix("100.64.1.1/24")
	gatewayClientAddr6 = netip.MustParsePrefix("fd64::fffe/64")
	gatewayServerAddr4 = netip.MustParsePrefix("198.18.1.1/24")
	gatewayServerAddr6 = netip.MustParsePrefix("2001:db8:1::1/64")
	serverAddr4        = netip.MustParsePrefix("198.18.1.2/24")
	serverAddr6        = netip.MustParsePrefix("2001:db8:1::2/64")
)

// Options configure a lab.
type Options struct {
	// MTU of all veths; 0 means 1500.
	MTU int
	// WireGuard, when set, joins the clients to the gateway through a real
	// WireGuard tunnel instead of a veth; see [WireGuard].
	WireGuard *WireGuard
}

// Lab is one client/gateway/server topology. See the package documentation.
type Lab struct {
	Client, Gateway, Server *NS

	ClientAddr4, ClientAddr6               netip.Addr // 100.64.1.2, fd64::2
	GatewayClientAddr4, GatewayClientAddr6 netip.Addr // 100.64.1.1, fd64::fffe
	GatewayServerAddr4, GatewayServerAddr6 netip.Addr // 198.18.1.1, 2001:db8:1::1
	ServerAddr4, ServerAddr6               netip.Addr // 198.18.1.2, 2001:db8:1::2

	// Link names. ClientLink (client ns) is paired with GatewayClientLink
	// (gateway ns); GatewayServerLink (gateway ns) with ServerLink (server ns).
	ClientLink, GatewayClientLink, GatewayServerLink, ServerLink string

	// ID is the random hex shared by this lab's namespace and link names.
	ID string
	// MTU of the veths.
	MTU int

	// Peers are the client namespaces of a WireGuard lab, each a WireGuard
	// peer of the gateway, Peers[0] being Client; nil in a veth lab. In a
	// WireGuard lab ClientLink is Peers[0]'s WireGuard interface,
	// GatewayClientLink the gateway's, and the Client and GatewayClient
	// addresses are those of these interfaces.
	Peers []*Peer
	// WireGuardMTU is the MTU of the gateway's WireGuard interface; 0 in a
	// veth lab.
	WireGuardMTU int

	mu     sync.Mutex
	closed bool       // set once Close starts; no new processes after that
	nss    []*NS      // namespaces created so far, in creation order
	procs  []*Proc    // processes started via the lab
	tmp    string     // temporary directory, created on demand
	once   sync.Once  // Close
	err    error      // Close's result
	routes sync.Mutex // serialises RouteIntoTUN / RouteDirect / ImpairClientLink
	impair *Impairer  // the open ImpairClientLink, if any
	// gwVeths are the gateway's ends of the lab's veths, which Close
	// deletes (deleting one end deletes the pair).
	gwVeths []string
}

// SetupError is returned by New when building the lab failed. Everything
// the attempt created has been removed by the time New returns.
type SetupError struct {
	ID         string
	Namespaces []string // the names the lab would have had
	Err        error
}

func (e *SetupError) Error() string { return fmt.Sprintf("netlab: lab %s: %v", e.ID, e.Err) }
func (e *SetupError) Unwrap() error { return e.Err }

// live holds every lab of this process that has not been closed, for
// CloseAll.
var live struct {
	sync.Mutex
	labs map[*Lab]struct{}
}

func register(l *Lab) {
	live.Lock()
	defer live.Unlock()
	if live.labs == nil {
		live.labs = map[*Lab]struct{}{}
	}
	live.labs[l] = struct{}{}
}

func unregister(l *Lab) {
	live.Lock()
	defer live.Unlock()
	delete(live.labs, l)
}

// CloseAll closes every lab of this process that is still open and removes
// the binaries Build and BuildTCPD made. Meant for TestMain, after m.Run,
// and for signal handlers.
func CloseAll() error {
	live.Lock()
	var labs []*Lab
	for l := range live.labs {
		labs = append(labs, l)
	}
	live.Unlock()
	var errs []error
	for _, l := range labs {
		errs = append(errs, l.Close())
	}
	errs = append(errs, removeBuilds())
	return errors.Join(errs...)
}

func randomID() (string, error) {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// New builds a lab. On any error it removes whatever it created and returns
// a *SetupError.
func New(opts Options) (_ *Lab, err error) {
	mtu := opts.MTU
	if mtu == 0 {
		mtu = 1500
	}
	sweepStale()
	id, err := randomID()
	if err != nil {
		return nil, fmt.Errorf("netlab: random id: %w", err)
	}
	if err := claim(id); err != nil {
		return nil, fmt.Errorf("netlab: record lab owner: %w", err)
	}
	l := &Lab{
		ClientAddr4:        clientAddr4.Addr(),
		ClientAddr6:        clientAddr6.Addr(),
		GatewayClientAddr4: gatewayClientAddr4.Addr(),
		GatewayClientAddr6: gatewayClientAddr6.Addr(),
		GatewayServerAddr4: gatewayServerAddr4.Addr(),
		GatewayServerAddr6: gatewayServerAddr6.Addr(),
		ServerAddr4:        serverAddr4.Addr(),
		ServerAddr6:        serverAddr6.Addr(),
		ClientLink:         "tc" + id + "c",
		GatewayClientLink:  "tc" + id + "gc",
		GatewayServerLink:  "tc" + id + "gs",
		ServerLink:         "tc" + id + "s",
		ID:                 id,
		MTU:                mtu,
	}
	names := []string{nsPrefix + id + "-c"}
	if wg := opts.WireGuard; wg != nil {
		for i := 1; i < wg.peers(); i++ {
			names = append(names, fmt.Sprintf("%s%s-c%d", nsPrefix, id, i))
		}
	}
	names = append(names, nsPrefix+id+"-g", nsPrefix+id+"-s")
	register(l)
	defer func() {
		if err != nil {
			if cerr := l.Close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("cleanup: %w", cerr))
			}
			err = &SetupError{ID: id, Namespaces: names, Err: err}
		}
	}()
	if mtu < 0 {
		return nil, fmt.Errorf("invalid MTU %d", mtu)
	}

	var clients []*NS
	for i, name := range names {
		ns, err := createNS(name)
		if err != nil {
			return nil, err
		}
		l.mu.Lock()
		l.nss = append(l.nss, ns)
		l.mu.Unlock()
		switch i {
		case len(names) - 2:
			l.Gateway = ns
		case len(names) - 1:
			l.Server = ns
		default:
			clients = append(clients, ns)
		}
	}
	l.Client = clients[0]
	if opts.WireGuard != nil {
		if err := l.setupWireGuard(*opts.WireGuard, clients); err != nil {
			return nil, err
		}
		return l, nil
	}
	if err := l.setup(); err != nil {
		return nil, err
	}
	return l, nil
}

// setup configures the three fresh namespaces.
func (l *Lab) setup() error {
	c, g, s := l.Client, l.Gateway, l.Server

	// Namespace-wide sysctls first: links created afterwards inherit the
	// "default" values.
	noDAD := [][2]string{
		{"net.ipv6.conf.all.accept_dad", "0"},
		{"net.ipv6.conf.default.accept_dad", "0"},
	}
	if err := c.sysctls(noDAD...); err != nil {
		return err
	}
	if err := s.sysctls(noDAD...); err != nil {
		return err
	}
	if err := g.sysctls(append(noDAD,
		[2]string{"net.ipv4.ip_forward", "1"},
		[2]string{"net.ipv6.conf.all.forwarding", "1"},
		[2]string{"net.ipv4.conf.all.rp_filter", "0"},
		[2]string{"net.ipv4.conf.default.rp_filter", "0"},
	)...); err != nil {
		return err
	}

	if err := loopbackUp(c, g, s); err != nil {
		return err
	}

	// Each veth is created directly inside its namespaces, so nothing ever
	// appears in the caller's namespace.
	if err := l.addVeth(c, l.ClientLink, l.GatewayClientLink, l.MTU); err != nil {
		return err
	}
	if err := l.addVeth(s, l.ServerLink, l.GatewayServerLink, l.MTU); err != nil {
		return err
	}
	if err := c.sysctls([2]string{"net/ipv6/conf/" + l.ClientLink + "/accept_dad", "0"}); err != nil {
		return err
	}
	if err := s.sysctls([2]string{"net/ipv6/conf/" + l.ServerLink + "/accept_dad", "0"}); err != nil {
		return err
	}
	if err := g.sysctls(
		[2]string{"net/ipv6/conf/" + l.GatewayClientLink + "/accept_dad", "0"},
		[2]string{"net/ipv6/conf/" + l.GatewayServerLink + "/accept_dad", "0"},
		[2]string{"net/ipv4/conf/" + l.GatewayClientLink + "/rp_filter", "0"},
		[2]string{"net/ipv4/conf/" + l.GatewayServerLink + "/rp_filter", "0"},
	); err != nil {
		return err
	}

	type end struct {
		ns   *NS
		name string
		pfx  []netip.Prefix
		link netlink.Link
	}
	ends := []*end{
		{ns: c, name: l.ClientLink, pfx: []netip.Prefix{clientAddr4, clientAddr6}},
		{ns: g, name: l.GatewayClientLink, pfx: []netip.Prefix{gatewayClientAddr4, gatewayClientAddr6}},
		{ns: g, name: l.GatewayServerLink, pfx: []netip.Prefix{gatewayServerAddr4, gatewayServerAddr6}},
		{ns: s, name: l.ServerLink, pfx: []netip.Prefix{serverAddr4, serverAddr6}},
	}
	for _, e := range ends {
		link, err := e.ns.nl.LinkByName(e.name)
		if err != nil {
			return fmt.Errorf("find %s in %s: %w", e.name, e.ns.Name, err)
		}
		e.link = link
		if err := e.ns.nl.LinkSetUp(link); err != nil {
			return fmt.Errorf("set %s up in %s: %w", e.name, e.ns.Name, err)
		}
	}
	// Addresses after the links are up: an IPv6 address added to a link
	// without carrier stays tentative until the carrier appears.
	for _, e := range ends {
		for _, p := range e.pfx {
			a := &netlink.Addr{IPNet: ipNet(p)}
			if p.Addr().Is6() {
				a.Flags = unix.IFA_F_NODAD
			}
			if err := e.ns.nl.AddrReplace(e.link, a); err != nil {
				return fmt.Errorf("address %s on %s in %s: %w", p, e.name, e.ns.Name, err)
			}
		}
	}

	// Static neighbours between client and gateway. Once RouteIntoTUN sends
	// everything arriving from the client into the TUN, the gateway kernel
	// no longer answers ARP for its own address (the route lookup ARP does
	// no longer says "local") and IPv6 neighbour discovery messages are
	// forwarded into the TUN instead of being processed. A real VPN client
	// link is point-to-point; permanent entries give the veth the same
	// property. They change nothing for plain forwarding.
	cMAC, gMAC := ends[0].link.Attrs().HardwareAddr, ends[1].link.Attrs().HardwareAddr
	neighs := []struct {
		ns   *NS
		link netlink.Link
		ip   netip.Addr
		mac  net.HardwareAddr
	}{
		{c, ends[0].link, l.GatewayClientAddr4, gMAC},
		{c, ends[0].link, l.GatewayClientAddr6, gMAC},
		{g, ends[1].link, l.ClientAddr4, cMAC},
		{g, ends[1].link, l.ClientAddr6, cMAC},
	}
	for _, n := range neighs {
		fam := netlink.FAMILY_V4
		if n.ip.Is6() {
			fam = netlink.FAMILY_V6
		}
		if err := n.ns.nl.NeighSet(&netlink.Neigh{
			LinkIndex:    n.link.Attrs().Index,
			Family:       fam,
			State:        netlink.NUD_PERMANENT,
			IP:           n.ip.AsSlice(),
			HardwareAddr: n.mac,
		}); err != nil {
			return fmt.Errorf("neighbour %s in %s: %w", n.ip, n.ns.Name, err)
		}
	}

	deadline := time.Now().Add(settleTimeout)
	for _, e := range ends {
		if err := waitSettled(e.ns, e.name, deadline); err != nil {
			return err
		}
	}

	// Client and server send everything through the gateway. The gateway
	// gets no default route.
	defaults := []struct {
		ns   *NS
		link netlink.Link
		gw   netip.Addr
	}{
		{c, ends[0].link, l.GatewayClientAddr4},
		{c, ends[0].link, l.GatewayClientAddr6},
		{s, ends[3].link, l.GatewayServerAddr4},
		{s, ends[3].link, l.GatewayServerAddr6},
	}
	for _, d := range defaults {
		r := &netlink.Route{LinkIndex: d.link.Attrs().Index, Dst: defaultDst(d.gw.Is6()), Gw: d.gw.AsSlice()}
		if err := d.ns.nl.RouteReplace(r); err != nil {
			return fmt.Errorf("default route via %s in %s: %w", d.gw, d.ns.Name, err)
		}
	}
	return nil
}

// loopbackUp sets lo up in each of nss.
func loopbackUp(nss ...*NS) error {
	for _, ns := range nss {
		lo, err := ns.nl.LinkByName("lo")
		if err == nil {
			err = ns.nl.LinkSetUp(lo)
		}
		if err != nil {
			return fmt.Errorf("lo up in %s: %w", ns.Name, err)
		}
	}
	return nil
}

// addVeth creates a veth pair with one end, aName, in a and the other,
// gwName, in the lab's gateway, and has Close delete it.
func (l *Lab) addVeth(a *NS, aName string, gwName string, mtu int) error {
	if err := addVeth(a, aName, l.Gateway, gwName, mtu); err != nil {
		return err
	}
	l.mu.Lock()
	l.gwVeths = append(l.gwVeths, gwName)
	l.mu.Unlock()
	return nil
}

// addVeth creates a veth pair with one end, aName, in a and the other, bName,
// in b.
func addVeth(a *NS, aName string, b *NS, bName string, mtu int) error {
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: aName, MTU: mtu},
		PeerName:      bName,
		PeerNamespace: netlink.NsFd(int(b.h)),
	}
	if err := a.nl.LinkAdd(v); err != nil {
		return fmt.Errorf("create veth %s (%s) <-> %s (%s), MTU %d: %w", aName, a.Name, bName, b.Name, mtu, err)
	}
	return nil
}

// waitSettled waits until the link is operationally up and none of its IPv6
// addresses is tentative.
func waitSettled(ns *NS, name string, deadline time.Time) error {
	for {
		why, err := unsettled(ns, name)
		if err != nil {
			return err
		}
		if why == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s in %s not ready after %v: %s", name, ns.Name, settleTimeout, why)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func unsettled(ns *NS, name string) (string, error) {
	link, err := ns.nl.LinkByName(name)
	if err != nil {
		return "", fmt.Errorf("find %s in %s: %w", name, ns.Name, err)
	}
	if st := link.Attrs().OperState; st != netlink.OperUp {
		return "operational state " + st.String(), nil
	}
	addrs, err := ns.nl.AddrList(link, netlink.FAMILY_V6)
	if err != nil {
		return "", fmt.Errorf("addresses of %s in %s: %w", name, ns.Name, err)
	}
	for _, a := range addrs {
		if a.Flags&unix.IFA_F_DADFAILED != 0 {
			return "", fmt.Errorf("%s on %s in %s: duplicate address detection failed", a.IPNet, name, ns.Name)
		}
		if a.Flags&unix.IFA_F_TENTATIVE != 0 {
			return a.IPNet.String() + " tentative", nil
		}
	}
	return "", nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func defaultDst(v6 bool) *net.IPNet {
	if v6 {
		return &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
}

var families = []int{netlink.FAMILY_V4, netlink.FAMILY_V6}

// RouteIntoTUN gives the gateway the policy routing of a VPN gateway running
// tcpd with the TUN dev, for IPv4 and IPv6. In a veth lab:
//
//	ip rule add iif <GatewayClientLink> lookup 100 pref 100
//	ip rule add pref 200 lookup local
//	ip rule del pref 0 lookup local
//	ip route replace default dev <dev> table 100
//
// so that everything arriving from clients, even for the gateway's own
// addresses, goes into the TUN (tcpd's destination policy then protects the
// host). In a WireGuard lab, exactly what README's "Running it on a
// WireGuard gateway" tells an operator:
//
//	ip rule add iif <wg> ipproto tcp lookup 100 pref 100
//	ip route replace default dev <dev> table 100
//	ip route replace prohibit default table 100 metric 4294967295
//
// so that only TCP goes to tcpd and UDP and ICMP stay with the kernel, and
// while the TUN is gone (tcpd stopped or restarting) the clients' TCP is
// refused instead of forwarded around tcpd's destination policy.
// Traffic the gateway itself originates or receives on other links is
// routed as before. Calling it again (say for a restarted tcpd) is fine.
func (l *Lab) RouteIntoTUN(dev string) error {
	l.routes.Lock()
	defer l.routes.Unlock()
	h := l.Gateway.nl
	link, err := h.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("netlab: TUN %q in %s: %w", dev, l.Gateway.Name, err)
	}
	for _, fam := range families {
		r := &netlink.Route{
			Dst:       defaultDst(fam == netlink.FAMILY_V6),
			LinkIndex: link.Attrs().Index,
			Table:     TUNTable,
			Scope:     netlink.SCOPE_LINK,
		}
		if err := h.RouteReplace(r); err != nil {
			return fmt.Errorf("netlab: default dev %s table %d (%s): %w", dev, TUNTable, famName(fam), err)
		}
		if err := ensureRule(h, l.tunRule(fam)); err != nil {
			return err
		}
		if l.Peers != nil {
			// Fail closed: behind the TUN's route, a route that refuses.
			r := &netlink.Route{
				Dst:      defaultDst(fam == netlink.FAMILY_V6),
				Table:    TUNTable,
				Type:     unix.RTN_PROHIBIT,
				Priority: math.MaxUint32,
			}
			if err := h.RouteReplace(r); err != nil {
				return fmt.Errorf("netlab: prohibit default table %d (%s): %w", TUNTable, famName(fam), err)
			}
			continue // the local table stays first
		}
		// Add the new local rule before removing the old one, so local
		// delivery never disappears.
		if err := ensureRule(h, localRule(fam, LocalRulePref)); err != nil {
			return err
		}
		if err := removeRule(h, localRule(fam, 0)); err != nil {
			return err
		}
	}
	return nil
}

// RouteDirect undoes RouteIntoTUN: the gateway kernel forwards
// client<->server traffic itself again (the kernel baseline).
func (l *Lab) RouteDirect() error {
	l.routes.Lock()
	defer l.routes.Unlock()
	h := l.Gateway.nl
	for _, fam := range families {
		if err := ensureRule(h, localRule(fam, 0)); err != nil {
			return err
		}
		for _, r := range []*netlink.Rule{localRule(fam, LocalRulePref), l.tunRule(fam)} {
			if err := removeRule(h, r); err != nil {
				return err
			}
		}
		routes, err := h.RouteListFiltered(fam, &netlink.Route{Table: TUNTable}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return fmt.Errorf("netlab: list table %d (%s): %w", TUNTable, famName(fam), err)
		}
		for _, r := range routes {
			if err := h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("netlab: delete %s from table %d: %w", r, TUNTable, err)
			}
		}
	}
	return nil
}

// AllowLocalnetFromClients sets net.ipv4.conf.<GatewayClientLink>.route_localnet=1
// on the gateway, so that packets from clients to 127.0.0.0/8 are routed
// (into the TUN, with RouteIntoTUN) instead of dropped as martians.
func (l *Lab) AllowLocalnetFromClients() error {
	return l.Gateway.Sysctl("net/ipv4/conf/"+l.GatewayClientLink+"/route_localnet", "1")
}

func (l *Lab) tunRule(fam int) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = fam
	r.Priority = TUNRulePref
	r.Table = TUNTable
	r.IifName = l.GatewayClientLink
	if l.Peers != nil {
		r.IPProto = unix.IPPROTO_TCP
	}
	return r
}

func localRule(fam, pref int) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = fam
	r.Priority = pref
	r.Table = unix.RT_TABLE_LOCAL
	return r
}

// findRule reports whether a rule with want's family, preference, table,
// input interface and IP protocol, and no other selector, exists.
func findRule(h *netlink.Handle, want *netlink.Rule) (bool, error) {
	rules, err := h.RuleList(want.Family)
	if err != nil {
		return false, fmt.Errorf("netlab: list rules (%s): %w", famName(want.Family), err)
	}
	for _, r := range rules {
		if r.Priority == want.Priority && r.Table == want.Table && r.IifName == want.IifName &&
			r.IPProto == want.IPProto && r.OifName == "" && r.Src == nil && r.Dst == nil && r.Mark == 0 && !r.Invert {
			return true, nil
		}
	}
	return false, nil
}

func ensureRule(h *netlink.Handle, want *netlink.Rule) error {
	ok, err := findRule(h, want)
	if err != nil || ok {
		return err
	}
	if err := h.RuleAdd(want); err != nil {
		return fmt.Errorf("netlab: add rule %s: %w", ruleString(want), err)
	}
	return nil
}

func removeRule(h *netlink.Handle, r *netlink.Rule) error {
	ok, err := findRule(h, r)
	if err != nil || !ok {
		return err
	}
	if err := h.RuleDel(r); err != nil {
		return fmt.Errorf("netlab: delete rule %s: %w", ruleString(r), err)
	}
	return nil
}

func ruleString(r *netlink.Rule) string {
	s := fmt.Sprintf("%s pref %d", famName(r.Family), r.Priority)
	if r.IifName != "" {
		s += " iif " + r.IifName
	}
	if r.IPProto != 0 {
		s += fmt.Sprintf(" ipproto %d", r.IPProto)
	}
	if r.Table == unix.RT_TABLE_LOCAL {
		return s + " lookup local"
	}
	return s + fmt.Sprintf(" lookup %d", r.Table)
}

func famName(fam int) string {
	if fam == netlink.FAMILY_V6 {
		return "IPv6"
	}
	return "IPv4"
}

// Close closes the lab's open [Impairer], stops every process started via
// the lab, deletes the veths and the namespaces and removes the lab's
// temporary files. It is idempotent, safe after a partial failure of New,
// and every call returns the first call's result.
func (l *Lab) Close() error {
	l.once.Do(func() { l.err = l.close() })
	return l.err
}

func (l *Lab) close() error {
	l.mu.Lock()
	l.closed = true
	procs, nss, tmp, imp, veths := l.procs, l.nss, l.tmp, l.impair, l.gwVeths
	l.mu.Unlock()
	defer unregister(l)

	var errs []error
	// The impair TUNs' descriptors would keep the namespaces alive.
	if imp != nil {
		if err := imp.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range procs {
		if err := p.kill(killTimeout); err != nil {
			errs = append(errs, err)
		}
	}
	// Deleting a namespace deletes its links only once nothing holds the
	// namespace any more (a socket, a process started with NS.Command), so
	// remove the veths explicitly: deleting one end deletes its peer.
	if g := l.Gateway; g != nil {
		for _, name := range veths {
			link, err := g.nl.LinkByName(name)
			if err != nil {
				continue // gone with its peer's namespace
			}
			if err := g.nl.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
				errs = append(errs, fmt.Errorf("delete %s in %s: %w", name, g.Name, err))
			}
		}
	}
	for i := len(nss) - 1; i >= 0; i-- {
		nss[i].close()
		if err := deleteNS(nss[i].Name); err != nil {
			errs = append(errs, fmt.Errorf("delete namespace %s: %w", nss[i].Name, err))
		}
	}
	if tmp != "" {
		if err := os.RemoveAll(tmp); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("netlab: close lab %s: %w", l.ID, err)
	}
	release(l.ID)
	return nil
}

// Available reports why labs cannot be built here ("" if they can): netlab
// needs root and /dev/net/tun (for tcpd).
func Available() string {
	if os.Geteuid() != 0 {
		return "not root"
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return "no /dev/net/tun"
	}
	return ""
}

// NewT builds a lab for a test or benchmark and closes it in t.Cleanup. It
// skips when not root or without /dev/net/tun, and fails the test if the lab
// cannot be built. If the test failed, the cleanup logs the output of the
// processes started via the lab.
func NewT(t testing.TB, opts Options) *Lab {
	t.Helper()
	if Available() != "" {
		t.Skip("tier B: needs root (CAP_NET_ADMIN) for network namespaces and a TUN")
	}
	l, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			l.mu.Lock()
			procs := l.procs
			l.mu.Unlock()
			for _, p := range procs {
				t.Logf("netlab: output of %s (pid %d):\n%s", p.name, p.Pid(), p.Logs())
			}
		}
		if err := l.Close(); err != nil {
			t.Error(err)
		}
	})
	return l
}

// Namespaces returns the lab's namespaces: the clients (every peer's in a
// WireGuard lab), gateway, server.
func (l *Lab) Namespaces() []*NS {
	if len(l.Peers) == 0 {
		return []*NS{l.Client, l.Gateway, l.Server}
	}
	var nss []*NS
	for _, p := range l.Peers {
		nss = append(nss, p.NS)
	}
	return append(nss, l.Gateway, l.Server)
}

// tempDir returns the lab's temporary directory, creating it on first use.
// Close removes it.
func (l *Lab) tempDir() (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return "", errClosed
	}
	if l.tmp == "" {
		d, err := os.MkdirTemp("", "netlab-"+l.ID+"-")
		if err != nil {
			return "", err
		}
		l.tmp = d
	}
	return l.tmp, nil
}

var errClosed = errors.New("netlab: lab is closed")
