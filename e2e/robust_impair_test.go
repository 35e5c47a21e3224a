//go:build linux

package e2e_test

import (
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"tcpd/internal/netlab"
)

// impairedBulk is how much TestRobustImpairedLink moves each way. The
// issue asks for 64 MiB; that is impossible within the test's ~90 s budget,
// and so is 32 MiB. With 5% loss each way and a ~40 ms round trip, a
// loss-based congestion control gets about MSS/RTT · 1.22/√p ≈ 200 KB/s
// (Mathis et al.), and that is what tcpd achieved here: 16 MiB each way at
// once took 83 s (0.2 MB/s each way), so 64 MiB would take five and a half
// minutes. The slow direction is the netstack sending to the client: one
// way, 4 MiB took 24 s through tcpd against 7.6 s for the kernel's own
// TCP end to end over the same impairment (the client uploading, 8.1 s
// against 7.2 s). 6 MiB each way takes about 30 s, and 65 s when the
// shared machine is busy (8 MiB took 41-44 s, and 88 s once).
const impairedBulk = 6 * mib

// TestRobustImpairedLink moves impairedBulk each way through tcpd over a
// client link with 5% loss, 1% duplication, 5% reordering and 20ms ± 10ms
// delay in both directions (netlab's userspace netem), and checks that the
// bytes arrive intact, that conntrack never needed a correction, and that
// every state gauge returns to zero once TIME_WAIT (2s) has passed.
func TestRobustImpairedLink(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "tcpd.sock")
	g := startGateway(t, netlab.Options{}, gwConfig{Metrics: true, TimeWait: "2s", AdminSocket: sock})
	imp := netlab.Impairment{
		Delay: 20 * time.Millisecond, Jitter: 10 * time.Millisecond,
		Loss: 0.05, Duplicate: 0.01, Reorder: 0.05,
	}
	im, err := g.ImpairClientLink(imp, imp)
	if err != nil {
		t.Fatal(err)
	}
	sums := make(chan [32]byte, 1)
	port := serve(t, g.Server, bulkServer(2, impairedBulk, sums))
	addr := net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port))
	start := time.Now()
	c, err := g.Client.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatalf("dial %s over the impaired link: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(150 * time.Second))
	sum, got, err := exchange(c, 1, impairedBulk)
	took := time.Since(start)
	toGW, toClient := im.Stats()
	m := sample(t, g)
	t.Logf("%s each way in %v (%.2f MB/s each way); impaired towards the gateway %+v, towards the client %+v; "+
		"tcpd: %.0f retransmits, %.0f fast retransmits, %.0f SACK recoveries, %.0f spurious recoveries, %.0f RTO expiries",
		mibs(impairedBulk), took.Round(100*time.Millisecond), float64(impairedBulk)/took.Seconds()/1e6, toGW, toClient,
		m["tcpd_netstack_tcp_retransmits_total"], m["tcpd_netstack_tcp_fast_retransmits_total"],
		m["tcpd_netstack_tcp_sack_recoveries_total"], m["tcpd_netstack_tcp_spurious_recoveries_total"], m["tcpd_netstack_tcp_timeouts_total"])
	if err != nil {
		t.Fatalf("exchange: %v (received %d of %d bytes)", err, got, impairedBulk)
	}
	if got != impairedBulk || sum != streamSum(2, impairedBulk) {
		t.Fatalf("client received %d bytes with sha256 %x, want %d bytes with %x", got, sum[:8], impairedBulk, streamSum(2, impairedBulk))
	}
	select {
	case s := <-sums:
		if s != streamSum(1, impairedBulk) {
			t.Fatalf("server received sha256 %x, want %x", s[:8], streamSum(1, impairedBulk))
		}
	case <-time.After(30 * time.Second):
		t.Fatal("server never finished")
	}
	if toGW.Dropped == 0 || toClient.Dropped == 0 || toGW.Duplicated == 0 || toClient.Reordered == 0 {
		t.Fatalf("the impairment did nothing: %+v, %+v", toGW, toClient)
	}
	c.Close()
	// TIME_WAIT is 2s; the FINs may need retransmitting over the lossy link.
	if m, ok := waitMetrics(t, g, 15*time.Second, idle); !ok {
		// Both ends' own view of what is left, for the record: the
		// client kernel's (sequence numbers, timers, retransmissions)
		// and tcpd's, conntrack's joined with its netstack endpoint's.
		var ss []byte
		g.Client.Do(func() error { ss, _ = exec.Command("ss", "-tanie").CombinedOutput(); return nil })
		t.Errorf("client's ss -tanie:\n%s\ntcpd conns:\n%s", ss, tcpdConns(t, sock, "-o", "json"))
		t.Fatalf("15s after the transfer tcpd still holds: %s", holding(m))
	}
	if got := sample(t, g)["tcpd_conntrack_corrections_total"]; got != 0 {
		t.Errorf("tcpd_conntrack_corrections_total = %v, want 0", got)
	}
}
