package stack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"tcpd/conntrack"
)

// synSentTo counts this host's TCP sockets in SYN-SENT toward addr, as
// /proc/net/tcp lists them: the connects in progress.
func synSentTo(t *testing.T, addr *net.TCPAddr) int {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Skipf("no /proc/net/tcp: %v", err)
	}
	ip := addr.IP.To4()
	remote := fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], addr.Port)
	n := 0
	for _, l := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(l)
		if len(f) > 3 && f[2] == remote && f[3] == "02" { // TCP_SYN_SENT
			n++
		}
	}
	return n
}

// TestKillWhileDialling: a connection listed in SYN-RECV while its
// upstream connect is in progress is killed as a failed connect ends: the
// client gets RST at once, not after the dial timeout; the connect's
// socket is closed; the row leaves the table.
func TestKillWhileDialling(t *testing.T) {
	h := newHarness(t, Config{Tunables: Tunables{DialTimeout: 20 * time.Second}}, clientAddr)
	full := blackhole(t)
	h.mu.Lock()
	h.upstream = full
	h.mu.Unlock()

	dialed := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		c, err := h.client.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(dstAddr, 80))
		if err == nil {
			c.Close()
		}
		dialed <- err
	}()
	waitFor(t, "the upstream connect in progress", func() bool {
		return states(h.s)["syn_recv"] == 1 && synSentTo(t, full) == 1
	})
	id := h.s.Conns(nil)[0].ID
	start := time.Now()
	if !h.s.Kill(id) {
		t.Fatal("Kill did not find the connection whose connect is in progress")
	}
	if h.s.Kill(id) {
		t.Error("a second Kill, the first under way, reported success")
	}
	select {
	case err := <-dialed:
		if err == nil || !errors.Is(err, syscall.ECONNREFUSED) && !strings.Contains(err.Error(), "refused") {
			t.Fatalf("the client's connect = %v, want refused (RST)", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the client got no answer 5s after the kill")
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("the client got RST %v after the kill", took)
	}
	waitFor(t, "the connect's socket to be closed", func() bool { return synSentTo(t, full) == 0 })
	waitFor(t, "the killed row to go", func() bool { return h.s.Snapshot().Live == 0 })
	waitFor(t, "the in-flight slot to be freed", func() bool { return h.s.Stats().InFlight.Load() == 0 })
	st := h.s.Stats()
	if n := st.Connections[ResultHandshakeFailed].Load(); n != 1 {
		t.Errorf("%d handshake failures counted, want 1 (the killed connection)", n)
	}
	if n := st.Connections[ResultUpstreamFailed].Load(); n != 0 {
		t.Errorf("%d upstream failures counted, want none: the destination did not fail", n)
	}
	if h.s.Kill(id) {
		t.Error("Kill of a connection already killed reported success")
	}
}

// TestKillDuringClientHandshake: a connection whose upstream is connected
// and whose client has not answered the SYN-ACK is killed as the
// handshake timeout ends it: the half-open endpoint is aborted and the
// destination's connection closed.
func TestKillDuringClientHandshake(t *testing.T) {
	h := newHarness(t, Config{Tunables: Tunables{HandshakeTimeout: 30 * time.Second}}, clientAddr)
	ups := make(chan net.Conn, 1)
	h.listen(t, func(c net.Conn) { ups <- c; io.Copy(io.Discard, c) })
	var synAck atomic.Bool
	h.observeOut(func(p []byte) {
		if _, _, seg, ok := parseTCP(p); ok && seg.Flags&conntrack.FlagSYN != 0 && seg.Flags&conntrack.FlagACK != 0 {
			synAck.Store(true)
		}
	})
	// A client nobody answers for: its ACK never comes.
	ghost := netip.MustParseAddrPort("100.64.1.99:40000")
	h.inject <- withChecksums(buildV4(ghost, netip.AddrPortFrom(dstAddr, 80), header.TCPFlagSyn, 1000, 0, 0))
	waitFor(t, "the SYN-ACK", synAck.Load)
	up := <-ups
	id := h.s.Conns(nil)[0].ID
	if !h.s.Kill(id) {
		t.Fatal("Kill did not find the connection in its client's handshake")
	}
	if h.s.Kill(id) {
		t.Error("a second Kill, the first under way, reported success")
	}
	waitFor(t, "the killed row to go", func() bool { return h.s.Snapshot().Live == 0 })
	waitFor(t, "the in-flight slot to be freed", func() bool { return h.s.Stats().InFlight.Load() == 0 })
	up.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := up.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the destination's side of the killed connection: %v, want it closed or reset", err)
	}
	if n := h.s.Stats().HandshakeTimeouts.Load(); n != 0 {
		t.Errorf("%d handshake timeouts counted, want none", n)
	}
	if n := h.s.Stats().Connections[ResultHandshakeFailed].Load(); n != 1 {
		t.Errorf("%d handshake failures counted, want 1", n)
	}
}

// TestKillTimeWait: a row in TIME-WAIT is tcpd's record alone; Kill drops
// it, as ss -K destroys a TIME-WAIT socket, and the counts follow.
func TestKillTimeWait(t *testing.T) {
	h := newHarness(t, Config{Tunables: Tunables{TimeWait: time.Minute}}, clientAddr)
	h.listen(t, func(c net.Conn) { c.Close() })
	c, err := h.dial(t, 80)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "fin_wait2", func() bool { return states(h.s)["fin_wait2"] == 1 })
	c.Close()
	waitFor(t, "time_wait", func() bool { return states(h.s)["time_wait"] == 1 })
	waitFor(t, "the netstack endpoint to be forgotten", func() bool { return h.s.reg.len() == 0 })
	id := h.s.Conns(nil)[0].ID
	if !h.s.Kill(id) {
		t.Fatal("Kill did not find the connection in TIME-WAIT")
	}
	snap := h.s.Snapshot()
	var held uint64
	for st := range conntrack.NumStates {
		held += snap.States[st] + snap.ClientStates[st]
	}
	if snap.Live != 0 || snap.TimeWait != 0 || held != 0 {
		t.Errorf("after the kill: live %d, time_wait %d, states %v, client states %v; want none", snap.Live, snap.TimeWait, snap.States, snap.ClientStates)
	}
	if snap.TimeWaitDwell.Count != 1 || snap.TimeWaitDwell.Sum > 30 {
		t.Errorf("time_wait dwell count %d sum %.1fs, want one, of the time it was held", snap.TimeWaitDwell.Count, snap.TimeWaitDwell.Sum)
	}
	if h.s.Kill(id) {
		t.Error("Kill of a TIME-WAIT row already dropped reported success")
	}
}
