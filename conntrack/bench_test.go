package conntrack_test

import (
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	ct "tcpd/conntrack"
	"tcpd/internal/lockwait"
)

// The table as a gateway's packet loops use it: one goroutine per TUN queue
// calls it at once (b.RunParallel, one goroutine per P, so -cpu 1,2,4,8,16
// is 1 to 16 queues), on a table that already holds a busy gateway's
// connections, while the stack's maintenance loop runs beside them as it
// does in tcpd: TIME_WAIT expiry every 100 ms; every second the timers, a
// reconcile of every connection and a snapshot for the scrape. Each
// benchmark reports lockwait-ns/op, the time goroutines spent waiting on
// locks per operation (runtime/metrics), beside ns/op.

const (
	// standingConns established connections from standingClients client
	// addresses are in the table before the benchmark starts.
	standingConns   = 16384
	standingClients = 4096
	// Client and tcpd initial sequence numbers of every benchmark
	// connection.
	benchCISS, benchTISS = 1000, 5000
)

// clientAt returns the i-th client address of group g: groups of 4096
// addresses in 100.64.0.0/10, group 0 for the standing connections, group
// w+1 for the w-th worker.
func clientAt(g, i int) netip.Addr {
	n := 100<<24 | 64<<16 | uint32(g)<<12 | uint32(i%4096)
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}

// tupleAt returns the i-th 4-tuple of group g: every 4096 connections the
// client port moves on.
func tupleAt(g, i int) ct.Tuple {
	return ct.Tuple{
		Client: netip.AddrPortFrom(clientAt(g, i), uint16(1024+(i/4096)%60000)),
		Dst:    netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 443),
	}
}

// open runs tu through the link's and the handler's calls up to an
// established connection with its relay attached, and returns its ID. The
// client's SYN is checked against its cap of handshakes in the table's
// Segment, as the link's is.
func open(tab *ct.Table, tu ct.Tuple) ct.ID {
	const c, t = benchCISS, benchTISS
	tab.Segment(ct.FromClient, tu, ct.Segment{Flags: ct.FlagSYN, Seq: c, MSS: 1460})
	id, _ := tab.Claim(tu, c)
	tab.Dialled(id, time.Millisecond)
	tab.Segment(ct.ToClient, tu, ct.Segment{Flags: ct.FlagSYN | ct.FlagACK, Seq: t, Ack: c + 1, MSS: 1460})
	tab.Segment(ct.FromClient, tu, ct.Segment{Flags: ct.FlagACK, Seq: c + 1, Ack: t + 1})
	tab.Relaying(id)
	return id
}

// lifecycle is one whole short connection: opened, a request and a
// response, closed by the server (tcpd's end goes to TIME_WAIT) or by the
// client (tcpd's end goes through LAST_ACK), and its relay released.
func lifecycle(tab *ct.Table, tu ct.Tuple, serverFirst bool) {
	const c, t = benchCISS, benchTISS
	id := open(tab, tu)
	tab.Segment(ct.FromClient, tu, ct.Segment{Flags: ct.FlagACK | ct.FlagPSH, Seq: c + 1, Ack: t + 1, Len: 100})
	tab.Segment(ct.ToClient, tu, ct.Segment{Flags: ct.FlagACK | ct.FlagPSH, Seq: t + 1, Ack: c + 101, Len: 1000})
	tab.Segment(ct.FromClient, tu, ct.Segment{Flags: ct.FlagACK, Seq: c + 101, Ack: t + 1001})
	if serverFirst {
		tab.Segment(ct.ToClient, tu, ct.Segment{Flags: ct.FlagFIN | ct.FlagACK, Seq: t + 1001, Ack: c + 101})
		tab.Segment(ct.FromClient, tu, ct.Segment{Flags: ct.FlagACK, Seq: c + 101, Ack: t + 1002})
		tab.Segment(ct.FromClient, tu, ct.Segment{Flags: ct.FlagFIN | ct.FlagACK, Seq: c + 101, Ack: t + 1002})
		tab.Segment(ct.ToClient, tu, ct.Segment{Flags: ct.FlagACK, Seq: t + 1002, Ack: c + 102})
	} else {
		tab.Segment(ct.FromClient, tu, ct.Segment{Flags: ct.FlagFIN | ct.FlagACK, Seq: c + 101, Ack: t + 1001})
		tab.Segment(ct.ToClient, tu, ct.Segment{Flags: ct.FlagACK, Seq: t + 1001, Ack: c + 102})
		tab.Segment(ct.ToClient, tu, ct.Segment{Flags: ct.FlagFIN | ct.FlagACK, Seq: t + 1001, Ack: c + 102})
		tab.Segment(ct.FromClient, tu, ct.Segment{Flags: ct.FlagACK, Seq: c + 102, Ack: t + 1002})
	}
	tab.Released(id)
}

// busyTable is a table holding standingConns established connections,
// with the stack's maintenance work running on it until stop.
type busyTable struct {
	tab      *ct.Table
	standing []ct.ID
	// skew is added to the table's clock: lateTimeWait moves it on.
	skew    atomic.Int64
	workers atomic.Int32
	quit    chan struct{}
	wg      sync.WaitGroup
}

