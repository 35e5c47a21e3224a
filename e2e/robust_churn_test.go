//go:build linux

package e2e_test

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tcpd/internal/netlab"
)

// How TestRobustChurn's connections end, one in five each.
const (
	churnClientFirst = iota // the client sends FIN first
	churnServerFirst        // the server sends FIN first: tcpd's end enters TIME_WAIT
	churnClientReset        // the client resets (SO_LINGER 0)
	churnServerReset        // the server resets
	churnRefused            // the destination port is closed
	churnModes
)

var churnModeNames = [churnModes]string{"client closes first", "server closes first", "client resets", "server resets", "refused"}

// churnServer serves TestRobustChurn's connections; the client's first byte
// says how the connection is to end.
func churnServer(c net.Conn) {
	c.SetDeadline(time.Now().Add(20 * time.Second))
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return
	}
	switch b[0] {
	case churnClientFirst:
		io.Copy(io.Discard, c) // until the client's FIN
		c.Write([]byte("ok"))
	case churnServerFirst:
		c.Write([]byte("ok"))
	case churnClientReset:
		c.Write([]byte("k"))
		io.Copy(io.Discard, c) // until the reset
	case churnServerReset:
		c.(*net.TCPConn).SetLinger(0)
	}
}

// churnOne runs one connection of the given mode from the client
// namespace's thread (the caller is inside g.Client.Do).
func churnOne(mode int, addr, closed string) error {
	d := net.Dialer{Timeout: 10 * time.Second}
	if mode == churnRefused {
		c, err := d.Dial("tcp", closed)
		if err == nil {
			c.Close()
			return errors.New("connected to a closed port")
		}
		if !isRefused(err) {
			return fmt.Errorf("dial closed port: %w", err)
		}
		return nil
	}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write([]byte{byte(mode)}); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	switch mode {
	case churnClientFirst:
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			return err
		}
		if got, err := readAllString(c); err != nil || got != "ok" {
			return fmt.Errorf("read %q, %v; want ok and EOF", got, err)
		}
	case churnServerFirst:
		if got, err := readAllString(c); err != nil || got != "ok" {
			return fmt.Errorf("read %q, %v; want ok and EOF", got, err)
		}
	case churnClientReset:
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return fmt.Errorf("read: %w", err)
		}
		c.(*net.TCPConn).SetLinger(0)
	case churnServerReset:
		if got, err := readAllString(c); !isReset(err) {
			return fmt.Errorf("read %q, %v; want connection reset", got, err)
		}
	}
	return nil
}

// churn runs n connections, modes in turn, over workers goroutines; it
// returns how many of each mode succeeded and the first few failures.
func churn(t *testing.T, g *gateway, n, workers int, addr, closed string) (ok [churnModes]int64, failed int64, errs []error) {
	t.Helper()
	var (
		next   atomic.Int64
		okN    [churnModes]atomic.Int64
		failN  atomic.Int64
		mu     sync.Mutex
		wg     sync.WaitGroup
		doErrs = make(chan error, workers)
	)
	for range workers {
		wg.Go(func() {
			// The worker's thread stays in the client namespace, so every
			// socket it creates is the client's.
			doErrs <- g.Client.Do(func() error {
				for {
					i := next.Add(1) - 1
					if i >= int64(n) {
						return nil
					}
					mode := int(i % churnModes)
					if err := churnOne(mode, addr, closed); err != nil {
						failN.Add(1)
						mu.Lock()
						if len(errs) < 5 {
							errs = append(errs, fmt.Errorf("connection %d (%s): %w", i, churnModeNames[mode], err))
						}
						mu.Unlock()
						continue
					}
					okN[mode].Add(1)
				}
			})
		})
	}
	wg.Wait()
	close(doErrs)
	for err := range doErrs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := range ok {
		ok[i] = okN[i].Load()
	}
	return ok, failN.Load(), errs
}

// churnConns is how many connections TestRobustChurn makes after its
// warm-up: the 100,000. This machine (2 cores, shared) completes
// 3,300-4,000 a second through tcpd with the mix below, so they take about
// 30 s. CHURN_CONNS overrides it.
const churnConns = 100000

