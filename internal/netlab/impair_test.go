//go:build linux

package netlab_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"tcpd/internal/netlab"
)

// acceptAndClose accepts connections on ln and closes them, until ln is
// closed (by t.Cleanup).
func acceptAndClose(t *testing.T, ln net.Listener) {
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

// medianConnect dials dst from the client n times and returns the median
// time connect() took: one SYN out and one SYN-ACK back.
func medianConnect(t *testing.T, l *netlab.Lab, dst netip.AddrPort, n int) time.Duration {
	t.Helper()
	ds := make([]time.Duration, 0, n)
	for range n {
		var d time.Duration
		err := l.Client.Do(func() error {
			dialer := net.Dialer{Timeout: 3 * time.Second}
			start := time.Now()
			c, err := dialer.Dial("tcp", dst.String())
			d = time.Since(start)
			if err == nil {
				c.Close()
			}
			return err
		})
		if err != nil {
			t.Fatalf("connect to %v: %v", dst, err)
		}
		ds = append(ds, d)
	}
	slices.Sort(ds)
	return ds[n/2]
}

// exchange sends size random bytes from the client to server and size
// random bytes back over one TCP connection, both directions at once, and
// checks that both arrive intact (SHA-256). It also checks that neither
// side's view of the addresses changed (no NAT, client address kept).
func exchange(t *testing.T, l *netlab.Lab, server, client netip.Addr, size int, timeout time.Duration) {
	t.Helper()
	up, down := make([]byte, size), make([]byte, size)
	rand.Read(up)
	rand.Read(down)
	deadline := time.Now().Add(timeout)

	ln, err := l.Server.Listen("tcp", netip.AddrPortFrom(server, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	// side sends out on c while hashing what it reads, then returns the
	// hash.
	side := func(c net.Conn, out []byte) ([]byte, error) {
		c.SetDeadline(deadline)
		errc := make(chan error, 1)
		go func() {
			_, err := c.Write(out)
			if err == nil {
				err = c.(*net.TCPConn).CloseWrite()
			}
			errc <- err
		}()
		h := sha256.New()
		_, rerr := io.Copy(h, c)
		if err := errors.Join(rerr, <-errc); err != nil {
			return nil, err
		}
		return h.Sum(nil), nil
	}

	var wg sync.WaitGroup
	var serverGot []byte
	var serverErr error
	var peer netip.Addr
	wg.Go(func() {
		ln.(*net.TCPListener).SetDeadline(deadline)
		c, err := ln.Accept()
		if err != nil {
			serverErr = err
			return
		}
		defer c.Close()
		peer = c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr()
		serverGot, serverErr = side(c, down)
	})

	c, err := l.Client.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	if err != nil {
		ln.Close()
		wg.Wait()
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.LocalAddr().(*net.TCPAddr).AddrPort().Addr(); got != client {
		t.Errorf("client's local address %v, want %v", got, client)
	}
	start := time.Now()
	clientGot, clientErr := side(c, up)
	wg.Wait()
	t.Logf("%d bytes each way in %v", size, time.Since(start).Round(time.Millisecond))
	if clientErr != nil {
		t.Errorf("client: %v", clientErr)
	}
	if serverErr != nil {
		t.Errorf("server: %v", serverErr)
	}
	if clientErr != nil || serverErr != nil {
		return
	}
	if want := sha256.Sum256(up); !bytes.Equal(serverGot, want[:]) {
		t.Errorf("client->server: SHA-256 %x, want %x", serverGot, want)
	}
	if want := sha256.Sum256(down); !bytes.Equal(clientGot, want[:]) {
		t.Errorf("server->client: SHA-256 %x, want %x", clientGot, want)
	}
	if peer != client {
		t.Errorf("server saw peer %v, want %v", peer, client)
	}
}

func impair(t *testing.T, l *netlab.Lab, toGateway, toClient netlab.Impairment) *netlab.Impairer {
	t.Helper()
	imp, err := l.ImpairClientLink(toGateway, toClient)
	if err != nil {
		t.Fatal(err)
	}
	return imp
}

type family struct {
	name                    string
	server, client, gateway netip.Addr
}

func labFamilies(l *netlab.Lab) []family {
	return []family{
		{"IPv4", l.ServerAddr4, l.ClientAddr4, l.GatewayClientAddr4},
		{"IPv6", l.ServerAddr6, l.ClientAddr6, l.GatewayClientAddr6},
	}
}

func TestImpairZero(t *testing.T) {
	l := netlab.NewT(t, netlab.Options{})
	imp := impair(t, l, netlab.Impairment{}, netlab.Impairment{})
	for _, f := range labFamilies(l) {
		t.Run(f.name, func(t *testing.T) {
			before, _ := imp.Stats()
			exchange(t, l, f.server, f.client, 8<<20, 20*time.Second)
			after, _ := imp.Stats()
			// At least the data segments: 8 MiB / MSS.
			if n := after.Packets - before.Packets; n < 8<<20/1500 {
				t.Errorf("%d packets towards the gateway: the transfer bypassed the impairer", n)
			}
		})
	}
	toGateway, toClient := imp.Stats()
	t.Logf("towards the gateway %+v, towards the client %+v", toGateway, toClient)
	for _, s := range []netlab.ImpairStats{toGateway, toClient} {
		if s.Packets < 2*(8<<20)/1500 {
			t.Errorf("stats %+v: too few packets for two 8 MiB transfers", s)
		}
		if s.Dropped != 0 || s.Duplicated != 0 || s.Reordered != 0 {
			t.Errorf("stats %+v: zero impairment dropped, duplicated or reordered", s)
		}
	}
	if err := imp.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestImpairDelay(t *testing.T) {
	l := netlab.NewT(t, netlab.Options{})
	const delay, n = 20 * time.Millisecond, 20
	delayed := netlab.Impairment{Delay: delay}
	for _, f := range labFamilies(l) {
		t.Run(f.name, func(t *testing.T) {
			ln, err := l.Server.Listen("tcp", netip.AddrPortFrom(f.server, 0).String())
			if err != nil {
				t.Fatal(err)
			}
			acceptAndClose(t, ln)
			dst := ln.Addr().(*net.TCPAddr).AddrPort()
			base := medianConnect(t, l, dst, n)

			// connect() returns once the SYN-ACK is back: each direction
			// is crossed once, so delaying either adds the delay once.
			for _, dir := range []struct {
				name                string
				toGateway, toClient netlab.Impairment
			}{
				{"towards the gateway", delayed, netlab.Impairment{}},
				{"towards the client", netlab.Impairment{}, delayed},
			} {
				imp := impair(t, l, dir.toGateway, dir.toClient)
				got := medianConnect(t, l, dst, n)
				if err := imp.Close(); err != nil {
					t.Fatal(err)
				}
				t.Logf("%s: median connect %v, unimpaired %v", dir.name, got, base)
				if d := got - base; d < delay-4*time.Millisecond || d > delay+4*time.Millisecond {
					t.Errorf("%s: median connect %v, unimpaired %v: added %v, want %v ± 4ms", dir.name, got, base, d, delay)
				}
			}
		})
	}
}

func TestImpairLossy(t *testing.T) {
	l := netlab.NewT(t, netlab.Options{})
	m := netlab.Impairment{
		Delay:     10 * time.Millisecond,
		Jitter:    5 * time.Millisecond,
		Loss:      0.05,
		Duplicate: 0.01,
		Reorder:   0.05,
	}
	imp := impair(t, l, m, m)
	exchange(t, l, l.ServerAddr4, l.ClientAddr4, 16<<20, 25*time.Second)
	toGateway, toClient := imp.Stats()
	t.Logf("towards the gateway %+v, towards the client %+v", toGateway, toClient)
	for _, s := range []netlab.ImpairStats{toGateway, toClient} {
		if s.Dropped == 0 || s.Duplicated == 0 || s.Reordered == 0 {
			t.Errorf("stats %+v: want drops, duplicates and reordering", s)
		}
		if r := float64(s.Dropped) / float64(s.Packets); r < 0.03 || r > 0.07 {
			t.Errorf("stats %+v: loss rate %.3f, want 0.05 ± 0.02", s, r)
		}
	}
	if err := imp.Close(); err != nil {
		t.Fatal(err)
	}
}

// linkNames lists the links in ns.
func linkNames(t *testing.T, ns *netlab.NS) []string {
	t.Helper()
	links, err := ns.Netlink().LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	return names
}

// routingState describes the routes and rules of ns, for comparing before
// and after.
func routingState(t *testing.T, ns *netlab.NS) string {
	t.Helper()
	var b strings.Builder
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		for _, r := range routes(t, ns, fam) {
			b.WriteString(r.String() + "\n")
		}
		rules, err := ns.Netlink().RuleList(fam)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rules {
			b.WriteString(r.String() + " iif " + r.IifName + "\n")
		}
	}
	return b.String()
}

func TestImpairClose(t *testing.T) {
	l := netlab.NewT(t, netlab.Options{})
	ln, err := l.Server.Listen("tcp", netip.AddrPortFrom(l.ServerAddr4, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	acceptAndClose(t, ln)
	dst := ln.Addr().(*net.TCPAddr).AddrPort()
	// Strict reverse-path filtering in the client (many distributions'
	// default) must not get in the way, and must be back afterwards.
	rpFilter := []string{"net.ipv4.conf.all.rp_filter", "net/ipv4/conf/" + l.ClientLink + "/rp_filter"}
	for _, key := range rpFilter {
		if err := l.Client.Sysctl(key, "1"); err != nil {
			t.Fatal(err)
		}
	}
	clientBefore, gatewayBefore := routingState(t, l.Client), routingState(t, l.Gateway)
	base := medianConnect(t, l, dst, 20)

	imp := impair(t, l, netlab.Impairment{Delay: 20 * time.Millisecond}, netlab.Impairment{})
	if _, err := l.ImpairClientLink(netlab.Impairment{}, netlab.Impairment{}); err == nil {
		t.Error("a second ImpairClientLink on the same lab succeeded")
	}
	for _, c := range []struct {
		ns   *netlab.NS
		name string
	}{{l.Client, imp.ClientTUN}, {l.Gateway, imp.GatewayTUN}} {
		if !slices.Contains(linkNames(t, c.ns), c.name) {
			t.Errorf("no impair TUN %s in %s", c.name, c.ns.Name)
		}
	}
	if d := medianConnect(t, l, dst, 5); d < 20*time.Millisecond {
		t.Errorf("connect took %v through a 20ms delay", d)
	}
	exchange(t, l, l.ServerAddr4, l.ClientAddr4, 1<<20, 10*time.Second)

	if err := imp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := imp.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	after := medianConnect(t, l, dst, 20)
	t.Logf("median connect: %v before, %v after Close", base, after)
	if d := after - base; d > 2*time.Millisecond || d < -2*time.Millisecond {
		t.Errorf("median connect %v after Close, %v before impairing: not back to the direct path", after, base)
	}
	for _, ns := range []*netlab.NS{l.Client, l.Gateway} {
		for _, name := range linkNames(t, ns) {
			if name == imp.ClientTUN || name == imp.GatewayTUN {
				t.Errorf("impair TUN %s left in %s", name, ns.Name)
			}
		}
	}
	for _, key := range rpFilter {
		if got, err := l.Client.ReadSysctl(key); err != nil || got != "1" {
			t.Errorf("client %s = %q, %v after Close; want 1 as before", key, got, err)
		}
	}
	if got := routingState(t, l.Client); got != clientBefore {
		t.Errorf("client routing not restored:\nbefore:\n%safter:\n%s", clientBefore, got)
	}
	if got := routingState(t, l.Gateway); got != gatewayBefore {
		t.Errorf("gateway routing not restored:\nbefore:\n%safter:\n%s", gatewayBefore, got)
	}

	// The link can be impaired again, and Lab.Close closes what is left
	// open (NewT's cleanup fails the test if that goes wrong).
	impair(t, l, netlab.Impairment{}, netlab.Impairment{})
	exchange(t, l, l.ServerAddr6, l.ClientAddr6, 1<<20, 10*time.Second)
}

// TestImpairGatewayPaths checks the paths other than plain forwarding:
// traffic between the client and the gateway's own addresses, and the
// policy routing into tcpd's TUN.
func TestImpairGatewayPaths(t *testing.T) {
	l := netlab.NewT(t, netlab.Options{})
	const delay = 20 * time.Millisecond
	for _, f := range labFamilies(l) {
		t.Run(f.name, func(t *testing.T) {
			// Gateway-local sockets: the SYN-ACK is generated by the
			// gateway itself.
			ln, err := l.Gateway.Listen("tcp", netip.AddrPortFrom(f.gateway, 0).String())
			if err != nil {
				t.Fatal(err)
			}
			acceptAndClose(t, ln)
			dst := ln.Addr().(*net.TCPAddr).AddrPort()
			for _, dir := range []struct {
				name                string
				toGateway, toClient netlab.Impairment
			}{
				{"towards the gateway", netlab.Impairment{Delay: delay}, netlab.Impairment{}},
				{"towards the client", netlab.Impairment{}, netlab.Impairment{Delay: delay}},
			} {
				imp := impair(t, l, dir.toGateway, dir.toClient)
				got := medianConnect(t, l, dst, 5)
				if err := imp.Close(); err != nil {
					t.Fatal(err)
				}
				if got < delay || got > delay+10*time.Millisecond {
					t.Errorf("%s: connect to the gateway's %v took %v, want about %v", dir.name, dst, got, delay)
				}
			}
		})
	}

	// With tcpd's policy routing, what the client sends still lands in
	// tcpd's TUN, now through the impairer.
	bin := netlab.Build(t, "./internal/netlab/testdata/faketcpd")
	imp := impair(t, l, netlab.Impairment{}, netlab.Impairment{})
	p, err := l.StartTCPD(t.Context(), bin, "")
	if err != nil {
		t.Fatal(err)
	}
	before, _ := imp.Stats()
	for _, dst := range []netip.Addr{l.ServerAddr4, l.ServerAddr6, l.GatewayClientAddr4, l.GatewayClientAddr6} {
		synTo(t, l, p, netip.AddrPortFrom(dst, 7))
	}
	if after, _ := imp.Stats(); after.Packets-before.Packets < 4 {
		t.Errorf("the SYNs bypassed the impairer: %+v before, %+v after", before, after)
	}
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := l.RouteDirect(); err != nil {
		t.Fatal(err)
	}
	if err := imp.Close(); err != nil {
		t.Fatal(err)
	}

}

// TestImpairSetupFailure checks that a failed ImpairClientLink leaves
// nothing behind and can be retried.
func TestImpairSetupFailure(t *testing.T) {
	l := netlab.NewT(t, netlab.Options{})
	if _, err := l.ImpairClientLink(netlab.Impairment{Loss: 1.5}, netlab.Impairment{}); err == nil {
		t.Error("loss 1.5 accepted")
	}
	if _, err := l.ImpairClientLink(netlab.Impairment{}, netlab.Impairment{Delay: -time.Second}); err == nil {
		t.Error("negative delay accepted")
	}

	// A link (a veth: this kernel has no dummy links) already named like the
	// gateway-side TUN makes the second half of the setup fail, after the
	// client side is done.
	clientBefore, gatewayBefore := routingState(t, l.Client), routingState(t, l.Gateway)
	clientTUN, gatewayTUN := "tc"+l.ID+"ic", "tc"+l.ID+"ig"
	dummy := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: gatewayTUN}, PeerName: "tc" + l.ID + "x"}
	if err := l.Gateway.Netlink().LinkAdd(dummy); err != nil {
		t.Fatal(err)
	}
	if imp, err := l.ImpairClientLink(netlab.Impairment{}, netlab.Impairment{}); err == nil {
		imp.Close()
		t.Fatal("ImpairClientLink succeeded with its TUN name taken")
	} else {
		t.Log(err)
	}
	if slices.Contains(linkNames(t, l.Client), clientTUN) {
		t.Errorf("%s left in the client after a failed setup", clientTUN)
	}
	if err := l.Gateway.Netlink().LinkDel(dummy); err != nil {
		t.Fatal(err)
	}
	if got := routingState(t, l.Client); got != clientBefore {
		t.Errorf("client routing changed by a failed setup:\nbefore:\n%safter:\n%s", clientBefore, got)
	}
	if got := routingState(t, l.Gateway); got != gatewayBefore {
		t.Errorf("gateway routing changed by a failed setup:\nbefore:\n%safter:\n%s", gatewayBefore, got)
	}

	imp := impair(t, l, netlab.Impairment{}, netlab.Impairment{})
	if imp.ClientTUN != clientTUN || imp.GatewayTUN != gatewayTUN {
		t.Errorf("TUNs %s, %s; want %s, %s", imp.ClientTUN, imp.GatewayTUN, clientTUN, gatewayTUN)
	}
	exchange(t, l, l.ServerAddr4, l.ClientAddr4, 1<<20, 10*time.Second)
	if err := imp.Close(); err != nil {
		t.Fatal(err)
	}
}
