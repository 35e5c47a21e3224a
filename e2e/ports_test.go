//go:build linux

package e2e_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"tcpd/internal/netlab"
)

// Upstream source ports: every upstream connection takes a local port from
// net.ipv4.ip_local_port_range, one range per source address toward each
// destination. These tests give the gateway a narrow range so that running
// out is a matter of seconds.

// secondSource is an extra address of the gateway on the server's link.
var secondSource = netip.MustParsePrefix("198.18.1.3/24")

// twoSourceLab is a lab whose gateway has a second address on the server's
// link, and the given local port range.
func twoSourceLab(t *testing.T, portRange string) *netlab.Lab {
	t.Helper()
	lab := netlab.NewT(t, netlab.Options{})
	if err := lab.Gateway.Do(func() error {
		l, err := netlink.LinkByName(lab.GatewayServerLink)
		if err != nil {
			return err
		}
		return netlink.AddrAdd(l, &netlink.Addr{IPNet: netipNet(secondSource)})
	}); err != nil {
		t.Fatal(err)
	}
	if err := lab.Gateway.Sysctl("net.ipv4.ip_local_port_range", portRange); err != nil {
		t.Fatal(err)
	}
	return lab
}

// sourceCounter serves echo connections and counts them by the address
// they came from.
type sourceCounter struct {
	mu     sync.Mutex
	counts map[netip.Addr]int
}

func (s *sourceCounter) serve(c net.Conn) {
	peer := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
	s.mu.Lock()
	s.counts[peer]++
	s.mu.Unlock()
	io.Copy(c, c)
}

// TestUpstreamSourceAddresses gives the gateway two addresses, lists both
// in upstream.source_addresses and narrows its local port range to ten
// ports, then holds ten connections to each of three destinations: thirty
// at once, more than the twenty ports two addresses have if each port is
// taken toward every destination. Every connection must be made, spread
// over both addresses: the kernel picks the port at connect, per
// destination (IP_BIND_ADDRESS_NO_PORT), not at bind.
func TestUpstreamSourceAddresses(t *testing.T) {
	lab := twoSourceLab(t, "40000 40009")
	g := startGatewayOn(t, lab, gwConfig{Metrics: true, LogLevel: "info",
		SourceAddresses: []string{lab.GatewayServerAddr4.String(), secondSource.Addr().String()}})
	sc := &sourceCounter{counts: map[netip.Addr]int{}}
	var held []net.Conn
	refused := 0
	for range 3 {
		addr := net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(serve(t, g.Server, sc.serve)))
		h, r := holdEcho(t, g, addr, 10)
		held = append(held, h...)
		refused += r
	}
	sc.mu.Lock()
	counts := fmt.Sprint(sc.counts)
	first, second := sc.counts[lab.GatewayServerAddr4], sc.counts[secondSource.Addr()]
	sc.mu.Unlock()
	t.Logf("%d connections held, %d refused; by source address %s", len(held), refused, counts)
	if len(held) != 30 || refused != 0 {
		t.Errorf("%d of 30 connections made (%d refused) through two source addresses of ten ports each", len(held), refused)
	}
	// Each address's share of 30 hashed connections: below 5 is a
	// 1-in-30,000 draw.
	if first+second != len(held) || first < 5 || second < 5 {
		t.Errorf("connections by source address %s; want both %s and %s used", counts, lab.GatewayServerAddr4, secondSource.Addr())
	}
	// At start tcpd said what to set.
	for _, want := range []string{
		"net.ipv4.tcp_tw_reuse is 2: ",
		"net.ipv4.ip_local_port_range is 40000 40009: 10 local ports per source address, so at most 20 connections to one destination",
	} {
		if n := warnings(g, want); n != 1 {
			t.Errorf("%d warnings %q at start, want 1", n, want)
		}
	}
}

// warnings counts tcpd's warnings whose message contains text.
func warnings(g *gateway, text string) int {
	n := 0
	for _, l := range g.tcpd.LogLines() {
		if l["level"] == "warn" && strings.Contains(fmt.Sprint(l["msg"]), text) {
			n++
		}
	}
	return n
}

// portRounds is how TestUpstreamPortRoundsStayFlat loads the gateway: more
// connections in all than its two source addresses have ports, in rounds
// far shorter than TIME_WAIT's 60 s.
const (
	portRounds     = 6
	portRoundConns = 3000
	portRoundRange = "40000 41999" // 2,000 ports per source address
)

