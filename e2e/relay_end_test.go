//go:build linux

package e2e_test

import (
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"golang.org/x/sys/unix"
	"tcpd/internal/netlab"
)

// How a relay ends, as the client and the destination see it. A relay
// must never lie: a stream that was cut reaches the other side as a reset,
// never as a clean end of stream; a half-close is passed on however long
// the connection was idle before it; a reset is passed on even while the
// relay's write toward the other side is blocked; and no relay outlives
// its tracking entry, so that `tcpd conns` can always show and kill it.
// The tests look only at what the two ends and the metrics see.

// Linux TCP states as TCP_INFO reports them (include/net/tcp_states.h).
const (
	tcpEstablished = 1
	tcpClose       = 7
)

// resetWithin is how soon a reset must be passed on.
const resetWithin = time.Second

// watchRelays scrapes tcpd every 50ms for as long as the test runs and
// fails it if any scrape showed more relays in progress
// (tcpd_relays_active) than tracking entries with a relay
// (tcpd_conntrack_relay_entries): a relay that outlived its entry, which
// `tcpd conns` could neither show nor kill.
func watchRelays(t *testing.T, g *gateway) {
	t.Helper()
	stop, done := make(chan struct{}), make(chan struct{})
	var (
		scrapes, withRelay, violations int
		bad                            []string
	)
	go func() {
		defer close(done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			m, err := trySample(g)
			if err != nil {
				continue
			}
			scrapes++
			active, entries := m["tcpd_relays_active"], m["tcpd_conntrack_relay_entries"]
			if active > 0 {
				withRelay++
			}
			if active > entries {
				violations++
				// The first few and the last one.
				v := fmt.Sprintf("relays %v > entries with a relay %v (all entries %v, states %v)",
					active, entries, m["tcpd_conntrack_entries"], nonZero(m, "tcpd_tcp_connection_states"))
				if len(bad) < 3 {
					bad = append(bad, v)
				} else {
					bad = append(bad[:3], "…", v)
				}
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-done
		if violations > 0 {
			t.Errorf("a relay outlived its tracking entry in %d of %d scrapes: %s", violations, scrapes, strings.Join(bad, "; "))
		}
		if withRelay == 0 {
			t.Errorf("none of %d scrapes saw a relay in progress: the invariant was never put to the test", scrapes)
		}
	})
}

// ends returns the relays that ended, by how, since before.
func ends(before, after map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for _, e := range []string{"clean", "client_reset", "upstream_reset", "timeout", "aborted"} {
		k := `tcpd_relay_ended_total{end="` + e + `"}`
		if d := after[k] - before[k]; d != 0 {
			out[e] = d
		}
	}
	return out
}

// assertEnds waits until no relay is in progress and checks how the relays
// since before ended.
func assertEnds(t *testing.T, g *gateway, before map[string]float64, want map[string]float64) {
	t.Helper()
	m, ok := waitMetrics(t, g, 10*time.Second, func(m map[string]float64) bool {
		return m["tcpd_relays_active"] == 0 && m["tcpd_conntrack_relay_entries"] == 0
	})
	if !ok {
		t.Errorf("10s later tcpd still holds %v", holding(m))
	}
	got := ends(before, m)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("relays ended %v, want %v", got, want)
	}
}

