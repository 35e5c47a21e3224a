package stack

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"tcpd/conntrack"
)

// Tier A: tcpd's stack runs over an in-memory TUN (wireguard's ChannelTUN);
// the client is a second, independent gVisor stack (wireguard's netstack)
// whose packets are pumped into that TUN; upstreams are real loopback
// listeners reached through a fake dialler that records what it was asked.

var (
	clientAddr = netip.MustParseAddr("100.64.1.2")
	clientNet  = netip.MustParsePrefix("100.64.0.0/10")
	dstAddr    = netip.MustParseAddr("198.18.1.2")
)

type harness struct {
	s      *Stack
	client *testClient

	mu     sync.Mutex
	dialed []string
	// upstream is where the fake dialler connects instead of the real
	// destination; nil makes every dial fail with dialErr.
	upstream net.Addr
	dialErr  error
	// inject hands a raw IP packet to tcpd's TUN, as if a client sent it.
	inject chan<- []byte
	// out, when set, sees every packet tcpd writes to the TUN.
	out  atomic.Pointer[func([]byte)]
	drop atomic.Pointer[func([]byte) bool]
}

// observeOut has fn see every packet tcpd writes to its TUN from now on.
func (h *harness) observeOut(fn func([]byte)) { h.out.Store(&fn) }

// dropOut has the pump drop each packet to the client for which fn, called
// after observeOut's function, reports true.
func (h *harness) dropOut(fn func([]byte) bool) { h.drop.Store(&fn) }

func newHarness(t testing.TB, cfg Config, src netip.Addr) *harness {
	t.Helper()
	h := &harness{dialErr: syscall.ECONNREFUSED}
	ch := tuntest.NewChannelTUN()
	h.inject = ch.Outbound
	cfg.dev = ch.TUN()
	if cfg.Clients == nil {
		cfg.Clients = []netip.Prefix{clientNet}
	}
	cfg.redirect = func(dst netip.AddrPort) (netip.AddrPort, error) {
		h.mu.Lock()
		h.dialed = append(h.dialed, dst.String())
		up, derr := h.upstream, h.dialErr
		h.mu.Unlock()
		if up == nil {
			return netip.AddrPort{}, &net.OpError{Op: "dial", Net: "tcp", Err: derr}
		}
		return netip.MustParseAddrPort(up.String()), nil
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.s = s

	client, err := newTestClient(src, tuntest.DefaultMTU)
	if err != nil {
		t.Fatal(err)
	}
	h.client = client
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // client → tcpd
		defer wg.Done()
		for {
			p := client.read(ctx)
			if p == nil {
				return
			}
			select {
			case ch.Outbound <- p:
			case <-ctx.Done():
				return
			}
		}
	}()
	go func() { // tcpd → client
		defer wg.Done()
		for {
			select {
			case p, ok := <-ch.Inbound:
				if !ok {
					return
				}
				if fn := h.out.Load(); fn != nil {
					(*fn)(p)
				}
				if fn := h.drop.Load(); fn != nil && (*fn)(p) {
					continue
				}
				client.write(p)
			case <-ctx.Done():
				return
			}
		}
	}()
	t.Cleanup(func() {
		// tcpd resets what is left while the pumps still carry its RSTs.
		s.Close()
		cancel()
		wg.Wait()
		client.close()
	})
	return h
}

// listen starts a loopback upstream that runs serve for every connection.
func (h *harness) listen(t testing.TB, serve func(net.Conn)) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); defer c.Close(); serve(c) }()
		}
	}()
	h.mu.Lock()
	h.upstream = ln.Addr()
	h.mu.Unlock()
}

func (h *harness) dial(t testing.TB, port uint16) (*tcpConn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := h.client.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(dstAddr, port))
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	return &tcpConn{c}, nil
}

func (h *harness) dialedAddrs() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.dialed...)
}

type tcpConn struct{ net.Conn }

func (c *tcpConn) CloseWrite() error { return c.Conn.(interface{ CloseWrite() error }).CloseWrite() }

