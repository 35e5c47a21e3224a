//go:build linux

package e2e_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"tcpd/internal/netlab"
)

func newHash() hash.Hash { return sha256.New() }

func TestClosedPortRefusedQuickly(t *testing.T) {
	g := startGateway(t, netlab.Options{}, gwConfig{})
	ln, err := g.Server.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(ln.Addr().(*net.TCPAddr).Port))
	ln.Close()
	// Take the best of a few tries: the machine is shared, and one
	// scheduling hiccup must not decide the test.
	best := time.Hour
	for range 5 {
		start := time.Now()
		_, err := g.Client.DialTimeout("tcp", addr, 5*time.Second)
		took := time.Since(start)
		if !isRefused(err) {
			t.Fatalf("dial closed port: %v, want connection refused", err)
		}
		best = min(best, took)
	}
	if best >= 100*time.Millisecond {
		t.Fatalf("refusal took %v, want under 100ms", best)
	}
}

// TestBlackholeResetAfterDialTimeout dials a destination whose packets
// vanish: the client must get RST once tcpd's dial timeout expires.
func TestBlackholeResetAfterDialTimeout(t *testing.T) {
	g := startGateway(t, netlab.Options{}, gwConfig{DialTimeout: "1s"})
	hole := netip.MustParsePrefix("198.18.200.0/24")
	if err := g.Gateway.Do(func() error {
		return netlink.RouteAdd(&netlink.Route{Dst: netipNet(hole), Gw: g.ServerAddr4.AsSlice()})
	}); err != nil {
		t.Fatal(err)
	}
	if err := g.Server.Sysctl("net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	if err := g.Server.Do(func() error {
		return netlink.RouteAdd(&netlink.Route{Dst: netipNet(hole), Type: 6 /* RTN_BLACKHOLE */})
	}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err := g.Client.DialTimeout("tcp", "198.18.200.1:80", 10*time.Second)
	took := time.Since(start)
	if !isRefused(err) {
		t.Fatalf("dial blackholed address: %v after %v, want connection refused (RST) after the 1s dial timeout", err, took)
	}
	if took < 900*time.Millisecond || took > 4*time.Second {
		t.Fatalf("RST came after %v, want about the 1s dial timeout", took)
	}
}

func TestUpstreamResetBecomesClientReset(t *testing.T) {
	g := startGateway(t, netlab.Options{}, gwConfig{})
	port := serve(t, g.Server, func(c net.Conn) {
		buf := make([]byte, 5)
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		io.WriteString(c, "partial")
		time.Sleep(100 * time.Millisecond)
		c.(*net.TCPConn).SetLinger(0) // close with RST
	})
	c, err := g.Client.DialTimeout("tcp", net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port)), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "hello")
	got, err := readAllString(c)
	if !isReset(err) {
		t.Fatalf("client read %q then %v; want the data then connection reset, not a clean close", got, err)
	}
	if got != "partial" {
		t.Fatalf("client read %q before the reset, want %q", got, "partial")
	}
}

// TestDeniedDestinations connects to destinations the default policy
// denies, each with a listener waiting there: the client must be refused and
// the listener must accept nothing.
func TestDeniedDestinations(t *testing.T) {
	g := startGateway(t, netlab.Options{}, gwConfig{})
	metadata := netip.MustParseAddr("169.254.169.254")
	if err := g.Gateway.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.AddrAdd(lo, &netlink.Addr{IPNet: netipNet(netip.PrefixFrom(metadata, 32))})
	}); err != nil {
		t.Fatal(err)
	}
	for _, dst := range []netip.Addr{metadata, g.GatewayServerAddr4, g.GatewayClientAddr4, g.GatewayClientAddr6, g.GatewayServerAddr6} {
		t.Run(dst.String(), func(t *testing.T) {
			ln, err := g.Gateway.Listen("tcp", net.JoinHostPort(dst.String(), "0"))
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			addr := net.JoinHostPort(dst.String(), fmt.Sprint(ln.Addr().(*net.TCPAddr).Port))
			_, err = g.Client.DialTimeout("tcp", addr, 5*time.Second)
			if !isRefused(err) {
				t.Fatalf("dial %s: %v, want connection refused", addr, err)
			}
			noAccept(t, ln, 300*time.Millisecond)
		})
	}
}

// TestLoopbackDestinationUnreachable crafts a SYN to 127.0.0.1, which no
// client stack would send, and routes it into the TUN: it must reach tcpd
// and nothing listening on the gateway's loopback.
func TestLoopbackDestinationUnreachable(t *testing.T) {
	g := startGateway(t, netlab.Options{}, gwConfig{})
	if err := g.AllowLocalnetFromClients(); err != nil {
		t.Fatal(err)
	}
	ln, err := g.Gateway.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	before := tunTxPackets(t, g)
	for range 3 {
		sendRawSYN(t, g, netip.AddrPortFrom(g.ClientAddr4, 40000), netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port))
	}
	noAccept(t, ln, 500*time.Millisecond)
	if after := tunTxPackets(t, g); after < before+3 {
		t.Fatalf("TUN transmitted %d packets to tcpd during the test, want at least 3: the crafted SYNs never reached tcpd, so the test proved nothing", after-before)
	}
}