// setServerLinkDown takes the server's veth down, inside the server
// namespace: the destination vanishes without a FIN or a RST. With silent,
// the gateway first gets a permanent neighbour entry for the server, so
// that its packets to the server are dropped without a word, as on a path
// that died beyond the first hop; without it, the gateway's neighbour
// resolution fails and the kernel reports the destination unreachable.
func setServerLinkDown(t *testing.T, g *gateway, silent bool) {
	t.Helper()
	var mac net.HardwareAddr
	var link netlink.Link
	if err := g.Server.Do(func() error {
		var err error
		link, err = netlink.LinkByName(g.ServerLink)
		mac = link.Attrs().HardwareAddr
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if silent {
		if err := g.Gateway.Do(func() error {
			gl, err := netlink.LinkByName(g.GatewayServerLink)
			if err != nil {
				return err
			}
			return netlink.NeighSet(&netlink.Neigh{
				LinkIndex: gl.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
				IP: g.ServerAddr4.AsSlice(), HardwareAddr: mac,
			})
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.Server.Do(func() error { return netlink.LinkSetDown(link) }); err != nil {
		t.Fatal(err)
	}
}

// writeUntilBlocked writes to c until a write makes no progress for a
// second, and returns how much it wrote.
func writeUntilBlocked(c net.Conn, max time.Duration) (int64, error) {
	buf := make([]byte, 64<<10)
	var written int64
	start := time.Now()
	for time.Since(start) < max {
		c.SetWriteDeadline(time.Now().Add(time.Second))
		n, err := c.Write(buf)
		written += int64(n)
		if isTimeout(err) {
			c.SetWriteDeadline(time.Time{})
			return written, nil
		}
		if err != nil {
			return written, err
		}
	}
	return written, fmt.Errorf("wrote %s in %v and never blocked", mibs(float64(written)), max)
}

// waitState polls c's TCP_INFO until its state is want or d passes, and
// returns the last state and when it was seen.
func waitState(t *testing.T, c net.Conn, want uint8, d time.Duration) (uint8, time.Duration) {
	t.Helper()
	start := time.Now()
	for {
		st := tcpInfo(t, c).State
		if st == want || time.Since(start) > d {
			return st, time.Since(start)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// drainEnd reads c to its end and returns how it ended.
func drainEnd(c net.Conn, d time.Duration) (int64, error) {
	c.SetReadDeadline(time.Now().Add(d))
	return io.Copy(io.Discard, c)
}

// endName says how a read loop ended, for failure messages.
func endName(err error) string {
	switch {
	case err == nil:
		return "EOF (a clean end of stream)"
	case isTimeout(err):
		return "nothing (still open)"
	}
	return errno(err)
}

// halfCloseTimeout is tcp.half_close_timeout in TestRelayHalfCloseAfterIdle;
// idleBeforeFIN is longer.
const (
	halfCloseTimeout = 2 * time.Second
	idleBeforeFIN    = 3 * time.Second
)

// dialPort connects the client through tcpd to the destination's port,
// closes the connection when the test ends, and gives it a deadline d
// away.
func dialPort(t *testing.T, g *gateway, port int, d time.Duration) net.Conn {
	t.Helper()
	c, err := g.Client.DialTimeout("tcp", net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port)), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(d))
	return c
}

// TestRelayHalfCloseAfterIdle half-closes connections that were idle for
// longer than tcp.half_close_timeout. The timeout bounds how long a
// half-closed connection may stay silent, counted from the half-close: the
// half-close itself must be passed on as a FIN, the open direction must
// keep working, and a connection that stays silent after its half-close
// is reset only once the timeout has run from the FIN.
func TestRelayHalfCloseAfterIdle(t *testing.T) {
	g := startGateway(t, netlab.Options{}, gwConfig{Metrics: true, HalfCloseTimeout: halfCloseTimeout.String(), TimeWait: "1s"})
	watchRelays(t, g)
	before := sample(t, g)
	dial := func(t *testing.T, port int) net.Conn { return dialPort(t, g, port, 30*time.Second) }

	t.Run("client half-closes", func(t *testing.T) {
		// An echo server that answers only once the request has ended,
		// and takes a moment to.
		port := serve(t, g.Server, func(c net.Conn) {
			c.SetDeadline(time.Now().Add(30 * time.Second))
			req, err := io.ReadAll(c)
			if err == nil {
				time.Sleep(200 * time.Millisecond)
				c.Write(req)
			}
		})
		c := dial(t, port)
		io.WriteString(c, "hello")
		time.Sleep(idleBeforeFIN)
		c.(*net.TCPConn).CloseWrite()
		got, err := readAllString(c)
		if err != nil || got != "hello" {
			t.Fatalf("after half-closing a connection idle for %v, the client read %q then %s; want %q then EOF",
				idleBeforeFIN, got, endName(err), "hello")
		}
	})

	t.Run("server half-closes", func(t *testing.T) {
		// The server answers at once, half-closes after a pause, and
		// then reads what the client still has to say.
		rest := make(chan string, 1)
		port := serve(t, g.Server, func(c net.Conn) {
			c.SetDeadline(time.Now().Add(30 * time.Second))
			if _, err := io.ReadFull(c, make([]byte, 5)); err != nil {
				rest <- "read: " + err.Error()
				return
			}
			io.WriteString(c, "olleh")
			time.Sleep(idleBeforeFIN)
			c.(*net.TCPConn).CloseWrite()
			b, err := io.ReadAll(c)
			if err != nil {
				rest <- fmt.Sprintf("%q then %s", b, endName(err))
				return
			}
			rest <- string(b)
		})
		c := dial(t, port)
		io.WriteString(c, "hello")
		got, err := readAllString(c)
		if err != nil || got != "olleh" {
			t.Fatalf("the client read %q then %s; want %q then EOF", got, endName(err), "olleh")
		}
		if _, err := io.WriteString(c, "world"); err != nil {
			t.Fatalf("the client's write after the server's half-close: %v", err)
		}
		c.(*net.TCPConn).CloseWrite()
		select {
		case r := <-rest:
			if r != "world" {
				t.Fatalf("after its own half-close the server read %s, want %q then EOF", r, "world")
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the server never finished reading")
		}
	})

	t.Run("silent after the half-close", func(t *testing.T) {
		// The server reads the request to its end and then says nothing:
		// the timeout runs from the client's FIN.
		hold := make(chan struct{})
		defer close(hold)
		port := serve(t, g.Server, func(c net.Conn) {
			c.SetDeadline(time.Now().Add(30 * time.Second))
			io.Copy(io.Discard, c)
			<-hold // then nothing, until the test ends
		})
		c := dial(t, port)
		io.WriteString(c, "hello")
		time.Sleep(idleBeforeFIN)
		c.(*net.TCPConn).CloseWrite()
		fin := time.Now()
		got, err := readAllString(c)
		took := time.Since(fin)
		if !isReset(err) {
			t.Fatalf("the client read %q then %s; want a reset once the half-close timeout ran out", got, endName(err))
		}
		if took < halfCloseTimeout-200*time.Millisecond || took > halfCloseTimeout+3*time.Second {
			t.Fatalf("the reset came %v after the client's half-close, want about tcp.half_close_timeout (%v) after it",
				took.Round(10*time.Millisecond), halfCloseTimeout)
		}
	})

	assertEnds(t, g, before, map[string]float64{"clean": 2, "timeout": 1})
}

// Keepalive of the tests where a peer dies: idle 2s, then 2 probes 1s
// apart; the TCP user timeout is as long (4s). deathSlack covers a
// retransmission in flight and a loaded machine.
const (
	deathIdle     = 2 * time.Second
	deathInterval = time.Second
	deathCount    = 2
	deathSlack    = 5 * time.Second
	deathBound    = deathIdle + deathCount*deathInterval + deathSlack
)

func deathConfig() gwConfig {
	return gwConfig{
		Metrics: true, KeepaliveIdle: deathIdle.String(), KeepaliveInterval: deathInterval.String(),
		KeepaliveCount: deathCount, IdleTimeout: "1h", HalfCloseTimeout: "1h",
	}
}

// TestRelayUpstreamDeathIsReset takes the destination's link down in the
// middle of a transfer. tcpd's upstream socket then fails: with ETIMEDOUT
// by keepalive when the path drops everything silently and tcpd has
// nothing in flight (downloading), with ETIMEDOUT by the TCP user timeout
// when its data goes unacknowledged (uploading), or with EHOSTUNREACH when
// the gateway learns the destination is unreachable. The client must get a
// reset and no FIN before it, never a clean end of stream that would make
// a truncated file look complete, and the relay must be counted
// upstream_reset. The client only reads (downloading) or only writes
// (uploading): a socket read and written at once may hand the reset to the
// writer and EOF to the reader, so the wire says whether a FIN came.
func TestRelayUpstreamDeathIsReset(t *testing.T) {
	for _, tc := range []struct {
		name           string
		upload, silent bool
	}{
		{"download, keepalive", false, true},
		{"upload, user timeout", true, true},
		{"download, unreachable", false, false},
	} {
		upload := tc.upload
		t.Run(tc.name, func(t *testing.T) {
			g := startGateway(t, netlab.Options{}, deathConfig())
			watchRelays(t, g)
			sn := startSniffer(t, g)
			before := sample(t, g)
			var moved atomic.Int64
			port := serve(t, g.Server, func(c net.Conn) {
				closeAtEnd(t, c)
				if upload {
					io.Copy(io.Discard, countingReader{c, &moved})
				} else {
					io.Copy(countingWriter{c, &moved}, stream(9, 1<<40))
				}
			})
			c, err := g.Client.DialTimeout("tcp", net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port)), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			ended := make(chan transferEnd, 1)
			go func() {
				c.SetDeadline(time.Now().Add(40 * time.Second))
				var e transferEnd
				if upload {
					e.n, e.err = io.Copy(c, stream(9, 1<<40))
				} else {
					e.n, e.err = io.Copy(io.Discard, c)
				}
				e.at = time.Now()
				ended <- e
			}()
			if !waitFor(10*time.Second, func() bool { return moved.Load() >= 4*mib }) {
				t.Fatalf("only %d bytes moved in 10s", moved.Load())
			}
			setServerLinkDown(t, g, tc.silent)
			down := time.Now()
			e := <-ended
			took := e.at.Sub(down)
			fins, rsts := finsAndResets(sn, port)
			t.Logf("%s moved before the destination's link went down; the client's transfer ended %v later with %s after %s; the client received %d FIN and %d RST",
				mibs(float64(moved.Load())), took.Round(100*time.Millisecond), endName(e.err), mibs(float64(e.n)), fins, rsts)
			if fins > 0 {
				t.Errorf("the destination died and the client received a FIN: a clean end of a cut stream")
			}
			if !isReset(e.err) || rsts == 0 {
				t.Fatalf("the destination died and the client's stream ended with %s (%d RST seen); want a reset", endName(e.err), rsts)
			}
			if took > deathBound {
				t.Errorf("the reset reached the client %v after the destination died, want within %v", took, deathBound)
			}
			assertEnds(t, g, before, map[string]float64{"upstream_reset": 1})
		})
	}
}

// transferEnd is how one side's transfer ended.
type transferEnd struct {
	n   int64
	err error
	at  time.Time
}

// closeAtEnd closes c when the test ends, so that serve's cleanup does not
// wait out a handler blocked on a dead path.
func closeAtEnd(t *testing.T, c net.Conn) { t.Cleanup(func() { c.Close() }) }

// finsAndResets counts the segments sn captured from or to port that carry
// a FIN, and those that carry a RST, waiting up to a second for the sniffer
// to catch up with a RST the socket has already taken.
func finsAndResets(sn *sniffer, port int) (fins, rsts int) {
	waitFor(time.Second, func() bool {
		fins, rsts = countFINRST(sn.segments(), port)
		return rsts > 0
	})
	return fins, rsts
}

func countFINRST(segs []tcpSegment, port int) (fins, rsts int) {
	for _, s := range segs {
		if int(s.src.Port()) != port && int(s.dst.Port()) != port {
			continue
		}
		if s.flags.Contains(header.TCPFlagFin) {
			fins++
		}
		if s.flags.Contains(header.TCPFlagRst) {
			rsts++
		}
	}
	return fins, rsts
}

// TestRelayClientDeathIsReset is the mirror: the client's link goes down
// while the destination sends. tcpd's client leg fails by its user
// timeout; the destination must get a reset and no FIN, and the relay must
// be counted client_reset.
func TestRelayClientDeathIsReset(t *testing.T) {
	g := startGateway(t, netlab.Options{}, deathConfig())
	watchRelays(t, g)
	sn := startSnifferOn(t, g.Server, g.ServerLink)
	before := sample(t, g)
	var moved atomic.Int64
	serverEnd := make(chan transferEnd, 1)
	port := serve(t, g.Server, func(c net.Conn) {
		closeAtEnd(t, c)
		c.SetDeadline(time.Now().Add(40 * time.Second))
		// The server only writes: a write blocked on a full buffer
		// returns the reset.
		n, err := io.Copy(countingWriter{c, &moved}, stream(9, 1<<40))
		serverEnd <- transferEnd{n, err, time.Now()}
	})
	c, err := g.Client.DialTimeout("tcp", net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port)), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go io.Copy(io.Discard, c)
	if !waitFor(10*time.Second, func() bool { return moved.Load() >= 4*mib }) {
		t.Fatalf("only %d bytes moved in 10s", moved.Load())
	}
	setClientLink(t, g, false)
	down := time.Now()
	defer setClientLink(t, g, true)
	var e transferEnd
	select {
	case e = <-serverEnd:
	case <-time.After(deathBound + 10*time.Second):
		t.Fatalf("the destination's connection was still open %v after the client vanished", deathBound+10*time.Second)
	}
	took := e.at.Sub(down)
	fins, rsts := finsAndResets(sn, port)
	t.Logf("the destination's writes ended %v after the client vanished, with %s; the destination received %d FIN and %d RST",
		took.Round(100*time.Millisecond), endName(e.err), fins, rsts)
	if fins > 0 {
		t.Errorf("the client died and the destination received a FIN: a clean end of a cut stream")
	}
	if !isReset(e.err) || rsts == 0 {
		t.Fatalf("the client died and the destination saw %s (%d RST seen); want a reset", endName(e.err), rsts)
	}
	if took > deathBound {
		t.Errorf("the reset reached the destination %v after the client died, want within %v", took, deathBound)
	}
	assertEnds(t, g, before, map[string]float64{"client_reset": 1})
}

// TestRelayClientResetWhileUpstreamBlocked sends to a destination that
// accepts and never reads until every buffer on the way is full and
// tcpd's write to the destination blocks; then the client closes with a
// RST (SO_LINGER 0). The destination must see the reset within a second,
// and the relay must end, counted client_reset.
func TestRelayClientResetWhileUpstreamBlocked(t *testing.T) {
	g := startGateway(t, netlab.Options{}, gwConfig{Metrics: true})
	watchRelays(t, g)
	before := sample(t, g)
	hold := make(chan struct{})
	defer close(hold)
	accepted := make(chan net.Conn, 1)
	port := serve(t, g.Server, func(c net.Conn) {
		accepted <- c
		<-hold
	})
	c, err := g.Client.DialTimeout("tcp", net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port)), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc := <-accepted
	written, err := writeUntilBlocked(c, 30*time.Second)
	if err != nil {
		t.Fatalf("client write: %v", err)
	}
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	st, took := waitState(t, sc, tcpClose, resetWithin)
	t.Logf("the client wrote %s before blocking, then reset; the destination's socket was in TCP state %d %v later",
		mibs(float64(written)), st, took.Round(time.Millisecond))
	if st != tcpClose {
		t.Errorf("%v after the client's reset the destination's connection is still in TCP state %d (1 = established), want closed by a reset", resetWithin, st)
	}
	n, err := drainEnd(sc, 2*time.Second)
	if !isReset(err) {
		t.Errorf("the destination read %s queued and then %s; want a reset", mibs(float64(n)), endName(err))
	}
	assertEnds(t, g, before, map[string]float64{"client_reset": 1})
}

// TestRelayUpstreamResetWhileClientWindowZero is the mirror: the
// destination sends to a client that never reads until every buffer on the
// way is full and tcpd's write to the client blocks on its zero window;
// then the destination closes with a RST. The client must see the reset
// within a second, and the relay must end, counted upstream_reset.
func TestRelayUpstreamResetWhileClientWindowZero(t *testing.T) {
	g := startGateway(t, netlab.Options{}, gwConfig{Metrics: true})
	watchRelays(t, g)
	before := sample(t, g)
	type sent struct {
		n   int64
		err error
	}
	reset := make(chan sent, 1)
	port := serve(t, g.Server, func(c net.Conn) {
		n, err := writeUntilBlocked(c, 60*time.Second)
		c.(*net.TCPConn).SetLinger(0)
		reset <- sent{n, err}
	})
	c, err := g.Client.DialTimeout("tcp", net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port)), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := <-reset
	if s.err != nil {
		t.Fatalf("server write: %v", s.err)
	}
	st, took := waitState(t, c, tcpClose, resetWithin)
	t.Logf("the destination wrote %s before blocking, then reset; the client's socket was in TCP state %d %v later",
		mibs(float64(s.n)), st, took.Round(time.Millisecond))
	if st != tcpClose {
		t.Errorf("%v after the destination's reset the client's connection is still in TCP state %d (1 = established), want closed by a reset", resetWithin, st)
	}
	n, err := drainEnd(c, 2*time.Second)
	if !isReset(err) {
		t.Errorf("the client read %s and then %s; want a reset", mibs(float64(n)), endName(err))
	}
	assertEnds(t, g, before, map[string]float64{"upstream_reset": 1})
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// TestRelayClientResetAtOnce connects, sends a few bytes and resets, 300
// times as fast as it can: the reset often arrives while tcpd is still
// completing the handshake or attaching the relay. The destination must
// see every one of these connections end with a reset, never a FIN, which
// would make a request cut short look whole; and tcpd must not count them
// as connections it refused.
func TestRelayClientResetAtOnce(t *testing.T) {
	g := startGateway(t, netlab.Options{}, gwConfig{Metrics: true, LogLevel: "info"})
	const n, msg = 300, 45
	var (
		mu    sync.Mutex
		ends  = map[string]int{}
		count atomic.Int64
	)
	port := serve(t, g.Server, func(c net.Conn) {
		defer count.Add(1)
		c.SetDeadline(time.Now().Add(20 * time.Second))
		got, err := io.Copy(io.Discard, c)
		end := endName(err)
		if got > msg {
			end = "more bytes than were sent"
		}
		mu.Lock()
		ends[end]++
		mu.Unlock()
	})
	addr := net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port))
	for i := range n {
		c, err := g.Client.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		c.Write(make([]byte, msg))
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}
	// Every connection the destination accepted has ended.
	m, _ := waitMetrics(t, g, 10*time.Second, func(m map[string]float64) bool { return idle(m) })
	accepted := m[`tcpd_connections_total{result="relayed"}`] + m[`tcpd_connections_total{result="handshake_failed"}`] + m[drop("untracked")]
	waitFor(10*time.Second, func() bool { return count.Load() >= int64(accepted) })
	mu.Lock()
	defer mu.Unlock()
	t.Logf("the destination saw %v; tcpd: connections %v, untracked %v", ends, nonZero(m, "tcpd_connections_total"), m[drop("untracked")])
	for end, k := range ends {
		if end != "ECONNRESET" {
			t.Errorf("%d of the destination's connections ended with %s; want every one reset", k, end)
		}
	}
	// A client's own reset is not a refusal of tcpd's: no cap, policy or
	// full table refused anything here.
	if d, u := m[`tcpd_connections_total{result="denied"}`], m[drop("untracked")]; d != 0 || u != 0 {
		t.Errorf("tcpd counted %v connections denied and %v dropped as untracked; the clients reset them", d, u)
	}
}

// TestRelayFINWithLastBytes has clients whose FIN rides on their last data
// segment (TCP_CORK holds the bytes until shutdown tacks the FIN on). The
// destination must get every byte and then EOF at once, not at its 10 s
// deadline. The relay reads the client leg only after the leg has
// signalled, and the netstack signals such a segment twice: as it queues
// the bytes, and again, after it has sent its ACK, as it queues the FIN
// (gVisor's receiver.consumeSegment). A relay step that runs between the
// two gets the FIN's own signal and reads again; one that runs after both,
// or after a segment that came before the relay started, must find the end
// by reading on after a short read. Which of the two a connection gets is a
// race between the netstack's goroutine and the relay's shard, whatever the
// size: on two Ps, with that read removed, each size still passed now and
// then, the 1-byte one included. tcpd runs here on one P (GOMAXPROCS 1, as
// on a one-CPU gateway): the shard's goroutine, woken by the first signal,
// waits for the P that the netstack's goroutine keeps through the ACK's
// short write to the second, so every connection hands the relay its last
// bytes and its FIN for one step, and each size fails without that read.
func TestRelayFINWithLastBytes(t *testing.T) {
	t.Parallel()
	g := startGateway(t, netlab.Options{}, gwConfig{MaxProcs: 1})
	type got struct {
		n   int
		err error
	}
	ends := make(chan got, 64)
	port := serve(t, g.Server, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		b, err := io.ReadAll(c)
		ends <- got{len(b), err}
		if err == nil {
			c.Write([]byte("ok"))
		}
	})
	addr := net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port))
	for i, size := range []int{1, 100, 1400, 5000, 70000} {
		c, err := g.Client.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		tc := c.(*net.TCPConn)
		raw, err := tc.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		raw.Control(func(fd uintptr) { unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_CORK, 1) })
		start := time.Now()
		if _, err := c.Write(make([]byte, size)); err != nil {
			t.Fatal(err)
		}
		if err := tc.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		reply, err := io.ReadAll(c)
		c.Close()
		e := <-ends
		took := time.Since(start)
		t.Logf("connection %d: %d bytes and FIN; the destination read %d bytes, then %s, %v after the client's write",
			i, size, e.n, endName(e.err), took.Round(10*time.Microsecond))
		if e.err != nil || e.n != size {
			t.Errorf("connection %d: the destination read %d of %d bytes, then %v", i, e.n, size, e.err)
		}
		if string(reply) != "ok" || err != nil {
			t.Errorf("connection %d: the client read %q, %v", i, reply, err)
		}
		if took > 2*time.Second {
			t.Errorf("connection %d (%d bytes and FIN): the destination saw the end after %v", i, size, took)
		}
	}
}