func TestRelayBothWays(t *testing.T) {
	h := newHarness(t, Config{}, clientAddr)
	// The upstream echoes every byte back, then half-closes on EOF.
	h.listen(t, func(c net.Conn) {
		io.Copy(c, c)
		c.(*net.TCPConn).CloseWrite()
	})
	c, err := h.dial(t, 80)
	if err != nil {
		t.Fatalf("dial through tcpd: %v", err)
	}
	payload := make([]byte, 4<<20)
	rand.Read(payload)
	go func() {
		c.Write(payload)
		c.CloseWrite()
	}()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if sha256.Sum256(got) != sha256.Sum256(payload) {
		t.Fatalf("echo differs: got %d bytes, sent %d", len(got), len(payload))
	}
	if d := h.dialedAddrs(); len(d) != 1 || d[0] != "198.18.1.2:80" {
		t.Fatalf("dialled %v, want [198.18.1.2:80]", d)
	}
	waitFor(t, "relay byte counters", func() bool {
		st := h.s.Stats()
		return st.Relayed(conntrack.FromClient) == uint64(len(payload)) && st.Relayed(conntrack.ToClient) == uint64(len(payload))
	})
	if got := h.s.Stats().Connections[ResultRelayed].Load(); got != 1 {
		t.Fatalf("relayed connections = %d, want 1", got)
	}
}

// TestRelayGrowsReceiveBuffer: the relay tells the netstack how much it read
// from the client leg, as a socket's reads do, so that receive moderation
// grows the leg's buffer, and with it the window offered to an uploading
// client, beyond the 1 MiB a connection starts with. A relay that reads
// without saying so leaves every upload's window at the default.
func TestRelayGrowsReceiveBuffer(t *testing.T) {
	h := newHarness(t, Config{}, clientAddr)
	h.listen(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	c, err := h.dial(t, 80)
	if err != nil {
		t.Fatalf("dial through tcpd: %v", err)
	}
	// rcvBuf is the client leg's receive buffer size.
	rcvBuf := func() int64 {
		_, eps := h.s.reg.snapshot(nil, nil)
		if len(eps) != 1 {
			t.Fatalf("%d endpoints registered, want 1", len(eps))
		}
		return eps[0].SocketOptions().GetReceiveBufferSize()
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := c.Write([]byte{1}); err != nil {
		t.Fatalf("write: %v", err)
	}
	waitFor(t, "the relay", func() bool { return h.s.reg.len() == 1 })
	before := rcvBuf()
	payload := make([]byte, 1<<20)
	for range 64 {
		if _, err := c.Write(payload); err != nil {
			t.Fatalf("write: %v", err)
		}
	}
	if after := rcvBuf(); after <= before {
		t.Fatalf("client leg's receive buffer %d bytes after a 64 MiB upload, want more than the %d it started with", after, before)
	}
}

func TestHalfClose(t *testing.T) {
	t.Run("client closes first, upstream keeps sending", func(t *testing.T) {
		h := newHarness(t, Config{}, clientAddr)
		h.listen(t, func(c net.Conn) {
			req, _ := io.ReadAll(c) // until the client's FIN
			for i := 0; i < 100; i++ {
				c.Write(bytes.Repeat(req, 1000))
			}
		})
		c, err := h.dial(t, 80)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("x"))
		c.CloseWrite()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(c)
		if err != nil {
			t.Fatalf("read after half-close: %v", err)
		}
		if len(got) != 100*1000 {
			t.Fatalf("got %d bytes after half-close, want %d", len(got), 100*1000)
		}
	})
	t.Run("upstream closes first, client keeps sending", func(t *testing.T) {
		h := newHarness(t, Config{}, clientAddr)
		received := make(chan int, 1)
		h.listen(t, func(c net.Conn) {
			c.Write([]byte("bye"))
			c.(*net.TCPConn).CloseWrite()
			n, _ := io.Copy(io.Discard, c)
			received <- int(n)
		})
		c, err := h.dial(t, 80)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "bye" {
			t.Fatalf("read = %q, %v; want \"bye\", nil", got, err)
		}
		// The client's side is still open: it keeps sending after the FIN.
		if _, err := c.Write(make([]byte, 1<<20)); err != nil {
			t.Fatalf("write after upstream FIN: %v", err)
		}
		c.CloseWrite()
		select {
		case n := <-received:
			if n != 1<<20 {
				t.Fatalf("upstream received %d bytes, want %d", n, 1<<20)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("upstream never saw the client's FIN")
		}
	})
}

func TestHalfCloseTimeout(t *testing.T) {
	h := newHarness(t, Config{Tunables: Tunables{HalfCloseTimeout: 300 * time.Millisecond}}, clientAddr)
	h.listen(t, func(c net.Conn) {
		c.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, c)
	})
	c, err := h.dial(t, 80)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(c); err != nil { // up to the upstream's FIN
		t.Fatal(err)
	}
	start := time.Now()
	// The client now sends nothing: after the half-close timeout tcpd
	// resets both legs.
	waitFor(t, "a relay ended by timeout", func() bool { return h.s.Stats().Ended[EndTimeout].Load() == 1 })
	if el := time.Since(start); el < 250*time.Millisecond || el > 5*time.Second {
		t.Fatalf("relay ended after %v, want about 300ms", el)
	}
	// The client's side was open, so a write succeeds unless tcpd reset the
	// connection.
	var err2 error
	for i := 0; i < 50 && err2 == nil; i++ {
		_, err2 = c.Write([]byte("late"))
		time.Sleep(10 * time.Millisecond)
	}
	if err2 == nil {
		t.Fatal("writes after the half-close timeout still succeed, want the connection reset")
	}
}

func TestDialFailureResetsClient(t *testing.T) {
	h := newHarness(t, Config{}, clientAddr)
	h.dialErr = syscall.ECONNREFUSED
	start := time.Now()
	_, err := h.dial(t, 81)
	if err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("dial a refusing destination = %v, want connection refused", err)
	}
	if el := time.Since(start); el > time.Second {
		t.Fatalf("refusal took %v", el)
	}
	st := h.s.Stats()
	if got := st.DialFailures[DialRefused].Load(); got != 1 {
		t.Fatalf("refused dial failures = %d, want 1", got)
	}
	if got := st.Connections[ResultUpstreamFailed].Load(); got != 1 {
		t.Fatalf("upstream_failed connections = %d, want 1", got)
	}
}

