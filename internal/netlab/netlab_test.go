//go:build linux

package netlab_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"tcpd/internal/netlab"
)

func TestMain(m *testing.M) {
	// Interrupted runs clean up too (a timeout panic cannot be caught).
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		netlab.CloseAll()
		fmt.Fprintf(os.Stderr, "netlab: %v: closed all labs\n", s)
		os.Exit(1)
	}()
	code := m.Run()
	if err := netlab.CloseAll(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// requireGone fails t if any of names is still under /run/netns.
func requireGone(t *testing.T, names ...string) {
	t.Helper()
	left, err := netlab.Leftovers()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if slices.Contains(left, n) {
			t.Errorf("namespace %s left behind", n)
		}
	}
}

// hashServer accepts one connection on ln, reads until EOF and answers with
// the SHA-256 of what it read. It reports the peer's address on peer.
func hashServer(t *testing.T, ln net.Listener, peer chan<- netip.AddrPort) {
	go func() {
		c, err := ln.Accept()
		if err != nil {
			t.Errorf("accept: %v", err)
			close(peer)
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		peer <- c.RemoteAddr().(*net.TCPAddr).AddrPort()
		h := sha256.New()
		if _, err := io.Copy(h, c); err != nil {
			t.Errorf("server read: %v", err)
			return
		}
		if _, err := c.Write(h.Sum(nil)); err != nil {
			t.Errorf("server write: %v", err)
		}
	}()
}

func TestKernelForwarding(t *testing.T) {
	l := netlab.NewT(t, netlab.Options{})
	names := []string{l.Client.Name, l.Gateway.Name, l.Server.Name}

	for _, tc := range []struct {
		name           string
		server, client netip.Addr
	}{
		{"IPv4", l.ServerAddr4, l.ClientAddr4},
		{"IPv6", l.ServerAddr6, l.ClientAddr6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := l.Server.Listen("tcp", netip.AddrPortFrom(tc.server, 0).String())
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			peer := make(chan netip.AddrPort, 1)
			hashServer(t, ln, peer)

			c, err := l.Client.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if got := c.LocalAddr().(*net.TCPAddr).AddrPort().Addr(); got != tc.client {
				t.Errorf("client's local address %v, want %v", got, tc.client)
			}

			payload := make([]byte, 1<<20)
			rand.Read(payload)
			if _, err := c.Write(payload); err != nil {
				t.Fatal(err)
			}
			if err := c.(*net.TCPConn).CloseWrite(); err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatal(err)
			}
			want := sha256.Sum256(payload)
			if !bytes.Equal(got, want[:]) {
				t.Errorf("server's SHA-256 %x, want %x", got, want)
			}
			if p, ok := <-peer; ok && p.Addr() != tc.client {
				t.Errorf("server saw peer %v, want %v (no NAT on the path)", p, tc.client)
			}
		})
	}

	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	requireGone(t, names...)
}

func isDefault(r netlink.Route) bool {
	if r.Dst == nil {
		return true
	}
	ones, _ := r.Dst.Mask.Size()
	return ones == 0
}

// routes lists the routes of all tables.
func routes(t *testing.T, ns *netlab.NS, fam int) []netlink.Route {
	t.Helper()
	rs, err := ns.Netlink().RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

func TestGatewayHasNoDefaultRoute(t *testing.T) {
	l := netlab.NewT(t, netlab.Options{})
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs := routes(t, l.Gateway, fam)
		if len(rs) == 0 {
			t.Fatalf("family %d: no routes at all in the gateway", fam)
		}
		for _, r := range rs {
			if isDefault(r) {
				t.Errorf("gateway has a default route: %s (table %d)", r, r.Table)
			}
		}
		// The check can see default routes: client and server have one.
		for _, ns := range []*netlab.NS{l.Client, l.Server} {
			if !slices.ContainsFunc(routes(t, ns, fam), isDefault) {
				t.Errorf("family %d: %s has no default route", fam, ns.Name)
			}
		}
	}
	for key, want := range map[string]string{
		"net.ipv4.ip_forward":                                  "1",
		"net.ipv6.conf.all.forwarding":                         "1",
		"net.ipv4.conf.all.rp_filter":                          "0",
		"net.ipv4.conf.default.rp_filter":                      "0",
		"net.ipv6.conf.all.accept_dad":                         "0",
		"net/ipv6/conf/" + l.GatewayClientLink + "/accept_dad": "0",
	} {
		if got, err := l.Gateway.ReadSysctl(key); err != nil || got != want {
			t.Errorf("gateway %s = %q, %v; want %q", key, got, err, want)
		}
	}
	// route_localnet stays off unless asked for.
	key := "net/ipv4/conf/" + l.GatewayClientLink + "/route_localnet"
	if got, _ := l.Gateway.ReadSysctl(key); got != "0" {
		t.Errorf("%s = %q by default, want 0", key, got)
	}
	if err := l.AllowLocalnetFromClients(); err != nil {
		t.Fatal(err)
	}
	if got, _ := l.Gateway.ReadSysctl(key); got != "1" {
		t.Errorf("%s = %q after AllowLocalnetFromClients, want 1", key, got)
	}
}