// TestRelayResetAfterFIN: a reset that follows a FIN is passed on as
// promptly as any other. The destination half-closes and the client's
// later bytes draw the destination's RST (its socket is closed): the
// client's connection must end in a reset, as it would talking to the
// destination directly, not linger until tcp.half_close_timeout. And the
// mirror: a client that half-closed and then resets (SO_LINGER 0) must
// reset the destination's connection.
func TestRelayResetAfterFIN(t *testing.T) {
	const halfClose = 30 * time.Second // far beyond resetWithin
	g := startGateway(t, netlab.Options{}, gwConfig{Metrics: true, HalfCloseTimeout: halfClose.String()})
	dial := func(t *testing.T, port int) net.Conn { return dialPort(t, g, port, 20*time.Second) }

	t.Run("destination", func(t *testing.T) {
		before := sample(t, g)
		port := serve(t, g.Server, func(c net.Conn) {
			io.WriteString(c, "bye")
			c.Close() // whatever comes after draws a RST
		})
		c := dial(t, port)
		if got, err := readAllString(c); got != "bye" || err != nil {
			t.Fatalf("the client read %q then %s, want %q then EOF", got, endName(err), "bye")
		}
		if _, err := io.WriteString(c, "more"); err != nil {
			t.Fatalf("the client's write after the destination's FIN: %v", err)
		}
		st, took := waitState(t, c, tcpClose, resetWithin)
		if st != tcpClose {
			t.Errorf("%v after its write the client's connection is in TCP state %d (8 = close-wait), want closed by the destination's reset", took.Round(time.Millisecond), st)
		}
		assertEnds(t, g, before, map[string]float64{"upstream_reset": 1})
	})

	t.Run("client", func(t *testing.T) {
		before := sample(t, g)
		accepted := make(chan net.Conn, 1)
		hold := make(chan struct{})
		defer close(hold)
		port := serve(t, g.Server, func(c net.Conn) {
			accepted <- c
			<-hold
		})
		c := dial(t, port)
		io.WriteString(c, "req")
		c.(*net.TCPConn).CloseWrite()
		sc := <-accepted
		sc.SetDeadline(time.Now().Add(10 * time.Second))
		if b, err := io.ReadAll(sc); string(b) != "req" || err != nil {
			t.Fatalf("the destination read %q then %s, want %q then EOF", b, endName(err), "req")
		}
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
		st, took := waitState(t, sc, tcpClose, resetWithin)
		if st != tcpClose {
			t.Errorf("%v after the client's reset the destination's connection is in TCP state %d (8 = close-wait), want closed by a reset", took.Round(time.Millisecond), st)
		}
		assertEnds(t, g, before, map[string]float64{"client_reset": 1})
	})
}