func newBusyTable(b *testing.B) *busyTable {
	b.Helper()
	// TIME_WAIT of 1s, with room for all of it, so that the benchmark's
	// connections leave through expiry, as in a steady state; the cap of
	// handshakes per client is stack.Tunables' default.
	bt := &busyTable{quit: make(chan struct{})}
	bt.tab = ct.New(ct.Config{
		TimeWait: time.Second, TimeWaitLimit: new(1 << 20), MaxSynRecvPerClient: 256,
		Now: func() time.Time { return time.Now().Add(time.Duration(bt.skew.Load())) },
	})
	for i := range standingConns {
		id := open(bt.tab, tupleAt(0, i%standingClients+standingClients*(i/standingClients)))
		if id == 0 {
			b.Fatalf("standing connection %d not tracked", i)
		}
		bt.standing = append(bt.standing, id)
	}
	bt.wg.Add(1)
	go bt.maintain()
	b.Cleanup(bt.stop)
	return bt
}

// maintain does what the stack's maintenance loop does to the table.
func (bt *busyTable) maintain() {
	defer bt.wg.Done()
	tw := time.NewTicker(100 * time.Millisecond)
	defer tw.Stop()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-bt.quit:
			return
		case <-tw.C:
			bt.tab.ExpireTimeWait()
		case <-tick.C:
			bt.tab.Tick()
			for _, id := range bt.standing {
				bt.tab.Reconcile(id, ct.StateEstablished)
			}
			bt.tab.Snapshot()
		}
	}
}

func (bt *busyTable) stop() {
	select {
	case <-bt.quit:
	default:
		close(bt.quit)
	}
	bt.wg.Wait()
}

// expireAll ends the TIME_WAIT of every connection still in it and expires
// them, as the maintenance loop would a second later: so that a benchmark
// that stops its timer after it prices every connection's expiry too.
func (bt *busyTable) expireAll() {
	bt.skew.Add(int64(2 * time.Second))
	bt.tab.ExpireTimeWait()
}

// worker returns a number unique to the calling RunParallel goroutine.
func (bt *busyTable) worker() int { return int(bt.workers.Add(1)) }

// BenchmarkTableSegments prices one segment of an established connection,
// the per-packet work, with every packet loop on connections of its own.
func BenchmarkTableSegments(b *testing.B) {
	bt := newBusyTable(b)
	const perWorker = 64
	// Every worker's connections are open before the clock starts.
	for w := 1; w <= runtime.GOMAXPROCS(0); w++ {
		for i := range perWorker {
			open(bt.tab, tupleAt(w, i))
		}
	}
	b.ReportAllocs()
	wait := lockwait.Total()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		w := bt.worker()
		var tus [perWorker]ct.Tuple
		var cNxt, tNxt [perWorker]uint32
		for i := range tus {
			tus[i] = tupleAt(w, i)
			cNxt[i], tNxt[i] = benchCISS+1, benchTISS+1
		}
		for i := 0; pb.Next(); i++ {
			k := (i / 2) % perWorker
			if i%2 == 0 {
				bt.tab.Segment(ct.FromClient, tus[k], ct.Segment{Flags: ct.FlagACK | ct.FlagPSH, Seq: cNxt[k], Ack: tNxt[k], Len: 1448})
				cNxt[k] += 1448
			} else {
				bt.tab.Segment(ct.ToClient, tus[k], ct.Segment{Flags: ct.FlagACK, Seq: tNxt[k], Ack: cNxt[k]})
			}
		}
	})
	b.StopTimer()
	lockwait.Report(b, wait)
	bt.stop()
	if snap := bt.tab.Snapshot(); snap.Untracked != 0 || snap.Corrections != 0 {
		b.Fatalf("%d segments untracked, %d corrections: the benchmark's connections were not tracked", snap.Untracked, snap.Corrections)
	}
}

// BenchmarkTableConnections prices one whole short connection (SYN with
// its cap check, handshake, handler calls, a request and a response, close,
// relay release: 14 calls, and the expiry of its TIME_WAIT), each from one
// of 4096 client addresses per packet loop; half close server first and
// leave through TIME_WAIT's expiry, which the maintenance loop runs while
// the clock runs and expireAll for those left when the loops end.
func BenchmarkTableConnections(b *testing.B) {
	bt := newBusyTable(b)
	b.ReportAllocs()
	wait := lockwait.Total()
	var conns atomic.Int64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		w := bt.worker()
		n := 0
		for i := 0; pb.Next(); i++ {
			lifecycle(bt.tab, tupleAt(w, i), i%2 == 0)
			n++
		}
		conns.Add(int64(n))
	})
	bt.expireAll()
	b.StopTimer()
	lockwait.Report(b, wait)
	bt.stop()
	snap := bt.tab.Snapshot()
	if want := uint64(standingConns) + uint64(conns.Load()); snap.Established != want || snap.Untracked != 0 {
		b.Fatalf("%d established, %d segments untracked; want %d and 0", snap.Established, snap.Untracked, want)
	}
	// Every benchmark connection is over and gone, TIME_WAIT included.
	if snap.Live != standingConns || snap.TimeWait != 0 || snap.Closed != uint64(conns.Load()) {
		b.Fatalf("%d live, %d in TIME_WAIT, %d closed; want %d, 0, %d", snap.Live, snap.TimeWait, snap.Closed, standingConns, conns.Load())
	}
}