// TestSourceOutsideClients sends from an address outside tcpd's client
// prefixes: the packets reach the TUN and no connection is made.
func TestSourceOutsideClients(t *testing.T) {
	g := startGateway(t, netlab.Options{}, gwConfig{Clients: []string{"100.64.1.0/28", "fd64::/64"}})
	outside := netip.MustParseAddr("100.64.1.200")
	if err := g.Client.Do(func() error {
		l, err := netlink.LinkByName(g.ClientLink)
		if err != nil {
			return err
		}
		return netlink.AddrAdd(l, &netlink.Addr{IPNet: netipNet(netip.PrefixFrom(outside, 24))})
	}); err != nil {
		t.Fatal(err)
	}
	accepted := make(chan struct{}, 1)
	port := serve(t, g.Server, func(net.Conn) { accepted <- struct{}{} })
	dst := net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port))

	// The in-range address works through the same tcpd.
	c, err := g.Client.DialTimeout("tcp", dst, 5*time.Second)
	if err != nil {
		t.Fatalf("in-range client: %v", err)
	}
	c.Close()
	<-accepted

	before := tunTxPackets(t, g)
	var c2 net.Conn
	err = g.Client.Do(func() error {
		d := net.Dialer{Timeout: 2 * time.Second, LocalAddr: &net.TCPAddr{IP: outside.AsSlice()}}
		c2, err = d.Dial("tcp", dst)
		return err
	})
	if err == nil {
		c2.Close()
		t.Fatal("a source outside clients got a connection")
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("dial from outside clients: %v, want a timeout (SYNs dropped silently)", err)
	}
	select {
	case <-accepted:
		t.Fatal("the server accepted a connection from a source outside clients")
	default:
	}
	if after := tunTxPackets(t, g); after <= before {
		t.Fatal("the SYNs never reached the TUN, so the test proved nothing")
	}
}

// TestSlowUpstreamConnect relays a connection whose upstream connect does
// not complete at once, as no connect to a real destination beyond the
// gateway does: the destination's accept queue is full, so it drops
// tcpd's first SYN, and the connect completes on tcpd's retransmission
// about a second later (a connect in progress, finished on its shard when
// the socket turns writable). The client's handshake waits for it (dial
// first), then bytes move both ways, whole.
func TestSlowUpstreamConnect(t *testing.T) {
	t.Parallel()
	g := startGateway(t, netlab.Options{}, gwConfig{DialTimeout: "10s"})
	// A listener with the smallest accept queue the kernel allows (one
	// connection), filled by a connection of the server's own that is
	// accepted only later.
	var lfd int
	if err := g.Server.Do(func() error {
		var err error
		if lfd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		sa := &unix.SockaddrInet4{Addr: g.ServerAddr4.As4()}
		if err := unix.Bind(lfd, sa); err != nil {
			return err
		}
		return unix.Listen(lfd, 0)
	}); err != nil {
		t.Fatal(err)
	}
	ln, err := net.FileListener(os.NewFile(uintptr(lfd), "listener"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	filler, err := g.Server.Dial(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer filler.Close()

	const size = 1 << 20
	sums := make(chan [32]byte, 1)
	accepted := make(chan struct{})
	go func() {
		defer close(accepted)
		// The queue holds the filler: tcpd's SYN, sent meanwhile, is
		// dropped. Take the filler away before the retransmission.
		time.Sleep(300 * time.Millisecond)
		first, err := ln.Accept()
		if err != nil {
			t.Errorf("accept the filler: %v", err)
			return
		}
		first.Close()
		c, err := ln.Accept()
		if err != nil {
			t.Errorf("accept tcpd's connection: %v", err)
			return
		}
		defer c.Close()
		bulkServer(2, size, sums)(c)
	}()

	start := time.Now()
	c, err := g.Client.DialTimeout("tcp", addr, 8*time.Second)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("dial through tcpd while the destination drops SYNs: %v after %v", err, took)
	}
	defer c.Close()
	if took < 900*time.Millisecond {
		t.Fatalf("the client's handshake completed after %v, before tcpd's upstream connect could have (its first SYN was dropped)", took)
	}
	c.SetDeadline(time.Now().Add(time.Minute))
	sum, got, err := exchange(c, 1, size)
	if err != nil || got != size || sum != streamSum(2, size) {
		t.Fatalf("exchange after a slow connect: %d of %d bytes, error %v", got, size, err)
	}
	select {
	case s := <-sums:
		if s != streamSum(1, size) {
			t.Fatal("the destination received other bytes than the client sent")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the destination never finished its side")
	}
	<-accepted
	// tcpd timed the dial it waited for.
	if !strings.Contains(g.tcpd.Logs(), `"msg":"connection established"`) {
		t.Fatalf("tcpd logged no established connection:\n%s", g.tcpd.Logs())
	}
	for _, l := range g.tcpd.LogLines() {
		if l["msg"] == "connection established" {
			d, _ := l["dial"].(float64)
			t.Logf("the client's handshake took %v, tcpd's dial %.3fs", took.Round(time.Millisecond), d)
			if d < 0.9 {
				t.Errorf("tcpd says the dial took %vs; the destination answered only its retransmitted SYN", d)
			}
		}
	}
}
