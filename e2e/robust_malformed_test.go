//go:build linux

package e2e_test

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"tcpd/internal/netlab"
)

// malformedCount is how many packets testdata/malformed.py sends.
const malformedCount = 10000

// TestRobustMalformedPackets sends 10,000 malformed and random packets from
// in-range source addresses towards the server (testdata/malformed.py, with
// scapy): bad checksums, truncated headers, bad lengths and header lengths,
// odd flag combinations, IP options, fragments, wrong IP versions, IPv6
// extension headers, garbage TCP options, random bytes. Much of the IP-level
// garbage never gets past the gateway's kernel; what does reaches tcpd's
// TUN. tcpd must survive it all (same process, still serving scrapes and
// connections), count what it rejects, and let go of whatever the
// SYN-like packets started. Both TUN paths are tried: with offload, tcpd
// checks the checksums the kernel did not vouch for itself; without, the
// netstack does.
func TestRobustMalformedPackets(t *testing.T) {
	for _, offload := range []string{"auto", "off"} {
		t.Run("offload="+offload, func(t *testing.T) { malformedPackets(t, offload) })
	}
}

func malformedPackets(t *testing.T, offload string) {
	needScapy(t)
	g := startGateway(t, netlab.Options{}, gwConfig{Metrics: true, Offload: offload, HandshakeTimeout: "2s", LogLevel: "info"})
	port := serve(t, g.Server, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			if _, err := c.Write(buf[:n]); err != nil {
				return
			}
		}
	})
	pid := tcpdPid(t, g)
	before := sample(t, g)
	tun0 := tunTxPackets(t, g)

	var sent struct {
		Sent  int            `json:"sent"`
		Kinds map[string]int `json:"kinds"`
	}
	runScapy(t, g, 2*time.Minute, &sent, "malformed.py", "--dst4", g.ServerAddr4.String(), "--dst6", g.ServerAddr6.String(),
		"--port", fmt.Sprint(port), "--count", fmt.Sprint(malformedCount))
	if sent.Sent != malformedCount {
		t.Fatalf("malformed.py sent %d packets, want %d", sent.Sent, malformedCount)
	}
	// The last packets may still be in the TUN's queue.
	time.Sleep(500 * time.Millisecond)
	reached := tunTxPackets(t, g) - tun0

	assertAlive(t, g, pid)
	c, took, err := timedDial(g, net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port)), 5*time.Second)
	if err != nil {
		t.Fatalf("a normal connection after the malformed packets: %v", err)
	}
	if err := echoOnce(c); err != nil {
		t.Fatalf("a normal connection after the malformed packets: %v", err)
	}
	c.Close()

	m := sample(t, g)
	grew := map[string]float64{}
	for _, name := range []string{
		drop("malformed"), drop("bad_checksum"), drop("spoofed_source"), drop("tun_read_error"),
		"tcpd_netstack_tcp_checksum_errors_total", "tcpd_netstack_tcp_invalid_segments_received_total",
		"tcpd_netstack_ip_malformed_packets_received_total", "tcpd_netstack_ip_invalid_source_addresses_received_total",
		"tcpd_netstack_ip_invalid_destination_addresses_received_total", "tcpd_netstack_ip_packets_received_total",
		"tcpd_netstack_tcp_segments_received_total", "tcpd_netstack_tcp_resets_sent_total", "tcpd_netstack_tcp_passive_opens_total",
		"tcpd_conntrack_opened_total", "tcpd_conntrack_untracked_segments_total", `tcpd_tun_packets_total{direction="in"}`,
	} {
		grew[strings.TrimPrefix(name, "tcpd_")] = m[name] - before[name]
	}
	t.Logf("malformed.py sent %d packets %v; %d reached the TUN; a normal connection then took %v", sent.Sent, sent.Kinds, reached, took)
	t.Logf("tcpd's counters grew: %v", grew)
	if reached == 0 {
		t.Fatal("none of the packets reached the TUN, so the test proved nothing")
	}
	rejected := grew[`dropped_total{reason="malformed"}`] + grew[`dropped_total{reason="bad_checksum"}`] +
		grew["netstack_tcp_checksum_errors_total"] + grew["netstack_tcp_invalid_segments_received_total"] +
		grew["netstack_ip_malformed_packets_received_total"]
	if rejected == 0 {
		t.Errorf("%d malformed packets reached tcpd and none was counted as malformed, bad checksum or invalid", reached)
	}
	// Segments with a wrong TCP checksum cross the gateway's forwarding
	// untouched (it checks only the IP header's), so every packet of these
	// two kinds reached tcpd, which must catch and count it: as
	// bad_checksum when tcpd checks, as the netstack's checksum errors
	// when the netstack does. A random checksum is right once in 65536;
	// 1% slack.
	badSum := float64(sent.Kinds["bad_tcp_checksum"] + sent.Kinds["v6_bad_checksum"])
	if got := grew[`dropped_total{reason="bad_checksum"}`] + grew["netstack_tcp_checksum_errors_total"]; got < badSum*0.99 {
		t.Errorf("%.0f segments with a bad TCP checksum reached tcpd; %.0f were counted (dropped_total{reason=\"bad_checksum\"} %.0f, netstack_tcp_checksum_errors_total %.0f)",
			badSum, got, grew[`dropped_total{reason="bad_checksum"}`], grew["netstack_tcp_checksum_errors_total"])
	}
	if got := m["tcpd_handler_panics_total"]; got != 0 {
		t.Errorf("tcpd_handler_panics_total = %v, want 0", got)
	}
	// Handshakes the SYN-like packets started time out (2s); entries no
	// handler claimed expire (5s).
	if m, ok := waitMetrics(t, g, 15*time.Second, idle); !ok {
		t.Errorf("15s after the malformed packets tcpd still holds: %s", holding(m))
	}
	assertAlive(t, g, pid)
}