// TestRelayStalledIsNotIdle: a transfer whose receiver's window stays
// closed for longer than tcp.half_close_timeout (or tcp.idle_timeout) is
// stalled, not idle: its TCP answers the window probes, and Linux would
// keep it. When the receiver reads again, every byte arrives and the
// connection ends cleanly.
func TestRelayStalledIsNotIdle(t *testing.T) {
	const (
		timeout = 2 * time.Second
		pause   = 3 * timeout
		size    = 8 << 20 // beyond every buffer on the way
	)
	g := startGateway(t, netlab.Options{}, gwConfig{Metrics: true, HalfCloseTimeout: timeout.String(), IdleTimeout: timeout.String()})
	watchRelays(t, g)
	before := sample(t, g)
	dial := func(t *testing.T, port int) net.Conn { return dialPort(t, g, port, pause+30*time.Second) }

	t.Run("half-closed download, the client pauses", func(t *testing.T) {
		port := serve(t, g.Server, func(c net.Conn) {
			c.SetDeadline(time.Now().Add(pause + 30*time.Second))
			if _, err := io.ReadAll(c); err == nil {
				c.Write(make([]byte, size))
			}
		})
		c := dial(t, port)
		io.WriteString(c, "get")
		c.(*net.TCPConn).CloseWrite()
		time.Sleep(pause)
		n, err := io.Copy(io.Discard, c)
		if n != size || err != nil {
			t.Fatalf("after a pause of %v the client read %s then %s; want %s then EOF", pause, mibs(float64(n)), endName(err), mibs(size))
		}
	})

	t.Run("upload, the destination pauses", func(t *testing.T) {
		got := make(chan int64, 1)
		port := serve(t, g.Server, func(c net.Conn) {
			c.SetDeadline(time.Now().Add(pause + 30*time.Second))
			time.Sleep(pause)
			n, _ := io.Copy(io.Discard, c)
			got <- n
		})
		c := dial(t, port)
		if _, err := c.Write(make([]byte, size)); err != nil {
			t.Fatalf("the client's write: %v", err)
		}
		c.(*net.TCPConn).CloseWrite()
		select {
		case n := <-got:
			if n != size {
				t.Fatalf("after a pause of %v the destination read %s, want %s", pause, mibs(float64(n)), mibs(size))
			}
		case <-time.After(pause + 30*time.Second):
			t.Fatal("the destination never finished reading")
		}
		if b, err := readAllString(c); b != "" || err != nil {
			t.Fatalf("the client read %q then %s, want EOF", b, endName(err))
		}
	})

	assertEnds(t, g, before, map[string]float64{"clean": 2})
}

