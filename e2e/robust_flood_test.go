//go:build linux

package e2e_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"tcpd/internal/netlab"
)

// floodFor is how long each hping3 flood runs.
const floodFor = 5 * time.Second

// floodHandshakeTimeout is tcp.handshake_timeout in the flood tests: short,
// so that half-open connections are given up soon after a flood.
const floodHandshakeTimeout = 2 * time.Second

// drainSlack is what the flood tests allow, beyond the handshake timeout,
// for everything to return to zero: a reconcile tick (1s) and scheduling
// on a loaded 2-core machine.
const drainSlack = 2 * time.Second

// hping runs hping3 in the client namespace for d; wait returns how many
// packets hping3 says it sent, its output, and when it exited.
func hping(t *testing.T, g *gateway, d time.Duration, args ...string) (wait func() (sent int, out string, ended time.Time)) {
	t.Helper()
	bin := lookTool(t, "hping3", "hping3")
	ctx, cancel := context.WithTimeout(context.Background(), d)
	cmd := g.Client.Command(ctx, bin, args...)
	// SIGINT makes hping3 print its statistics before it exits.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGINT) }
	cmd.WaitDelay = 5 * time.Second
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start hping3: %v", err)
	}
	done := make(chan struct{})
	var ended time.Time
	go func() {
		cmd.Wait()
		ended = time.Now()
		close(done)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return func() (int, string, time.Time) {
		<-done
		cancel()
		out := buf.String()
		sent := 0
		if m := regexp.MustCompile(`(\d+) packets transmitted`).FindStringSubmatch(out); m != nil {
			sent, _ = strconv.Atoi(m[1])
		}
		return sent, out, ended
	}
}

// peaks scrapes tcpd every 250ms until stop is closed and keeps the
// largest value of each metric of interest. Its fields may be read once
// done is closed.
type peaks struct {
	rss, inFlight, synRecv, entries, relays float64
	scrapes, failed                         int
	done                                    chan struct{}
}

func watchPeaks(g *gateway, stop <-chan struct{}) *peaks {
	p := &peaks{done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for {
			m, err := trySample(g)
			if err != nil {
				p.failed++
			} else {
				p.scrapes++
				p.rss = max(p.rss, m["process_resident_memory_bytes"])
				p.inFlight = max(p.inFlight, m["tcpd_handshakes_in_flight"])
				p.synRecv = max(p.synRecv, m[stateMetric("syn_recv")])
				p.entries = max(p.entries, m["tcpd_conntrack_entries"])
				p.relays = max(p.relays, m["tcpd_relays_active"])
			}
			select {
			case <-stop:
				return
			case <-time.After(250 * time.Millisecond):
			}
		}
	}()
	return p
}

// legitDuringFlood connects from the real client n times, interval apart,
// and returns each connect's duration; every connection must also echo a
// message through tcpd.
func legitDuringFlood(t *testing.T, g *gateway, addr string, n int, interval time.Duration) []time.Duration {
	t.Helper()
	var took []time.Duration
	for i := range n {
		time.Sleep(interval)
		c, d, err := timedDial(g, addr, 5*time.Second)
		if err != nil {
			t.Errorf("legitimate connect %d during the flood: %v after %v", i, err, d)
			continue
		}
		if err := echoOnce(c); err != nil {
			t.Errorf("legitimate connection %d during the flood: echo: %v", i, err)
		}
		c.Close()
		took = append(took, d)
	}
	return took
}

// waitIdleAfter waits until tcpd holds nothing at all and returns how long
// that took from since; it fails the test after bound.
func waitIdleAfter(t *testing.T, g *gateway, since time.Time, bound time.Duration, what string) map[string]float64 {
	t.Helper()
	m, ok := waitMetrics(t, g, bound-time.Since(since)+5*time.Second, idle)
	took := time.Since(since)
	if !ok {
		t.Fatalf("%v after %s tcpd still holds: %s", took.Round(100*time.Millisecond), what, holding(m))
	}
	t.Logf("everything back to zero %v after %s", took.Round(100*time.Millisecond), what)
	if took > bound {
		t.Errorf("tcpd went back to zero %v after %s, want within %v (handshake timeout %v + %v slack)",
			took.Round(100*time.Millisecond), what, bound, floodHandshakeTimeout, drainSlack)
	}
	return m
}

