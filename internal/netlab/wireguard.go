//go:build linux

package netlab

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// WireGuard configures a WireGuard lab: several client namespaces (peers),
// each joined to the gateway by its own veth (the underlay, standing for the
// Internet) and, over it, a real WireGuard tunnel. Each end of each tunnel
// is a wgpeer process (golang.zx2c4.com/wireguard's device package over a
// real TUN, configured through its UAPI) started inside its namespace.
//
//	peer i ns                                gateway ns
//	10.99.i.2/24   <--veth (underlay)-->     10.99.i.1/24, UDP 51820
//	tc<id>w<i>: 100.64.2.(10+i)/32           tc<id>wg: 100.64.0.254/32, fd64::fe/128
//	            fd64::2:(10+i)/128           routes 100.64.0.0/10 and fd64::/64 dev tc<id>wg
//	routes: default dev tc<id>w<i>
//
// The gateway is set up as README's "Running it on a WireGuard gateway"
// tells an operator: forwarding on for both families, the route to the
// clients' prefix via the WireGuard interface, loose reverse-path
// filtering, and, once tcpd runs ([Lab.RouteIntoTUN]), `ip rule add iif
// <wg> ipproto tcp lookup 100` for both families, with a prohibit route
// behind the TUN's in table 100 so that a stopped tcpd fails closed. The
// server side is that of a veth lab.
type WireGuard struct {
	// Peers is the number of client namespaces. Zero means 1.
	Peers int
	// GatewayMTU is the MTU of the gateway's WireGuard interface. Zero
	// means 1420, wg-quick's default.
	GatewayMTU int
	// ClientMTU is the MTU of each peer's WireGuard interface. Zero means
	// 1420.
	ClientMTU int
	// Bin is the wgpeer binary. Empty builds ./internal/wgpeer once per
	// process (which needs the go command and the module source).
	Bin string
}

func (w WireGuard) peers() int { return max(w.Peers, 1) }

// Peer is one client namespace of a WireGuard lab.
type Peer struct {
	NS *NS
	// Addr4 and Addr6 are the peer's addresses inside the tunnel, the
	// source of everything it sends to the gateway: 100.64.2.(10+i) and
	// fd64::2:(10+i).
	Addr4, Addr6 netip.Addr
	// Link is the peer's WireGuard interface, Underlay its veth.
	Link, Underlay string
	// MTU of Link.
	MTU int
}

// WireGuardPort is the UDP port the gateway's WireGuard listens on.
const WireGuardPort = 51820

// The WireGuard lab's addressing.
var (
	wgGatewayAddr4 = netip.MustParsePrefix("100.64.0.254/32")
	wgGatewayAddr6 = netip.MustParsePrefix("fd64::fe/128")
	// WireGuardClients4 and WireGuardClients6 are the clients' prefixes,
	// routed via the gateway's WireGuard interface: tcpd's default
	// "clients".
	WireGuardClients4 = netip.MustParsePrefix("100.64.0.0/10")
	WireGuardClients6 = netip.MustParsePrefix("fd64::/64")
)

func wgPeerAddrs(i int) (netip.Addr, netip.Addr) {
	a4 := netip.AddrFrom4([4]byte{100, 64, 2, byte(10 + i)})
	a6 := netip.MustParseAddr("fd64::2:0").As16()
	a6[15] = byte(10 + i)
	return a4, netip.AddrFrom16(a6)
}

// underlay returns the gateway's and the peer's address on peer i's veth.
func underlay(i int) (gw, peer netip.Prefix) {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 99, byte(i), 1}), 24),
		netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 99, byte(i), 2}), 24)
}

// wgKey is a Curve25519 key pair in WireGuard's UAPI form (hex).
type wgKey struct{ private, public string }

func newWGKey() (wgKey, error) {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return wgKey{}, err
	}
	return wgKey{hex.EncodeToString(k.Bytes()), hex.EncodeToString(k.PublicKey().Bytes())}, nil
}

// handshakeTimeout bounds the wait for each peer's first WireGuard
// handshake with the gateway.
const handshakeTimeout = 10 * time.Second

