//go:build linux

package e2e_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"tcpd/internal/netlab"
)

// Misbehaving peers: a client that vanishes, an upstream that never reads
// or never answers, a client that stops reading.

// Keepalive of TestRobustVanishedClient: idle 2s, then 3 probes 1s apart.
const (
	vanishIdle     = 2 * time.Second
	vanishInterval = time.Second
	vanishCount    = 3
	// vanishSlack covers the reconcile tick, a retransmission timeout in
	// flight when the link went down, and a loaded machine.
	vanishSlack = 5 * time.Second
)

// TestRobustVanishedClient takes the client's link down in the middle of a
// transfer, as a client that loses its network would vanish: no FIN, no
// RST, nothing. With keepalive idle 2s, interval 1s, 3 probes (and the
// idle and half-close timeouts far away), tcpd must give up on the client
// within about idle + interval × count and reset the upstream leg, so
// that the server sees its connection fail and tcpd_relays_active returns
// to zero. Both directions of transfer are tried: the client uploading
// (tcpd's client leg has nothing unacknowledged, keepalive applies) and
// downloading (tcpd has data in flight to a client that no longer
// acknowledges anything).
func TestRobustVanishedClient(t *testing.T) {
	g := startGateway(t, netlab.Options{}, gwConfig{
		Metrics: true, TimeWait: "2s",
		KeepaliveIdle: vanishIdle.String(), KeepaliveInterval: vanishInterval.String(), KeepaliveCount: vanishCount,
		IdleTimeout: "1h", HalfCloseTimeout: "1h",
	})
	bound := vanishIdle + vanishCount*vanishInterval + vanishSlack
	for _, upload := range []bool{true, false} {
		name := "download"
		if upload {
			name = "upload"
		}
		t.Run(name, func(t *testing.T) {
			// The server reads (upload) or writes (download) until its
			// connection fails, and says when.
			failed := make(chan error, 1)
			var moved atomic.Int64
			port := serve(t, g.Server, func(c net.Conn) {
				c.SetDeadline(time.Now().Add(45 * time.Second))
				buf := make([]byte, 64<<10)
				for {
					var n int
					var err error
					if upload {
						n, err = c.Read(buf)
					} else {
						n, err = c.Write(buf)
					}
					moved.Add(int64(n))
					if err != nil {
						failed <- err
						return
					}
				}
			})
			c, err := g.Client.DialTimeout("tcp", net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port)), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			// The client moves data until its link is gone; its own
			// errors do not matter.
			go func() {
				buf := make([]byte, 64<<10)
				for {
					var err error
					if upload {
						_, err = c.Write(buf)
					} else {
						_, err = c.Read(buf)
					}
					if err != nil {
						return
					}
				}
			}()
			if !waitFor(10*time.Second, func() bool { return moved.Load() >= 4*mib }) {
				t.Fatalf("only %d bytes moved in 10s before the link went down", moved.Load())
			}
			setClientLink(t, g, false)
			down := time.Now()
			defer setClientLink(t, g, true)

			// Watch well past the bound, to say how long it really takes.
			watch := bound + 10*time.Second
			var serverErr error
			serverTook := watch
			select {
			case serverErr = <-failed:
				serverTook = time.Since(down)
			case <-time.After(watch):
			}
			m, released := waitMetrics(t, g, max(bound-time.Since(down), 0)+time.Second, func(m map[string]float64) bool {
				return m["tcpd_relays_active"] == 0
			})
			relayTook := time.Since(down)
			what := fmt.Sprintf("failed %v after (%s)", serverTook.Round(100*time.Millisecond), errno(serverErr))
			if serverErr == nil {
				what = fmt.Sprintf("was still alive %v after", watch)
			}
			t.Logf("%s: %s moved before the link went down; the server's connection %s; "+
				"tcpd_relays_active %v after %v; relays ended %v; netstack keepalive/RTO timeouts %v, retransmits %v, RTO expiries %v",
				name, mibs(float64(moved.Load())), what,
				m["tcpd_relays_active"], relayTook.Round(100*time.Millisecond), nonZero(m, "tcpd_relay_ended_total"),
				m["tcpd_netstack_tcp_established_timeouts_total"], m["tcpd_netstack_tcp_retransmits_total"], m["tcpd_netstack_tcp_timeouts_total"])
			if serverErr == nil {
				// Keepalive probes only an idle connection: while tcpd
				// has data unacknowledged by the client, the netstack
				// (like Linux) runs its retransmission timer instead,
				// with backoff, for many minutes unless a TCP user
				// timeout bounds it.
				t.Fatalf("the server's connection was still alive %v after the client vanished; want it reset within %v (keepalive idle %v + %d × %v + %v slack)",
					watch, bound, vanishIdle, vanishCount, vanishInterval, vanishSlack)
			}
			if serverTook > bound {
				t.Errorf("the server's connection failed %v after the client vanished, want within %v (keepalive idle %v + %d × %v + %v slack)",
					serverTook.Round(100*time.Millisecond), bound, vanishIdle, vanishCount, vanishInterval, vanishSlack)
			}
			if serverTook < vanishIdle+(vanishCount-1)*vanishInterval {
				t.Errorf("the server's connection failed %v after the client vanished, before keepalive could have declared the client dead", serverTook)
			}
			if !released {
				t.Errorf("tcpd_relays_active = %v %v after the client vanished, want 0", m["tcpd_relays_active"], relayTook.Round(100*time.Millisecond))
			}
		})
	}
}