// awaitAcked waits at most d for the peer's TCP to acknowledge all that c
// sent (SIOCOUTQ, sent and not yet acknowledged, falls to 0), and returns
// what it has not.
func awaitAcked(c net.Conn, d time.Duration) int {
	rc, _ := c.(*net.TCPConn).SyscallConn()
	outq := func() (q int) {
		rc.Control(func(fd uintptr) { q, _ = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) })
		return q
	}
	for deadline := time.Now().Add(d); outq() > 0 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	return outq()
}

// TestRelayUpstreamResetAfterData: a destination that sends a response and
// then resets (SO_LINGER 0, as a server that closes with a request still
// unread does) once its TCP has seen every byte acknowledged. On a direct
// connection the client reads the whole response and then ECONNRESET:
// Linux hands an application every byte its TCP took before the reset.
// tcpd took them (it acknowledged them to the destination), so the client
// must read them all too, and then the reset.
func TestRelayUpstreamResetAfterData(t *testing.T) {
	const size = 1 << 20 // far more than the client's receive buffer holds at first
	g := startGateway(t, netlab.Options{}, gwConfig{Metrics: true})
	before := sample(t, g)
	acked := make(chan int64, 1)
	port := serve(t, g.Server, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(20 * time.Second))
		n, _ := c.Write(make([]byte, size))
		acked <- int64(n - awaitAcked(c, 10*time.Second))
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
	})
	c, err := g.Client.DialTimeout("tcp", net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port)), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The client reads only once the destination's reset has reached
	// tcpd: all it gets beyond its own receive buffer comes from what
	// tcpd holds. It waits less than the half second a flush waits for
	// a client that takes nothing.
	a := <-acked
	if a != size {
		t.Fatalf("the destination's TCP saw %s of %s acknowledged before its reset", mibs(float64(a)), mibs(size))
	}
	time.Sleep(150 * time.Millisecond)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	n, err := io.Copy(io.Discard, c)
	if n != size || !isReset(err) {
		t.Fatalf("the client read %s then %s; want the %s the destination's TCP saw acknowledged, then a reset", mibs(float64(n)), endName(err), mibs(size))
	}
	assertEnds(t, g, before, map[string]float64{"upstream_reset": 1})
}

