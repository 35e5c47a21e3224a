package stack

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"tcpd/conntrack"
)

// states returns conntrack's tcpd-side count for each named state.
func states(s *Stack) map[string]uint64 {
	snap := s.Snapshot()
	out := map[string]uint64{}
	for st := range conntrack.NumStates {
		if n := snap.States[st]; n > 0 {
			out[st.String()] = n
		}
	}
	return out
}

func TestConntrackFollowsServerClosesFirst(t *testing.T) {
	h := newHarness(t, Config{Tunables: Tunables{TimeWait: 3 * time.Second}}, clientAddr)
	closeNow := make(chan struct{})
	h.listen(t, func(c net.Conn) {
		io.WriteString(c, "hi")
		<-closeNow
	})
	c, err := h.dial(t, 80)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadFull(c, make([]byte, 2))
	waitFor(t, "established", func() bool { return states(h.s)["established"] == 1 })
	conns := h.s.Conns(nil)
	if len(conns) != 1 || conns[0].ClientState != conntrack.StateEstablished || conns[0].BytesOut != 2 || conns[0].Upstream == "" {
		t.Fatalf("conns: %+v", conns)
	}
	if conns[0].Handshake <= 0 || conns[0].Dial <= 0 {
		t.Fatalf("handshake %v dial %v not recorded", conns[0].Handshake, conns[0].Dial)
	}

	// The upstream closes: tcpd sends FIN first and ends in TIME_WAIT once
	// the client closes too.
	close(closeNow)
	waitFor(t, "fin_wait2", func() bool { return states(h.s)["fin_wait2"] == 1 })
	if cs := h.s.Conns(nil)[0].ClientState; cs != conntrack.StateCloseWait {
		t.Fatalf("client state %v, want close_wait", cs)
	}
	c.Close()
	waitFor(t, "time_wait", func() bool { return states(h.s)["time_wait"] == 1 })
	// TIME_WAIT is conntrack's: the netstack lets its endpoint go at once,
	// and the reconciliation tick forgets it, well before TIME_WAIT ends.
	waitFor(t, "the netstack endpoint to be released", func() bool {
		n := h.s.NetstackStats()
		return n.Endpoints == 0 && n.TrackedEndpoints == 0
	})
	if st := states(h.s); st["time_wait"] != 1 {
		t.Fatalf("the endpoint was released, and conntrack holds %v, want the connection in time_wait", st)
	}
	waitFor(t, "time_wait to expire", func() bool { return h.s.Snapshot().Live == 0 })
	snap := h.s.Snapshot()
	if snap.Corrections != 0 {
		t.Fatalf("%d corrections", snap.Corrections)
	}
	if snap.TimeWaitDwell.Count != 1 || snap.TimeWaitDwell.Sum < 2.9 || snap.TimeWaitDwell.Sum > 4.5 {
		t.Fatalf("time_wait dwell count %d sum %.2fs, want one of about 3s", snap.TimeWaitDwell.Count, snap.TimeWaitDwell.Sum)
	}
	if snap.Handshake.Count != 1 || snap.Dial.Count != 1 || snap.Setup.Count != 1 {
		t.Fatalf("histogram counts handshake %d dial %d setup %d", snap.Handshake.Count, snap.Dial.Count, snap.Setup.Count)
	}
}

func TestConntrackFollowsClientClosesFirst(t *testing.T) {
	h := newHarness(t, Config{}, clientAddr)
	hold := make(chan struct{})
	defer close(hold)
	h.listen(t, func(c net.Conn) {
		io.Copy(io.Discard, c) // reads to EOF, then holds its side open
		<-hold
	})
	c, err := h.dial(t, 80)
	if err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	waitFor(t, "close_wait", func() bool { return states(h.s)["close_wait"] == 1 })
	if cs := h.s.Conns(nil)[0].ClientState; cs != conntrack.StateFinWait2 {
		t.Fatalf("client state %v, want fin_wait2", cs)
	}
}

func TestConntrackRefusedAndKilled(t *testing.T) {
	h := newHarness(t, Config{}, clientAddr)
	if _, err := h.dial(t, 80); err == nil {
		t.Fatal("dial succeeded with no upstream")
	}
	waitFor(t, "refused entry to go", func() bool { return h.s.Snapshot().Live == 0 })

	hold := make(chan struct{})
	defer close(hold)
	h.listen(t, func(c net.Conn) { <-hold })
	c, err := h.dial(t, 80)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "established", func() bool { return states(h.s)["established"] == 1 })
	id := h.s.Conns(nil)[0].ID
	// conntrack sees the handshake's last ACK at the link, a moment before
	// the handler registers the endpoint that Kill looks up.
	waitFor(t, "Kill to find the endpoint", func() bool { return h.s.Kill(id) })
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("killed connection still reads")
	}
	waitFor(t, "killed entry to go", func() bool { return h.s.Snapshot().Live == 0 })
	if h.s.Kill(id) {
		t.Fatal("Kill of a gone connection reported success")
	}
	if snap := h.s.Snapshot(); snap.Corrections != 0 || snap.Opened != 2 {
		t.Fatalf("opened %d corrections %d", snap.Opened, snap.Corrections)
	}
}