// TestRobustUpstreamNeverReads connects to a server that accepts and never
// reads, and writes until the client's writes block. By then every buffer
// on the way is full: tcpd must advertise a zero window to the client
// rather than buffer without bound, hold its RSS, and sleep rather than
// spin while stalled.
func TestRobustUpstreamNeverReads(t *testing.T) {
	g := startGateway(t, netlab.Options{}, gwConfig{Metrics: true})
	hold := make(chan struct{})
	defer close(hold)
	port := serve(t, g.Server, func(net.Conn) { <-hold })
	pid := tcpdPid(t, g)
	before := sample(t, g)
	c, err := g.Client.DialTimeout("tcp", net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port)), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// Write until a write makes no progress for a second.
	buf := make([]byte, 64<<10)
	var written int64
	start := time.Now()
	for {
		c.SetWriteDeadline(time.Now().Add(time.Second))
		n, err := c.Write(buf)
		written += int64(n)
		if isTimeout(err) {
			break
		}
		if err != nil {
			t.Fatalf("write after %d bytes: %v", written, err)
		}
		if time.Since(start) > 60*time.Second {
			t.Fatalf("the client wrote %s in 60s and never blocked", mibs(float64(written)))
		}
	}
	blocked := time.Since(start)
	m1 := sample(t, g)

	// Stalled: 5s more of trying to write, with tcpd's CPU time measured.
	// The client's kernel may still take a little into its own buffer
	// (it grows the send buffer as ACKs of its window probes come in);
	// what tcpd accepts is what the client's socket sees acknowledged.
	acked := tcpInfo(t, c).Bytes_acked
	cpu0 := cpuTime(t, pid)
	c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Write(buf)
	time.Sleep(time.Until(start.Add(blocked + 5*time.Second))) // a write that returned early
	cpu := cpuTime(t, pid) - cpu0
	m2 := sample(t, g)
	info := tcpInfo(t, c)
	ss := ssInfo(t, g, port)

	rss := m2["process_resident_memory_bytes"]
	t.Logf("the client wrote %s before a write blocked for 1s (after %v); tcpd relayed %s to the server; during 5s of stall: tcpd acknowledged %d more bytes, "+
		"the client's kernel took %d more (%v), tcpd used %v of CPU, RSS %s (%s before)",
		mibs(float64(written)), blocked.Round(100*time.Millisecond), mibs(m1[`tcpd_relay_bytes_total{direction="in"}`]),
		info.Bytes_acked-acked, n, errno(err), cpu, mibs(rss), mibs(before["process_resident_memory_bytes"]))
	t.Logf("client socket: tcpd's advertised window %d bytes, %d zero-window probes outstanding (backoff %d), receive-window-limited for %v; ss: %s",
		info.Snd_wnd, info.Probes, info.Backoff, time.Duration(info.Rwnd_limited)*time.Microsecond, ss)
	if got := info.Bytes_acked - acked; got != 0 {
		t.Errorf("tcpd acknowledged %d bytes from the client during the stall, want 0", got)
	}
	if info.Snd_wnd != 0 {
		t.Errorf("tcpd advertises a %d-byte window to the client while nothing drains, want 0", info.Snd_wnd)
	}
	if got := m2[`tcpd_relay_bytes_total{direction="in"}`] - m1[`tcpd_relay_bytes_total{direction="in"}`]; got != 0 {
		t.Errorf("tcpd relayed %.0f bytes to a server that reads nothing, during the stall", got)
	}
	// The bound: the netstack's receive buffer for the client leg is at
	// most 4 MiB and the relay holds one 64 KiB buffer; the rest waits in
	// kernel socket buffers (the client's, the upstream's, the server's),
	// which are not tcpd's RSS. 16 MiB over the idle RSS allows for the
	// netstack's buffer overhead, well short of the tens of MiB the client
	// wrote.
	if bound := before["process_resident_memory_bytes"] + 16*mib; rss > bound {
		t.Errorf("tcpd's RSS is %s while stalled, want under %s (%s before + 16 MiB)", mibs(rss), mibs(bound), mibs(before["process_resident_memory_bytes"]))
	}
	if cpu >= 200*time.Millisecond {
		t.Errorf("tcpd used %v of CPU during 5s of stall, want under 200ms: it spins", cpu)
	}
}

