//go:build linux

package e2e_test

import (
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"tcpd/internal/netlab"
)

// TestHandshakeLatencyIsTheClientLeg delays everything the client sends by
// 20 ms (a userspace netem: this kernel has none) and checks that tcpd's
// handshake histogram, which times SYN-ACK sent → the client's ACK, sees
// those 20 ms, and that the setup histogram (first SYN → established)
// includes the upstream dial on top.
func TestHandshakeLatencyIsTheClientLeg(t *testing.T) {
	const n = 30
	const delay = 20 * time.Millisecond
	sock := filepath.Join(t.TempDir(), "tcpd.sock")
	g := startGateway(t, netlab.Options{}, gwConfig{AdminSocket: sock, Metrics: true})
	if _, err := g.ImpairClientLink(netlab.Impairment{Delay: delay}, netlab.Impairment{}); err != nil {
		t.Fatal(err)
	}
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

	// connect() returns on the SYN-ACK; the client's ACK reaches tcpd 20 ms
	// later.
	deadline := time.Now().Add(5 * time.Second)
	for scrape(t, g)[`tcpd_tcp_connection_states{state="established"}`] != n {
		if time.Now().After(deadline) {
			t.Fatalf("tcpd never counted %d established", n)
		}
		time.Sleep(20 * time.Millisecond)
	}

	var conns struct {
		Conns []struct {
			Handshake float64 `json:"handshake_seconds"`
		} `json:"conns"`
	}
	if err := json.Unmarshal([]byte(tcpdConns(t, sock, "-o", "json")), &conns); err != nil {
		t.Fatal(err)
	}
	if len(conns.Conns) != n {
		t.Fatalf("tcpd conns lists %d connections, want %d", len(conns.Conns), n)
	}
	var hs []float64
	for _, c := range conns.Conns {
		hs = append(hs, c.Handshake)
	}
	slices.Sort(hs)
	median := hs[n/2]

	var sum struct {
		Handshake, Dial, Setup struct {
			Count uint64  `json:"count"`
			P50   float64 `json:"p50_seconds"`
		}
	}
	if err := json.Unmarshal([]byte(tcpdConns(t, sock, "-s", "-o", "json")), &sum); err != nil {
		t.Fatal(err)
	}
	t.Logf("handshake: per-connection median %.2fms, histogram p50 %.2fms; dial p50 %.3fms; setup p50 %.2fms",
		median*1e3, sum.Handshake.P50*1e3, sum.Dial.P50*1e3, sum.Setup.P50*1e3)

	// The unloaded client leg is well under a millisecond here; 10 % of
	// 20 ms leaves room for it and for the scheduler.
	want := delay.Seconds()
	if median < 0.9*want || median > 1.1*want+0.001 {
		t.Errorf("per-connection handshake median %.2fms, want within 10%% of %v", median*1e3, delay)
	}
	// The histogram's quantile is interpolated inside native buckets 9 %
	// wide, so it gets that much more room.
	if sum.Handshake.Count != n || sum.Handshake.P50 < 0.8*want || sum.Handshake.P50 > 1.2*want+0.001 {
		t.Errorf("handshake histogram: %d samples, p50 %.2fms; want %d around %v", sum.Handshake.Count, sum.Handshake.P50*1e3, n, delay)
	}
	// Setup is the dial plus the client leg for every connection: compare
	// the histograms' exact sums, not quantiles from shared buckets.
	m := scrape(t, g)
	setup, hsSum, dial := m["tcpd_tcp_connection_setup_duration_seconds_sum"],
		m["tcpd_tcp_handshake_duration_seconds_sum"], m["tcpd_upstream_connect_duration_seconds_sum"]
	if m["tcpd_tcp_connection_setup_duration_seconds_count"] != n || setup < hsSum+dial {
		t.Errorf("setup histogram: %v samples summing %.2fms; want %d summing at least handshake %.2fms + dial %.2fms",
			m["tcpd_tcp_connection_setup_duration_seconds_count"], setup*1e3, n, hsSum*1e3, dial*1e3)
	}
}