func TestUpstreamResetResetsClient(t *testing.T) {
	h := newHarness(t, Config{}, clientAddr)
	h.listen(t, func(c net.Conn) {
		c.Write([]byte("partial"))
		time.Sleep(50 * time.Millisecond)
		c.(*net.TCPConn).SetLinger(0) // close → RST
	})
	c, err := h.dial(t, 80)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	_, err = io.ReadAll(c)
	if err == nil {
		t.Fatal("upstream RST reached the client as a clean close")
	}
	if !strings.Contains(err.Error(), "reset") {
		t.Fatalf("client read error %v, want a reset", err)
	}
}

func TestPolicyDenied(t *testing.T) {
	h := newHarness(t, Config{}, clientAddr)
	h.listen(t, func(c net.Conn) {})
	// Loopback is not here: no client stack sends 127.0.0.0/8 out of an
	// interface, and the netstack drops it as a martian before the policy.
	for _, dst := range []string{"169.254.169.254:80", "10.1.2.3:443", "100.64.1.9:22"} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := h.client.DialContextTCPAddrPort(ctx, netip.MustParseAddrPort(dst))
		cancel()
		if err == nil || !strings.Contains(err.Error(), "refused") {
			t.Errorf("dial %s = %v, want connection refused", dst, err)
		}
	}
	if d := h.dialedAddrs(); len(d) != 0 {
		t.Fatalf("denied destinations were dialled: %v", d)
	}
	if got := h.s.Stats().Dropped[DropDeniedDestination].Load(); got != 3 {
		t.Fatalf("denied_destination drops = %d, want 3", got)
	}
}

func TestSpoofedSourceDropped(t *testing.T) {
	h := newHarness(t, Config{}, netip.MustParseAddr("203.0.113.7"))
	h.listen(t, func(c net.Conn) {})
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	if _, err := h.client.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(dstAddr, 80)); err == nil {
		t.Fatal("a source outside the client prefixes got a connection")
	}
	if d := h.dialedAddrs(); len(d) != 0 {
		t.Fatalf("spoofed SYN caused a dial: %v", d)
	}
	if got := h.s.Stats().Drops(DropSpoofedSource); got == 0 {
		t.Fatal("spoofed SYNs were not counted")
	}
}