// ssInfo returns the client namespace's `ss -tin` line for the connection
// to port.
func ssInfo(t *testing.T, g *gateway, port int) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := g.Client.Command(ctx, "ss", "-Htin", "dport", "=", fmt.Sprintf(":%d", port)).Output()
	if err != nil {
		t.Fatalf("ss -tin in the client namespace: %v", err)
	}
	return strings.Join(strings.Fields(string(out)), " ")
}

// blackholeDialTimeout is upstream.dial_timeout in TestRobustBlackholedUpstream.
const blackholeDialTimeout = 2 * time.Second

// TestRobustBlackholedUpstream makes 100 connections at once to a
// destination whose packets vanish. Each must be refused (tcpd's RST) once
// tcpd's 2s dial timeout expires, and while they are all pending a
// connection to a live server must complete in under a second: stuck dials
// never hold up others.
func TestRobustBlackholedUpstream(t *testing.T) {
	const n = 100
	g := startGateway(t, netlab.Options{}, gwConfig{Metrics: true, DialTimeout: blackholeDialTimeout.String()})
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
	live := net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(serve(t, g.Server, func(c net.Conn) { io.Copy(c, c) })))

	type result struct {
		took time.Duration
		err  error
	}
	results := make(chan result, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			addr := net.JoinHostPort(netip.AddrFrom4([4]byte{198, 18, 200, byte(1 + i%250)}).String(), fmt.Sprint(80+i))
			c, took, err := timedDial(g, addr, 10*time.Second)
			if err == nil {
				c.Close()
			}
			results <- result{took, err}
		})
	}
	// All 100 are waiting on their dials before the live connection.
	m, ok := waitMetrics(t, g, time.Second, func(m map[string]float64) bool { return m["tcpd_handshakes_in_flight"] >= n })
	if !ok {
		t.Fatalf("%v handshakes in flight, want the %d blackholed ones", m["tcpd_handshakes_in_flight"], n)
	}
	c, liveTook, err := timedDial(g, live, 5*time.Second)
	if err != nil {
		t.Fatalf("connect to the live server with %d dials stuck: %v after %v", n, err, liveTook)
	}
	echoErr := echoOnce(c)
	c.Close()
	wg.Wait()
	close(results)

	var took []time.Duration
	var wrong []string
	for r := range results {
		took = append(took, r.took)
		if !isRefused(r.err) {
			wrong = append(wrong, fmt.Sprintf("%v after %v", r.err, r.took.Round(10*time.Millisecond)))
		}
	}
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	m = sample(t, g)
	t.Logf("live connect with %d dials stuck: %v; blackholed connects refused after min %v, median %v, max %v; dial timeouts counted %v",
		n, liveTook, took[0].Round(time.Millisecond), took[n/2].Round(time.Millisecond), took[n-1].Round(time.Millisecond),
		m[`tcpd_upstream_connect_failures_total{reason="timeout"}`])
	if liveTook >= time.Second {
		t.Errorf("connect to the live server took %v while %d dials were stuck, want under 1s", liveTook, n)
	}
	if echoErr != nil {
		t.Errorf("live connection: %v", echoErr)
	}
	if len(wrong) > 0 {
		t.Errorf("%d of %d blackholed connects were not refused: %v", len(wrong), n, wrong[:min(5, len(wrong))])
	}
	// The client dialled at about the same moment; each RST comes when
	// tcpd's dial times out.
	if took[0] < blackholeDialTimeout-100*time.Millisecond || took[n-1] > blackholeDialTimeout+2*time.Second {
		t.Errorf("refusals came after %v to %v, want all at about the %v dial timeout", took[0], took[n-1], blackholeDialTimeout)
	}
	if got := m[`tcpd_upstream_connect_failures_total{reason="timeout"}`]; got != n {
		t.Errorf(`tcpd_upstream_connect_failures_total{reason="timeout"} = %v, want %d`, got, n)
	}
}

