//go:build linux

package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"tcpd/internal/netlab"
)

// The tier B state scenarios: one test per RFC 9293 state, each holding
// nConns connections of the kernel's own TCP client there and checking that
// /metrics, `tcpd conns` and the client's kernel (`ss -tan` in the client
// namespace, the mirrored state) agree. They run in parallel, each in its
// own lab.

// nConns is how many connections each scenario holds in its state.
const nConns = 50

// stateTimeout bounds the wait for a scenario's connections to reach a
// state. Every transition here takes milliseconds, or one retransmission
// timeout of a few seconds after a link comes back.
const stateTimeout = 20 * time.Second

// connRow is one row of `tcpd conns -o json`, the fields these tests read.
type connRow struct {
	ID          uint64  `json:"id"`
	State       string  `json:"state"`
	ClientState string  `json:"client_state"`
	Client      string  `json:"client"`
	Dst         string  `json:"dst"`
	Retransmits uint64  `json:"retransmits"`
	InState     float64 `json:"in_state_seconds"`
	// RTT and RTO are the netstack's toward the client.
	RTT float64 `json:"rtt_seconds"`
	RTO float64 `json:"rto_seconds"`
	// CongestionControl is the algorithm of tcpd's end ("reno", "cubic").
	CongestionControl string `json:"congestion_control"`
	// Upstream is the local address of tcpd's upstream socket.
	Upstream string `json:"upstream"`
	// MSS is the MSS tcpd sends with; ClientMSS what the client's SYN
	// offered; MSSClamped whether tcpd lowered it; AdvMSS what tcpd's
	// SYN-ACK offered.
	MSS        int  `json:"mss"`
	ClientMSS  int  `json:"client_mss"`
	MSSClamped bool `json:"mss_clamped"`
	AdvMSS     int  `json:"adv_mss"`
	// RecvQ is what the client sent that tcpd has not read yet, SendQ what
	// tcpd wrote to the client that it has not acknowledged.
	RecvQ int `json:"recv_q"`
	SendQ int `json:"send_q"`
	// UpstreamTCP is the kernel's view of the upstream socket (-i).
	UpstreamTCP *struct {
		RTT   float64 `json:"rtt_seconds"`
		Cwnd  uint32  `json:"cwnd"`
		RecvQ int     `json:"recv_q"`
		SendQ int     `json:"send_q"`
	} `json:"upstream_tcp"`
}

