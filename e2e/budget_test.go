//go:build linux

package e2e_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tcpd/internal/netlab"
)

// tcpd's descriptors: the open-file limit is its budget, and what it keeps
// for itself keeps its metrics listener, its admin socket and its log
// working when the connections have taken the rest.

// budgetLimit is tcpd's open-file limit in TestDescriptorBudgetAtTheLimit:
// small enough to reach in a second.
const budgetLimit = 300

// holdEcho dials addr from the client namespace n times, eight at a time,
// checks each connection with an echo and keeps it open. It returns the
// connections made and how many were refused; anything else fails the
// test.
func holdEcho(t *testing.T, g *gateway, addr string, n int) (held []net.Conn, refused int) {
	t.Helper()
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
		next atomic.Int64
	)
	for range 8 {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				c, err := g.Client.DialTimeout("tcp", addr, 5*time.Second)
				if err == nil {
					if err = echoOnce(c); err != nil {
						c.Close()
					}
				}
				mu.Lock()
				switch {
				case err == nil:
					held = append(held, c)
				case isRefused(err):
					refused++
				default:
					errs = append(errs, fmt.Errorf("connection %d: %w", i, err))
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	t.Cleanup(func() { closeAll(held) })
	if len(errs) > 0 {
		t.Fatalf("%d of %d connections failed otherwise than refused: %v", len(errs), n, errs[:min(3, len(errs))])
	}
	return held, refused
}

// idleScrapers opens n connections to the metrics listener from the
// gateway namespace; each sends one scrape and then idles, keeping the
// connection alive, as a local process hoarding descriptors would.
func idleScrapers(t *testing.T, g *gateway, n int) {
	t.Helper()
	var cs []net.Conn
	t.Cleanup(func() { closeAll(cs) })
	for i := range n {
		c, err := g.Gateway.DialTimeout("tcp", metricsAddr, 5*time.Second)
		if err != nil {
			t.Fatalf("idle scraper %d: %v", i, err)
		}
		cs = append(cs, c)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		fmt.Fprintf(c, "GET /metrics HTTP/1.1\r\nHost: tcpd\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("idle scraper %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

// timedSample scrapes and says how long it took.
func timedSample(t *testing.T, g *gateway) (map[string]float64, time.Duration) {
	t.Helper()
	start := time.Now()
	m, err := trySample(g)
	if err != nil {
		t.Fatalf("scrape after %v: %v", time.Since(start).Round(time.Millisecond), err)
	}
	return m, time.Since(start)
}

// TestDescriptorBudgetAtTheLimit runs tcpd under an open-file limit of
// 300, far below what its default caps need. It must say so at start with
// the numbers, then take exactly as many connections as the limit leaves
// after its own reserve and refuse the rest with RST (counted fd_limit),
// never failing a connect for want of a descriptor; and at that limit, with
// a local process hoarding idle keep-alive connections to the metrics
// listener, /metrics and the admin socket must keep answering at once.
func TestDescriptorBudgetAtTheLimit(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "tcpd.sock")
	g := startGateway(t, netlab.Options{}, gwConfig{Metrics: true, AdminSocket: sock, LogLevel: "info", OpenFiles: budgetLimit})
	port := serve(t, g.Server, func(c net.Conn) { io.Copy(c, c) })
	addr := net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port))

	m := sample(t, g)
	budget := int(m["tcpd_fd_budget"])
	t.Logf("open-file limit %v, budget %d connections, %v descriptors open at start", m["process_max_fds"], budget, m["process_open_fds"])
	if m["process_max_fds"] != budgetLimit {
		t.Fatalf("process_max_fds = %v, want %d: tcpd does not run under the test's limit", m["process_max_fds"], budgetLimit)
	}
	if budget <= 0 || budget >= budgetLimit-int(m["process_open_fds"]) {
		t.Errorf("tcpd_fd_budget = %d with a limit of %d and %v open: no reserve kept", budget, budgetLimit, m["process_open_fds"])
		budget = budgetLimit // go on: what happens at the limit?
	}
	var warned bool
	for _, l := range g.tcpd.LogLines() {
		msg, _ := l["msg"].(string)
		if l["level"] == "warn" && strings.Contains(msg, fmt.Sprintf("open-file limit (RLIMIT_NOFILE) is %d", budgetLimit)) &&
			strings.Contains(msg, "LimitNOFILE") && l["fd_budget"] == float64(budget) {
			warned = true
		}
	}
	if !warned {
		t.Errorf("no warning at start that the open-file limit %d is below what the caps need, with the numbers\n%s", budgetLimit, g.tcpd.Logs())
	}

	const extra = 30
	held, refused := holdEcho(t, g, addr, budget+extra)
	m = sample(t, g)
	t.Logf("%d connections held, %d refused; %v descriptors open; dropped %v; connect failures %v",
		len(held), refused, m["process_open_fds"], nonZero(m, "tcpd_dropped_total"), nonZero(m, "tcpd_upstream_connect_failures_total"))
	if len(held) != budget || refused != extra {
		t.Errorf("%d connections made and %d refused, want the budget's %d and %d", len(held), refused, budget, extra)
	}
	if got := m[drop("fd_limit")]; got != extra {
		t.Errorf(`tcpd_dropped_total{reason="fd_limit"} = %v, want %d`, got, extra)
	}
	if got := stateSum(m, "tcpd_upstream_connect_failures_total"); got != 0 {
		t.Errorf("upstream connects failed at the limit: %v; want none: the budget refuses before the descriptors run out", nonZero(m, "tcpd_upstream_connect_failures_total"))
	}

	// A local process hoards keep-alive connections to the metrics
	// listener, five times its cap.
	idleScrapers(t, g, 80)
	m, took := timedSample(t, g)
	t.Logf("with the budget used up and 80 idle scrapers: scrape in %v, %v descriptors open", took.Round(time.Millisecond), m["process_open_fds"])
	if took > 2*time.Second {
		t.Errorf("a scrape at the limit took %v, want it answered at once", took)
	}
	if m["process_open_fds"] >= budgetLimit {
		t.Errorf("%v descriptors open, at the limit %d", m["process_open_fds"], budgetLimit)
	}
	start := time.Now()
	rows := connsJSON(t, sock)
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("tcpd conns at the limit took %v", took)
	}
	if len(rows) != budget {
		t.Errorf("tcpd conns lists %d connections at the limit, want %d", len(rows), budget)
	}
	// Still refused cleanly, and one closed makes room for one more.
	if _, err := g.Client.DialTimeout("tcp", addr, 5*time.Second); !isRefused(err) {
		t.Errorf("a connection past the budget: %v, want refused", err)
	}
	held[0].Close()
	if !waitFor(5*time.Second, func() bool { return sample(t, g)["tcpd_relays_active"] == float64(budget-1) }) {
		t.Fatal("the closed connection's relay never ended")
	}
	c, err := g.Client.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("a connection after one closed at the limit: %v", err)
	}
	defer c.Close()
	if err := echoOnce(c); err != nil {
		t.Fatalf("echo: %v", err)
	}
}