// upstreamRecvQ is the Recv-Q of the gateway's socket to the server's
// port, as ss shows it: what tcpd's kernel took from the destination and
// tcpd has not read.
func upstreamRecvQ(t *testing.T, g *gateway, port int) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := g.Gateway.Command(ctx, "ss", "-Htn", "dport", "=", fmt.Sprintf(":%d", port)).Output()
	if err != nil {
		t.Fatalf("ss: %v", err)
	}
	fields := strings.Fields(string(out))
	if len(fields) < 2 {
		t.Fatalf("ss shows no socket to port %d: %q", port, out)
	}
	n, err := strconv.ParseInt(fields[1], 10, 64)
	if err != nil {
		t.Fatalf("ss: Recv-Q %q: %v", fields[1], err)
	}
	return n
}

// slowReaderBulk is what the server sends in TestRobustSlowReader.
const slowReaderBulk = 32 * mib

// TestRobustSlowReader has the client stop reading while the server sends
// 32 MiB: tcpd must stop reading from the server once the client's window
// and its own buffer are full (the server's writes stall well short of 32
// MiB), hold its RSS, and deliver every byte intact when the client reads
// again.
func TestRobustSlowReader(t *testing.T) {
	g := startGateway(t, netlab.Options{}, gwConfig{Metrics: true})
	var written atomic.Int64
	serverErr := make(chan error, 1)
	port := serve(t, g.Server, func(c net.Conn) {
		_, err := io.Copy(countingWriter{c, &written}, stream(5, slowReaderBulk))
		serverErr <- err
	})
	before := sample(t, g)
	c, err := g.Client.DialTimeout("tcp", net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port)), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// The client reads nothing until the server's writes stall.
	stalled, settled := plateau(30*time.Second, 2*time.Second, written.Load)
	m := sample(t, g)
	relayed := m[`tcpd_relay_bytes_total{direction="out"}`]
	rss := m["process_resident_memory_bytes"]
	t.Logf("with the client not reading, the server's writes stalled at %s (settled %v); tcpd had relayed %s to the client; RSS %s (%s before)",
		mibs(float64(stalled)), settled, mibs(relayed), mibs(rss), mibs(before["process_resident_memory_bytes"]))
	if !settled {
		t.Fatalf("the server kept writing for 30s (%s) to a client that reads nothing", mibs(float64(stalled)))
	}
	// What the server wrote sits in its own send buffer, the gateway's
	// receive buffer, the netstack's send buffer (at most 4 MiB) and the
	// client's receive buffer. The gateway's receive buffer is the
	// kernel's, which grows as fast as tcpd read at first, up to
	// net.ipv4.tcp_rmem's maximum (32 MiB on some hosts): so what shows
	// that tcpd stopped reading is what it relayed, and the bytes it left
	// unread in its upstream socket (its Recv-Q).
	recvQ := upstreamRecvQ(t, g, port)
	t.Logf("the gateway's upstream socket holds %s unread", mibs(float64(recvQ)))
	if limit := 6.0 * mib; relayed > limit {
		t.Errorf("tcpd relayed %s to a client that reads nothing, want at most its netstack's send buffer and a relay buffer (under %s)", mibs(relayed), mibs(limit))
	}
	if recvQ == 0 {
		t.Errorf("tcpd left nothing unread in its upstream socket with the client not reading: it keeps reading from the upstream")
	}
	// The netstack's send buffer (4 MiB at most) plus the relay's 64 KiB
	// buffer is what tcpd may hold; 16 MiB over the idle RSS leaves room
	// for allocator overhead and nothing like the 32 MiB transfer.
	if bound := before["process_resident_memory_bytes"] + 16*mib; rss > bound {
		t.Errorf("tcpd's RSS is %s with the client not reading, want under %s (%s before + 16 MiB)", mibs(rss), mibs(bound), mibs(before["process_resident_memory_bytes"]))
	}

	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	h := sha256.New()
	got, err := io.Copy(h, c)
	if err != nil || got != slowReaderBulk {
		t.Fatalf("after resuming the client read %d of %d bytes: %v", got, slowReaderBulk, err)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	if sum != streamSum(5, slowReaderBulk) {
		t.Fatalf("the client received %s with the wrong SHA-256", mibs(slowReaderBulk))
	}
	if err := <-serverErr; err != nil {
		t.Fatalf("server: %v", err)
	}
}