// setupWireGuard configures the fresh namespaces of a WireGuard lab.
func (l *Lab) setupWireGuard(opts WireGuard, clients []*NS) error {
	g, s := l.Gateway, l.Server
	gwMTU, cMTU := opts.GatewayMTU, opts.ClientMTU
	if gwMTU == 0 {
		gwMTU = 1420
	}
	if cMTU == 0 {
		cMTU = 1420
	}
	if gwMTU < 1280 || cMTU < 1280 {
		return fmt.Errorf("WireGuard MTU %d/%d: IPv6 inside the tunnel needs at least 1280", gwMTU, cMTU)
	}
	bin := opts.Bin
	if bin == "" {
		var err error
		if bin, err = buildOnce("./internal/wgpeer"); err != nil {
			return err
		}
	}
	l.WireGuardMTU = gwMTU
	gwLink := "tc" + l.ID + "wg"
	l.GatewayClientLink = gwLink
	l.GatewayClientAddr4, l.GatewayClientAddr6 = wgGatewayAddr4.Addr(), wgGatewayAddr6.Addr()
	for i, ns := range clients {
		a4, a6 := wgPeerAddrs(i)
		l.Peers = append(l.Peers, &Peer{
			NS: ns, Addr4: a4, Addr6: a6,
			Link:     fmt.Sprintf("tc%sw%d", l.ID, i),
			Underlay: fmt.Sprintf("tc%su%d", l.ID, i),
			MTU:      cMTU,
		})
	}
	p0 := l.Peers[0]
	l.ClientLink, l.ClientAddr4, l.ClientAddr6 = p0.Link, p0.Addr4, p0.Addr6

	noDAD := [][2]string{
		{"net.ipv6.conf.all.accept_dad", "0"},
		{"net.ipv6.conf.default.accept_dad", "0"},
	}
	for _, ns := range append([]*NS{s}, clients...) {
		if err := ns.sysctls(noDAD...); err != nil {
			return err
		}
	}
	// The gateway as README tells an operator to set it up. Reverse-path
	// filtering is loose, as most distributions ship it.
	if err := g.sysctls(append(noDAD,
		[2]string{"net.ipv4.ip_forward", "1"},
		[2]string{"net.ipv6.conf.all.forwarding", "1"},
		[2]string{"net.ipv4.conf.all.rp_filter", "2"},
		[2]string{"net.ipv4.conf.default.rp_filter", "2"},
	)...); err != nil {
		return err
	}
	if err := loopbackUp(l.Namespaces()...); err != nil {
		return err
	}

	// The underlay: one veth per peer, and the server's veth.
	var ends []linkEnd
	for i, p := range l.Peers {
		gwU, peerU := underlay(i)
		gwName := fmt.Sprintf("tc%sU%d", l.ID, i)
		if err := l.addVeth(p.NS, p.Underlay, gwName, l.MTU); err != nil {
			return err
		}
		ends = append(ends, linkEnd{p.NS, p.Underlay, []netip.Prefix{peerU}}, linkEnd{g, gwName, []netip.Prefix{gwU}})
	}
	if err := l.addVeth(s, l.ServerLink, l.GatewayServerLink, l.MTU); err != nil {
		return err
	}
	ends = append(ends,
		linkEnd{g, l.GatewayServerLink, []netip.Prefix{gatewayServerAddr4, gatewayServerAddr6}},
		linkEnd{s, l.ServerLink, []netip.Prefix{serverAddr4, serverAddr6}})
	if err := s.sysctls([2]string{"net/ipv6/conf/" + l.ServerLink + "/accept_dad", "0"}); err != nil {
		return err
	}
	if err := g.sysctls([2]string{"net/ipv6/conf/" + l.GatewayServerLink + "/accept_dad", "0"}); err != nil {
		return err
	}
	if err := bringUp(ends...); err != nil {
		return err
	}
	deadline := time.Now().Add(settleTimeout)
	for _, e := range ends {
		if err := waitSettled(e.ns, e.name, deadline); err != nil {
			return err
		}
	}
	serverLink, err := s.nl.LinkByName(l.ServerLink)
	if err != nil {
		return err
	}
	for _, gw := range []netip.Addr{l.GatewayServerAddr4, l.GatewayServerAddr6} {
		r := &netlink.Route{LinkIndex: serverLink.Attrs().Index, Dst: defaultDst(gw.Is6()), Gw: gw.AsSlice()}
		if err := s.nl.RouteReplace(r); err != nil {
			return fmt.Errorf("default route via %s in %s: %w", gw, s.Name, err)
		}
	}

	// The tunnels.
	gwKey, err := newWGKey()
	if err != nil {
		return err
	}
	var gwConf strings.Builder
	fmt.Fprintf(&gwConf, "private_key=%s\nlisten_port=%d\n", gwKey.private, WireGuardPort)
	keys := make([]wgKey, len(l.Peers))
	for i, p := range l.Peers {
		if keys[i], err = newWGKey(); err != nil {
			return err
		}
		fmt.Fprintf(&gwConf, "public_key=%s\nallowed_ip=%s/32\nallowed_ip=%s/128\n", keys[i].public, p.Addr4, p.Addr6)
	}
	if err := l.startWGPeer(g, bin, gwLink, gwMTU, gwConf.String(), false); err != nil {
		return err
	}
	if err := configureWG(g, gwLink, []netip.Prefix{wgGatewayAddr4, wgGatewayAddr6},
		[]netip.Prefix{WireGuardClients4, WireGuardClients6}); err != nil {
		return err
	}
	errs := make([]error, len(l.Peers))
	var wg sync.WaitGroup
	for i, p := range l.Peers {
		gwU, _ := underlay(i)
		// A persistent keepalive makes the peer handshake as soon as it is
		// up, and wgpeer waits for that handshake before it says ready.
		conf := fmt.Sprintf("private_key=%s\npublic_key=%s\nendpoint=%s\nallowed_ip=0.0.0.0/0\nallowed_ip=::/0\npersistent_keepalive_interval=25\n",
			keys[i].private, gwKey.public, netip.AddrPortFrom(gwU.Addr(), WireGuardPort))
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := l.startWGPeer(p.NS, bin, p.Link, p.MTU, conf, true); err != nil {
				errs[i] = err
				return
			}
			errs[i] = configureWG(p.NS, p.Link,
				[]netip.Prefix{netip.PrefixFrom(p.Addr4, 32), netip.PrefixFrom(p.Addr6, 128)},
				[]netip.Prefix{netip.PrefixFrom(netip.IPv4Unspecified(), 0), netip.PrefixFrom(netip.IPv6Unspecified(), 0)})
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// linkEnd is one end of a veth and the addresses it gets.
type linkEnd struct {
	ns   *NS
	name string
	pfx  []netip.Prefix
}

// bringUp sets each link up and gives it its addresses (after it is up: an
// IPv6 address added to a link without carrier stays tentative).
func bringUp(ends ...linkEnd) error {
	for _, e := range ends {
		link, err := e.ns.nl.LinkByName(e.name)
		if err != nil {
			return fmt.Errorf("find %s in %s: %w", e.name, e.ns.Name, err)
		}
		if err := e.ns.nl.LinkSetUp(link); err != nil {
			return fmt.Errorf("set %s up in %s: %w", e.name, e.ns.Name, err)
		}
		for _, p := range e.pfx {
			a := &netlink.Addr{IPNet: ipNet(p)}
			if p.Addr().Is6() {
				a.Flags = unix.IFA_F_NODAD
			}
			if err := e.ns.nl.AddrReplace(link, a); err != nil {
				return fmt.Errorf("address %s on %s in %s: %w", p, e.name, e.ns.Name, err)
			}
		}
	}
	return nil
}

// startWGPeer runs wgpeer in ns and waits for its ready line: with
// handshake, the line comes once the tunnel's first handshake is done.
func (l *Lab) startWGPeer(ns *NS, bin, name string, mtu int, uapi string, handshake bool) error {
	args := []string{"--name", name, "--mtu", fmt.Sprint(mtu)}
	if handshake {
		args = append(args, "--wait-handshake", handshakeTimeout.String())
	}
	cmd := ns.Command(context.Background(), bin, args...)
	cmd.Stdin = strings.NewReader(uapi)
	p, err := l.StartProc(cmd)
	if err != nil {
		return fmt.Errorf("start wgpeer %s in %s: %w", name, ns.Name, err)
	}
	ctx, cancel := context.WithTimeoutCause(context.Background(), handshakeTimeout+5*time.Second,
		fmt.Errorf("wgpeer %s not ready within %v", name, handshakeTimeout+5*time.Second))
	defer cancel()
	if _, err := p.WaitForLog(ctx, "ready"); err != nil {
		return fmt.Errorf("wgpeer %s in %s: %w\n--- output ---\n%s", name, ns.Name, err, p.Logs())
	}
	return nil
}

// configureWG brings a WireGuard interface up with its addresses and routes
// dst through it, as `ip address add` and `ip route add ... dev` would.
func configureWG(ns *NS, name string, addrs, dst []netip.Prefix) error {
	if err := bringUp(linkEnd{ns, name, addrs}); err != nil {
		return err
	}
	link, err := ns.nl.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", name, ns.Name, err)
	}
	for _, p := range dst {
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipNet(p), Scope: netlink.SCOPE_LINK}
		if err := ns.nl.RouteReplace(r); err != nil {
			return fmt.Errorf("route %s dev %s in %s: %w", p, name, ns.Name, err)
		}
	}
	return waitLocal(ns, name, addrs, time.Now().Add(settleTimeout))
}

