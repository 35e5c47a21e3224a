package stack

import (
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"tcpd/conntrack"
	"tcpd/internal/lockwait"
)

// BenchmarkReceivePath prices what the link does with one packet from a
// client, from the bytes read off the TUN to the netstack's endpoint:
// parsing, the source and checksum checks, conntrack, and delivery into
// the netstack. Every b.RunParallel goroutine (one per P: -cpu 1,2,4,8,16)
// stands for one TUN queue's read loop and carries the pure ACKs of 4
// established connections of its own, as a downloading client sends them.
// lockwait-ns/op is the time goroutines spent waiting on locks per packet.
func BenchmarkReceivePath(b *testing.B) {
	const conns, perWorker = 64, 4
	h := newHarness(b, Config{}, clientAddr)
	release := make(chan struct{})
	h.listen(b, func(net.Conn) { <-release })
	b.Cleanup(func() { close(release) }) // before listen's cleanup waits for them

	// Handshakes from raw packets, one client address per connection; the
	// SYN-ACKs say which ISN tcpd chose.
	var mu sync.Mutex
	tcpdISS := map[netip.AddrPort]uint32{}
	h.observeOut(func(p []byte) {
		_, dst, seg, ok := parseTCP(p)
		if ok && seg.Flags&conntrack.FlagSYN != 0 {
			mu.Lock()
			tcpdISS[dst] = seg.Seq
			mu.Unlock()
		}
	})
	const cISS = 1000
	clients := make([]netip.AddrPort, conns)
	dst := netip.AddrPortFrom(dstAddr, 443)
	for i := range clients {
		clients[i] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{100, 64, 2, byte(i + 1)}), 40000)
		h.inject <- withChecksums(buildV4(clients[i], dst, header.TCPFlagSyn, cISS, 0, 0))
	}
	acks := make([][]byte, conns)
	waitForB(b, "every SYN-ACK", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(tcpdISS) == conns
	})
	for i, c := range clients {
		mu.Lock()
		t := tcpdISS[c]
		mu.Unlock()
		acks[i] = withChecksums(buildV4(c, dst, header.TCPFlagAck, cISS+1, t+1, 0))
		h.inject <- acks[i]
	}
	waitForB(b, "every connection established and relayed", func() bool {
		return h.s.Snapshot().States[conntrack.StateEstablished] == conns && h.s.Stats().Active.Load() == conns
	})
	h.observeOut(func([]byte) {})

	before := h.s.Snapshot()
	var workers atomic.Int32
	queues := make([]QueueStats, runtime.GOMAXPROCS(0))
	b.ReportAllocs()
	wait := lockwait.Total()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		w := int(workers.Add(1) - 1)
		// Each loop counts into a queue of its own, as on a multi-queue
		// TUN; the test device itself has one.
		q := &tunQueue{idx: w, stats: &queues[w]}
		first := w * perWorker % conns
		for i := 0; pb.Next(); i++ {
			h.s.link.deliverPacket(q, acks[first+i%perWorker], kernelCsumNone)
		}
	})
	b.StopTimer()
	lockwait.Report(b, wait)
	after := h.s.Snapshot()
	if after.Untracked != before.Untracked || after.States[conntrack.StateEstablished] != conns {
		b.Fatalf("%d packets untracked, %d established: the benchmark's packets missed their connections",
			after.Untracked-before.Untracked, after.States[conntrack.StateEstablished])
	}
	for r := range NumDropReasons {
		n := h.s.Stats().Drops(r)
		for i := range queues {
			n += queues[i].Dropped[r].Load()
		}
		if n != 0 {
			b.Fatalf("%d packets dropped as %s", n, r)
		}
	}
}

// waitForB is waitFor for benchmarks.
func waitForB(b *testing.B, what string, cond func() bool) {
	b.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatalf("timed out waiting for %s", what)
		}
	}
}