// TestUpstreamOutOfDescriptors lowers a running tcpd's open-file limit
// below what it holds, as `prlimit --pid` would, so that its upstream
// connects fail with EMFILE: each client must get RST, each failure be
// counted no_descriptor, and a warning saying what to do be logged once,
// not once per connection.
func TestUpstreamOutOfDescriptors(t *testing.T) {
	g := startGateway(t, netlab.Options{}, gwConfig{Metrics: true, LogLevel: "info"})
	port := serve(t, g.Server, func(c net.Conn) { io.Copy(c, c) })
	addr := net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port))
	pid := tcpdPid(t, g)
	sample0 := sample(t, g)
	// The soft limit only: raising a hard limit again needs
	// CAP_SYS_RESOURCE.
	prlimit := func(n int) {
		t.Helper()
		if out, err := exec.Command("prlimit", "--pid", fmt.Sprint(pid), fmt.Sprintf("--nofile=%d:", n)).CombinedOutput(); err != nil {
			t.Fatalf("prlimit: %v\n%s", err, out)
		}
	}
	// Room for nothing new: the limit is one more than the highest
	// descriptor number a new file may get, and every number below the
	// lowest free one is taken.
	// The scrape's connection closes a moment after its answer: wait
	// until no descriptor is freed any more.
	for i := 0; ; i++ {
		low := lowestFreeFD(t, pid)
		prlimit(low)
		time.Sleep(200 * time.Millisecond)
		if lowestFreeFD(t, pid) == low {
			break
		}
		if i == 10 {
			t.Fatal("tcpd's descriptors never settled")
		}
	}
	const n = 5
	for i := range n {
		c, err := g.Client.DialTimeout("tcp", addr, 5*time.Second)
		if err == nil {
			c.Close()
			t.Fatalf("connection %d made with no descriptor to spare", i)
		}
		if !isRefused(err) {
			t.Fatalf("connection %d: %v, want refused (RST)", i, err)
		}
	}
	prlimit(int(sample0["process_max_fds"]))
	m := sample(t, g)
	if got := m[`tcpd_upstream_connect_failures_total{reason="no_descriptor"}`]; got != n {
		t.Errorf(`tcpd_upstream_connect_failures_total{reason="no_descriptor"} = %v, want %d (all: %v)`, got, n, nonZero(m, "tcpd_upstream_connect_failures_total"))
	}
	warnings := 0
	for _, l := range g.tcpd.LogLines() {
		if l["level"] == "warn" && strings.Contains(fmt.Sprint(l["msg"]), "out of file descriptors") && l["reason"] == "no_descriptor" {
			warnings++
		}
	}
	if warnings != 1 {
		t.Errorf("%d warnings of the failed connects, want 1 (rate-limited)\n%s", warnings, g.tcpd.Logs())
	}
	c, err := g.Client.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("after the limit was raised again: %v", err)
	}
	defer c.Close()
	if err := echoOnce(c); err != nil {
		t.Fatal(err)
	}
}