// connsJSON runs `tcpd conns -o json args...` and decodes the rows.
func connsJSON(t *testing.T, sock string, args ...string) []connRow {
	t.Helper()
	out := tcpdConns(t, sock, append([]string{"-o", "json"}, args...)...)
	var v struct {
		Conns []connRow `json:"conns"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("tcpd conns -o json: %v\n%s", err, out)
	}
	return v.Conns
}

// clientSockets runs `ss -Htan` in the client namespace and counts, by the
// state ss prints, the sockets connected to port on the server.
func clientSockets(t *testing.T, g *gateway, port int) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := g.Client.Command(ctx, "ss", "-Htan", "dport", "=", fmt.Sprintf(":%d", port)).Output()
	if err != nil {
		t.Fatalf("ss -Htan in the client namespace: %v", err)
	}
	peer := netip.AddrPortFrom(g.ServerAddr4, uint16(port)).String()
	counts := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		if f[4] != peer {
			t.Fatalf("ss matched a socket to %s, want only %s: %q", f[4], peer, line)
		}
		counts[f[0]]++
	}
	return counts
}

// stateSum adds up a labelled state family (tcpd_tcp_connection_states or
// tcpd_tcp_client_connection_states) over all its states.
func stateSum(m map[string]float64, family string) float64 {
	var sum float64
	for k, v := range m {
		if strings.HasPrefix(k, family+"{") {
			sum += v
		}
	}
	return sum
}

func stateMetric(state string) string {
	return fmt.Sprintf(`tcpd_tcp_connection_states{state=%q}`, state)
}

func clientStateMetric(state string) string {
	return fmt.Sprintf(`tcpd_tcp_client_connection_states{state=%q}`, state)
}

// mirror is where a scenario expects its connections: tcpd's end, the
// client's end as tcpd infers it from the TUN (both as node_exporter
// labels), and the client kernel's socket as ss prints its state ("" for no
// socket at all).
type mirror struct {
	tcpd, client, ss string
}

// waitFor polls cond every 50ms until it holds or d passes, and returns
// whether it held. The caller keeps what cond saw for its failure message.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// assertMirror waits until n connections to port are in tcpd state w.tcpd,
// then checks that exactly n are there and nowhere else: in
// tcpd_tcp_connection_states, in tcpd_tcp_client_connection_states (w.client),
// in the rows of `tcpd conns --state`, and in the client kernel's own
// sockets (ss).
func assertMirror(t *testing.T, g *gateway, sock string, port, n int, w mirror) {
	t.Helper()
	var m map[string]float64
	if !waitFor(stateTimeout, func() bool {
		m = scrape(t, g)
		return m[stateMetric(w.tcpd)] == float64(n)
	}) {
		t.Fatalf("after %v, tcpd_tcp_connection_states{state=%q} is %v, want %d (entries %v, all states %v)",
			stateTimeout, w.tcpd, m[stateMetric(w.tcpd)], n, m["tcpd_conntrack_entries"], nonZero(m, "tcpd_tcp_connection_states"))
	}
	// The client kernel processes the segment that moved tcpd's end a few
	// microseconds after it crossed the TUN: give ss a moment.
	var ss map[string]int
	waitFor(2*time.Second, func() bool {
		ss = clientSockets(t, g, port)
		return mirrored(ss, w.ss, n)
	})

	m = scrape(t, g)
	if got := m[stateMetric(w.tcpd)]; got != float64(n) {
		t.Errorf("tcpd_tcp_connection_states{state=%q} = %v, want exactly %d", w.tcpd, got, n)
	}
	if got := stateSum(m, "tcpd_tcp_connection_states"); got != float64(n) {
		t.Errorf("tcpd_tcp_connection_states sum to %v, want %d: %v", got, n, nonZero(m, "tcpd_tcp_connection_states"))
	}
	if got := m[clientStateMetric(w.client)]; got != float64(n) {
		t.Errorf("tcpd_tcp_client_connection_states{state=%q} = %v, want exactly %d: %v",
			w.client, got, n, nonZero(m, "tcpd_tcp_client_connection_states"))
	}
	if got := m["tcpd_conntrack_entries"]; got != float64(n) {
		t.Errorf("tcpd_conntrack_entries = %v, want %d", got, n)
	}

	rows := connsJSON(t, sock, "--state", w.tcpd)
	if len(rows) != n {
		t.Errorf("tcpd conns --state %s lists %d connections, want exactly %d", w.tcpd, len(rows), n)
	}
	dst := netip.AddrPortFrom(g.ServerAddr4, uint16(port)).String()
	for _, r := range rows {
		if r.State != w.tcpd || r.ClientState != w.client || r.Dst != dst {
			t.Errorf("tcpd conns --state %s row %+v, want state %s, client state %s, destination %s",
				w.tcpd, r, w.tcpd, w.client, dst)
			break
		}
	}

	if !mirrored(ss, w.ss, n) {
		if w.ss == "" {
			t.Errorf("client's ss -tan shows %v to port %d, want no socket at all", ss, port)
		} else {
			t.Errorf("client's ss -tan shows %v to port %d, want exactly %d %s and nothing else", ss, port, n, w.ss)
		}
	}
}

// mirrored reports whether ss counts are exactly n sockets in state (and
// none in another), or none at all when state is "".
func mirrored(ss map[string]int, state string, n int) bool {
	total := 0
	for _, c := range ss {
		total += c
	}
	if state == "" {
		return total == 0
	}
	return ss[state] == n && total == n
}

// nonZero lists the non-zero samples of a family, for failure messages.
func nonZero(m map[string]float64, family string) map[string]float64 {
	out := map[string]float64{}
	for k, v := range m {
		if strings.HasPrefix(k, family+"{") && v != 0 {
			out[strings.TrimPrefix(k, family)] = v
		}
	}
	return out
}

// assertDrained waits until tcpd tracks no connection at all and every
// state gauge is back to zero.
func assertDrained(t *testing.T, g *gateway, d time.Duration) {
	t.Helper()
	var m map[string]float64
	if !waitFor(d, func() bool {
		m = scrape(t, g)
		return m["tcpd_conntrack_entries"] == 0 && stateSum(m, "tcpd_tcp_connection_states") == 0 &&
			stateSum(m, "tcpd_tcp_client_connection_states") == 0 && m["tcpd_tcp_time_wait_connections"] == 0
	}) {
		t.Fatalf("after %v tcpd still tracks %v entries: tcpd %v, client %v, TIME_WAIT %v", d, m["tcpd_conntrack_entries"],
			nonZero(m, "tcpd_tcp_connection_states"), nonZero(m, "tcpd_tcp_client_connection_states"), m["tcpd_tcp_time_wait_connections"])
	}
}

// assertNoCorrections checks that conntrack never had to correct its view
// of tcpd's end from the netstack's.
func assertNoCorrections(t *testing.T, g *gateway) {
	t.Helper()
	if got := scrape(t, g)["tcpd_conntrack_corrections_total"]; got != 0 {
		t.Errorf("tcpd_conntrack_corrections_total = %v, want 0", got)
	}
}

// inBothQueueModes runs test twice, in parallel subtests: with one TUN
// queue and with tun.queues auto (one per CPU: several wherever there are
// several CPUs). The states must be exact whether a connection's packets
// cross one packet loop or several.
func inBothQueueModes(t *testing.T, test func(t *testing.T, queues string)) {
	for _, q := range []string{"1", "auto"} {
		t.Run("queues="+q, func(t *testing.T) {
			t.Parallel()
			test(t, q)
		})
	}
}

// stateLab starts a gateway with metrics and an admin socket, and a server
// whose connections the test controls: each accepted connection is handed
// over on the returned channel and held open until the test closes it or
// ends.
func stateLab(t *testing.T, cfg gwConfig) (g *gateway, sock string, port int, accepted <-chan net.Conn) {
	t.Helper()
	sock = filepath.Join(t.TempDir(), "tcpd.sock")
	cfg.Metrics, cfg.AdminSocket = true, sock
	g = startGateway(t, netlab.Options{}, cfg)
	ch := make(chan net.Conn, 4096)
	done := make(chan struct{})
	port = serve(t, g.Server, func(c net.Conn) {
		ch <- c
		<-done
	})
	// Registered after serve's cleanup, so it runs first and lets the
	// handlers return.
	t.Cleanup(func() { close(done) })
	return g, sock, port, ch
}

// dialN opens n connections from the client namespace to the server's port
// and waits until the server has accepted all of them. Both ends are closed
// when the test ends, if the test has not closed them.
func dialN(t *testing.T, g *gateway, port, n int, accepted <-chan net.Conn) (client, server []net.Conn) {
	t.Helper()
	addr := net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port))
	for i := range n {
		c, err := g.Client.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("conn %d: %v", i, err)
		}
		client = append(client, c)
	}
	t.Cleanup(func() {
		for _, c := range client {
			c.Close()
		}
	})
	timeout := time.After(10 * time.Second)
	for len(server) < n {
		select {
		case c := <-accepted:
			server = append(server, c)
		case <-timeout:
			t.Fatalf("the server accepted %d of %d connections", len(server), n)
		}
	}
	t.Cleanup(func() {
		for _, c := range server {
			c.Close()
		}
	})
	return client, server
}

func closeWrite(t *testing.T, cs []net.Conn) {
	t.Helper()
	for _, c := range cs {
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatalf("shutdown(SHUT_WR): %v", err)
		}
	}
}

func closeAll(cs []net.Conn) {
	for _, c := range cs {
		c.Close()
	}
}

// setClientLink takes the client's veth down (inside the client namespace)
// or brings it back up. Taking a device down also makes the kernel flush
// the client's permanent neighbour entries on it and its IPv4 default
// route; bringing it up restores both as netlab made them, so the client
// reaches the gateway again. (IPv6 is not restored: these tests use IPv4.)
func setClientLink(t *testing.T, g *gateway, up bool) {
	t.Helper()
	var gwMAC net.HardwareAddr
	if err := g.Gateway.Do(func() error {
		l, err := netlink.LinkByName(g.GatewayClientLink)
		if err != nil {
			return err
		}
		gwMAC = l.Attrs().HardwareAddr
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	err := g.Client.Do(func() error {
		l, err := netlink.LinkByName(g.ClientLink)
		if err != nil {
			return err
		}
		if !up {
			return netlink.LinkSetDown(l)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			l, err = netlink.LinkByName(g.ClientLink)
			if err != nil {
				return err
			}
			if l.Attrs().OperState == netlink.OperUp {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s still %s 5s after link up", g.ClientLink, l.Attrs().OperState)
			}
			time.Sleep(5 * time.Millisecond)
		}
		if err := netlink.NeighSet(&netlink.Neigh{
			LinkIndex:    l.Attrs().Index,
			Family:       netlink.FAMILY_V4,
			State:        netlink.NUD_PERMANENT,
			IP:           g.GatewayClientAddr4.AsSlice(),
			HardwareAddr: gwMAC,
		}); err != nil {
			return fmt.Errorf("restore neighbour %s: %w", g.GatewayClientAddr4, err)
		}
		if err := netlink.RouteReplace(&netlink.Route{
			LinkIndex: l.Attrs().Index,
			Dst:       &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
			Gw:        g.GatewayClientAddr4.AsSlice(),
		}); err != nil {
			return fmt.Errorf("restore default route: %w", err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("client link up=%v: %v", up, err)
	}
}

// synRecvBound is how long a half-open handshake may hold its entry (and
// the upstream connection tcpd dialled for it) after the client went
// silent.
const synRecvBound = 2 * time.Minute

// TestStateSynRecv holds nConns handshakes half-open. The SYNs are crafted,
// from 100.64.1.77: inside the client prefix, so tcpd serves it, but owned by
// no host. tcpd dials the server first, then answers with SYN-ACKs that the
// gateway cannot deliver: nothing answers its ARP for 100.64.1.77 (the
// client namespace does not own the address, and netlab's permanent
// neighbour entries cover only the real client), so no one ever ACKs or
// RSTs them. The handshakes must be given up within synRecvBound (on its
// own the netstack retransmits a SYN-ACK until its backoff would pass 120s,
// about 127s after the SYN) and their entries must go away.
func TestStateSynRecv(t *testing.T) {
	t.Parallel()
	inBothQueueModes(t, func(t *testing.T, queues string) {
		g, sock, port, accepted := stateLab(t, gwConfig{Queues: queues})
		ghost := netip.MustParseAddr("100.64.1.77")
		dst := netip.AddrPortFrom(g.ServerAddr4, uint16(port))
		start := time.Now()
		for i := range nConns {
			sendRawSYN(t, g, netip.AddrPortFrom(ghost, uint16(42000+i)), dst)
		}
		// tcpd dials the destination before it answers the client: the server
		// accepts every one.
		timeout := time.After(10 * time.Second)
		for i := range nConns {
			select {
			case <-accepted:
			case <-timeout:
				t.Fatalf("the server accepted %d of %d upstream connections", i, nConns)
			}
		}
		// A crafted SYN has no socket behind it, so the mirror of the client's
		// SYN-SENT in the client kernel is no socket at all.
		assertMirror(t, g, sock, port, nConns, mirror{tcpd: "syn_recv", client: "syn_sent", ss: ""})

		// The SYN-ACKs did leave through the TUN, and went nowhere: the gateway
		// never resolved 100.64.1.77, and nothing answered with a RST.
		m := scrape(t, g)
		if got := m[`tcpd_tun_packets_total{direction="out"}`]; got < nConns {
			t.Errorf("tcpd wrote %v packets to the TUN, want at least the %d SYN-ACKs", got, nConns)
		}
		if got := m["tcpd_conntrack_resets_total"] + m["tcpd_conntrack_rst_ignored_total"]; got != 0 {
			t.Errorf("%v RSTs crossed the TUN: the SYN-ACKs reached a host", got)
		}
		var neighs []netlink.Neigh
		if err := g.Gateway.Do(func() (err error) {
			neighs, err = netlink.NeighList(0, netlink.FAMILY_V4)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		const resolved = netlink.NUD_REACHABLE | netlink.NUD_STALE | netlink.NUD_DELAY | netlink.NUD_PROBE |
			netlink.NUD_PERMANENT | netlink.NUD_NOARP
		for _, n := range neighs {
			if n.IP.Equal(ghost.AsSlice()) && n.State&resolved != 0 {
				t.Errorf("the gateway resolved %s to %s (state %#x): the SYN-ACKs were delivered to someone", ghost, n.HardwareAddr, n.State)
			}
		}

		// The half-open connections are given up at last. Watch past the bound
		// to say how long it really takes.
		deadline := start.Add(synRecvBound + 30*time.Second)
		for {
			m = scrape(t, g)
			if m["tcpd_conntrack_entries"] == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
		took := time.Since(start).Round(100 * time.Millisecond)
		if left := m["tcpd_conntrack_entries"]; left != 0 {
			t.Fatalf("%v of %d half-open entries still there %v after the SYNs: %v", left, nConns, took, nonZero(m, "tcpd_tcp_connection_states"))
		}
		t.Logf("the %d half-open entries went away %v after the SYNs (handshake timeouts %v, expired %v, resets %v)",
			nConns, took, m["tcpd_handshake_timeouts_total"], m["tcpd_conntrack_expired_total"], m["tcpd_conntrack_resets_total"])
		if took > synRecvBound {
			t.Errorf("half-open entries held for %v after the client went silent, want at most %v", took, synRecvBound)
		}
		if got := m[`tcpd_connections_total{result="handshake_failed"}`]; got != nConns {
			t.Errorf(`tcpd_connections_total{result="handshake_failed"} = %v, want %d`, got, nConns)
		}
		assertDrained(t, g, 5*time.Second)
		assertNoCorrections(t, g)
	})
}

// TestStateEstablished holds nConns open connections.
func TestStateEstablished(t *testing.T) {
	t.Parallel()
	inBothQueueModes(t, func(t *testing.T, queues string) {
		g, sock, port, accepted := stateLab(t, gwConfig{Queues: queues, TimeWait: "1s"})
		client, server := dialN(t, g, port, nConns, accepted)
		assertMirror(t, g, sock, port, nConns, mirror{tcpd: "established", client: "established", ss: "ESTAB"})
		if got := scrape(t, g)["tcpd_tcp_handshake_duration_seconds_count"]; got != nConns {
			t.Errorf("handshake histogram count %v, want %d", got, nConns)
		}
		closeAll(client)
		closeAll(server)
		assertDrained(t, g, stateTimeout)
		assertNoCorrections(t, g)
	})
}

// TestStateCloseWait: the client half-closes (shutdown(SHUT_WR)) and the
// server keeps its side open. tcpd has consumed the client's FIN and waits
// for its own close: CLOSE_WAIT; the client, its FIN acknowledged, waits for
// tcpd's: FIN-WAIT-2.
func TestStateCloseWait(t *testing.T) {
	t.Parallel()
	inBothQueueModes(t, func(t *testing.T, queues string) {
		g, sock, port, accepted := stateLab(t, gwConfig{Queues: queues, TimeWait: "1s"})
		client, server := dialN(t, g, port, nConns, accepted)
		closeWrite(t, client)
		assertMirror(t, g, sock, port, nConns, mirror{tcpd: "close_wait", client: "fin_wait2", ss: "FIN-WAIT-2"})
		closeAll(server)
		closeAll(client)
		assertDrained(t, g, stateTimeout)
		assertNoCorrections(t, g)
	})
}

// TestStateLastAck: from CLOSE_WAIT, the client's link goes down and the
// server closes. tcpd sends its FIN, which cannot arrive: LAST_ACK, while
// the client stays in FIN-WAIT-2. Once the link is back, tcpd's
// retransmitted FIN gets through: tcpd's end is closed and forgotten, the
// client's goes to TIME-WAIT.
func TestStateLastAck(t *testing.T) {
	t.Parallel()
	inBothQueueModes(t, func(t *testing.T, queues string) {
		g, sock, port, accepted := stateLab(t, gwConfig{Queues: queues, TimeWait: "1s"})
		client, server := dialN(t, g, port, nConns, accepted)
		closeWrite(t, client)
		assertMirror(t, g, sock, port, nConns, mirror{tcpd: "close_wait", client: "fin_wait2", ss: "FIN-WAIT-2"})

		setClientLink(t, g, false)
		linkUp := sync.OnceFunc(func() { setClientLink(t, g, true) })
		t.Cleanup(linkUp)
		closeAll(server)
		assertMirror(t, g, sock, port, nConns, mirror{tcpd: "last_ack", client: "fin_wait2", ss: "FIN-WAIT-2"})

		linkUp()
		var ss map[string]int
		if !waitFor(stateTimeout, func() bool {
			ss = clientSockets(t, g, port)
			return mirrored(ss, "TIME-WAIT", nConns)
		}) {
			t.Errorf("%v after the link came back the client's ss shows %v, want %d TIME-WAIT", stateTimeout, ss, nConns)
		}
		assertDrained(t, g, stateTimeout)
		assertNoCorrections(t, g)
		closeAll(client)
	})
}

// TestStateFinWait2: the server closes first and the client holds its side
// open. tcpd's FIN is acknowledged: FIN_WAIT_2; the client has consumed it:
// CLOSE-WAIT.
func TestStateFinWait2(t *testing.T) {
	t.Parallel()
	inBothQueueModes(t, func(t *testing.T, queues string) {
		g, sock, port, accepted := stateLab(t, gwConfig{Queues: queues, TimeWait: "1s"})
		client, server := dialN(t, g, port, nConns, accepted)
		closeAll(server)
		assertMirror(t, g, sock, port, nConns, mirror{tcpd: "fin_wait2", client: "close_wait", ss: "CLOSE-WAIT"})
		closeAll(client)
		assertDrained(t, g, stateTimeout)
		assertNoCorrections(t, g)
	})
}

// TestStateFinWait1: the client's link goes down, then the server closes.
// tcpd's FIN cannot arrive: FIN_WAIT_1, while the client, which never saw
// it, is still ESTABLISHED. Once the link is back the retransmitted FIN
// arrives: FIN_WAIT_2 and CLOSE-WAIT.
func TestStateFinWait1(t *testing.T) {
	t.Parallel()
	inBothQueueModes(t, func(t *testing.T, queues string) {
		g, sock, port, accepted := stateLab(t, gwConfig{Queues: queues, TimeWait: "1s"})
		client, server := dialN(t, g, port, nConns, accepted)
		setClientLink(t, g, false)
		linkUp := sync.OnceFunc(func() { setClientLink(t, g, true) })
		t.Cleanup(linkUp)
		closeAll(server)
		assertMirror(t, g, sock, port, nConns, mirror{tcpd: "fin_wait1", client: "established", ss: "ESTAB"})

		linkUp()
		assertMirror(t, g, sock, port, nConns, mirror{tcpd: "fin_wait2", client: "close_wait", ss: "CLOSE-WAIT"})
		closeAll(client)
		assertDrained(t, g, stateTimeout)
		assertNoCorrections(t, g)
	})
}

// timeWait is the TIME_WAIT duration of TestStateTimeWait.
const timeWait = 3 * time.Second

// TestStateTimeWait: from FIN_WAIT_2 the client closes. tcpd acknowledges
// the client's FIN, which takes tcpd's end to TIME_WAIT and the client's
// through LAST-ACK to CLOSED: ss shows no socket. After timeWait every
// entry leaves, and the dwell histogram says how long they stayed.
func TestStateTimeWait(t *testing.T) {
	t.Parallel()
	inBothQueueModes(t, func(t *testing.T, queues string) {
		g, sock, port, accepted := stateLab(t, gwConfig{Queues: queues, TimeWait: timeWait.String()})
		client, server := dialN(t, g, port, nConns, accepted)
		closeAll(server)
		assertMirror(t, g, sock, port, nConns, mirror{tcpd: "fin_wait2", client: "close_wait", ss: "CLOSE-WAIT"})
		closeAll(client)
		// The client's end is closed and gone; conntrack, which keeps one entry
		// for both ends, counts it as closed.
		assertMirror(t, g, sock, port, nConns, mirror{tcpd: "time_wait", client: "close", ss: ""})
		m := scrape(t, g)
		if got := m["tcpd_tcp_time_wait_connections"]; got != nConns {
			t.Errorf("tcpd_tcp_time_wait_connections = %v, want %d", got, nConns)
		}
		if got := m["tcpd_tcp_time_wait_timeout_seconds"]; got != timeWait.Seconds() {
			t.Errorf("tcpd_tcp_time_wait_timeout_seconds = %v, want %v", got, timeWait.Seconds())
		}

		assertDrained(t, g, timeWait+stateTimeout)
		m = scrape(t, g)
		count, sum := m["tcpd_tcp_time_wait_duration_seconds_count"], m["tcpd_tcp_time_wait_duration_seconds_sum"]
		if count != nConns {
			t.Fatalf("tcpd_tcp_time_wait_duration_seconds_count = %v, want %d", count, nConns)
		}
		mean := time.Duration(sum / count * float64(time.Second))
		t.Logf("mean TIME_WAIT dwell %v, configured %v", mean.Round(time.Millisecond), timeWait)
		if mean < timeWait*9/10 || mean > timeWait*11/10 {
			t.Errorf("mean TIME_WAIT dwell %v, want within 10%% of %v", mean.Round(time.Millisecond), timeWait)
		}
		if got := m["tcpd_tcp_time_wait_entered_total"]; got != nConns {
			t.Errorf("tcpd_tcp_time_wait_entered_total = %v, want %d", got, nConns)
		}
		assertNoCorrections(t, g)
	})
}

// closingRetransmits is how many times tcpd must have retransmitted its FIN
// before the client closes in TestStateClosing. The netstack's FIN
// retransmissions come about 0.2·2^(k-1) s after the FIN (a 200ms minimum
// RTO, doubling): the 5th at about 3.2s, the 6th at about 6.4s, so the
// client's FIN lands in a window of about 3s.
const closingRetransmits = 5

// TestStateClosing makes a simultaneous close: both ends send FIN before
// either has received the other's. The client's link goes down and the
// server closes: tcpd's FIN is lost and retransmitted with exponential
// backoff. Once every FIN has been retransmitted closingRetransmits times
// (watched in `tcpd conns`), the link comes back and the client half-closes
// at once: its FIN reaches tcpd, still in FIN_WAIT_1 with its own FIN
// unacknowledged, which takes tcpd to CLOSING. tcpd's ACK of the client's
// FIN takes the client to FIN-WAIT-2. Both hold there until tcpd's next
// retransmission (about 3s later), which takes the client to TIME-WAIT and,
// acknowledged, tcpd to TIME_WAIT.
//
// The client closes after the link is back rather than while it is down:
// its FIN then leaves at once instead of on a retransmission timer of the
// client kernel's, whose backoff the test cannot see. tcpd's states are the
// same either way; only the timing becomes deterministic.
func TestStateClosing(t *testing.T) {
	t.Parallel()
	inBothQueueModes(t, func(t *testing.T, queues string) {
		g, sock, port, accepted := stateLab(t, gwConfig{Queues: queues, TimeWait: "1s"})
		client, server := dialN(t, g, port, nConns, accepted)
		setClientLink(t, g, false)
		linkUp := sync.OnceFunc(func() { setClientLink(t, g, true) })
		t.Cleanup(linkUp)
		closeAll(server)
		assertMirror(t, g, sock, port, nConns, mirror{tcpd: "fin_wait1", client: "established", ss: "ESTAB"})

		var rows []connRow
		if !waitFor(stateTimeout, func() bool {
			rows = connsJSON(t, sock)
			for _, r := range rows {
				if r.Retransmits < closingRetransmits {
					return false
				}
			}
			return len(rows) == nConns
		}) {
			t.Fatalf("tcpd's FINs were not retransmitted %d times within %v: %+v", closingRetransmits, stateTimeout, rows)
		}
		sent := map[uint64]uint64{}
		for _, r := range rows {
			sent[r.ID] = r.Retransmits
		}
		linkUp()
		closed := time.Now()
		closeWrite(t, client)
		assertMirror(t, g, sock, port, nConns, mirror{tcpd: "closing", client: "fin_wait2", ss: "FIN-WAIT-2"})
		checked := time.Since(closed)
		// The checks above ran before tcpd's next retransmission of its FIN,
		// which ends CLOSING: otherwise they proved nothing about it.
		for _, r := range connsJSON(t, sock) {
			if r.Retransmits != sent[r.ID] {
				t.Fatalf("connection %d: tcpd retransmitted its FIN during the checks (%d times, %d before): they ran outside the window",
					r.ID, r.Retransmits, sent[r.ID])
			}
		}

		// tcpd's next retransmission gets through.
		var ss map[string]int
		if !waitFor(stateTimeout, func() bool {
			ss = clientSockets(t, g, port)
			return mirrored(ss, "TIME-WAIT", nConns)
		}) {
			t.Errorf("the client's ss shows %v, want %d TIME-WAIT", ss, nConns)
		}
		t.Logf("CLOSING checked within %v of the client's FINs; it held about %v", checked.Round(time.Millisecond),
			time.Since(closed).Round(100*time.Millisecond))
		assertDrained(t, g, stateTimeout)
		assertNoCorrections(t, g)
	})
}