func TestPerClientCap(t *testing.T) {
	core, logs := observer.New(zap.WarnLevel)
	h := newHarness(t, Config{Tunables: Tunables{MaxConnectionsPerClient: 2}, Logger: zap.New(core)}, clientAddr)
	hold := make(chan struct{})
	defer close(hold) // before the cleanups, which wait for the upstreams
	h.listen(t, func(c net.Conn) { <-hold })
	for i := 0; i < 2; i++ {
		if _, err := h.dial(t, 80); err != nil {
			t.Fatalf("connection %d under the cap: %v", i, err)
		}
	}
	waitFor(t, "two active relays", func() bool { return h.s.Stats().Active.Load() == 2 })
	if _, err := h.dial(t, 80); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("connection over the per-client cap = %v, want refused", err)
	}
	if got := h.s.Stats().Dropped[DropMaxConnectionsPerClient].Load(); got != 1 {
		t.Fatalf("max_connections_per_client drops = %d, want 1", got)
	}
	// A second refusal within warnEvery is counted into the next warning.
	if _, err := h.dial(t, 80); err == nil {
		t.Fatal("a second connection over the per-client cap was made")
	}
	checkCapWarning(t, logs, "max_connections_per_client", 2)
}

// checkCapWarning checks that refusals at a cap were logged once, naming
// the cap, its limit and the client.
func checkCapWarning(t *testing.T, logs *observer.ObservedLogs, key string, limit int64) {
	t.Helper()
	warned := logs.FilterMessageSnippet("refused with RST").All()
	if len(warned) != 1 {
		t.Fatalf("%d warnings of connections refused at a cap, want 1 (the second within warnEvery is held back): %v", len(warned), warned)
	}
	w := warned[0]
	f := w.ContextMap()
	if !strings.Contains(w.Message, key) || f["limit"] != limit || f["client"] != clientAddr.String() {
		t.Errorf("warning %q %v, want it to name %s, limit %d and client %s", w.Message, f, key, limit, clientAddr)
	}
}

// TestGlobalCapCountsHandshakes: limits.max_connections bounds the
// connections relayed and those in their handshake together, so that
// relays never exceed it once the handshakes complete, and every one of
// them, holding an upstream socket, fits the descriptor budget built on it.
func TestGlobalCapCountsHandshakes(t *testing.T) {
	core, logs := observer.New(zap.WarnLevel)
	h := newHarness(t, Config{Tunables: Tunables{MaxConnections: 2, DialTimeout: time.Second}, Logger: zap.New(core)}, clientAddr)
	hold := make(chan struct{})
	defer close(hold)
	h.listen(t, func(c net.Conn) { <-hold })
	if _, err := h.dial(t, 80); err != nil {
		t.Fatalf("the first connection: %v", err)
	}
	waitFor(t, "one active relay", func() bool { return h.s.Stats().Active.Load() == 1 })

	full := blackhole(t)
	h.mu.Lock()
	h.upstream = full
	h.mu.Unlock()

	slow := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := h.client.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(dstAddr, 81))
		if err == nil {
			c.Close()
		}
		slow <- err
	}()
	waitFor(t, "one handshake in progress", func() bool { return h.s.Stats().InFlight.Load() == 1 })

	// One relay and one handshake: the cap of 2 is reached.
	if _, err := h.dial(t, 82); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Fatalf("a connection with one relay and one handshake under a cap of 2 = %v, want refused", err)
	}
	if got := h.s.Stats().Dropped[DropMaxConnections].Load(); got != 1 {
		t.Errorf("max_connections drops = %d, want 1", got)
	}
	if _, err := h.dial(t, 83); err == nil {
		t.Fatal("a second connection over the cap was made")
	}
	checkCapWarning(t, logs, "limits.max_connections connections", 2)
	if d := h.dialedAddrs(); len(d) != 2 {
		t.Errorf("destinations dialled: %v, want 2 (the refused connection dials none)", d)
	}
	if err := <-slow; err == nil {
		t.Error("the connection whose destination took no SYN was established")
	}
}

// blackhole returns a destination that takes no SYN: a listener whose
// accept queue (one connection, for a backlog of 0) is full, so the kernel
// drops the SYNs of tcpd's connect and the handshake stays in progress.
func blackhole(t *testing.T) *net.TCPAddr {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	addr := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: sa.(*unix.SockaddrInet4).Port}
	filler, err := net.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { filler.Close() })
	return addr
}