// inRangeSYNs is how many SYNs TestRobustSYNFloodRandomSources sends from
// random addresses inside the client prefix during the flood: about what
// 1/1024 (100.64.0.0/10's share of the IPv4 space) of a million truly
// random sources would give.
const inRangeSYNs = 1000

// randomIn returns a random address in 100.64.0.0/10, the lab's client
// prefix.
func randomIn(rng *rand.Rand) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], 100<<24|64<<16|rng.Uint32N(1<<22))
	return netip.AddrFrom4(b)
}

// TestRobustSYNFloodRandomSources floods the server's port with SYNs from
// random source addresses for 5s. Nearly all are outside the client prefix
// and must be dropped as spoofed before the netstack, cheaply. hping3's
// generator covers the address space unevenly (in one run of 525,000
// packets only 162 values of the first octet appeared, and not 100), so
// how many of its sources fall in 100.64.0.0/10 varies from run to run,
// from none to about the expected 1/1024; the test adds inRangeSYNs SYNs of
// its own from random in-range addresses that no host owns. Those reach the
// netstack and their handshakes time out. Meanwhile the real client
// connects in well under a second, tcpd's RSS stays bounded, and
// afterwards everything returns to zero within the handshake timeout.
func TestRobustSYNFloodRandomSources(t *testing.T) {
	lookTool(t, "hping3", "hping3")
	g := startGateway(t, netlab.Options{}, gwConfig{Metrics: true, HandshakeTimeout: floodHandshakeTimeout.String(), LogLevel: "info"})
	port := serve(t, g.Server, func(c net.Conn) { io.Copy(c, c) })
	addr := net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port))
	if c, _, err := timedDial(g, addr, 5*time.Second); err != nil {
		t.Fatalf("connect before the flood: %v", err)
	} else {
		c.Close()
	}
	before, _ := waitMetrics(t, g, 10*time.Second, idle)
	rss0 := before["process_resident_memory_bytes"]
	raw := newRawSender(t, g)
	dst := netip.AddrPortFrom(g.ServerAddr4, uint16(port))

	stop := make(chan struct{})
	pk := watchPeaks(g, stop)
	wait := hping(t, g, floodFor, "--flood", "--rand-source", "-S", "-p", fmt.Sprint(port), g.ServerAddr4.String())
	rawErr := make(chan error, 1)
	go func() {
		// Spread over the first 4s of the flood. Distinct random
		// addresses in 100.64.0.0/10 outside the lab's 100.64.1.0/24.
		rng := rand.New(rand.NewPCG(1, 2))
		lab := netip.MustParsePrefix("100.64.1.0/24") // real hosts live here
		seen := map[netip.Addr]bool{}
		for range inRangeSYNs {
			var a netip.Addr
			for a = randomIn(rng); seen[a] || lab.Contains(a); a = randomIn(rng) {
			}
			seen[a] = true
			src := netip.AddrPortFrom(a, uint16(1024+rng.IntN(60000)))
			if err := raw.trySend(buildSYN(src, dst, rng.Uint32(), mssOption(1460))); err != nil {
				rawErr <- err
				return
			}
			time.Sleep(4 * time.Millisecond)
		}
		rawErr <- nil
	}()
	took := legitDuringFlood(t, g, addr, 5, 800*time.Millisecond)
	if err := <-rawErr; err != nil {
		t.Fatal(err)
	}
	sent, out, ended := wait()
	close(stop)
	<-pk.done

	m := waitIdleAfter(t, g, ended, floodHandshakeTimeout+drainSlack, "the flood")
	delta := func(name string) float64 { return m[name] - before[name] }
	spoofed := delta(drop("spoofed_source"))
	tunIn := delta(`tcpd_tun_packets_total{direction="in"}`)
	opened := delta("tcpd_conntrack_opened_total")
	timeouts := delta("tcpd_handshake_timeouts_total")
	t.Logf("hping3 sent %d SYNs in %v, the test %d from in-range addresses; tcpd read %.0f packets from the TUN, dropped %.0f as spoofed; "+
		"%.0f connections opened, %.0f handshake timeouts, %.0f handshakes failed, %.0f forwarder in-flight drops; legitimate connects took %v",
		sent, floodFor, inRangeSYNs, tunIn, spoofed, opened, timeouts, delta(`tcpd_connections_total{result="handshake_failed"}`),
		delta("tcpd_netstack_tcp_forward_max_in_flight_drops_total"), took)
	t.Logf("during the flood (%d scrapes, %d failed): RSS %s before, %s at most; at most %v handshakes in flight, %v syn_recv, %v entries",
		pk.scrapes, pk.failed, mibs(rss0), mibs(pk.rss), pk.inFlight, pk.synRecv, pk.entries)
	if sent == 0 {
		t.Fatalf("hping3 reported no packets sent:\n%s", out)
	}

	for i, d := range took {
		if d >= time.Second {
			t.Errorf("legitimate connect %d took %v during the flood, want under 1s", i, d)
		}
	}
	// The bound: 16 MiB for the flood's garbage between two GCs, plus 64
	// KiB for each handshake in flight (a netstack endpoint, a handler
	// goroutine, a dial and a tracking entry; measured at about 40 KiB of
	// RSS each). A flood that reached the netstack would hold that for
	// each of its 10^5..10^6 SYNs, gigabytes; dropped at the door it costs
	// nothing but the batch buffers, which exist already.
	if bound := rss0 + 16*mib + pk.inFlight*64*1024; pk.rss > bound {
		t.Errorf("tcpd's RSS reached %s during the flood, want under %s (%s before + 16 MiB + 64 KiB × %v handshakes in flight)",
			mibs(pk.rss), mibs(bound), mibs(rss0), pk.inFlight)
	}
	if pk.scrapes == 0 {
		t.Errorf("no scrape succeeded during the flood (%d failed)", pk.failed)
	}
	// Nearly everything tcpd read was hping3's, all of it spoofed.
	if spoofed < 10000 || spoofed < 0.95*tunIn {
		t.Errorf(`tcpd_dropped_total{reason="spoofed_source"} grew by %.0f of %.0f packets read from the TUN, want at least 10000 and 95%%`, spoofed, tunIn)
	}
	// The in-range SYNs share the TUN's queue with the flood, whose
	// overflow the gateway kernel drops; most must get through. Each that
	// did (the test's and hping3's) is one handshake that timed out, apart
	// from the real client's.
	if opened < inRangeSYNs/2 {
		t.Errorf("%.0f tracking entries opened, want most of the %d in-range SYNs", opened, inRangeSYNs)
	}
	if want := opened - float64(len(took)); timeouts != want {
		t.Errorf("%.0f handshake timeouts, want %.0f: one for every in-range SYN that reached tcpd", timeouts, want)
	}
	if got := m["tcpd_conntrack_corrections_total"]; got != 0 {
		t.Errorf("tcpd_conntrack_corrections_total = %v, want 0", got)
	}
}

