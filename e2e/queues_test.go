//go:build linux

package e2e_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"tcpd/internal/netlab"
)

// queueCounts returns tcpd_tun_queue_packets_total for direction dir, by
// queue, from a scrape.
func queueCounts(m map[string]float64, dir string, queues int) []float64 {
	out := make([]float64, queues)
	for q := range out {
		out[q] = m[fmt.Sprintf(`tcpd_tun_queue_packets_total{direction="%s",queue="%d"}`, dir, q)]
	}
	return out
}

// tunDetails is `ip -d link show` of tcpd's TUN in the gateway namespace:
// the kernel's own account of the device's flags and queues.
func tunDetails(t *testing.T, g *gateway) string {
	t.Helper()
	out, err := g.Gateway.Command(context.Background(), "ip", "-d", "link", "show", g.tcpd.TUN()).CombinedOutput()
	if err != nil {
		t.Fatalf("ip -d link show %s: %v\n%s", g.tcpd.TUN(), err, out)
	}
	return string(out)
}

// settled scrapes until the TUN's counters stop moving: the connections
// the test ran have sent their last packets.
func settled(t *testing.T, g *gateway) map[string]float64 {
	t.Helper()
	prev := scrape(t, g)
	for range 50 {
		time.Sleep(200 * time.Millisecond)
		m := scrape(t, g)
		if m[`tcpd_tun_packets_total{direction="in"}`] == prev[`tcpd_tun_packets_total{direction="in"}`] &&
			m[`tcpd_tun_packets_total{direction="out"}`] == prev[`tcpd_tun_packets_total{direction="out"}`] {
			return m
		}
		prev = m
	}
	t.Fatal("the TUN's counters never settled")
	return nil
}

// TestMultiQueueTUN runs tcpd with tun.queues 2 and checks the device as
// the kernel sees it (multi_queue, 2 queues attached, the virtio-net
// header), that both queues carry traffic both ways when many flows run,
// that each queue's counters add up to the totals, and that a flow stays
// on one queue both ways: tcpd writes a flow on the queue its SYN came on,
// and everything the client sends arrives on that queue.
func TestMultiQueueTUN(t *testing.T) {
	t.Parallel()
	g := startGateway(t, netlab.Options{}, gwConfig{Queues: "2", Metrics: true, TimeWait: "1s"})
	details := tunDetails(t, g)
	for _, want := range []string{"multi_queue", "numqueues 2", "vnet_hdr on"} {
		if !strings.Contains(details, want) {
			t.Fatalf("the kernel's TUN lacks %q:\n%s", want, details)
		}
	}
	if !strings.Contains(g.tcpd.Logs(), `"queues":2`) {
		t.Errorf("tcpd's ready line does not say 2 queues:\n%s", g.tcpd.Logs())
	}

	const size = 256 << 10
	sums := make(chan [32]byte, 64)
	port := serve(t, g.Server, bulkServer(2, size, sums))
	addr := net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port))
	exchangeOne := func(t *testing.T) {
		c, err := g.Client.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Errorf("dial %s: %v", addr, err)
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Minute))
		if sum, got, err := exchange(c, 1, size); err != nil || got != size || sum != streamSum(2, size) {
			t.Errorf("exchange: %d of %d bytes, error %v", got, size, err)
		}
		<-sums
	}

	t.Run("many flows use both queues", func(t *testing.T) {
		before := settled(t, g)
		var wg sync.WaitGroup
		for range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				exchangeOne(t)
			}()
		}
		wg.Wait()
		m := settled(t, g)
		for _, dir := range []string{"in", "out"} {
			was, now := queueCounts(before, dir, 2), queueCounts(m, dir, 2)
			var sum float64
			for q := range now {
				if now[q] <= was[q] {
					t.Errorf("queue %d carried no packets %s of 32 flows (counts %v, before %v)", q, dir, now, was)
				}
				sum += now[q]
			}
			if total := m[`tcpd_tun_packets_total{direction="`+dir+`"}`]; sum != total {
				t.Errorf("the queues' %s packets add up to %v, the total says %v", dir, sum, total)
			}
		}
	})

	t.Run("a flow stays on one queue both ways", func(t *testing.T) {
		for i := range 8 {
			before := settled(t, g)
			exchangeOne(t)
			m := settled(t, g)
			in, out := queueCounts(m, "in", 2), queueCounts(m, "out", 2)
			wasIn, wasOut := queueCounts(before, "in", 2), queueCounts(before, "out", 2)
			var dIn, dOut [2]float64
			for q := range 2 {
				dIn[q], dOut[q] = in[q]-wasIn[q], out[q]-wasOut[q]
			}
			home := 0
			if dOut[1] > dOut[0] {
				home = 1
			}
			// Every packet tcpd writes for the flow leaves on its queue, to
			// the very end: those the netstack sends after conntrack has
			// seen the connection end (a FIN again, the RST to the
			// client's answer) too, as conntrack keeps the queue of an
			// ended 4-tuple a while (conntrack/ended.go).
			if dOut[1-home] != 0 {
				t.Errorf("flow %d: tcpd wrote its packets on both queues: %v", i, dOut)
			}
			// The kernel puts the SYN on a queue of its own choosing, by a
			// hash tcpd cannot compute, and the ACK that completes the
			// handshake too: it is sent while tcpd's SYN-ACK is handed to
			// the kernel's stack, before the kernel records the queue that
			// the SYN-ACK was written on (tun_get_user calls
			// tun_flow_update last). tcpd writes the flow on its SYN's
			// queue, so nothing of it comes on the other.
			if dIn[1-home] != 0 || dIn[home] == 0 {
				t.Errorf("flow %d: tcpd answered on queue %d, but %v of the client's %v packets came on the other queue (per queue in %v, out %v)",
					i, home, dIn[1-home], dIn[0]+dIn[1], dIn, dOut)
			}
		}
	})
}

// TestMultiQueueRefused has the kernel refuse a multi-queue TUN: a
// persistent single-queue device of the same name exists already, as an
// operator may have left one. tcpd says so, runs on one queue, and relays.
func TestMultiQueueRefused(t *testing.T) {
	t.Parallel()
	lab := netlab.NewT(t, netlab.Options{})
	if out, err := lab.Gateway.Command(context.Background(), "ip", "tuntap", "add", "dev", "tcpd0", "mode", "tun").CombinedOutput(); err != nil {
		t.Fatalf("ip tuntap add: %v\n%s", err, out)
	}
	g := startGatewayOn(t, lab, gwConfig{Queues: "2", Metrics: true})
	if !strings.Contains(g.tcpd.Logs(), "the kernel refused a multi-queue TUN; using one queue") {
		t.Fatalf("tcpd did not say that it fell back to one queue:\n%s", g.tcpd.Logs())
	}
	if d := tunDetails(t, g); strings.Contains(d, "multi_queue") {
		t.Fatalf("the TUN is multi-queue after all:\n%s", d)
	}
	assertBulk(t, g, g.ServerAddr4.String(), 1<<20)
	m := scrape(t, g)
	if q := queueCounts(m, "in", 2); q[0] == 0 || q[1] != 0 {
		t.Fatalf("packets in by queue %v, want all on queue 0 and no queue 1", q)
	}
	if _, ok := m[`tcpd_tun_queue_packets_total{direction="in",queue="1"}`]; ok {
		t.Fatal("a queue 1 is exported on a TUN with one queue")
	}
}