// TestInFlightCapDrops: a SYN that finds limits.max_in_flight handshakes in
// progress is dropped (the client retransmits) and counted, in
// tcpd_dropped_total{reason="max_in_flight"} as in the netstack's own
// counter.
func TestInFlightCapDrops(t *testing.T) {
	h := newHarness(t, Config{MaxInFlight: 2, Tunables: Tunables{DialTimeout: 2 * time.Second}}, clientAddr)
	full := blackhole(t)
	h.mu.Lock()
	h.upstream = full
	h.mu.Unlock()
	var wg sync.WaitGroup
	defer wg.Wait()
	for port := range uint16(2) {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			if c, err := h.client.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(dstAddr, 80+port)); err == nil {
				c.Close()
			}
		})
	}
	waitFor(t, "two handshakes in progress", func() bool { return h.s.Stats().InFlight.Load() == 2 })
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if c, err := h.client.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(dstAddr, 90)); err == nil {
		c.Close()
		t.Fatal("a third connection got through two handshakes held at a cap of 2")
	}
	drops := h.s.Stats().Drops(DropMaxInFlight)
	netstack := h.s.NetstackStats().TCPForwardMaxInFlightDrops
	if drops == 0 || drops != netstack {
		t.Errorf("max_in_flight drops %d, the netstack's forwarder counted %d; want the same, at least 1", drops, netstack)
	}
	if d := h.dialedAddrs(); len(d) != 2 {
		t.Errorf("destinations dialled %v, want 2 (the dropped SYN dials none)", d)
	}
	// Nor does it keep a tracking entry, as Linux keeps no request for a
	// SYN its full queue drops.
	if n := h.s.table.Len(); n != 2 {
		t.Errorf("%d tracking entries, want the 2 handshakes in progress", n)
	}
}

// TestSYNFloodSqueeze: SYNs from addresses that never answer tcpd's
// SYN-ACK (spoofed, within the client prefixes) hold every handshake slot;
// a SYN that then finds none has the half-open connections that have waited
// a second aborted, so a real client's retransmitted SYN gets in long
// before tcp.handshake_timeout (10 s here) would have freed them, and a
// warning says what happened.
func TestSYNFloodSqueeze(t *testing.T) {
	core, logs := observer.New(zap.WarnLevel)
	h := newHarness(t, Config{MaxInFlight: 4, Logger: zap.New(core), Tunables: Tunables{HandshakeTimeout: 10 * time.Second}}, clientAddr)
	h.listen(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	for i := range 4 {
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{100, 64, 9, byte(1 + i)}), 40000)
		h.inject <- synWithOptions(src, netip.AddrPortFrom(dstAddr, 80), nil)
	}
	waitFor(t, "four half-open connections waiting for their clients' ACKs", func() bool {
		return h.s.Stats().InFlight.Load() == 4 && len(h.dialedAddrs()) == 4
	})
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Second)
	defer cancel()
	c, err := h.client.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(dstAddr, 80))
	if err != nil {
		t.Fatalf("a real client behind four unanswered handshakes (cap 4): %v after %v", err, time.Since(t0).Round(time.Millisecond))
	}
	c.Close()
	t.Logf("connected after %v", time.Since(t0).Round(time.Millisecond))
	if n := h.s.Stats().HandshakeTimeouts.Load(); n != 4 {
		t.Errorf("%d half-open connections aborted, want the 4 unanswered ones", n)
	}
	if h.s.Stats().Drops(DropMaxInFlight) == 0 {
		t.Error("no SYN counted as dropped at max_in_flight")
	}
	if w := logs.FilterMessageSnippet("possible SYN flood").All(); len(w) != 1 {
		t.Errorf("%d SYN flood warnings, want 1: %v", len(w), w)
	}
}

func TestShutdownDrainsThenResets(t *testing.T) {
	h := newHarness(t, Config{}, clientAddr)
	hold := make(chan struct{})
	defer close(hold)
	h.listen(t, func(c net.Conn) { <-hold })
	c, err := h.dial(t, 80)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "one active relay", func() bool { return h.s.Stats().Active.Load() == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	reset, err := h.s.Shutdown(ctx)
	if err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if reset != 1 {
		t.Fatalf("Shutdown reset %d connections, want 1", reset)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("connection survived shutdown")
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