// TestRobustSYNFloodOneSource floods from one address inside the client
// prefix that no host owns (nobody answers the SYN-ACKs) with a per-client
// handshake cap of 64: that client's handshakes in flight must never exceed
// the cap, the excess SYNs must be counted as dropped, and the real client
// must still connect in under a second. Afterwards, retransmissions of one
// SYN must hold one slot at most and give it back.
func TestRobustSYNFloodOneSource(t *testing.T) {
	lookTool(t, "hping3", "hping3")
	const capPerClient = 64
	g := startGateway(t, netlab.Options{}, gwConfig{
		Metrics: true, HandshakeTimeout: floodHandshakeTimeout.String(),
		MaxInFlightPerClient: capPerClient, LogLevel: "info",
	})
	port := serve(t, g.Server, func(c net.Conn) { io.Copy(c, c) })
	addr := net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port))
	flooder := netip.MustParseAddr("100.64.1.50")
	before, _ := waitMetrics(t, g, 10*time.Second, idle)
	tunDropped0 := tunTxDropped(t, g)

	stop := make(chan struct{})
	pk := watchPeaks(g, stop)
	wait := hping(t, g, floodFor, "--flood", "-S", "-a", flooder.String(), "-p", fmt.Sprint(port), g.ServerAddr4.String())
	took := legitDuringFlood(t, g, addr, 5, 800*time.Millisecond)
	sent, out, ended := wait()
	close(stop)
	<-pk.done

	m := waitIdleAfter(t, g, ended, floodHandshakeTimeout+drainSlack, "the flood")
	capped := m[drop("max_in_flight_per_client")] - before[drop("max_in_flight_per_client")]
	t.Logf("SYNs lost before tcpd's handler: %d dropped by the gateway kernel at the TUN's full queue, %.0f by the forwarder's max_in_flight",
		tunTxDropped(t, g)-tunDropped0, m["tcpd_netstack_tcp_forward_max_in_flight_drops_total"]-before["tcpd_netstack_tcp_forward_max_in_flight_drops_total"])
	t.Logf("hping3 sent %d SYNs from %s in %v; tcpd read %.0f packets, dropped %.0f over the per-client cap, "+
		"opened %.0f tracking entries, %.0f handshake timeouts; legitimate connects took %v",
		sent, flooder, floodFor, m[`tcpd_tun_packets_total{direction="in"}`]-before[`tcpd_tun_packets_total{direction="in"}`],
		capped, m["tcpd_conntrack_opened_total"]-before["tcpd_conntrack_opened_total"],
		m["tcpd_handshake_timeouts_total"]-before["tcpd_handshake_timeouts_total"], took)
	t.Logf("during the flood (%d scrapes): RSS %s at most; at most %v handshakes in flight, %v syn_recv, %v entries",
		pk.scrapes, mibs(pk.rss), pk.inFlight, pk.synRecv, pk.entries)
	if sent == 0 {
		t.Fatalf("hping3 reported no packets sent:\n%s", out)
	}
	for i, d := range took {
		if d >= time.Second {
			t.Errorf("legitimate connect %d took %v during the flood, want under 1s", i, d)
		}
	}
	// The real client adds at most one handshake of its own at a time.
	if pk.inFlight > capPerClient+1 {
		t.Errorf("tcpd_handshakes_in_flight reached %v, want at most the per-client cap %d (+1 for the real client)", pk.inFlight, capPerClient)
	}
	if pk.synRecv > capPerClient+1 {
		t.Errorf(`tcpd_tcp_connection_states{state="syn_recv"} reached %v during the flood, want at most the per-client cap %d (+1): `+
			"SYNs dropped over the cap are connections tcpd never accepted", pk.synRecv, capPerClient)
	}
	if capped < 1000 {
		t.Errorf(`tcpd_dropped_total{reason="max_in_flight_per_client"} grew by %.0f, want the flood's excess (at least 1000)`, capped)
	}

	t.Run("retransmitted SYN holds one slot", func(t *testing.T) {
		retransmittedSYN(t, g, capPerClient)
	})
}