// TestRelayClientResetAfterData is the mirror of
// TestRelayUpstreamResetAfterData: a client that sends a request and then
// resets once its TCP has seen every byte acknowledged. The destination,
// which starts reading only after the reset reached tcpd, must read every
// byte and then the reset.
func TestRelayClientResetAfterData(t *testing.T) {
	const size = 512 << 10 // more than the destination's receive buffer holds at first
	g := startGateway(t, netlab.Options{}, gwConfig{Metrics: true})
	before := sample(t, g)
	type read struct {
		n   int64
		err error
	}
	got := make(chan read, 1)
	reset := make(chan struct{})
	port := serve(t, g.Server, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(20 * time.Second))
		<-reset
		// Less than the half second a flush waits for a destination that
		// takes nothing.
		time.Sleep(150 * time.Millisecond)
		n, err := io.Copy(io.Discard, c)
		got <- read{n, err}
	})
	c, err := g.Client.DialTimeout("tcp", net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port)), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(make([]byte, size)); err != nil {
		t.Fatalf("the client's write: %v", err)
	}
	if q := awaitAcked(c, 10*time.Second); q != 0 {
		t.Fatalf("tcpd left %d of the client's bytes unacknowledged", q)
	}
	c.(*net.TCPConn).SetLinger(0)
	c.Close()
	close(reset)
	select {
	case r := <-got:
		if r.n != size || !isReset(r.err) {
			t.Fatalf("the destination read %s then %s; want the %s the client's TCP saw acknowledged, then a reset", mibs(float64(r.n)), endName(r.err), mibs(size))
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the destination never finished reading")
	}
	assertEnds(t, g, before, map[string]float64{"client_reset": 1})
}