// TestUpstreamPortRoundsStayFlat runs rounds of 3,000 short connections to
// one destination, each closed by the client first, so that tcpd closes
// its upstream leg first and the gateway keeps it in TIME_WAIT: 18,000 in
// 6 rounds through two source addresses of 2,000 ports each, set up as
// README's "Upstream source ports" advises (net.ipv4.tcp_tw_reuse=1,
// upstream.source_addresses). Every connection must succeed, and the last
// two rounds must cost tcpd no more than twice the CPU time of the first
// two: the kernel's port search in connect does not grow with what is in
// TIME_WAIT. Without
// net.ipv4.tcp_tw_reuse=1, or with the source address bound before connect
// (no IP_BIND_ADDRESS_NO_PORT), the second round fails after 4,000.
func TestUpstreamPortRoundsStayFlat(t *testing.T) {
	lab := twoSourceLab(t, portRoundRange)
	if err := lab.Gateway.Sysctl("net.ipv4.tcp_tw_reuse", "1"); err != nil {
		t.Fatal(err)
	}
	// The client closes first too, and keeps its ports in its own
	// TIME_WAIT; it has enough not to reuse any (tcp_tw_reuse=0), as
	// clients behind a VPN do by default. A client that reused them
	// would reopen 4-tuples tcpd still holds in TIME_WAIT, a path of its
	// own, not the one this test is about.
	if err := lab.Client.Sysctl("net.ipv4.tcp_tw_reuse", "0"); err != nil {
		t.Fatal(err)
	}
	if err := lab.Client.Sysctl("net.ipv4.ip_local_port_range", "10000 65000"); err != nil {
		t.Fatal(err)
	}
	g := startGatewayOn(t, lab, gwConfig{Metrics: true, LogLevel: "info", TimeWait: "2s",
		SourceAddresses: []string{lab.GatewayServerAddr4.String(), secondSource.Addr().String()}})
	// The server reads the request to its end, answers and closes.
	port := serve(t, g.Server, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.Copy(io.Discard, c); err == nil {
			c.Write([]byte("ok"))
		}
	})
	addr := net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port))
	pid := tcpdPid(t, g)
	var took, cpu []time.Duration
	for round := range portRounds {
		start, cpu0 := time.Now(), cpuTime(t, pid)
		failed, errs := closeFirstRound(g, addr, portRoundConns, 16)
		took = append(took, time.Since(start))
		cpu = append(cpu, cpuTime(t, pid)-cpu0)
		if failed > 0 {
			m := sample(t, g)
			t.Fatalf("round %d: %d of %d connections failed (%v); connect failures %v", round+1, failed, portRoundConns, errs,
				nonZero(m, "tcpd_upstream_connect_failures_total"))
		}
		time.Sleep(time.Second) // TIME_WAIT ports become reusable a second after their last segment
	}
	m := sample(t, g)
	var round []string
	for i, d := range took {
		round = append(round, fmt.Sprintf("%v (tcpd CPU %v)", d.Round(10*time.Millisecond), cpu[i]))
	}
	t.Logf("%d rounds of %d connections: %s; connect failures %v", portRounds, portRoundConns, strings.Join(round, ", "),
		nonZero(m, "tcpd_upstream_connect_failures_total"))
	if n := warnings(g, "net.ipv4.tcp_tw_reuse"); n != 0 {
		t.Errorf("tcpd warned about net.ipv4.tcp_tw_reuse, which is 1")
	}
	if got := stateSum(m, "tcpd_upstream_connect_failures_total"); got != 0 {
		t.Errorf("upstream connects failed: %v", nonZero(m, "tcpd_upstream_connect_failures_total"))
	}
	// The port search is system CPU in tcpd's connect: a round's cost is
	// tcpd's CPU time, which other work on a shared machine disturbs far
	// less than the wall time. Two rounds at each end.
	first, last := cpu[0]+cpu[1], cpu[len(cpu)-2]+cpu[len(cpu)-1]
	if float64(last) > 2*float64(first) {
		t.Errorf("the last two rounds cost tcpd %v of CPU, the first two %v: more than twice as much", last, first)
	}
}

// closeFirstRound makes n connections to addr, workers at a time; each
// sends a byte, half-closes, reads the answer to its end and closes. It
// returns how many failed and the first few errors.
func closeFirstRound(g *gateway, addr string, n, workers int) (int64, []error) {
	var (
		next, failed atomic.Int64
		mu           sync.Mutex
		errs         []error
		wg           sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				if err := closeFirstOnce(g, addr); err != nil {
					failed.Add(1)
					mu.Lock()
					if len(errs) < 3 {
						errs = append(errs, err)
					}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return failed.Load(), errs
}

func closeFirstOnce(g *gateway, addr string) error {
	c, err := g.Client.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("x")); err != nil {
		return err
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	got, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if string(got) != "ok" {
		return fmt.Errorf("read %q, want ok", got)
	}
	return nil
}

// TestUpstreamSourceAddressNotLocal: a source address the gateway does not
// have stops tcpd at start, saying which.
func TestUpstreamSourceAddressNotLocal(t *testing.T) {
	lab := netlab.NewT(t, netlab.Options{})
	bin := netlab.BuildTCPD(t)
	cfg := gwConfig{LogLevel: "info", SourceAddresses: []string{lab.GatewayServerAddr4.String(), "198.18.1.99"}}
	p, err := lab.StartTCPD(context.Background(), bin, cfg.yaml())
	if err == nil {
		p.Stop()
		t.Fatal("tcpd started with a source address the gateway does not have")
	}
	if msg := err.Error(); !strings.Contains(msg, "upstream.source_addresses: 198.18.1.99 is not an address of this host") {
		t.Fatalf("start failed with %v; want it to name the address and say it is not the host's", err)
	}
}