func TestCloseAfterFailure(t *testing.T) {
	if netlab.Available() != "" {
		t.Skip("tier B: needs root (CAP_NET_ADMIN) for network namespaces and a TUN")
	}
	l, err := netlab.New(netlab.Options{MTU: 70000})
	if err == nil {
		l.Close()
		t.Fatal("New with MTU 70000 succeeded")
	}
	t.Log(err)
	var se *netlab.SetupError
	if !errors.As(err, &se) || len(se.Namespaces) != 3 {
		t.Fatalf("error %v (%T) is not a *SetupError naming 3 namespaces", err, err)
	}
	requireGone(t, se.Namespaces...)
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	for _, link := range links {
		if strings.HasPrefix(link.Attrs().Name, "tc"+se.ID) {
			t.Errorf("link %s left in the test's namespace", link.Attrs().Name)
		}
	}
}

func TestMTU9000(t *testing.T) {
	l := netlab.NewT(t, netlab.Options{MTU: 9000})
	for _, c := range []struct {
		ns   *netlab.NS
		link string
	}{
		{l.Client, l.ClientLink},
		{l.Gateway, l.GatewayClientLink},
		{l.Gateway, l.GatewayServerLink},
		{l.Server, l.ServerLink},
	} {
		link, err := c.ns.Netlink().LinkByName(c.link)
		if err != nil {
			t.Fatal(err)
		}
		if mtu := link.Attrs().MTU; mtu != 9000 {
			t.Errorf("%s in %s: MTU %d, want 9000", c.link, c.ns.Name, mtu)
		}
	}
}

// synTo dials dst from the client, with nothing to answer, and waits for
// faketcpd to report the SYN arriving in its TUN.
func synTo(t *testing.T, l *netlab.Lab, p *netlab.Proc, dst netip.AddrPort) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	dialed := make(chan struct{})
	go func() {
		defer close(dialed)
		if c, err := l.Client.Dial(ctx, "tcp", dst.String()); err == nil {
			c.Close()
		}
	}()
	if _, err := p.WaitForLine(ctx, func(m map[string]any) bool {
		return m["msg"] == "syn" && m["dst"] == dst.String()
	}); err != nil {
		t.Errorf("no SYN to %v seen in the TUN: %v", dst, err)
	}
	cancel()
	<-dialed
}