func TestSetTunablesAppliesToNewConnections(t *testing.T) {
	h := newHarness(t, Config{Tunables: Tunables{MaxConnectionsPerClient: 1}}, clientAddr)
	hold := make(chan struct{})
	defer close(hold)
	h.listen(t, func(c net.Conn) { <-hold })
	if _, err := h.dial(t, 80); err != nil {
		t.Fatal(err)
	}
	if _, err := h.dial(t, 80); err == nil {
		t.Fatal("second connection admitted over a per-client cap of 1")
	}
	tune := h.s.Tunables()
	if tune.CongestionControl != "reno" || !h.s.lossDetectionRACK() {
		t.Fatalf("defaults: congestion control %q, RACK %v; want reno with RACK", tune.CongestionControl, h.s.lossDetectionRACK())
	}
	tune.MaxConnectionsPerClient = 2
	tune.TimeWait = 7 * time.Second
	tune.TimeWaitLimit = new(5)
	tune.CongestionControl = "cubic"
	tune.NoRACK = true
	if err := h.s.SetTunables(tune); err != nil {
		t.Fatal(err)
	}
	if _, err := h.dial(t, 80); err != nil {
		t.Fatalf("after raising the cap: %v", err)
	}
	if snap := h.s.Snapshot(); snap.TimeWaitTimeout != 7*time.Second || snap.TimeWaitLimit != 5 {
		t.Fatalf("conntrack TIME_WAIT %v / %d after SetTunables", snap.TimeWaitTimeout, snap.TimeWaitLimit)
	}
	// The client's last ACK of the handshake reaches conntrack a moment
	// after its connect returns.
	waitFor(t, "2 established", func() bool { return states(h.s)["established"] == 2 })
	// The connection opened before keeps its congestion control; the new
	// one has the new algorithm, and new handshakes skip RACK.
	var ccs []string
	waitFor(t, "both endpoints to be registered", func() bool { return h.s.reg.len() == 2 })
	for _, c := range h.s.Conns(nil) {
		ccs = append(ccs, c.CongestionControl)
	}
	if !slices.Equal(ccs, []string{"reno", "cubic"}) {
		t.Fatalf("congestion control of the old and the new connection: %q, want reno then cubic", ccs)
	}
	if h.s.lossDetectionRACK() {
		t.Fatal("RACK still on for new connections after SetTunables turned it off")
	}

	// A setting the netstack refuses changes nothing.
	bad := h.s.Tunables()
	bad.CongestionControl, bad.MaxConnectionsPerClient = "bbr", 9
	if err := h.s.SetTunables(bad); err == nil {
		t.Fatal("SetTunables accepted congestion control bbr")
	}
	if got := h.s.Tunables(); got.CongestionControl != "cubic" || got.MaxConnectionsPerClient != 2 {
		t.Fatalf("a rejected SetTunables changed the settings: %+v", got)
	}
}

// withChecksums fills in the checksums of a packet from buildV4 (IPv4 and
// TCP) or buildV6 (TCP), so that the netstack accepts it.
func withChecksums(pkt []byte) []byte {
	var tcp header.TCP
	var xsum uint16
	if pkt[0]>>4 == 4 {
		ip := header.IPv4(pkt)
		ip.SetChecksum(0)
		ip.SetChecksum(^ip.CalculateChecksum())
		tcp = header.TCP(pkt[header.IPv4MinimumSize:])
		xsum = header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(tcp)))
	} else {
		ip := header.IPv6(pkt)
		tcp = header.TCP(pkt[header.IPv6MinimumSize:])
		xsum = header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(tcp)))
	}
	tcp.SetChecksum(0)
	tcp.SetChecksum(^checksum.Checksum(tcp, xsum))
	return pkt
}

func TestHandshakeTimeoutFreesSlot(t *testing.T) {
	h := newHarness(t, Config{Tunables: Tunables{HandshakeTimeout: 500 * time.Millisecond}}, clientAddr)
	h.listen(t, func(c net.Conn) {})
	// A SYN from a client address nobody answers for: the SYN-ACK goes
	// nowhere and the client's ACK never comes.
	ghost := netip.MustParseAddrPort("100.64.1.99:40000")
	h.inject <- withChecksums(buildV4(ghost, netip.AddrPortFrom(dstAddr, 80), header.TCPFlagSyn, 1000, 0, 0))
	waitFor(t, "syn_recv after the SYN-ACK", func() bool {
		return states(h.s)["syn_recv"] == 1 && h.s.Stats().InFlight.Load() == 1
	})
	start := time.Now()
	waitFor(t, "the half-open connection to be aborted", func() bool { return h.s.Snapshot().Live == 0 })
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("aborted after %v, want about the 500ms handshake timeout", took)
	}
	waitFor(t, "the in-flight slot to be freed", func() bool { return h.s.Stats().InFlight.Load() == 0 })
	if n := h.s.Stats().HandshakeTimeouts.Load(); n != 1 {
		t.Fatalf("%d handshake timeouts counted, want 1", n)
	}
	if n := h.s.Stats().Connections[ResultHandshakeFailed].Load(); n != 1 {
		t.Fatalf("%d handshake failures counted, want 1", n)
	}
}