// retransmittedSYN sends one SYN 20 times (same port, same sequence number)
// from an unowned in-range address over a second, as a client retransmits
// it: it must take exactly one handshake slot, open one tracking entry, and
// give both back when the handshake times out. Then the same client must
// get all capPerClient slots, and exactly one SYN more must be dropped.
func retransmittedSYN(t *testing.T, g *gateway, capPerClient int) {
	port := serve(t, g.Server, func(c net.Conn) { io.Copy(io.Discard, c) })
	dst := netip.AddrPortFrom(g.ServerAddr4, uint16(port))
	ghost := netip.MustParseAddr("100.64.1.51")
	raw := newRawSender(t, g)
	before := sample(t, g)
	syn := buildSYN(netip.AddrPortFrom(ghost, 45000), dst, 7777, mssOption(1460))
	start := time.Now()
	maxInFlight := 0.0
	for range 20 {
		raw.send(t, syn)
		time.Sleep(50 * time.Millisecond)
		maxInFlight = max(maxInFlight, sample(t, g)["tcpd_handshakes_in_flight"])
	}
	m, ok := waitMetrics(t, g, floodHandshakeTimeout+drainSlack, idle)
	took := time.Since(start)
	opened := m["tcpd_conntrack_opened_total"] - before["tcpd_conntrack_opened_total"]
	timeouts := m["tcpd_handshake_timeouts_total"] - before["tcpd_handshake_timeouts_total"]
	t.Logf("20 copies of one SYN: at most %v in flight, %.0f entries opened, %.0f handshake timeouts; back to zero after %v",
		maxInFlight, opened, timeouts, took.Round(100*time.Millisecond))
	if !ok {
		t.Fatalf("%v after the first copy tcpd still holds: %s", took.Round(100*time.Millisecond), holding(m))
	}
	if maxInFlight != 1 {
		t.Errorf("one retransmitted SYN held %v handshake slots at most, want exactly 1", maxInFlight)
	}
	if opened != 1 || timeouts != 1 {
		t.Errorf("one retransmitted SYN opened %.0f tracking entries and timed out %.0f times, want 1 and 1", opened, timeouts)
	}

	// No slot leaked: the same client gets the whole cap, and one more SYN
	// is over it.
	before = sample(t, g)
	for i := range capPerClient {
		raw.send(t, buildSYN(netip.AddrPortFrom(ghost, uint16(46000+i)), dst, 1000, mssOption(1460)))
	}
	m, ok = waitMetrics(t, g, floodHandshakeTimeout/2, func(m map[string]float64) bool {
		return m["tcpd_handshakes_in_flight"] == float64(capPerClient)
	})
	if !ok {
		t.Fatalf("after %d SYNs from %s, %v handshakes in flight, want %d: a slot leaked (%v dropped over the cap)",
			capPerClient, ghost, m["tcpd_handshakes_in_flight"], capPerClient,
			m[drop("max_in_flight_per_client")]-before[drop("max_in_flight_per_client")])
	}
	raw.send(t, buildSYN(netip.AddrPortFrom(ghost, uint16(46000+capPerClient)), dst, 1000, mssOption(1460)))
	m, _ = waitMetrics(t, g, 500*time.Millisecond, func(m map[string]float64) bool {
		return m[drop("max_in_flight_per_client")] > before[drop("max_in_flight_per_client")]
	})
	if got := m[drop("max_in_flight_per_client")] - before[drop("max_in_flight_per_client")]; got != 1 {
		t.Errorf("%d+1 SYNs from one client: %v dropped over the cap, want exactly 1", capPerClient, got)
	}
	if got := m["tcpd_handshakes_in_flight"]; got != float64(capPerClient) {
		t.Errorf("%v handshakes in flight with the cap full, want %d", got, capPerClient)
	}
	// The SYN dropped over the cap leaves an unclaimed tracking entry,
	// which conntrack expires on its own 5s timer; the parent test holds
	// tcpd to the handshake timeout for those.
	if m, ok := waitMetrics(t, g, 10*time.Second, idle); !ok {
		t.Fatalf("10s after the handshake timeout tcpd still holds: %s", holding(m))
	}
}