// churnWarmup is the warm-up round. Go keeps the heap it has grown and
// returns it to the system only after a forced GC, so RSS after a churn
// reflects the garbage collector's pacing more than what tcpd holds:
// measured here, RSS rose from 34 MiB after 2,000 connections to 51, 73, 67
// and 72 MiB after each further round of 20,000 (each time with every
// connection closed), and fell back to 37 MiB after two idle minutes (Go's
// forced GC; the live heap was then 5.5 MiB). 20,000 connections reach that
// plateau, so the RSS after the warm-up is the baseline; after the churn
// the test gives tcpd the 30 s its returnMemory may wait to hand a burst's
// heap back.
const churnWarmup = 20000

// TestRobustChurn runs many short connections through tcpd, ending in every
// way a connection ends (FIN from either side first, RST from either side,
// refused by the destination), and checks that nothing leaks: once every
// connection is done and TIME_WAIT (2s) has drained, tcpd's goroutines and
// descriptors are back to what they were after a warm-up round, it holds no
// endpoint, entry or state, and its RSS is within 20% of the warm-up's.
func TestRobustChurn(t *testing.T) {
	const workers = 32
	n := churnConns
	if s := os.Getenv("CHURN_CONNS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil {
			t.Fatalf("CHURN_CONNS: %v", err)
		}
		n = v
	}
	g := startGateway(t, netlab.Options{}, gwConfig{Metrics: true, TimeWait: "2s", LogLevel: "info"})
	// The client's kernel holds a TIME_WAIT for 60s for every connection
	// it closed first, and so does the gateway's for the upstream sockets
	// tcpd closed first: a fifth of the connections each, 24,000 within a
	// minute with the warm-up, close to the kernel's default range of
	// 28,232 ports. All the ports there are, then.
	for _, ns := range []*netlab.NS{g.Client, g.Gateway} {
		if err := ns.Sysctl("net.ipv4.ip_local_port_range", "1024 65535"); err != nil {
			t.Fatal(err)
		}
	}
	port := serve(t, g.Server, churnServer)
	addr := net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port))
	ln, err := g.Server.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	closed := net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(ln.Addr().(*net.TCPAddr).Port))
	ln.Close()

	fresh := sample(t, g)
	// settle waits until tcpd holds nothing and its last relays'
	// goroutines have returned.
	settle := func(what string) map[string]float64 {
		t.Helper()
		m, ok := waitMetrics(t, g, 20*time.Second, func(m map[string]float64) bool {
			return idle(m) && m["tcpd_tcp_time_wait_connections"] == 0
		})
		if !ok {
			t.Fatalf("20s after %s tcpd still holds: %s", what, holding(m))
		}
		time.Sleep(time.Second)
		return sample(t, g)
	}
	report := func(what string, m map[string]float64) {
		t.Logf("%s: %v goroutines, %v open fds, RSS %s (Go heap: %s live, %s in use, %s idle, %s released), %v netstack endpoints (%v tracked), %v entries",
			what, m["go_goroutines"], m["process_open_fds"], mibs(m["process_resident_memory_bytes"]),
			mibs(m["go_memstats_heap_alloc_bytes"]), mibs(m["go_memstats_heap_inuse_bytes"]),
			mibs(m["go_memstats_heap_idle_bytes"]), mibs(m["go_memstats_heap_released_bytes"]),
			m["tcpd_netstack_endpoints"], m["tcpd_netstack_tracked_endpoints"], m["tcpd_conntrack_entries"])
	}
	report("fresh", fresh)

	if ok, failed, errs := churn(t, g, churnWarmup, workers, addr, closed); failed != 0 {
		t.Fatalf("warm-up: %d of %d connections failed (succeeded by mode: %v):\n%v", failed, churnWarmup, ok, errors.Join(errs...))
	}
	base := settle("the warm-up")
	report("after the warm-up", base)

	stop := make(chan struct{})
	pk := watchPeaks(g, stop)
	start := time.Now()
	ok, failed, errs := churn(t, g, n, workers, addr, closed)
	took := time.Since(start)
	close(stop)
	<-pk.done
	t.Logf("during the churn: at most %v relays, %v handshakes in flight, %v tracking entries; RSS %s at most",
		pk.relays, pk.inFlight, pk.entries, mibs(pk.rss))
	t.Logf("%d connections in %v (%.0f/s), %d failed; succeeded by mode: %v", n, took.Round(100*time.Millisecond),
		float64(n)/took.Seconds(), failed, ok)
	if failed != 0 {
		t.Errorf("%d of %d connections failed:\n%v", failed, n, errors.Join(errs...))
	}
	end := settle("the churn")
	report("after the churn", end)

	delta := func(name string) float64 { return end[name] - base[name] }
	grew := map[string]float64{}
	for k, v := range end {
		if strings.HasPrefix(k, "tcpd_") && strings.Contains(k, "_total") && !strings.Contains(k, "_bucket") && v != base[k] {
			grew[k] = v - base[k]
		}
	}
	t.Logf("counters that grew during the churn: %v", grew)
	// Every relay ended the way its connection did.
	for _, c := range []struct {
		metric string
		want   int64
	}{
		{`tcpd_relay_ended_total{end="clean"}`, ok[churnClientFirst] + ok[churnServerFirst]},
		{`tcpd_relay_ended_total{end="client_reset"}`, ok[churnClientReset]},
		{`tcpd_relay_ended_total{end="upstream_reset"}`, ok[churnServerReset]},
		{`tcpd_connections_total{result="upstream_failed"}`, ok[churnRefused]},
		{`tcpd_upstream_connect_failures_total{reason="refused"}`, ok[churnRefused]},
	} {
		if got := delta(c.metric); got != float64(c.want) {
			t.Errorf("%s grew by %.0f, want %d", c.metric, got, c.want)
		}
	}
	for _, name := range []string{`tcpd_relay_ended_total{end="timeout"}`, `tcpd_relay_ended_total{end="aborted"}`, "tcpd_handler_panics_total", "tcpd_conntrack_corrections_total"} {
		if got := end[name]; got != 0 {
			t.Errorf("%s = %v, want 0", name, got)
		}
	}

	// An idle tcpd's goroutines are its fixed set (packet loop,
	// maintenance, metrics and admin servers, the netstack's processors)
	// plus the one serving this scrape; the slack covers a handful of
	// goroutines that end on their own timers (the HTTP server's
	// connection from the previous scrape, say).
	if got, want := end["go_goroutines"], base["go_goroutines"]; got > want+5 {
		t.Errorf("%v goroutines after the churn, %v after the warm-up: %v leaked", got, want, got-want)
	}
	// Descriptors: the TUN, the listeners, the scrape's connection. The
	// slack is that of the goroutines above: a connection of a previous
	// scrape not yet closed.
	if got, want := end["process_open_fds"], base["process_open_fds"]; got > want+2 {
		t.Errorf("%v open fds after the churn, %v after the warm-up: %v leaked", got, want, got-want)
	}
	// Go keeps the heap it grew, and frees it only after a forced GC: the
	// runtime's own every two minutes, or tcpd's returnMemory once the
	// connections have fallen to half a peak of 256 or more, and again
	// once none is left, at most every 5 s. The churn's peak is far above
	// 256 (TIME_WAIT entries), so RSS must come back to within 20% of the
	// warm-up's within 30 s.
	want := base["process_resident_memory_bytes"]
	var rss []string
	freed := time.Now()
	m, back := waitMetrics(t, g, 35*time.Second, func(m map[string]float64) bool {
		rss = append(rss, mibs(m["process_resident_memory_bytes"]))
		return m["process_resident_memory_bytes"] <= 1.2*want
	})
	t.Logf("RSS after the churn: %s, %v later %s (Go heap %s in use)", rss[0], time.Since(freed).Round(100*time.Millisecond),
		mibs(m["process_resident_memory_bytes"]), mibs(m["go_memstats_heap_inuse_bytes"]))
	if !back {
		t.Errorf("RSS %s 35s after the churn, %s after the warm-up: more than 20%% growth (Go heap %s in use, %s live)",
			mibs(m["process_resident_memory_bytes"]), mibs(want), mibs(m["go_memstats_heap_inuse_bytes"]), mibs(m["go_memstats_heap_alloc_bytes"]))
	}
	for _, name := range []string{"tcpd_netstack_endpoints", "tcpd_netstack_tracked_endpoints", "tcpd_conntrack_entries", "tcpd_handshakes_in_flight", "tcpd_relays_active"} {
		if got := end[name]; got != 0 {
			t.Errorf("%s = %v after the churn, want 0", name, got)
		}
	}
}