// TestHandshakeTimeoutAfterSlowConnect: the handshake timeout also holds
// when the upstream connect does not complete at once and is finished on
// its shard, as a connect to any real destination is. The destination's
// accept queue is full, so it drops the first SYN and the connect completes
// on the kernel's retransmission a second later; only then is the SYN-ACK
// sent, to a client that never answers. The half-open connection is
// aborted within the timeout after that, its slot freed, and its upstream
// socket closed.
func TestHandshakeTimeoutAfterSlowConnect(t *testing.T) {
	const timeout = 500 * time.Millisecond
	h := newHarness(t, Config{Tunables: Tunables{HandshakeTimeout: timeout}}, clientAddr)
	// The smallest accept queue (one connection), filled by a connection
	// of the test's own.
	lfd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(lfd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		syscall.Close(lfd)
		t.Fatal(err)
	}
	if err := syscall.Listen(lfd, 0); err != nil {
		syscall.Close(lfd)
		t.Fatal(err)
	}
	ln, err := net.FileListener(os.NewFile(uintptr(lfd), "listener"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	filler, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer filler.Close()
	h.mu.Lock()
	h.upstream = ln.Addr()
	h.mu.Unlock()

	ghost := netip.MustParseAddrPort("100.64.1.99:40000")
	start := time.Now()
	h.inject <- withChecksums(buildV4(ghost, netip.AddrPortFrom(dstAddr, 80), header.TCPFlagSyn, 1000, 0, 0))
	// Make room in the queue before the kernel retransmits tcpd's SYN.
	time.Sleep(300 * time.Millisecond)
	first, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	first.Close()
	up, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	waitFor(t, "syn_recv after the SYN-ACK", func() bool { return states(h.s)["syn_recv"] == 1 })
	synAck := time.Now()
	if took := synAck.Sub(start); took < 900*time.Millisecond {
		t.Fatalf("the SYN-ACK went out %v after the SYN, before the upstream connect could have completed (its first SYN was dropped)", took)
	}
	waitFor(t, "the half-open connection to be aborted", func() bool { return h.s.Snapshot().Live == 0 })
	if took := time.Since(synAck); took > timeout+time.Second {
		t.Fatalf("aborted %v after the SYN-ACK, want about the %v handshake timeout", took, timeout)
	}
	waitFor(t, "the in-flight slot to be freed", func() bool { return h.s.Stats().InFlight.Load() == 0 })
	if n := h.s.Stats().HandshakeTimeouts.Load(); n != 1 {
		t.Fatalf("%d handshake timeouts counted, want 1", n)
	}
	if n := h.s.Stats().Connections[ResultHandshakeFailed].Load(); n != 1 {
		t.Fatalf("%d handshake failures counted, want 1", n)
	}
	// The destination sees its connection end: tcpd kept no socket.
	up.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := up.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the destination's side of the aborted connection: %v, want it closed or reset", err)
	}
}

// TestKillAfterRelayEnded: a connection whose relay has ended cleanly but
// whose endpoint still waits for the client's last ACK (LAST_ACK) is reset
// by Kill, as a running one is: tcpd sends the client RST.
func TestKillAfterRelayEnded(t *testing.T) {
	h := newHarness(t, Config{}, clientAddr)
	hold := make(chan struct{})
	h.listen(t, func(c net.Conn) {
		io.Copy(io.Discard, c)
		<-hold
		c.Close()
	})
	c, err := h.dial(t, 80)
	if err != nil {
		t.Fatal(err)
	}
	c.CloseWrite()
	waitFor(t, "close_wait", func() bool { return states(h.s)["close_wait"] == 1 })
	// The client goes silent: tcpd's FIN is never acknowledged.
	if terr := h.client.s.DisableNIC(clientNIC); terr != nil {
		t.Fatalf("disable client NIC: %s", terr)
	}
	var rst atomic.Bool
	h.observeOut(func(p []byte) {
		if _, _, seg, ok := parseTCP(p); ok && seg.Flags&conntrack.FlagRST != 0 {
			rst.Store(true)
		}
	})
	close(hold)
	waitFor(t, "the relay to end cleanly", func() bool { return h.s.Stats().Ended[EndClean].Load() == 1 })
	waitFor(t, "last_ack", func() bool { return states(h.s)["last_ack"] == 1 })
	if !h.s.Kill(h.s.Conns(nil)[0].ID) {
		t.Fatal("Kill did not find the connection")
	}
	waitFor(t, "an RST to the client", rst.Load)
	waitFor(t, "the killed entry to go", func() bool { return h.s.Snapshot().Live == 0 })
}