// lowestFreeFD returns the lowest descriptor number pid has free.
func lowestFreeFD(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	used := map[int]bool{}
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err == nil {
			used[n] = true
		}
	}
	n := 0
	for used[n] {
		n++
	}
	return n
}

// TestUpstreamOutOfLocalPorts gives the gateway a local port range of ten
// ports and holds connections to one destination until they run out: the
// eleventh connect fails with EADDRNOTAVAIL, its client gets RST, and the
// failure is counted no_local_port and explained once in the log.
func TestUpstreamOutOfLocalPorts(t *testing.T) {
	g := startGateway(t, netlab.Options{}, gwConfig{Metrics: true, LogLevel: "info"})
	if err := g.Gateway.Sysctl("net.ipv4.ip_local_port_range", "40000 40009"); err != nil {
		t.Fatal(err)
	}
	port := serve(t, g.Server, func(c net.Conn) { io.Copy(c, c) })
	addr := net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port))
	held, refused := holdEcho(t, g, addr, 13)
	m := sample(t, g)
	t.Logf("%d connections held, %d refused; connect failures %v", len(held), refused, nonZero(m, "tcpd_upstream_connect_failures_total"))
	if len(held) != 10 || refused != 3 {
		t.Errorf("%d connections made and %d refused through a 10-port range, want 10 and 3", len(held), refused)
	}
	if got := m[`tcpd_upstream_connect_failures_total{reason="no_local_port"}`]; got != 3 {
		t.Errorf(`tcpd_upstream_connect_failures_total{reason="no_local_port"} = %v, want 3 (all: %v)`, got, nonZero(m, "tcpd_upstream_connect_failures_total"))
	}
	var warnings []map[string]any
	for _, l := range g.tcpd.LogLines() {
		if l["level"] == "warn" && l["reason"] == "no_local_port" {
			warnings = append(warnings, l)
		}
	}
	if len(warnings) != 1 {
		t.Fatalf("%d warnings of the failed connects, want 1 (rate-limited)\n%s", len(warnings), g.tcpd.Logs())
	}
	msg := fmt.Sprint(warnings[0]["msg"])
	for _, want := range []string{"ip_local_port_range", "tcp_tw_reuse", "upstream.source_addresses"} {
		if !strings.Contains(msg, want) {
			t.Errorf("the warning %q does not mention %s", msg, want)
		}
	}
}
