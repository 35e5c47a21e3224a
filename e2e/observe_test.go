//go:build linux

package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"tcpd/internal/netlab"
)

// scrape fetches tcpd's /metrics from inside the gateway namespace and
// returns every sample as "name{labels}" → value.
func scrape(t *testing.T, g *gateway) map[string]float64 {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return g.Gateway.Dial(ctx, network, addr)
		},
	}}
	resp, err := client.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	out := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// tcpdConns runs `tcpd conns` against the daemon's admin socket.
func tcpdConns(t *testing.T, sock string, args ...string) string {
	t.Helper()
	bin := netlab.BuildTCPD(t)
	out, err := exec.Command(bin, append([]string{"conns", "--socket", sock}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("tcpd conns %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// TestMetricsAndConnsSeeEstablished holds N connections open and checks
// that /metrics and `tcpd conns` both report exactly N established.
func TestMetricsAndConnsSeeEstablished(t *testing.T) {
	const n = 50
	sock := filepath.Join(t.TempDir(), "tcpd.sock")
	g := startGateway(t, netlab.Options{}, gwConfig{Metrics: true, AdminSocket: sock})
	hold := make(chan struct{})
	defer close(hold)
	port := serve(t, g.Server, func(c net.Conn) { <-hold })
	for i := range n {
		c, err := g.Client.DialTimeout("tcp", net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port)), 5*time.Second)
		if err != nil {
			t.Fatalf("conn %d: %v", i, err)
		}
		defer c.Close()
	}
	var m map[string]float64
	deadline := time.Now().Add(10 * time.Second)
	for {
		m = scrape(t, g)
		if m[`tcpd_tcp_connection_states{state="established"}`] == n || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := m[`tcpd_tcp_connection_states{state="established"}`]; got != n {
		t.Fatalf("metrics say %v established, want %d", got, n)
	}
	if got := m[`tcpd_tcp_handshake_duration_seconds_count`]; got != n {
		t.Fatalf("handshake histogram count %v, want %d", got, n)
	}
	out := tcpdConns(t, sock, "--state", "established")
	if rows := strings.Count(out, "ESTAB"); rows != 2*n { // both ends established
		t.Fatalf("tcpd conns shows %d ESTAB cells, want %d:\n%s", rows, 2*n, out)
	}
	if got := m[`tcpd_conntrack_corrections_total`]; got != 0 {
		t.Fatalf("%v conntrack corrections", got)
	}
}

// TestConnsKillByFilter: `tcpd conns kill --dport P` resets every
// connection to port P on both legs, as `ss -K` does, and leaves the
// others: the clients and the destination of the killed ones see a reset,
// the rest still carry bytes.
func TestConnsKillByFilter(t *testing.T) {
	t.Parallel()
	g, sock, port, accepted := stateLab(t, gwConfig{})
	killedClients, killedServers := dialN(t, g, port, 3, accepted)
	echo := serve(t, g.Server, func(c net.Conn) { io.Copy(c, c) })
	var kept []net.Conn
	for i := range 2 {
		c, err := g.Client.DialTimeout("tcp", net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(echo)), 5*time.Second)
		if err != nil {
			t.Fatalf("echo connection %d: %v", i, err)
		}
		defer c.Close()
		kept = append(kept, c)
	}
	if got := len(connsJSON(t, sock)); got != 5 {
		t.Fatalf("%d connections listed before the kill, want 5", got)
	}

	if out := tcpdConns(t, sock, "kill", "--dport", fmt.Sprint(port)); out != "reset 3 connections\n" {
		t.Fatalf("tcpd conns kill --dport %d: %q, want \"reset 3 connections\"", port, out)
	}
	for i, c := range append(killedClients, killedServers...) {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("killed connection %d (client then server side): read %v, want a reset", i, err)
		}
	}
	for i, c := range kept {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		msg := []byte("still here")
		if _, err := c.Write(msg); err != nil {
			t.Fatalf("kept connection %d: write: %v", i, err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
			t.Errorf("kept connection %d: echo %q, %v", i, got, err)
		}
	}
	for _, r := range connsJSON(t, sock, "--dport", fmt.Sprint(port), "--state", "established") {
		t.Errorf("killed connection still established: %+v", r)
	}
	if rows := connsJSON(t, sock, "--dport", fmt.Sprint(echo)); len(rows) != 2 {
		t.Errorf("%d connections to the echo port listed after the kill, want 2", len(rows))
	}
}

// TestConnsInfoShowsQueues: with a destination that reads nothing, the
// bytes a client sends pile up in the upstream socket's send queue and then
// in tcpd's receive queue from the client; `tcpd conns -i` shows both, the
// upstream one equal to what the gateway's own `ss` says of that socket.
func TestConnsInfoShowsQueues(t *testing.T) {
	t.Parallel()
	g, sock, port, accepted := stateLab(t, gwConfig{})
	clients, _ := dialN(t, g, port, 1, accepted)
	go io.Copy(clients[0], bytes.NewReader(make([]byte, 64<<20))) // blocks once every queue is full

	deadline := time.Now().Add(10 * time.Second)
	for {
		rows := connsJSON(t, sock, "-i")
		if len(rows) != 1 {
			t.Fatalf("%d rows, want 1", len(rows))
		}
		r := rows[0]
		u := r.UpstreamTCP
		if u == nil {
			t.Fatalf("no upstream_tcp with -i: %+v", r)
		}
		ssQ := upstreamSendQ(t, g, r.Upstream)
		if u.SendQ > 0 && r.RecvQ > 0 && u.SendQ == ssQ && u.RTT > 0 && u.Cwnd > 0 {
			t.Logf("upstream send-q %d (ss: %d), rtt %.0fµs, cwnd %d; client leg recv-q %d; tcpd conns -i:\n%s",
				u.SendQ, ssQ, u.RTT*1e6, u.Cwnd, r.RecvQ, tcpdConns(t, sock, "-i"))
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10s of a destination that reads nothing: upstream %+v (ss's Send-Q %d), client leg recv-q %d; "+
				"want both queues above 0, the upstream one equal to ss's, a round-trip time and a window", *u, ssQ, r.RecvQ)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestConnsInfoShowsDownloadQueues: the mirror, a client that reads
// nothing of a download. What the destination's TCP has had acknowledged
// is then all in the queues on the way: the gateway's upstream socket's
// Recv-Q, the relay's one read in hand, what tcpd wrote to the client that
// the client has not acknowledged (the client leg's send-q, which the
// netstack holds), and the client's own Recv-Q. `tcpd conns -i` must show
// tcpd's share: before it showed no send-q for the client leg, and about
// a megabyte was nowhere to be seen.
func TestConnsInfoShowsDownloadQueues(t *testing.T) {
	t.Parallel()
	g, sock, port, accepted := stateLab(t, gwConfig{})
	_, servers := dialN(t, g, port, 1, accepted)
	go io.Copy(servers[0], bytes.NewReader(make([]byte, 64<<20))) // blocks once every queue is full

	// The queues fill, then stay as they are.
	var last connRow
	deadline := time.Now().Add(15 * time.Second)
	for {
		time.Sleep(500 * time.Millisecond)
		rows := connsJSON(t, sock, "-i")
		if len(rows) != 1 || rows[0].UpstreamTCP == nil {
			t.Fatalf("rows %+v, want one with upstream_tcp", rows)
		}
		r := rows[0]
		if r.SendQ > 0 && r.SendQ == last.SendQ && r.UpstreamTCP.RecvQ == last.UpstreamTCP.RecvQ && r.UpstreamTCP.RecvQ > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 15s of a client that reads nothing: client leg send-q %d, upstream recv-q %d; want both above 0 and settled",
				r.SendQ, r.UpstreamTCP.RecvQ)
		}
		last = r
	}
	acked := ssField(t, g.Server, "bytes_acked", "sport", "=", fmt.Sprintf(":%d", port))
	clientRecvQ := ssField(t, g.Client, "recv-q", "dport", "=", fmt.Sprintf(":%d", port))
	r := connsJSON(t, sock, "-i")[0]
	held := acked - (r.UpstreamTCP.RecvQ + r.SendQ + clientRecvQ)
	t.Logf("the destination had %d bytes acknowledged: upstream recv-q %d, client leg send-q %d, the client's recv-q %d; %d elsewhere\n%s",
		acked, r.UpstreamTCP.RecvQ, r.SendQ, clientRecvQ, held, tcpdConns(t, sock, "-i"))
	// What is left is the relay's read in hand: at most one read.
	if held < 0 || held > 64<<10 {
		t.Errorf("%d bytes acknowledged to the destination are in none of the queues, want at most one read of the relay's (64 KiB)", held)
	}
}

// ssField returns a number `ss -Htni` in ns gives the one TCP socket that
// filter selects: "recv-q" or "send-q", or a TCP_INFO field such as
// bytes_acked.
func ssField(t *testing.T, ns *netlab.NS, field string, filter ...string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := ns.Command(ctx, "ss", append([]string{"-Htni"}, filter...)...).Output()
	if err != nil {
		t.Fatalf("ss -Htni %v: %v", filter, err)
	}
	f := strings.Fields(string(out))
	if len(f) < 5 {
		t.Fatalf("ss -Htni %v: %q, want one socket", filter, out)
	}
	v := ""
	switch field {
	case "recv-q":
		v = f[1]
	case "send-q":
		v = f[2]
	default:
		for _, x := range f[5:] {
			if s, ok := strings.CutPrefix(x, field+":"); ok {
				v = s
			}
		}
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("ss -Htni %v: no %s in %q", filter, field, out)
	}
	return n
}

// upstreamSendQ is the Send-Q the gateway's `ss -tn` gives the socket whose
// local address is local.
func upstreamSendQ(t *testing.T, g *gateway, local string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := g.Gateway.Command(ctx, "ss", "-Htn", "src", local).Output()
	if err != nil {
		t.Fatalf("ss -Htn src %s in the gateway namespace: %v", local, err)
	}
	f := strings.Fields(string(out))
	if len(f) < 5 || f[3] != local {
		t.Fatalf("ss -Htn src %s: %q", local, out)
	}
	n, err := strconv.Atoi(f[2])
	if err != nil {
		t.Fatalf("ss -Htn src %s: Send-Q %q", local, f[2])
	}
	return n
}

// TestLostSYNACKLeavesRTTAlone: the client's kernel loses tcpd's first
// SYN-ACK (dropped in the client namespace) and answers its retransmission,
// a second later. tcpd's round-trip time toward the client must be the
// path's, not the second since the lost SYN-ACK: the netstack resends a
// SYN-ACK with the first one's timestamp, and the client's echo of it would
// make the RTT a second and the RTO three (Karn's rule, RFC 7323 4.1).
func TestLostSYNACKLeavesRTTAlone(t *testing.T) {
	lookTool(t, "iptables", "iptables")
	g, sock, port, accepted := stateLab(t, gwConfig{})
	rule := []string{"INPUT", "-p", "tcp", "--sport", fmt.Sprint(port), "--tcp-flags", "SYN,ACK", "SYN,ACK", "-j", "DROP"}
	ipt := func(op string) {
		t.Helper()
		if out, err := g.Client.Command(context.Background(), "iptables", append([]string{op}, rule...)...).CombinedOutput(); err != nil {
			t.Fatalf("iptables %s: %v: %s", op, err, out)
		}
	}
	ipt("-I")
	go func() {
		time.Sleep(300 * time.Millisecond) // the first SYN-ACK is lost; its retransmission, after 1 s, is not
		ipt("-D")
	}()
	clients, _ := dialN(t, g, port, 1, accepted)
	defer clients[0].Close()
	rows := connsJSON(t, sock, "-i")
	if len(rows) != 1 {
		t.Fatalf("%d rows, want 1", len(rows))
	}
	r := rows[0]
	t.Logf("after a lost SYN-ACK: tcpd's rtt %.1f ms, rto %.0f ms toward the client", r.RTT*1e3, r.RTO*1e3)
	if r.RTT > 0.1 || r.RTO > 0.5 {
		t.Errorf("after a lost SYN-ACK on a path of well under a millisecond, tcpd's rtt is %.3fs and its rto %.3fs toward the client; want the path's (rtt under 0.1s, rto at its 0.2s floor)", r.RTT, r.RTO)
	}
}

// TestRouteTable: with tun.route_table, tcpd gives its TUN a default route
// in that table for each family as it starts, the route a restart (the
// kernel removes it with the TUN) would otherwise leave out.
func TestRouteTable(t *testing.T) {
	const table = 150 // not the lab's own (netlab.TUNTable)
	g := startGateway(t, netlab.Options{}, gwConfig{RouteTable: table})
	link, err := g.Gateway.Netlink().LinkByName("tcpd0")
	if err != nil {
		t.Fatal(err)
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := g.Gateway.Netlink().RouteListFiltered(fam, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, r := range routes {
			if r.LinkIndex == link.Attrs().Index && (r.Dst == nil || isDefault(r.Dst)) {
				found = true
			}
		}
		if !found {
			t.Errorf("family %d: table %d holds %v, want a default route dev tcpd0", fam, table, routes)
		}
	}
}

func isDefault(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}