// waitLocal waits until ns takes each of addrs, given to the link name, as
// its own. The kernel makes an IPv6 address usable, and adds its local
// route, in deferred work even when the address skips duplicate address
// detection; until then a packet to the address is dropped (counted in
// Ip6InAddrErrors). On a loaded machine that work has run only after the
// lab was handed to a test, which then lost its first IPv6 reply.
func waitLocal(ns *NS, name string, addrs []netip.Prefix, deadline time.Time) error {
	for _, p := range addrs {
		for {
			rs, err := ns.nl.RouteGet(p.Addr().AsSlice())
			if err == nil && len(rs) > 0 && rs[0].Type == unix.RTN_LOCAL {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s on %s in %s not usable after %v (route %v, %v)", p.Addr(), name, ns.Name, settleTimeout, rs, err)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return nil
}

// SetLinkMTU sets the MTU of the link name in ns, as `ip link set dev name
// mtu mtu` does.
func SetLinkMTU(ns *NS, name string, mtu int) error {
	link, err := ns.nl.LinkByName(name)
	if err != nil {
		return fmt.Errorf("netlab: find %s in %s: %w", name, ns.Name, err)
	}
	if err := ns.nl.LinkSetMTU(link, mtu); err != nil {
		return fmt.Errorf("netlab: MTU %d on %s in %s: %w", mtu, name, ns.Name, err)
	}
	return nil
}