// TestRelayPausedReaderUserTimeout: a reader that keeps its window closed
// (a paused download: the client; a paused upload: the destination) while
// its TCP answers every window probe. tcp.user_timeout decides its fate on
// both legs: by default as long as keepalive takes to give up (here 2s),
// a value of its own (here 2s under the default keepalive of 4 minutes),
// or none (0s), which keeps the connection as a Linux socket without
// TCP_USER_TIMEOUT would, and delivers every byte once the reader resumes.
func TestRelayPausedReaderUserTimeout(t *testing.T) {
	const (
		pause = 6 * time.Second // three times the user timeouts below
		size  = 8 << 20         // beyond every buffer on the way
	)
	fast := gwConfig{Metrics: true, KeepaliveIdle: "1s", KeepaliveInterval: "1s", KeepaliveCount: 1}
	own := gwConfig{Metrics: true, UserTimeout: "2s"}
	none := fast
	none.UserTimeout = "0s"
	for _, tc := range []struct {
		name  string
		cfg   gwConfig
		reset bool
	}{
		{"keepalive's 2s", fast, true},
		{"its own 2s", own, true},
		{"none", none, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			g := startGateway(t, netlab.Options{}, tc.cfg)
			before := sample(t, g)
			dial := func(t *testing.T, port int) net.Conn { return dialPort(t, g, port, pause+30*time.Second) }
			var wg sync.WaitGroup
			wg.Go(func() {
				// Download: the client pauses.
				port := serve(t, g.Server, func(c net.Conn) {
					c.SetDeadline(time.Now().Add(pause + 30*time.Second))
					c.Write(make([]byte, size))
				})
				c := dial(t, port)
				time.Sleep(pause)
				n, err := io.Copy(io.Discard, c)
				c.Close()
				switch {
				case tc.reset && !isReset(err):
					t.Errorf("download: after a pause of %v the client read %s then %s; want a reset", pause, mibs(float64(n)), endName(err))
				case !tc.reset && (n != size || err != nil):
					t.Errorf("download: after a pause of %v the client read %s then %s; want %s then EOF", pause, mibs(float64(n)), endName(err), mibs(size))
				}
			})
			wg.Go(func() {
				// Upload: the destination pauses.
				got := make(chan int64, 1)
				port := serve(t, g.Server, func(c net.Conn) {
					c.SetDeadline(time.Now().Add(pause + 30*time.Second))
					time.Sleep(pause)
					n, _ := io.Copy(io.Discard, c)
					got <- n
				})
				c := dial(t, port)
				_, werr := c.Write(make([]byte, size))
				if werr == nil {
					c.(*net.TCPConn).CloseWrite()
				}
				n := <-got
				b, rerr := readAllString(c)
				switch {
				case tc.reset && n == size:
					t.Errorf("upload: after a pause of %v the destination read all %s; want a reset before", pause, mibs(size))
				case tc.reset && !isReset(werr) && !isReset(rerr):
					t.Errorf("upload: the client's write ended with %v and its read with %s; want a reset", werr, endName(rerr))
				case !tc.reset && (n != size || werr != nil || b != "" || rerr != nil):
					t.Errorf("upload: after a pause of %v the destination read %s; the client's write: %v, its read %q then %s; want %s, no error, EOF",
						pause, mibs(float64(n)), werr, b, endName(rerr), mibs(size))
				}
			})
			wg.Wait()
			want := map[string]float64{"clean": 2}
			if tc.reset {
				want = map[string]float64{"client_reset": 1, "upstream_reset": 1}
			}
			assertEnds(t, g, before, want)
		})
	}
}
