//go:build linux

package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"tcpd/internal/netlab"
)

// scrape fetches tcpd's /metrics from inside the gateway namespace and
// returns every sample as "name{labels}" → value.
func scrape(t *testing.T, g *gateway) map[string]float64 {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return g.Gateway.Dial(ctx, network, addr)
		},
	}}
	resp, err := client.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	out := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// tcpdConns runs `tcpd conns` against the daemon's admin socket.
func tcpdConns(t *testing.T, sock string, args ...string) string {
	t.Helper()
	bin := netlab.BuildTCPD(t)
	out, err := exec.Command(bin, append([]string{"conns", "--socket", sock}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("tcpd conns %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// TestMetricsAndConnsSeeEstablished holds N connections open and checks
// that /metrics and `tcpd conns` both report exactly N established.
func TestMetricsAndConnsSeeEstablished(t *testing.T) {
	const n = 50
	sock := filepath.Join(t.TempDir(), "tcpd.sock")
	g := startGateway(t, netlab.Options{}, gwConfig{Metrics: true, AdminSocket: sock})
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
	var m map[string]float64
	deadline := time.Now().Add(10 * time.Second)
	for {
		m = scrape(t, g)
		if m[`tcpd_tcp_connection_states{state="established"}`] == n || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := m[`tcpd_tcp_connection_states{state="established"}`]; got != n {
		t.Fatalf("metrics say %v established, want %d", got, n)
	}
	if got := m[`tcpd_tcp_handshake_duration_seconds_count`]; got != n {
		t.Fatalf("handshake histogram count %v, want %d", got, n)
	}
	out := tcpdConns(t, sock, "--state", "established")
	if rows := strings.Count(out, "ESTAB"); rows != 2*n { // both ends established
		t.Fatalf("tcpd conns shows %d ESTAB cells, want %d:\n%s", rows, 2*n, out)
	}
	if got := m[`tcpd_conntrack_corrections_total`]; got != 0 {
		t.Fatalf("%v conntrack corrections", got)
	}
}
