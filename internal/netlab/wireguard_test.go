//go:build linux

package netlab_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"tcpd/internal/netlab"
)

// TestWireGuard builds a WireGuard lab with three peers and checks, with
// the kernel forwarding, that each peer reaches the server through its
// tunnel over IPv4 and IPv6, with its tunnel address as the source, and
// that Close removes every namespace and wgpeer process.
func TestWireGuard(t *testing.T) {
	l := netlab.NewT(t, netlab.Options{WireGuard: &netlab.WireGuard{Peers: 3, GatewayMTU: 1380}})
	if len(l.Peers) != 3 || l.Client != l.Peers[0].NS || l.ClientAddr4 != l.Peers[0].Addr4 {
		t.Fatalf("peers %d, Client %v, ClientAddr4 %v: want 3 peers, the first being Client", len(l.Peers), l.Client.Name, l.ClientAddr4)
	}
	names := []string{l.Gateway.Name, l.Server.Name}
	for _, p := range l.Peers {
		names = append(names, p.NS.Name)
	}
	if got := linkMTU(t, l.Gateway, l.GatewayClientLink); got != 1380 || l.WireGuardMTU != 1380 {
		t.Errorf("gateway WireGuard MTU %d (WireGuardMTU %d), want 1380", got, l.WireGuardMTU)
	}

	for i, p := range l.Peers {
		if lo, err := p.NS.Netlink().LinkByName("lo"); err != nil || lo.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("peer %d: lo not up in %s (%v)", i, p.NS.Name, err)
		}
		if got := linkMTU(t, p.NS, p.Link); got != 1420 {
			t.Errorf("peer %d: WireGuard MTU %d, want the default 1420", i, got)
		}
		// The route to the server leads into the tunnel, and the route
		// back to the peer out of the gateway's end of it.
		if dev := routeDev(t, p.NS, l.ServerAddr4); dev != p.Link {
			t.Errorf("peer %d routes %v via %s, want its tunnel %s", i, l.ServerAddr4, dev, p.Link)
		}
		for _, a := range []netip.Addr{p.Addr4, p.Addr6} {
			if dev := routeDev(t, l.Gateway, a); dev != l.GatewayClientLink {
				t.Errorf("gateway routes peer %d's %v via %s, want %s", i, a, dev, l.GatewayClientLink)
			}
		}
		for _, tc := range []struct {
			name           string
			server, client netip.Addr
		}{
			{"IPv4", l.ServerAddr4, p.Addr4},
			{"IPv6", l.ServerAddr6, p.Addr6},
		} {
			ln, err := l.Server.Listen("tcp", netip.AddrPortFrom(tc.server, 0).String())
			if err != nil {
				t.Fatal(err)
			}
			peer := make(chan netip.AddrPort, 1)
			hashServer(t, ln, peer)
			c, err := p.NS.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
			if err != nil {
				t.Fatalf("peer %d, %s: %v", i, tc.name, err)
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			payload := make([]byte, 1<<20)
			rand.Read(payload)
			if _, err := c.Write(payload); err != nil {
				t.Fatal(err)
			}
			c.(*net.TCPConn).CloseWrite()
			got, err := io.ReadAll(c)
			c.Close()
			ln.Close()
			if err != nil {
				t.Fatal(err)
			}
			if want := sha256.Sum256(payload); !bytes.Equal(got, want[:]) {
				t.Errorf("peer %d, %s: server's SHA-256 %x, want %x", i, tc.name, got, want)
			}
			if a, ok := <-peer; ok && a.Addr() != tc.client {
				t.Errorf("peer %d, %s: server saw %v, want the tunnel address %v", i, tc.name, a, tc.client)
			}
		}
	}

	if n := len(processesWith(t, "--name\x00tc"+l.ID)); n != 4 {
		t.Errorf("%d wgpeer processes running, want 4 (the gateway and 3 peers)", n)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	requireGone(t, names...)
	// Deleting a namespace does not kill what runs in it: the wgpeers must
	// have been stopped.
	if left := processesWith(t, "--name\x00tc"+l.ID); len(left) > 0 {
		t.Errorf("wgpeer processes left running: %v", left)
	}
}

// processesWith lists the command lines (NULs as spaces) of the processes
// whose command line contains s.
func processesWith(t *testing.T, s string) []string {
	t.Helper()
	paths, err := filepath.Glob("/proc/[0-9]*/cmdline")
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err == nil && strings.Contains(string(b), s) {
			found = append(found, strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return found
}

// TestWireGuardRouteIntoTUN checks that in a WireGuard lab StartTCPD routes
// only TCP arriving through the tunnel into the TUN, as README prescribes,
// with the local table left first, and that UDP stays with the kernel.
func TestWireGuardRouteIntoTUN(t *testing.T) {
	l := netlab.NewT(t, netlab.Options{WireGuard: &netlab.WireGuard{}})
	bin := netlab.Build(t, "./internal/netlab/testdata/faketcpd")
	p, err := l.StartTCPD(t.Context(), bin, "")
	if err != nil {
		t.Fatal(err)
	}
	h := l.Gateway.Netlink()
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rules, err := h.RuleList(fam)
		if err != nil {
			t.Fatal(err)
		}
		var tcp, local0 bool
		for _, r := range rules {
			switch {
			case r.Priority == netlab.TUNRulePref && r.Table == netlab.TUNTable && r.IifName == l.GatewayClientLink && r.IPProto == unix.IPPROTO_TCP:
				tcp = true
			case r.Priority == 0 && r.Table == unix.RT_TABLE_LOCAL:
				local0 = true
			}
		}
		if !tcp || !local0 {
			t.Errorf("family %d: rule iif %s ipproto tcp lookup %d: %v; local table at 0: %v; want both", fam, l.GatewayClientLink, netlab.TUNTable, tcp, local0)
		}
	}
	for _, dst := range []netip.Addr{l.ServerAddr4, l.ServerAddr6} {
		synTo(t, l, p, netip.AddrPortFrom(dst, 7))
	}
	// UDP through the tunnel is forwarded by the kernel, not into the TUN.
	for _, dst := range []netip.Addr{l.ServerAddr4, l.ServerAddr6} {
		udpEcho(t, l, dst)
	}
	if err := l.RouteDirect(); err != nil {
		t.Fatal(err)
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rules, _ := h.RuleList(fam)
		if i := slices.IndexFunc(rules, func(r netlink.Rule) bool { return r.Priority == netlab.TUNRulePref }); i >= 0 {
			t.Errorf("family %d: RouteDirect left %v", fam, rules[i])
		}
	}
}

// udpEcho sends a datagram from the client to dst and waits for the echo of
// a server in the server namespace.
func udpEcho(t *testing.T, l *netlab.Lab, dst netip.Addr) {
	t.Helper()
	srv, err := l.Server.ListenPacket("udp", netip.AddrPortFrom(dst, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	go func() {
		buf := make([]byte, 1500)
		n, from, err := srv.ReadFrom(buf)
		if err == nil {
			srv.WriteTo(buf[:n], from)
		}
	}()
	c, err := l.Client.DialTimeout("udp", srv.LocalAddr().String(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	if n, err := c.Read(buf); err != nil || string(buf[:n]) != "ping" {
		t.Errorf("UDP echo from %v through the tunnel: %q, %v", dst, buf[:n], err)
	}
}

func linkMTU(t *testing.T, ns *netlab.NS, name string) int {
	t.Helper()
	link, err := ns.Netlink().LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	return link.Attrs().MTU
}

// routeDev returns the device of ns's route to dst.
func routeDev(t *testing.T, ns *netlab.NS, dst netip.Addr) string {
	t.Helper()
	rs, err := ns.Netlink().RouteGet(dst.AsSlice())
	if err != nil || len(rs) == 0 {
		t.Fatalf("route to %v in %s: %v", dst, ns.Name, err)
	}
	link, err := ns.Netlink().LinkByIndex(rs[0].LinkIndex)
	if err != nil {
		t.Fatal(err)
	}
	return link.Attrs().Name
}