// TestRouteIntoTUN checks StartTCPD, RouteIntoTUN and Stop with a stand-in
// for tcpd that reports the TCP SYNs reaching its TUN.
func TestRouteIntoTUN(t *testing.T) {
	l := netlab.NewT(t, netlab.Options{})
	bin := netlab.Build(t, "./internal/netlab/testdata/faketcpd")

	p, err := l.StartTCPD(t.Context(), bin, "log:\n  format: json\n")
	if err != nil {
		t.Fatal(err)
	}
	if p.TUN() != "tcpd0" {
		t.Errorf("TUN %q, want tcpd0", p.TUN())
	}
	if cfg, _ := p.LogLines()[0]["config"].(string); !strings.HasSuffix(cfg, ".yaml") {
		t.Errorf("tcpd was not given the config file: config %q", cfg)
	}

	// The policy rules, both families.
	h := l.Gateway.Netlink()
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rules, err := h.RuleList(fam)
		if err != nil {
			t.Fatal(err)
		}
		var iif, local200, local0 bool
		for _, r := range rules {
			switch {
			case r.Priority == netlab.TUNRulePref && r.Table == netlab.TUNTable && r.IifName == l.GatewayClientLink:
				iif = true
			case r.Priority == netlab.LocalRulePref && r.Table == unix.RT_TABLE_LOCAL:
				local200 = true
			case r.Priority == 0 && r.Table == unix.RT_TABLE_LOCAL:
				local0 = true
			}
		}
		if !iif || !local200 || local0 {
			t.Errorf("family %d rules: iif rule %v, local at 200 %v, local at 0 %v; want true, true, false", fam, iif, local200, local0)
		}
	}

	// Everything from the client lands in the TUN, even for the gateway's
	// own addresses, instead of being forwarded or delivered locally.
	for _, dst := range []netip.Addr{l.ServerAddr4, l.ServerAddr6, l.GatewayClientAddr4, l.GatewayClientAddr6, l.GatewayServerAddr4} {
		synTo(t, l, p, netip.AddrPortFrom(dst, 7))
	}

	if err := p.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if _, err := p.WaitForLog(t.Context(), "stopped"); err != nil {
		t.Errorf("no clean shutdown: %v", err)
	}

	// Back to kernel forwarding.
	if err := l.RouteDirect(); err != nil {
		t.Fatal(err)
	}
	ln, err := l.Server.Listen("tcp", netip.AddrPortFrom(l.ServerAddr4, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := l.Client.DialTimeout("tcp", ln.Addr().String(), 3*time.Second)
	if err != nil {
		t.Fatalf("kernel forwarding after RouteDirect: %v", err)
	}
	c.Close()
}

func TestStartTCPDFailure(t *testing.T) {
	l := netlab.NewT(t, netlab.Options{})
	bin := netlab.Build(t, "./internal/netlab/testdata/faketcpd")
	start := time.Now()
	_, err := l.StartTCPD(t.Context(), bin, "", "--fail")
	if err == nil {
		t.Fatal("StartTCPD succeeded for a tcpd that exits at once")
	}
	if !strings.Contains(err.Error(), "told to fail") {
		t.Errorf("error does not include tcpd's output: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("StartTCPD took %v to notice the exit", d)
	}
}

func TestDoRestoresNamespace(t *testing.T) {
	l := netlab.NewT(t, netlab.Options{})
	var inside []string
	if err := l.Gateway.Do(func() error {
		links, err := netlink.LinkList()
		for _, link := range links {
			inside = append(inside, link.Attrs().Name)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(inside, l.GatewayClientLink) || !slices.Contains(inside, l.GatewayServerLink) {
		t.Errorf("links seen inside the gateway: %v", inside)
	}
	// Many Do calls later, goroutines still run in the test's namespace.
	for range 50 {
		if err := l.Client.Do(func() error { return nil }); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := netlink.LinkByName(l.ClientLink); err == nil {
		t.Errorf("%s visible outside the client namespace", l.ClientLink)
	}
	func() {
		defer func() {
			if v := recover(); v != "boom" {
				t.Errorf("recovered %v, want the panic from fn", v)
			}
		}()
		l.Server.Do(func() error { panic("boom") })
	}()
}

func TestNetem(t *testing.T) {
	l := netlab.NewT(t, netlab.Options{})
	if err := l.Netem(l.Gateway, l.GatewayServerLink, "delay", "50ms"); err != nil {
		if strings.Contains(err.Error(), "qdisc kind is unknown") {
			t.Skipf("kernel without netem: %v", err)
		}
		t.Fatal(err)
	}
	ln, err := l.Server.Listen("tcp", netip.AddrPortFrom(l.ServerAddr4, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	start := time.Now()
	c, err := l.Client.DialTimeout("tcp", ln.Addr().String(), 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Errorf("connect took %v through a 50ms netem delay", d)
	}
}