// TestKeepaliveResetsClient: a client that is still there but whose
// segments are lost on the way (here dropped in the gateway, from the
// moment the connection goes idle) does not answer tcpd's keepalive
// probes, and tcpd gives the client leg up after idle + interval × count.
// Like Linux's keepalive it then sends the client a RST, so that the
// client learns the connection is over instead of holding it open until
// it next sends; the netstack itself sends none.
func TestKeepaliveResetsClient(t *testing.T) {
	lookTool(t, "iptables", "iptables")
	g := startGateway(t, netlab.Options{}, gwConfig{
		Metrics: true, KeepaliveIdle: vanishIdle.String(), KeepaliveInterval: vanishInterval.String(), KeepaliveCount: vanishCount,
		IdleTimeout: "1h", HalfCloseTimeout: "1h",
	})
	port := serve(t, g.Server, func(c net.Conn) { io.Copy(io.Discard, c) })
	c, err := g.Client.DialTimeout("tcp", net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port)), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the write and its ACK are through
	sport := fmt.Sprint(c.LocalAddr().(*net.TCPAddr).Port)
	if out, err := g.Gateway.Command(context.Background(), "iptables", "-t", "raw", "-I", "PREROUTING",
		"-i", g.GatewayClientLink, "-p", "tcp", "--sport", sport, "-j", "DROP").CombinedOutput(); err != nil {
		t.Fatalf("iptables: %v: %s", err, out)
	}
	lost := time.Now()
	bound := vanishIdle + vanishCount*vanishInterval + vanishSlack
	c.SetReadDeadline(time.Now().Add(bound))
	_, err = c.Read(make([]byte, 1))
	took := time.Since(lost)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the client's read %v after its segments began to be lost: %v; want ECONNRESET, the RST tcpd sends when keepalive (idle %v, %d × %v) gives the leg up",
			took.Round(100*time.Millisecond), err, vanishIdle, vanishCount, vanishInterval)
	}
	t.Logf("the client was reset %v after its segments began to be lost", took.Round(100*time.Millisecond))
	if min := vanishIdle + vanishCount*vanishInterval; took < min-time.Second {
		t.Errorf("reset after %v, before keepalive could have given up (%v)", took, min)
	}
}
