package conntrack_test

import (
	"fmt"
	"math"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	ct "tcpd/conntrack"
)

// clock is a manual clock for the table.
type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

var tuple = ct.Tuple{
	Client: netip.MustParseAddrPort("100.64.1.2:40000"),
	Dst:    netip.MustParseAddrPort("198.18.1.2:80"),
}

// lookup returns the ID of the live entry for tu, through the filter of
// Conns as tcpd conns uses it.
func lookup(tab *ct.Table, tu ct.Tuple) (ct.ID, bool) {
	cs := tab.Conns(func(c *ct.Conn) bool { return c.Tuple == tu })
	if len(cs) == 0 {
		return 0, false
	}
	return cs[0].ID, true
}

func flags(s string) uint8 {
	var f uint8
	for _, c := range s {
		switch c {
		case 'S':
			f |= ct.FlagSYN
		case 'A':
			f |= ct.FlagACK
		case 'F':
			f |= ct.FlagFIN
		case 'R':
			f |= ct.FlagRST
		case 'P':
			f |= ct.FlagPSH
		}
	}
	return f
}

// testWnd is the window field of every scripted segment: a real one,
// which conntrack reads (a zero window takes no new data).
const testWnd = 64000

// Client and tcpd initial sequence numbers in every script.
const (
	cISS = 1000
	tISS = 5000
)

// step is one segment and the states expected after it. gone means the entry
// must have left the table.
type step struct {
	dir          ct.Dir
	flags        string
	seq, ack, n  uint32
	tcpd, client ct.State
	gone         bool
	action       ct.ActionKind
	// zeroWnd sends the segment with a window of zero.
	zeroWnd bool
}

func c(fl string, seq, ack, n uint32, tcpd, client ct.State) step {
	return step{dir: ct.FromClient, flags: fl, seq: seq, ack: ack, n: n, tcpd: tcpd, client: client}
}

func s(fl string, seq, ack, n uint32, tcpd, client ct.State) step {
	return step{dir: ct.ToClient, flags: fl, seq: seq, ack: ack, n: n, tcpd: tcpd, client: client}
}

func gone(st step) step { st.gone = true; return st }

// act sets the action Segment must answer for st.
func act(st step, k ct.ActionKind) step { st.action = k; return st }

// opens is the action of step i of a script that starts with the SYN
// opening its entry.
func opens(i int) ct.ActionKind {
	if i == 0 {
		return ct.ActionOpen
	}
	return ct.ActionNone
}

// synOpen is the client's SYN with sequence number iss that opens an entry.
func synOpen(iss uint32) step { return act(c("S", iss, 0, 0, SynR, SynS), ct.ActionOpen) }

const (
	Closed = ct.StateClosed
	SynS   = ct.StateSynSent
	SynR   = ct.StateSynRecv
	Est    = ct.StateEstablished
	FW1    = ct.StateFinWait1
	FW2    = ct.StateFinWait2
	Clsg   = ct.StateClosing
	TW     = ct.StateTimeWait
	CW     = ct.StateCloseWait
	LA     = ct.StateLastAck
)

// handshake is the three-way handshake every script starts with.
var handshake = []step{
	synOpen(cISS),
	// The client is established only once its ACK shows it got the
	// SYN-ACK; a lost SYN-ACK leaves it in SYN-SENT.
	s("SA", tISS, cISS+1, 0, SynR, SynS),
	c("A", cISS+1, tISS+1, 0, Est, Est),
}

func run(t *testing.T, tab *ct.Table, steps []step) {
	t.Helper()
	for i, st := range steps {
		wnd := uint16(testWnd)
		if st.zeroWnd {
			wnd = 0
		}
		a := tab.Segment(st.dir, tuple, ct.Segment{Flags: flags(st.flags), Seq: st.seq, Ack: st.ack, Len: st.n, Wnd: wnd})
		if a.Kind != st.action {
			t.Fatalf("step %d (%s): action %v, want %v", i, st.flags, a.Kind, st.action)
		}
		conns := tab.Conns(nil)
		if st.gone {
			if len(conns) != 0 {
				t.Fatalf("step %d (%s): entry still present: tcpd %v client %v", i, st.flags, conns[0].State, conns[0].ClientState)
			}
			continue
		}
		if len(conns) != 1 {
			t.Fatalf("step %d (%s): %d entries, want 1", i, st.flags, len(conns))
		}
		if conns[0].State != st.tcpd || conns[0].ClientState != st.client {
			t.Fatalf("step %d (%s seq=%d ack=%d): tcpd %v client %v, want tcpd %v client %v",
				i, st.flags, st.seq, st.ack, conns[0].State, conns[0].ClientState, st.tcpd, st.client)
		}
	}
	checkCounts(t, tab)
}

// checkCounts asserts that per-state counts add up to the live entries.
func checkCounts(t *testing.T, tab *ct.Table) {
	t.Helper()
	snap := tab.Snapshot()
	var a, b uint64
	for i := range ct.NumStates {
		a += snap.States[i]
		b += snap.ClientStates[i]
	}
	if a != uint64(snap.Live) || b != uint64(snap.Live) {
		t.Fatalf("state counts %d (tcpd) and %d (client) do not add up to %d live entries", a, b, snap.Live)
	}
	if snap.States[ct.StateTimeWait] != uint64(snap.TimeWait) {
		t.Fatalf("time_wait gauge %d but %d entries in time_wait", snap.TimeWait, snap.States[ct.StateTimeWait])
	}
	if got := len(tab.Conns(nil)); got != snap.Live {
		t.Fatalf("Conns returned %d rows, Live says %d", got, snap.Live)
	}
}

func newTable(cfg ct.Config) (*ct.Table, *clock) {
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	cfg.Now = clk.now
	return ct.New(cfg), clk
}

func TestTransitions(t *testing.T) {
	scripts := map[string][]step{
		"client closes first (CLOSE_WAIT, LAST_ACK)": {
			c("FA", cISS+1, tISS+1, 0, Est, FW1),
			s("A", tISS+1, cISS+2, 0, CW, FW2),
			s("FA", tISS+1, cISS+2, 0, LA, FW2),
			gone(c("A", cISS+2, tISS+2, 0, 0, 0)),
		},
		"tcpd closes first (FIN_WAIT_1, FIN_WAIT_2, TIME_WAIT)": {
			s("FA", tISS+1, cISS+1, 0, FW1, Est),
			c("A", cISS+1, tISS+2, 0, FW2, CW),
			c("FA", cISS+1, tISS+2, 0, FW2, LA),
			s("A", tISS+2, cISS+2, 0, TW, Closed),
		},
		"FIN acknowledged only by FIN.SEQ+1": {
			s("PA", tISS+1, cISS+1, 100, Est, Est),
			s("FA", tISS+101, cISS+1, 0, FW1, Est),
			c("A", cISS+1, tISS+51, 0, FW1, Est),  // acks half the data
			c("A", cISS+1, tISS+101, 0, FW1, Est), // acks the data, not the FIN
			c("A", cISS+1, tISS+102, 0, FW2, CW),  // FIN.SEQ+1
		},
		"FIN with data in the same segment": {
			s("FPA", tISS+1, cISS+1, 10, FW1, Est),
			c("A", cISS+1, tISS+11, 0, FW1, Est),
			c("A", cISS+1, tISS+12, 0, FW2, CW),
		},
		"simultaneous close (CLOSING)": {
			s("FA", tISS+1, cISS+1, 0, FW1, Est),
			c("FA", cISS+1, tISS+1, 0, FW1, FW1),
			s("A", tISS+2, cISS+2, 0, Clsg, FW2),
			c("A", cISS+2, tISS+2, 0, TW, TW),
		},
		"FIN-ACK that acknowledges our FIN goes straight to TIME_WAIT": {
			s("FA", tISS+1, cISS+1, 0, FW1, Est),
			c("FA", cISS+1, tISS+2, 0, FW2, LA),
			s("A", tISS+2, cISS+2, 0, TW, Closed),
		},
		"retransmitted FIN changes nothing": {
			c("FA", cISS+1, tISS+1, 0, Est, FW1),
			c("FA", cISS+1, tISS+1, 0, Est, FW1),
			s("A", tISS+1, cISS+2, 0, CW, FW2),
			c("FA", cISS+1, tISS+1, 0, CW, FW2),
		},
		"RST from the client at RCV.NXT": {
			c("PA", cISS+1, tISS+1, 100, Est, Est),
			s("A", tISS+1, cISS+101, 0, Est, Est),
			gone(c("R", cISS+101, 0, 0, 0, 0)),
		},
		"RST between the last ACK and SND.NXT is accepted (ACK delayed)": {
			c("PA", cISS+1, tISS+1, 100, Est, Est),
			gone(c("R", cISS+101, 0, 0, 0, 0)),
		},
		"RST below RCV.NXT is ignored, and is not the client's (old or forged, RFC 5961)": {
			// The client aborts at its SND.NXT, never behind what tcpd
			// has in order from it; its connection goes on, as the
			// netstack's does.
			c("PA", cISS+1, tISS+1, 100, Est, Est),
			s("A", tISS+1, cISS+101, 0, Est, Est),
			c("R", cISS+50, 0, 0, Est, Est),
			c("RA", cISS+100, tISS+1, 0, Est, Est),
			c("PA", cISS+101, tISS+1, 10, Est, Est),
			gone(c("R", cISS+111, 0, 0, 0, 0)),
		},
		"an old FIN below RCV.NXT changes nothing": {
			// An old duplicate: the netstack acknowledges RCV.NXT and
			// drops it (RFC 9293 3.10.7.4); that ACK is not one of a FIN.
			c("PA", cISS+1, tISS+1, 100, Est, Est),
			s("A", tISS+1, cISS+101, 0, Est, Est),
			c("FA", cISS+94, tISS+1, 0, Est, Est),
			s("A", tISS+1, cISS+101, 0, Est, Est),
			c("FA", cISS+101, tISS+1, 0, Est, FW1),
			s("A", tISS+1, cISS+102, 0, CW, FW2),
		},
		"a FIN beyond the window changes nothing, and TIME_WAIT still comes": {
			c("FA", cISS+1+5_000_000, tISS+1, 0, Est, Est),
			s("A", tISS+1, cISS+1, 0, Est, Est),
			s("FA", tISS+1, cISS+1, 0, FW1, Est),
			c("A", cISS+1, tISS+2, 0, FW2, CW),
			c("FA", cISS+1, tISS+2, 0, FW2, LA),
			s("A", tISS+2, cISS+2, 0, TW, Closed),
		},
		"a FIN after a hole, in the window, is the client's": {
			// Its data was lost on the way: the client is in FIN_WAIT_1
			// all the same, and the netstack takes the FIN once the
			// hole fills.
			c("FA", cISS+101, tISS+1, 0, Est, FW1),
			s("A", tISS+1, cISS+1, 0, Est, FW1),
			c("PA", cISS+1, tISS+1, 100, Est, FW1),
			s("A", tISS+1, cISS+102, 0, CW, FW2),
		},
		"RST past out-of-order data is not at RCV.NXT": {
			// The netstack queues the data beyond the hole and keeps
			// RCV.NXT at the hole: a RST between the two gets a
			// challenge ACK, one at the hole ends the connection.
			c("PA", cISS+1001, tISS+1, 10, Est, Est),
			c("R", cISS+501, 0, 0, Est, Closed),
			c("R", cISS+1011, 0, 0, Est, Closed),
			gone(c("R", cISS+1, 0, 0, 0, 0)),
		},
		"RST at the end of data acknowledged after the hole filled": {
			c("PA", cISS+101, tISS+1, 50, Est, Est), // out of order
			c("PA", cISS+1, tISS+1, 100, Est, Est),  // fills the hole
			s("A", tISS+1, cISS+151, 0, Est, Est),   // both acknowledged
			gone(c("R", cISS+151, 0, 0, 0, 0)),
		},
		"an ACK beyond SND.NXT acknowledges nothing (LAST_ACK)": {
			// Dropped and answered with an ACK (RFC 9293 3.10.7.4);
			// only FIN.SEQ+1 itself closes.
			c("FA", cISS+1, tISS+1, 0, Est, FW1),
			s("A", tISS+1, cISS+2, 0, CW, FW2),
			s("FA", tISS+1, cISS+2, 0, LA, FW2),
			act(c("A", cISS+2, tISS+2+100000, 0, LA, FW2), ct.ActionReject),
			gone(c("A", cISS+2, tISS+2, 0, 0, 0)),
		},
		"an ACK beyond SND.NXT acknowledges nothing (CLOSING)": {
			s("FA", tISS+1, cISS+1, 0, FW1, Est),
			c("FA", cISS+1, tISS+1, 0, FW1, FW1),
			s("A", tISS+2, cISS+2, 0, Clsg, FW2),
			act(c("A", cISS+2, tISS+2+5001, 0, Clsg, FW2), ct.ActionReject),
			c("A", cISS+2, tISS+2, 0, TW, TW),
		},
		"in ESTABLISHED a segment that acknowledges unsent data is dropped, data and FIN": {
			// As Linux does (tcp_ack, RFC 5961 5.2); the netstack would
			// take its data and FIN.
			s("PA", tISS+1, cISS+1, 10, Est, Est),
			act(c("FPA", cISS+1, tISS+100, 4, Est, Est), ct.ActionReject),
			c("FA", cISS+1, tISS+11, 0, Est, FW1),
			s("A", tISS+11, cISS+2, 0, CW, FW2),
			s("FA", tISS+11, cISS+2, 0, LA, FW2),
			gone(c("A", cISS+2, tISS+12, 0, 0, 0)),
		},
		"data into a zero window is not taken": {
			// A BSD client probes a zero window with a new byte; the
			// netstack drops it, and takes a RST at the old RCV.NXT.
			c("PA", cISS+1, tISS+1, 100, Est, Est),
			step{dir: ct.ToClient, flags: "A", seq: tISS + 1, ack: cISS + 101, tcpd: Est, client: Est, zeroWnd: true},
			c("PA", cISS+101, tISS+1, 1, Est, Est),
			gone(c("R", cISS+101, 0, 0, 0, 0)),
		},
		"RST out of window is ignored, and is not the client's (blind or stale)": {
			c("R", cISS+1_000_000, 0, 0, Est, Est),
		},
		"RST from tcpd resets both": {
			c("PA", cISS+1, tISS+1, 10, Est, Est),
			gone(s("RA", tISS+1, cISS+11, 0, 0, 0)),
		},
		"RST in CLOSE_WAIT and FIN_WAIT_2": {
			c("FA", cISS+1, tISS+1, 0, Est, FW1),
			s("A", tISS+1, cISS+2, 0, CW, FW2),
			gone(s("RA", tISS+1, cISS+2, 0, 0, 0)),
		},
		"RST in TIME_WAIT from the client is ignored (RFC 1337), as the netstack does": {
			s("FA", tISS+1, cISS+1, 0, FW1, Est),
			c("FA", cISS+1, tISS+2, 0, FW2, LA),
			s("A", tISS+2, cISS+2, 0, TW, Closed),
			act(c("R", cISS+2, 0, 0, TW, Closed), ct.ActionDrop),
		},
	}
	for name, script := range scripts {
		t.Run(name, func(t *testing.T) {
			tab, _ := newTable(ct.Config{})
			run(t, tab, append(append([]step{}, handshake...), script...))
		})
	}
}

func TestHandshakeFailures(t *testing.T) {
	cases := map[string][]step{
		"refused: RST-ACK to the SYN": {
			synOpen(cISS),
			gone(s("RA", 0, cISS+1, 0, 0, 0)),
		},
		"RST to SYN-SENT that does not ack the SYN is ignored": {
			synOpen(cISS),
			s("RA", 0, cISS+7, 0, SynR, SynS),
		},
		"client RST before the SYN-ACK": {
			synOpen(cISS),
			gone(c("R", cISS+1, 0, 0, 0, 0)),
		},
		"client RST in SYN_RCVD after the SYN-ACK": {
			synOpen(cISS),
			s("SA", tISS, cISS+1, 0, SynR, SynS),
			gone(c("R", cISS+1, 0, 0, 0, 0)),
		},
		"client resets and reopens the 4-tuple at once": {
			synOpen(cISS),
			s("SA", tISS, cISS+1, 0, SynR, SynS),
			c("A", cISS+1, tISS+1, 0, Est, Est),
			gone(c("R", cISS+1, 0, 0, 0, 0)),
			// A new entry: the netstack may still hold the old endpoint.
			act(c("S", cISS+5000, 0, 0, SynR, SynS), ct.ActionOpen),
		},
		"retransmitted SYN and SYN-ACK": {
			synOpen(cISS),
			c("S", cISS, 0, 0, SynR, SynS), // a retransmission: the entry exists
			s("SA", tISS, cISS+1, 0, SynR, SynS),
			s("SA", tISS, cISS+1, 0, SynR, SynS),
			c("A", cISS+1, tISS+1, 0, Est, Est),
		},
		"only an ACK of the SYN-ACK completes the handshake": {
			// RFC 9293 3.10.7.4: any other is answered with RST at its
			// acknowledgment number and dropped, as Linux does
			// (tcp_check_req); the netstack's forwarder, which has no
			// listener to check it against, would take it.
			synOpen(cISS),
			s("SA", tISS, cISS+1, 0, SynR, SynS),
			c("A", cISS+1+testWnd, tISS+1, 0, SynR, SynS), // beyond the window
			act(c("A", cISS+1, tISS+9, 0, SynR, SynS), ct.ActionReject),
			act(c("PA", cISS+1, tISS, 5, SynR, SynS), ct.ActionReject),
			c("A", cISS+1, tISS+1, 0, Est, Est),
		},
		"RST anywhere in the window ends SYN_RCVD": {
			synOpen(cISS),
			s("SA", tISS, cISS+1, 0, SynR, SynS),
			c("R", cISS+1+testWnd, 0, 0, SynR, SynS), // beyond the window
			gone(c("R", cISS+1+testWnd-1, 0, 0, 0, 0)),
		},
		"simultaneous open on the client's end": {
			synOpen(cISS),
			s("S", tISS, 0, 0, SynR, SynR),
			s("SA", tISS, cISS+1, 0, SynR, Est),
			c("SA", cISS, tISS+1, 0, Est, Est),
		},
		"client FIN in SYN_RCVD": {
			synOpen(cISS),
			s("SA", tISS, cISS+1, 0, SynR, SynS),
			c("FA", cISS+1, tISS+1, 0, Est, FW1),
			s("A", tISS+1, cISS+2, 0, CW, FW2),
		},
	}
	for name, script := range cases {
		t.Run(name, func(t *testing.T) {
			tab, _ := newTable(ct.Config{})
			run(t, tab, script)
		})
	}
}

// tcpdTimeWait is a server-closes-first close that leaves tcpd in TIME_WAIT.
var tcpdTimeWait = []step{
	s("FA", tISS+1, cISS+1, 0, FW1, Est),
	c("FA", cISS+1, tISS+2, 0, FW2, LA),
	s("A", tISS+2, cISS+2, 0, TW, Closed),
}

func TestTimeWaitExpiry(t *testing.T) {
	tab, clk := newTable(ct.Config{TimeWait: 30 * time.Second})
	run(t, tab, append(append([]step{}, handshake...), tcpdTimeWait...))
	conns := tab.Conns(nil)
	if conns[0].TimeWaitLeft != 30*time.Second {
		t.Fatalf("TimeWaitLeft %v, want 30s", conns[0].TimeWaitLeft)
	}
	clk.advance(20 * time.Second)
	// The client retransmits its FIN (our ACK was lost): tcpd answers it
	// and 2MSL restarts.
	run(t, tab, []step{act(c("FA", cISS+1, tISS+2, 0, TW, Closed), ct.ActionReply)})
	clk.advance(29 * time.Second)
	if n := tab.Tick(); n != 0 {
		t.Fatalf("Tick removed %d entries 29s after the restart", n)
	}
	clk.advance(time.Second)
	if n := tab.Tick(); n != 1 {
		t.Fatalf("Tick removed %d entries at expiry, want 1", n)
	}
	snap := tab.Snapshot()
	if snap.Live != 0 || snap.TimeWait != 0 || snap.TimeWaitEntered != 1 || snap.Closed != 1 {
		t.Fatalf("after expiry: %+v", snap.Counters)
	}
	if snap.TimeWaitDwell.Count != 1 || snap.TimeWaitDwell.Sum != 50 {
		t.Fatalf("dwell histogram count %d sum %v, want 1 and 50s", snap.TimeWaitDwell.Count, snap.TimeWaitDwell.Sum)
	}
}

// TestLongHistograms: the lifetime and TIME_WAIT dwell histograms have
// buckets of their own range. With the latency buckets (100 µs..10 s) and
// native ones up to 128 s, a 30 s dwell fell in +Inf and a three-hour
// connection was exported as two minutes.
func TestLongHistograms(t *testing.T) {
	tab, clk := newTable(ct.Config{TimeWait: 30 * time.Second})
	run(t, tab, handshake)
	clk.advance(3 * time.Hour)
	run(t, tab, tcpdTimeWait)
	clk.advance(30 * time.Second)
	if n := tab.Tick(); n != 1 {
		t.Fatalf("Tick removed %d entries at expiry, want 1", n)
	}
	snap := tab.Snapshot()
	// bucket is the cumulative count at the classic bound le.
	bucket := func(h ct.HistogramSnapshot, le float64) uint64 {
		i := slices.Index(h.Bounds, le)
		if i < 0 {
			t.Fatalf("no classic bound %v in %v", le, h.Bounds)
		}
		return h.Buckets[i]
	}
	lt, tw := snap.Lifetime, snap.TimeWaitDwell
	if !slices.Equal(lt.Bounds, ct.LifetimeBounds) || !slices.Equal(tw.Bounds, ct.TimeWaitBounds) {
		t.Fatalf("bounds %v and %v, want LifetimeBounds and TimeWaitBounds", lt.Bounds, tw.Bounds)
	}
	if lt.Count != 1 || bucket(lt, 7200) != 0 || bucket(lt, 14400) != 1 {
		t.Errorf("a 3h lifetime: count %d, le=7200 %d, le=14400 %d; want 1, 0, 1", lt.Count, bucket(lt, 7200), bucket(lt, 14400))
	}
	if q := lt.Quantile(0.5); q < 3*3600*0.9 || q > 3*3600*1.1 {
		t.Errorf("a 3h lifetime's median from the native buckets is %.0f s, want within 10%% of 10800", q)
	}
	if tw.Count != 1 || bucket(tw, 20) != 0 || bucket(tw, 30) != 1 {
		t.Errorf("a 30s dwell: count %d, le=20 %d, le=30 %d; want 1, 0, 1", tw.Count, bucket(tw, 20), bucket(tw, 30))
	}
	if q := tw.Quantile(0.5); q < 27 || q > 33 {
		t.Errorf("a 30s dwell's median from the native buckets is %.1f s, want within 10%% of 30", q)
	}
	// The latency histograms keep theirs.
	if !slices.Equal(snap.Handshake.Bounds, ct.ClassicBounds) {
		t.Errorf("handshake bounds %v, want ClassicBounds", snap.Handshake.Bounds)
	}
}

func TestTimeWaitReuse(t *testing.T) {
	tab, _ := newTable(ct.Config{})
	run(t, tab, append(append([]step{}, handshake...), tcpdTimeWait...))
	old, _ := lookup(tab, tuple)

	// A SYN at or below the old connection's sequence space is not a new
	// incarnation: it gets a challenge ACK and TIME_WAIT stays (RFC 6191,
	// RFC 9293 3.10.7.4).
	run(t, tab, []step{act(c("S", cISS+1, 0, 0, TW, Closed), ct.ActionReply)})

	// A SYN beyond it retires the old entry at once and opens a new one.
	run(t, tab, []step{act(c("S", cISS+100000, 0, 0, SynR, SynS), ct.ActionReuse)})
	id, _ := lookup(tab, tuple)
	if id == old {
		t.Fatal("the new connection kept the old ID")
	}
	// A stale RST from the old connection's sequence space must not touch
	// the new connection.
	run(t, tab, []step{
		s("RA", tISS+2, cISS+2, 0, SynR, SynS),
		s("R", tISS+2, 0, 0, SynR, SynS),
		s("SA", 90000, cISS+100001, 0, SynR, SynS),
		c("A", cISS+100001, 90001, 0, Est, Est),
	})
	snap := tab.Snapshot()
	if snap.TimeWaitReused != 1 || snap.TimeWait != 0 || snap.Opened != 2 || snap.RSTIgnored != 2 || snap.TimeWaitDwell.Count != 1 {
		t.Fatalf("counters after reuse: %+v, dwell count %d", snap.Counters, snap.TimeWaitDwell.Count)
	}
}

// TestTimeWaitDuties drives each of TIME_WAIT's duties with a crafted
// segment and checks the verdict and, where tcpd answers, every field of
// its ACK, with and without timestamps.
func TestTimeWaitDuties(t *testing.T) {
	const (
		tsT = 700000 // tcpd's TSval on its last segment
		tsC = 300000 // the client's TSval on its FIN, echoed by tcpd
		wnd = 502
	)
	// The close, as it crossed the TUN; with ts, every segment carries
	// the timestamps option.
	closeSteps := func(ts bool) []ct.Segment {
		seg := func(fl string, seq, ack, tv, te uint32) ct.Segment {
			return ct.Segment{Flags: flags(fl), Seq: seq, Ack: ack, Wnd: wnd, TS: ts, TSVal: tv, TSEcr: te}
		}
		return []ct.Segment{
			seg("S", cISS, 0, tsC-30, 0),
			seg("SA", tISS, cISS+1, tsT-30, tsC-30),
			seg("A", cISS+1, tISS+1, tsC-20, tsT-30),
			seg("FA", tISS+1, cISS+1, tsT-10, tsC-20),
			seg("FA", cISS+1, tISS+2, tsC, tsT-10),
			seg("A", tISS+2, cISS+2, tsT, tsC),
		}
	}
	ack := func(ts bool, tsval, tsecr uint32) ct.Reply {
		r := ct.Reply{Seq: tISS + 2, Ack: cISS + 2, Wnd: wnd}
		if ts {
			r.TS, r.TSVal, r.TSEcr = true, tsval, tsecr
		}
		return r
	}
	type check struct {
		name string
		seg  ct.Segment
		want ct.ActionKind
		// reply is the ACK wanted for ActionReply, 1.5 s after TIME_WAIT
		// began.
		reply ct.Reply
		// restarts: the 2MSL timer starts again.
		restarts bool
	}
	for _, ts := range []bool{false, true} {
		withTS := func(s ct.Segment, tv uint32) ct.Segment {
			if ts {
				s.TS, s.TSVal, s.TSEcr = true, tv, tsT
			}
			return s
		}
		checks := []check{
			{name: "retransmitted FIN: ACK, 2MSL restarts",
				seg:  withTS(ct.Segment{Flags: flags("FA"), Seq: cISS + 1, Ack: tISS + 2}, tsC+1500),
				want: ct.ActionReply, reply: ack(ts, tsT+1500, tsC+1500), restarts: true},
			{name: "old duplicate with data: ACK",
				seg:  withTS(ct.Segment{Flags: flags("PA"), Seq: cISS - 99, Ack: tISS + 1, Len: 100}, tsC-5),
				want: ct.ActionReply, reply: ack(ts, tsT+1500, tsC)},
			{name: "segment beyond RCV.NXT: ACK, TS.Recent kept",
				seg:  withTS(ct.Segment{Flags: flags("A"), Seq: cISS + 50, Ack: tISS + 2}, tsC+1500),
				want: ct.ActionReply, reply: ack(ts, tsT+1500, tsC)},
			{name: "bare ACK at RCV.NXT: taken silently",
				seg:  withTS(ct.Segment{Flags: flags("A"), Seq: cISS + 2, Ack: tISS + 2}, tsC+1500),
				want: ct.ActionDrop},
			{name: "RST at RCV.NXT: ignored (RFC 1337)",
				seg:  ct.Segment{Flags: flags("R"), Seq: cISS + 2},
				want: ct.ActionDrop},
			{name: "segment without ACK: dropped",
				seg:  withTS(ct.Segment{Flags: flags("P"), Seq: cISS + 2, Len: 10}, tsC+1500),
				want: ct.ActionDrop},
			{name: "SYN with an older sequence number and timestamp: challenge ACK (RFC 6191, RFC 5961 4)",
				seg:  withTS(ct.Segment{Flags: flags("S"), Seq: cISS - 500}, tsC-1),
				want: ct.ActionReply, reply: ack(ts, tsT+1500, tsC)},
			{name: "SYN-ACK at RCV.NXT: challenge ACK, TS.Recent kept",
				seg:  withTS(ct.Segment{Flags: flags("SA"), Seq: cISS + 2, Ack: tISS + 2}, tsC+1500),
				want: ct.ActionReply, reply: ack(ts, tsT+1500, tsC)},
			{name: "SYN with a newer sequence number: reuse",
				seg:  withTS(ct.Segment{Flags: flags("S"), Seq: cISS + 100000}, tsC+1500),
				want: ct.ActionReuse},
		}
		if ts {
			checks = append(checks,
				check{name: "SYN with an older sequence number but a newer timestamp: reuse (RFC 6191)",
					seg:  withTS(ct.Segment{Flags: flags("S"), Seq: cISS - 500}, tsC+1),
					want: ct.ActionReuse},
				check{name: "SYN with the same timestamp and a newer sequence number: reuse",
					seg:  withTS(ct.Segment{Flags: flags("S"), Seq: cISS + 10}, tsC),
					want: ct.ActionReuse},
				check{name: "SYN with the same timestamp and an older sequence number: challenge ACK",
					seg:  withTS(ct.Segment{Flags: flags("S"), Seq: cISS}, tsC),
					want: ct.ActionReply, reply: ack(ts, tsT+1500, tsC)},
				check{name: "bare ACK at RCV.NXT with a TSval older than TS.Recent: ACK (PAWS, RFC 7323 5.3)",
					seg:  withTS(ct.Segment{Flags: flags("A"), Seq: cISS + 2, Ack: tISS + 2}, tsC-1),
					want: ct.ActionReply, reply: ack(ts, tsT+1500, tsC)},
				check{name: "retransmitted FIN with a TSval older than TS.Recent: ACK, 2MSL runs on (PAWS)",
					seg:  withTS(ct.Segment{Flags: flags("FA"), Seq: cISS + 1, Ack: tISS + 2}, tsC-1),
					want: ct.ActionReply, reply: ack(ts, tsT+1500, tsC)})
		}
		for _, ck := range checks {
			t.Run(fmt.Sprintf("timestamps=%v/%s", ts, ck.name), func(t *testing.T) {
				tab, clk := newTable(ct.Config{TimeWait: 30 * time.Second})
				for i, seg := range closeSteps(ts) {
					dir := ct.Dir(i % 2) // FromClient, ToClient, in turn
					if a := tab.Segment(dir, tuple, seg); a.Kind != opens(i) {
						t.Fatalf("close step %d: action %v, want %v", i, a.Kind, opens(i))
					}
				}
				if cs := tab.Conns(nil); len(cs) != 1 || cs[0].State != TW {
					t.Fatalf("after the close: %+v, want one entry in TIME_WAIT", cs)
				}
				clk.advance(1500 * time.Millisecond)
				a := tab.Segment(ct.FromClient, tuple, ck.seg)
				if a.Kind != ck.want {
					t.Fatalf("action %v, want %v", a.Kind, ck.want)
				}
				if a.Kind == ct.ActionReply && a.Reply != ck.reply {
					t.Fatalf("reply %+v, want %+v", a.Reply, ck.reply)
				}
				snap := tab.Snapshot()
				wantAcks := uint64(0)
				if ck.want == ct.ActionReply {
					wantAcks = 1
				}
				if snap.TimeWaitAcks != wantAcks {
					t.Errorf("TimeWaitAcks %d, want %d", snap.TimeWaitAcks, wantAcks)
				}
				cs := tab.Conns(nil)
				if ck.want == ct.ActionReuse {
					if len(cs) != 1 || cs[0].State != SynR || snap.TimeWaitReused != 1 {
						t.Fatalf("after reuse: %+v, reused %d", cs, snap.TimeWaitReused)
					}
					return
				}
				if len(cs) != 1 || cs[0].State != TW {
					t.Fatalf("TIME_WAIT left: %+v", cs)
				}
				left := 30*time.Second - 1500*time.Millisecond
				if ck.restarts {
					left = 30 * time.Second
				}
				if cs[0].TimeWaitLeft != left {
					t.Errorf("TIME_WAIT left %v, want %v", cs[0].TimeWaitLeft, left)
				}
			})
		}
	}
}

// TestTimeWaitAckRateLimit checks that TIME_WAIT answers segments without
// data or FIN, and SYNs, at most once per half second per connection, as
// Linux does (tcp_invalid_ratelimit), and segments that carry data or FIN
// every time.
func TestTimeWaitAckRateLimit(t *testing.T) {
	tab, clk := newTable(ct.Config{TimeWait: 30 * time.Second})
	run(t, tab, append(append([]step{}, handshake...), tcpdTimeWait...))
	steps := []struct {
		after time.Duration // since the step before
		name  string
		seg   ct.Segment
		want  ct.ActionKind
	}{
		{0, "ACK beyond RCV.NXT", ct.Segment{Flags: flags("A"), Seq: cISS + 50, Ack: tISS + 2}, ct.ActionReply},
		{100 * time.Millisecond, "the same again", ct.Segment{Flags: flags("A"), Seq: cISS + 50, Ack: tISS + 2}, ct.ActionDrop},
		{100 * time.Millisecond, "an old SYN", ct.Segment{Flags: flags("S"), Seq: cISS - 500}, ct.ActionDrop},
		{0, "an old duplicate with data", ct.Segment{Flags: flags("PA"), Seq: cISS - 99, Ack: tISS + 1, Len: 100}, ct.ActionReply},
		{0, "a retransmitted FIN", ct.Segment{Flags: flags("FA"), Seq: cISS + 1, Ack: tISS + 2}, ct.ActionReply},
		{299 * time.Millisecond, "a SYN-ACK 499 ms after the first ACK", ct.Segment{Flags: flags("SA"), Seq: cISS + 2, Ack: tISS + 2}, ct.ActionDrop},
		{time.Millisecond, "an old SYN 500 ms after it", ct.Segment{Flags: flags("S"), Seq: cISS - 500}, ct.ActionReply},
		{400 * time.Millisecond, "an ACK beyond RCV.NXT 400 ms later", ct.Segment{Flags: flags("A"), Seq: cISS + 50, Ack: tISS + 2}, ct.ActionDrop},
	}
	for i, st := range steps {
		clk.advance(st.after)
		if a := tab.Segment(ct.FromClient, tuple, st.seg); a.Kind != st.want {
			t.Fatalf("step %d, %s: action %v, want %v", i, st.name, a.Kind, st.want)
		}
	}
	snap := tab.Snapshot()
	if snap.TimeWaitAcks != 4 || snap.TimeWaitAcksSkipped != 4 {
		t.Fatalf("TimeWaitAcks %d, TimeWaitAcksSkipped %d; want 4 and 4", snap.TimeWaitAcks, snap.TimeWaitAcksSkipped)
	}
	if cs := tab.Conns(nil); len(cs) != 1 || cs[0].State != TW {
		t.Fatalf("after the segments: %+v, want the entry in TIME_WAIT", cs)
	}
}

func TestTimeWaitLimit(t *testing.T) {
	tab, _ := newTable(ct.Config{TimeWaitLimit: new(2)})
	for i := range 3 {
		tu := tuple
		tu.Client = netip.AddrPortFrom(tu.Client.Addr(), uint16(50000+i))
		for _, st := range append(append([]step{}, handshake...), tcpdTimeWait...) {
			if a := tab.Segment(st.dir, tu, ct.Segment{Flags: flags(st.flags), Seq: st.seq, Ack: st.ack}); a.Kind != st.action {
				t.Fatalf("connection %d: action %v, want %v", i, a.Kind, st.action)
			}
		}
		// Beyond the cap the connection has no TIME_WAIT: its FIN
		// retransmission reaches the netstack, which holds nothing for
		// it either and answers RST, as Linux beyond tcp_max_tw_buckets.
		want := ct.ActionReply
		if i == 2 {
			want = ct.ActionNone
		}
		if a := tab.Segment(ct.FromClient, tu, ct.Segment{Flags: flags("FA"), Seq: cISS + 1, Ack: tISS + 2}); a.Kind != want {
			t.Fatalf("connection %d, FIN retransmitted: action %v, want %v", i, a.Kind, want)
		}
	}
	snap := tab.Snapshot()
	if snap.TimeWait != 2 || snap.TimeWaitOverflow != 1 || snap.Live != 2 || snap.TimeWaitLimit != 2 {
		t.Fatalf("time_wait %d overflow %d live %d", snap.TimeWait, snap.TimeWaitOverflow, snap.Live)
	}
	checkCounts(t, tab)
}

func TestUnclaimedExpiry(t *testing.T) {
	tab, clk := newTable(ct.Config{Unclaimed: 5 * time.Second})
	other := ct.Tuple{Client: netip.MustParseAddrPort("100.64.1.3:1"), Dst: tuple.Dst}
	tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagSYN, Seq: 1})
	tab.Segment(ct.FromClient, other, ct.Segment{Flags: ct.FlagSYN, Seq: 1})
	if id, _ := tab.Claim(other, 1); id == 0 {
		t.Fatal("Claim returned 0 for a tracked SYN")
	}
	if id, _ := tab.Claim(other, 1); id != 0 {
		t.Fatal("a second Claim succeeded")
	}
	clk.advance(3 * time.Second)
	tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagSYN, Seq: 1}) // retransmission keeps it
	clk.advance(3 * time.Second)
	if n := tab.Tick(); n != 0 {
		t.Fatalf("expired %d entries early", n)
	}
	clk.advance(2 * time.Second)
	if n := tab.Tick(); n != 1 {
		t.Fatalf("expired %d entries, want the unclaimed one", n)
	}
	if _, ok := lookup(tab, other); !ok {
		t.Fatal("the claimed entry was expired")
	}
	if snap := tab.Snapshot(); snap.Expired != 1 {
		t.Fatalf("expired counter %d", snap.Expired)
	}
}

func TestLatencyHistograms(t *testing.T) {
	tab, clk := newTable(ct.Config{})
	tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagSYN, Seq: cISS})
	id, _ := tab.Claim(tuple, cISS)
	clk.advance(5 * time.Millisecond)
	tab.Dialled(id, 5*time.Millisecond)
	tab.Segment(ct.ToClient, tuple, ct.Segment{Flags: ct.FlagSYN | ct.FlagACK, Seq: tISS, Ack: cISS + 1})
	clk.advance(20 * time.Millisecond)
	tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagACK, Seq: cISS + 1, Ack: tISS + 1})
	snap := tab.Snapshot()
	check := func(name string, h ct.HistogramSnapshot, want time.Duration) {
		t.Helper()
		if h.Count != 1 || math.Abs(h.Sum-want.Seconds()) > 1e-9 {
			t.Fatalf("%s: count %d sum %v, want 1 and %v", name, h.Count, h.Sum, want)
		}
		if q := h.Quantile(0.5); math.Abs(q-want.Seconds())/want.Seconds() > 0.1 {
			t.Fatalf("%s: median %v, want within 10%% of %v", name, q, want)
		}
	}
	check("handshake", snap.Handshake, 20*time.Millisecond)
	check("dial", snap.Dial, 5*time.Millisecond)
	check("setup", snap.Setup, 25*time.Millisecond)
	conns := tab.Conns(nil)
	if conns[0].Handshake != 20*time.Millisecond || conns[0].Dial != 5*time.Millisecond {
		t.Fatalf("row handshake %v dial %v", conns[0].Handshake, conns[0].Dial)
	}
}

func TestBytesBySequenceSpace(t *testing.T) {
	tab, _ := newTable(ct.Config{})
	run(t, tab, append(append([]step{}, handshake...),
		c("PA", cISS+1, tISS+1, 100, Est, Est),
		c("PA", cISS+1, tISS+1, 100, Est, Est),   // retransmission
		c("PA", cISS+201, tISS+1, 50, Est, Est),  // after a gap
		c("PA", cISS+101, tISS+1, 100, Est, Est), // fills the gap
		s("PA", tISS+1, cISS+251, 1460, Est, Est),
	))
	conns := tab.Conns(nil)
	if conns[0].BytesIn != 250 || conns[0].BytesOut != 1460 {
		t.Fatalf("bytes in %d out %d, want 250 and 1460", conns[0].BytesIn, conns[0].BytesOut)
	}
}

// TestBytesStopAtFIN: data a client sends after its FIN is dropped by the
// netstack, and neither counts nor moves RCV.NXT: a RST at the FIN's end
// still resets.
func TestBytesStopAtFIN(t *testing.T) {
	tab, _ := newTable(ct.Config{})
	run(t, tab, append(append([]step{}, handshake...),
		c("PA", cISS+1, tISS+1, 10, Est, Est),
		c("FA", cISS+11, tISS+1, 0, Est, FW1),
		s("A", tISS+1, cISS+12, 0, CW, FW2),
		c("PA", cISS+12, tISS+1, 500, CW, FW2),
	))
	if got := tab.Conns(nil)[0].BytesIn; got != 10 {
		t.Fatalf("bytes in %d, want 10", got)
	}
	run(t, tab, []step{gone(c("R", cISS+12, 0, 0, 0, 0))})
}

// tsSeg is a segment with the timestamps option TSval val, TSecr ecr.
func tsSeg(fl string, seq, ack, val, ecr uint32) ct.Segment {
	return ct.Segment{Flags: flags(fl), Seq: seq, Ack: ack, Wnd: testWnd, TS: true, TSVal: val, TSEcr: ecr}
}

// dirSeg is one segment of a script that feed runs, and its direction.
type dirSeg struct {
	dir ct.Dir
	seg ct.Segment
}

// feed runs a script through tab.
func feed(tab *ct.Table, script []dirSeg) {
	for _, st := range script {
		tab.Segment(st.dir, tuple, st.seg)
	}
}

// TestTimeWaitTSRecentAfterClosing: the client's ACK that takes tcpd from
// CLOSING to TIME_WAIT carries a newer TSval, which the netstack takes as
// TS.Recent (RFC 7323 4.3); TIME_WAIT's ACKs must echo it, not the TSecr
// of tcpd's last segment.
func TestTimeWaitTSRecentAfterClosing(t *testing.T) {
	tab, _ := newTable(ct.Config{})
	feed(tab, []dirSeg{
		{ct.FromClient, tsSeg("S", cISS, 0, 100, 0)},
		{ct.ToClient, tsSeg("SA", tISS, cISS+1, 9000, 100)},
		{ct.FromClient, tsSeg("A", cISS+1, tISS+1, 101, 9000)},
		{ct.ToClient, tsSeg("FA", tISS+1, cISS+1, 9001, 101)},   // tcpd's FIN
		{ct.FromClient, tsSeg("FA", cISS+1, tISS+1, 102, 9000)}, // the client's, crossing it
		{ct.ToClient, tsSeg("A", tISS+2, cISS+2, 9002, 102)},    // CLOSING
		{ct.FromClient, tsSeg("A", cISS+2, tISS+2, 150, 9001)},  // ACK of tcpd's FIN: TIME_WAIT
	})
	if c := tab.Conns(nil)[0]; c.State != TW {
		t.Fatalf("tcpd %v, want time_wait", c.State)
	}
	// An old copy of the client's FIN, from before its last ACK: the
	// reply echoes TS.Recent, 150.
	a := tab.Segment(ct.FromClient, tuple, tsSeg("FA", cISS+1, tISS+2, 140, 9001))
	if a.Kind != ct.ActionReply || a.Reply.TSEcr != 150 {
		t.Fatalf("old FIN in TIME_WAIT: %v, TSecr %d; want a reply echoing 150", a.Kind, a.Reply.TSEcr)
	}
}

// TestTimeWaitTSRecentAfterFINsACK: the netstack acknowledges a client's
// FIN before it takes the FIN's TSval, so that ACK echoes the TSval before
// it. TS.Recent must not go back with it: TIME_WAIT echoes the FIN's
// TSval, as Linux's would, and a SYN with a TSval between the two is not a
// new incarnation (RFC 6191).
func TestTimeWaitTSRecentAfterFINsACK(t *testing.T) {
	tab, _ := newTable(ct.Config{})
	feed(tab, []dirSeg{
		{ct.FromClient, tsSeg("S", cISS, 0, 100, 0)},
		{ct.ToClient, tsSeg("SA", tISS, cISS+1, 9000, 100)},
		{ct.FromClient, tsSeg("A", cISS+1, tISS+1, 101, 9000)},
		{ct.ToClient, tsSeg("FA", tISS+1, cISS+1, 9001, 101)},  // tcpd closes first
		{ct.FromClient, tsSeg("A", cISS+1, tISS+2, 120, 9001)}, // FIN_WAIT_2
		{ct.FromClient, tsSeg("FA", cISS+1, tISS+2, 199, 9001)},
		{ct.ToClient, tsSeg("A", tISS+2, cISS+2, 9002, 120)}, // echoes the TSval before the FIN's
	})
	if c := tab.Conns(nil)[0]; c.State != TW {
		t.Fatalf("tcpd %v, want time_wait", c.State)
	}
	a := tab.Segment(ct.FromClient, tuple, tsSeg("S", cISS+100000, 0, 150, 0))
	if a.Kind != ct.ActionReply || a.Reply.TSEcr != 199 {
		t.Fatalf("a SYN with a TSval older than the FIN's: %v, TSecr %d; want a challenge ACK echoing 199", a.Kind, a.Reply.TSEcr)
	}
}

// TestTimeWaitTSRecentZero: a client that sent TSval 0 leaves TS.Recent 0,
// which rejects nothing (Linux's tcp_paws_check): a SYN with a TSval that
// looks old against 0 but a newer sequence number reopens the 4-tuple.
func TestTimeWaitTSRecentZero(t *testing.T) {
	tab, _ := newTable(ct.Config{})
	feed(tab, []dirSeg{
		{ct.FromClient, tsSeg("S", cISS, 0, 0, 0)},
		{ct.ToClient, tsSeg("SA", tISS, cISS+1, 9000, 0)},
		{ct.FromClient, tsSeg("A", cISS+1, tISS+1, 0, 9000)},
		{ct.ToClient, tsSeg("FA", tISS+1, cISS+1, 9001, 0)},
		{ct.FromClient, tsSeg("FA", cISS+1, tISS+2, 0, 9001)},
		{ct.ToClient, tsSeg("A", tISS+2, cISS+2, 9002, 0)},
	})
	if c := tab.Conns(nil)[0]; c.State != TW {
		t.Fatalf("tcpd %v, want time_wait", c.State)
	}
	if a := tab.Segment(ct.FromClient, tuple, tsSeg("S", cISS+100000, 0, 0x90000000, 0)); a.Kind != ct.ActionReuse {
		t.Fatalf("a SYN with a newer sequence number and TSval 0x90000000 against TS.Recent 0: %v, want it to reopen the 4-tuple", a.Kind)
	}
}

// TestFINInScaledWindow: a client's FIN after a hole is its own if it lies
// in the window tcpd offered, which the window scale option of both SYNs
// multiplies (RFC 7323 2.2), and not if it lies beyond.
func TestFINInScaledWindow(t *testing.T) {
	const shift = 7
	for _, tc := range []struct {
		name     string
		clientWS bool
		fin      uint32
		want     ct.State
	}{
		{"scaled, the FIN in the window", true, cISS + 1 + 100_000, FW1},
		{"scaled, the FIN beyond it", true, cISS + 1 + 1000<<shift + 1, Est},
		{"the client offered no scaling: the window is not scaled", false, cISS + 1 + 100_000, Est},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tab, _ := newTable(ct.Config{})
			seg := func(fl string, seq, ack uint32, wnd uint16) ct.Segment {
				return ct.Segment{Flags: flags(fl), Seq: seq, Ack: ack, Wnd: wnd}
			}
			syn := seg("S", cISS, 0, 64240)
			syn.WS, syn.WScale = tc.clientWS, 7
			synAck := seg("SA", tISS, cISS+1, 500) // a SYN-ACK's window is never scaled
			synAck.WS, synAck.WScale = true, shift
			tab.Segment(ct.FromClient, tuple, syn)
			tab.Segment(ct.ToClient, tuple, synAck)
			tab.Segment(ct.FromClient, tuple, seg("A", cISS+1, tISS+1, 502))
			tab.Segment(ct.ToClient, tuple, seg("A", tISS+1, cISS+1, 1000)) // 128,000 bytes, scaled
			tab.Segment(ct.FromClient, tuple, seg("FA", tc.fin, tISS+1, 502))
			if c := tab.Conns(nil)[0]; c.ClientState != tc.want || c.State != Est {
				t.Fatalf("tcpd %v, the client %v; want established, %v", c.State, c.ClientState, tc.want)
			}
		})
	}
}

// TestBytesOutOfWindow: a client's segment far beyond what the netstack
// has in sequence (out of its window, which the netstack drops, or a SYN
// on an established connection) counts no bytes and moves nothing; data
// queued out of order counts once tcpd acknowledges it.
func TestBytesOutOfWindow(t *testing.T) {
	tab, _ := newTable(ct.Config{})
	run(t, tab, append(append([]step{}, handshake...),
		c("PA", cISS+1+0x7ffe0000, tISS+1, 1, Est, Est),
		c("PA", cISS+1, tISS+1, 10, Est, Est),
		c("PA", cISS+2011, tISS+1, 10, Est, Est), // out of order
		s("A", tISS+1, cISS+11, 0, Est, Est),
	))
	id, _ := lookup(tab, tuple)
	bytesIn := func() uint64 {
		for _, cn := range tab.Conns(nil) {
			if cn.ID == id {
				return cn.BytesIn
			}
		}
		t.Fatal("entry gone")
		return 0
	}
	if got := bytesIn(); got != 10 {
		t.Fatalf("bytes in %d after out-of-window and out-of-order data, want 10", got)
	}
	tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: flags("S"), Seq: cISS + 0x40000000})
	if got := bytesIn(); got != 10 {
		t.Fatalf("bytes in %d after a SYN in the window's far side, want 10", got)
	}
	// The hole fills; tcpd acknowledges everything, FIN included.
	run(t, tab, []step{
		c("PA", cISS+11, tISS+1, 2000, Est, Est),
		c("FA", cISS+2021, tISS+1, 0, Est, FW1),
		s("A", tISS+1, cISS+2022, 0, CW, FW2),
	})
	if got := bytesIn(); got != 2020 {
		t.Fatalf("bytes in %d once acknowledged, want 2020", got)
	}
}

func TestSequenceWraparound(t *testing.T) {
	tab, _ := newTable(ct.Config{})
	var ciss, tiss uint32 = math.MaxUint32 - 10, math.MaxUint32 - 5
	steps := []step{
		synOpen(ciss),
		s("SA", tiss, ciss+1, 0, SynR, SynS),
		c("A", ciss+1, tiss+1, 0, Est, Est),
		s("PA", tiss+1, ciss+1, 100, Est, Est),
		s("FA", tiss+101, ciss+1, 0, FW1, Est),
		c("A", ciss+1, tiss+102, 0, FW2, CW),
	}
	run(t, tab, steps)
	if got := tab.Conns(nil)[0].BytesOut; got != 100 {
		t.Fatalf("bytes out across wraparound: %d", got)
	}
}

func TestReconcile(t *testing.T) {
	tab, _ := newTable(ct.Config{})
	run(t, tab, handshake)
	id, _ := lookup(tab, tuple)
	// FIN queued in the netstack but not yet on the wire: a lag, never a
	// correction.
	for range 3 {
		if c, _ := tab.Reconcile(id, ct.StateFinWait1); c {
			t.Fatal("FIN_WAIT_1 lag counted as a correction")
		}
	}
	// A real disagreement is corrected only when it persists.
	if c, _ := tab.Reconcile(id, ct.StateCloseWait); c {
		t.Fatal("corrected on first sight")
	}
	if c, _ := tab.Reconcile(id, ct.StateEstablished); c {
		t.Fatal("agreement counted as a correction")
	}
	if c, _ := tab.Reconcile(id, ct.StateCloseWait); c {
		t.Fatal("corrected a disagreement that did not persist")
	}
	if c, was := tab.Reconcile(id, ct.StateCloseWait); !c || was != ct.StateEstablished {
		t.Fatal("persistent disagreement not corrected")
	}
	if st := tab.Conns(nil)[0].State; st != CW {
		t.Fatalf("state after correction %v", st)
	}
	if tab.Snapshot().Corrections != 1 {
		t.Fatal("correction not counted")
	}
	// The endpoint is gone: the entry goes, without a correction.
	tab.Reconcile(id, ct.StateClosed)
	if snap := tab.Snapshot(); snap.Live != 0 || snap.Corrections != 1 {
		t.Fatalf("after endpoint gone: live %d corrections %d", snap.Live, snap.Corrections)
	}
}

func TestTableFull(t *testing.T) {
	tab, _ := newTable(ct.Config{MaxEntries: 1})
	tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagSYN, Seq: 1})
	other := ct.Tuple{Client: netip.MustParseAddrPort("100.64.1.3:1"), Dst: tuple.Dst}
	tab.Segment(ct.FromClient, other, ct.Segment{Flags: ct.FlagSYN, Seq: 1})
	if snap := tab.Snapshot(); snap.Live != 1 || snap.TableFull != 1 {
		t.Fatalf("live %d table_full %d", snap.Live, snap.TableFull)
	}
	if id, stale := tab.Claim(other, 1); id != 0 || stale {
		t.Fatal("claimed an untracked SYN")
	}
}

func TestUntrackedSegments(t *testing.T) {
	tab, _ := newTable(ct.Config{})
	tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagACK, Seq: 1, Ack: 1})
	tab.Segment(ct.ToClient, tuple, ct.Segment{Flags: ct.FlagSYN, Seq: 1})
	if snap := tab.Snapshot(); snap.Live != 0 || snap.Untracked != 2 {
		t.Fatalf("live %d untracked %d", snap.Live, snap.Untracked)
	}
}

func TestStateNames(t *testing.T) {
	want := "close listen syn_sent syn_recv established fin_wait1 fin_wait2 closing time_wait close_wait last_ack"
	var got []string
	for st := range ct.NumStates {
		got = append(got, st.String())
		for _, name := range []string{st.String(), st.SSName(), strings.ToUpper(st.String())} {
			if p, ok := ct.ParseState(name); !ok || p != st {
				t.Fatalf("ParseState(%q) = %v, %v", name, p, ok)
			}
		}
	}
	if strings.Join(got, " ") != want {
		t.Fatalf("states %q, want node_exporter's %q", got, want)
	}
	var ss []string
	for st := range ct.NumStates {
		ss = append(ss, st.SSName())
	}
	if w := "CLOSED LISTEN SYN-SENT SYN-RECV ESTAB FIN-WAIT-1 FIN-WAIT-2 CLOSING TIME-WAIT CLOSE-WAIT LAST-ACK"; strings.Join(ss, " ") != w {
		t.Fatalf("ss names %q, want ss's %q", ss, w)
	}
	if ct.NumStates.String() != "unknown" || ct.NumStates.SSName() != "UNKNOWN" {
		t.Fatalf("an out-of-range state is %q/%q", ct.NumStates.String(), ct.NumStates.SSName())
	}
	// Every name ss's state filter (ss -o state NAME) takes for a single
	// state, as ss spells it.
	for name, st := range map[string]ct.State{
		"established": Est, "syn-sent": SynS, "syn-recv": SynR, "fin-wait-1": FW1, "fin-wait-2": FW2,
		"time-wait": TW, "closed": Closed, "close-wait": CW, "last-ack": LA, "listening": ct.StateListen,
		"closing": Clsg, "unconnected": Closed, "UNCONN": Closed,
	} {
		if p, ok := ct.ParseState(name); !ok || p != st {
			t.Errorf("ParseState(%q) = %v, %v; want %v", name, p, ok, st)
		}
	}
	if _, ok := ct.ParseState("established2"); ok {
		t.Fatal("ParseState accepted a name that is no state")
	}
}

func TestDirNames(t *testing.T) {
	if ct.FromClient.String() != "in" || ct.ToClient.String() != "out" || ct.NumDirs.String() != "unknown" {
		t.Fatalf("directions %q %q %q", ct.FromClient, ct.ToClient, ct.NumDirs)
	}
}

func TestSegmentDoesNotAllocate(t *testing.T) {
	tab, _ := newTable(ct.Config{})
	run(t, tab, handshake)
	seq := uint32(cISS + 1)
	n := testing.AllocsPerRun(1000, func() {
		tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagACK | ct.FlagPSH, Seq: seq, Ack: tISS + 1, Len: 100})
		seq += 100
	})
	if n != 0 {
		t.Fatalf("Segment allocates %.1f times per call", n)
	}
}

func BenchmarkSegment(b *testing.B) {
	tab, _ := newTable(ct.Config{})
	for i := range 1000 {
		tu := tuple
		tu.Client = netip.AddrPortFrom(tu.Client.Addr(), uint16(10000+i))
		for _, st := range handshake {
			tab.Segment(st.dir, tu, ct.Segment{Flags: flags(st.flags), Seq: st.seq, Ack: st.ack})
		}
	}
	seq := uint32(cISS + 1)
	b.ReportAllocs()
	for b.Loop() {
		tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagACK, Seq: seq, Ack: tISS + 1, Len: 1448})
		seq += 1448
	}
}

// TestRelayOutlivesNothing checks that an entry with a relay attached stays
// in the table, both ends closed, for as long as the relay runs, whatever
// ends the connection: a reset, the netstack reaping the endpoint, or the
// 4-tuple's reuse from TIME_WAIT. Released then removes it.
func TestRelayOutlivesNothing(t *testing.T) {
	claim := func(t *testing.T, tab *ct.Table) ct.ID {
		t.Helper()
		tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagSYN, Seq: cISS})
		id, _ := tab.Claim(tuple, cISS)
		run(t, tab, handshake[1:])
		if !tab.Relaying(id) {
			t.Fatal("Relaying refused a live entry")
		}
		if tab.Relaying(id) {
			t.Fatal("a second Relaying succeeded")
		}
		return id
	}
	held := func(t *testing.T, tab *ct.Table, id ct.ID) {
		t.Helper()
		snap := tab.Snapshot()
		if snap.Live != 1 || snap.Relays != 1 || snap.States[ct.StateClosed] != 1 || snap.ClientStates[ct.StateClosed] != 1 || snap.Closed != 0 {
			t.Fatalf("with its relay running, the ended connection's entry: live %d, relays %d, closed %d/%d, removed %d; want it held, closed on both ends",
				snap.Live, snap.Relays, snap.States[ct.StateClosed], snap.ClientStates[ct.StateClosed], snap.Closed)
		}
		if cs := tab.Conns(nil); len(cs) != 1 || cs[0].ID != id {
			t.Fatalf("Conns %v, want the held entry %d", cs, id)
		}
		checkCounts(t, tab)
	}
	released := func(t *testing.T, tab *ct.Table, id ct.ID, live int) {
		t.Helper()
		tab.Released(id)
		snap := tab.Snapshot()
		if snap.Live != live || snap.Relays != 0 || snap.Closed != 1 {
			t.Fatalf("after Released: live %d, relays %d, removed %d; want %d, 0, 1", snap.Live, snap.Relays, snap.Closed, live)
		}
		checkCounts(t, tab)
	}

	t.Run("client reset", func(t *testing.T) {
		tab, _ := newTable(ct.Config{})
		id := claim(t, tab)
		tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagRST, Seq: cISS + 1})
		held(t, tab, id)
		// Segments on the 4-tuple no longer reach the held entry.
		tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagACK, Seq: cISS + 1, Ack: tISS + 1})
		if snap := tab.Snapshot(); snap.Untracked != 1 {
			t.Fatalf("a segment on the held entry's 4-tuple: %d untracked, want 1", snap.Untracked)
		}
		// The stack's reconcile finds the endpoint gone: nothing changes,
		// nothing is counted expired.
		tab.Gone(id)
		if corrected, _ := tab.Reconcile(id, ct.StateEstablished); corrected {
			t.Fatal("Reconcile corrected a held entry")
		}
		held(t, tab, id)
		if snap := tab.Snapshot(); snap.Expired != 0 || snap.Resets != 1 {
			t.Fatalf("expired %d, resets %d; want 0 and 1", snap.Expired, snap.Resets)
		}
		released(t, tab, id, 0)
	})

	t.Run("endpoint reaped", func(t *testing.T) {
		tab, _ := newTable(ct.Config{})
		id := claim(t, tab)
		tab.Gone(id)
		held(t, tab, id)
		released(t, tab, id, 0)
	})

	t.Run("4-tuple reused from TIME_WAIT", func(t *testing.T) {
		tab, _ := newTable(ct.Config{})
		id := claim(t, tab)
		run(t, tab, tcpdTimeWait)
		if a := tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagSYN, Seq: cISS + 100000}); a.Kind != ct.ActionReuse {
			t.Fatalf("the reusing SYN: action %v, want reuse", a.Kind)
		}
		snap := tab.Snapshot()
		if snap.Live != 2 || snap.Relays != 1 || snap.TimeWait != 0 || snap.States[ct.StateSynRecv] != 1 || snap.States[ct.StateClosed] != 1 {
			t.Fatalf("after reuse: live %d, relays %d, time_wait %d, states %v; want the new entry and the held old one", snap.Live, snap.Relays, snap.TimeWait, snap.States)
		}
		// The next segment on the 4-tuple reaches the new connection.
		tab.Segment(ct.ToClient, tuple, ct.Segment{Flags: ct.FlagSYN | ct.FlagACK, Seq: 90000, Ack: cISS + 100001})
		tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagACK, Seq: cISS + 100001, Ack: 90001})
		if snap := tab.Snapshot(); snap.States[ct.StateEstablished] != 1 || snap.States[ct.StateClosed] != 1 {
			t.Fatalf("after the new handshake: states %v; want the new connection established, the held one closed", snap.States)
		}
		checkCounts(t, tab)
		released(t, tab, id, 1)
	})

	t.Run("released before the end", func(t *testing.T) {
		tab, _ := newTable(ct.Config{})
		id := claim(t, tab)
		tab.Released(id)
		if snap := tab.Snapshot(); snap.Live != 1 || snap.Relays != 0 {
			t.Fatalf("after Released of a live connection: live %d, relays %d; want 1, 0", snap.Live, snap.Relays)
		}
		tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagRST, Seq: cISS + 1})
		if snap := tab.Snapshot(); snap.Live != 0 || snap.Closed != 1 {
			t.Fatalf("a reset without a relay left live %d, removed %d", snap.Live, snap.Closed)
		}
	})

	t.Run("no entry", func(t *testing.T) {
		tab, _ := newTable(ct.Config{})
		if tab.Relaying(0) || tab.Relaying(42) {
			t.Fatal("Relaying attached a relay to no entry")
		}
		id := claim(t, tab)
		tab.Segment(ct.FromClient, tuple, ct.Segment{Flags: ct.FlagRST, Seq: cISS + 1})
		tab.Released(id)
		if tab.Relaying(id) {
			t.Fatal("Relaying attached a relay to a removed entry")
		}
	})
}

// BenchmarkTimeWaitMemory holds 16,384 connections in TIME_WAIT, Linux's
// default tcp_max_tw_buckets and tcpd's default cap, and reports the Go heap
// each one costs (the entry and its share of the table's maps).
func BenchmarkTimeWaitMemory(b *testing.B) {
	const n = 16384
	var per float64
	for b.Loop() {
		b.StopTimer()
		var ms0, ms1 runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&ms0)
		tab, _ := newTable(ct.Config{TimeWaitLimit: new(n)})
		b.StartTimer()
		for i := range n {
			tu := ct.Tuple{
				Client: netip.AddrPortFrom(netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}), uint16(40000+i%1000)),
				Dst:    netip.MustParseAddrPort("198.18.1.2:443"),
			}
			for _, st := range append(append([]step{}, handshake...), tcpdTimeWait...) {
				tab.Segment(st.dir, tu, ct.Segment{Flags: flags(st.flags), Seq: st.seq, Ack: st.ack, TS: true, TSVal: 1, TSEcr: 2, Wnd: 500})
			}
		}
		b.StopTimer()
		runtime.GC()
		runtime.ReadMemStats(&ms1)
		if snap := tab.Snapshot(); snap.TimeWait != n {
			b.Fatalf("%d in TIME_WAIT, want %d", snap.TimeWait, n)
		}
		per = float64(ms1.HeapAlloc-ms0.HeapAlloc) / n
		runtime.KeepAlive(tab)
		b.StartTimer()
	}
	b.ReportMetric(per, "B/entry")
}

// heapAlloc is the live heap after a collection.
func heapAlloc() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestMapsGiveBackMemory fills the table with 50,000 connections, ends them
// all, and checks that the table gives back what its maps grew to: Go's
// maps never shrink by themselves.
func TestMapsGiveBackMemory(t *testing.T) {
	tab, _ := newTable(ct.Config{})
	before := heapAlloc()
	const n = 50000
	for i := range n {
		tu := ct.Tuple{
			Client: netip.AddrPortFrom(netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}), uint16(1024+i%50000)),
			Dst:    netip.MustParseAddrPort("198.18.1.2:443"),
		}
		for _, st := range handshake {
			tab.Segment(st.dir, tu, ct.Segment{Flags: flags(st.flags), Seq: st.seq, Ack: st.ack})
		}
	}
	full := heapAlloc()
	for i := range n {
		tu := ct.Tuple{
			Client: netip.AddrPortFrom(netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}), uint16(1024+i%50000)),
			Dst:    netip.MustParseAddrPort("198.18.1.2:443"),
		}
		tab.Segment(ct.FromClient, tu, ct.Segment{Flags: ct.FlagRST, Seq: cISS + 1})
	}
	if live := tab.Snapshot().Live; live != 0 {
		t.Fatalf("%d entries left after the resets", live)
	}
	tab.Tick()
	after := heapAlloc()
	t.Logf("heap: %d KiB empty, %d KiB with %d connections, %d KiB after they ended", before>>10, full>>10, n, after>>10)
	if after > before+64<<10 {
		t.Errorf("the empty table holds %d KiB more than before the %d connections", (after-before)>>10, n)
	}
	runtime.KeepAlive(tab)
}

// TestQueueFollowsClient: a tracked connection's segments to the client are
// told the TUN queue its client's segments last came on (from the SYN on),
// and an untracked one's none, so a flow leaves on the queue it arrives on.
func TestQueueFollowsClient(t *testing.T) {
	tab := ct.New(ct.Config{})
	seg := func(dir ct.Dir, fl string, seq, ack uint32, queue uint16) ct.Action {
		return tab.Segment(dir, tuple, ct.Segment{Flags: flags(fl), Seq: seq, Ack: ack, Wnd: 1000, Queue: queue})
	}
	if a := seg(ct.ToClient, "A", tISS, cISS, 0); a.Queue != 0 {
		t.Fatalf("a segment of no connection was given queue %d", a.Queue)
	}
	if a := seg(ct.FromClient, "S", cISS, 0, 3); a.Kind != ct.ActionOpen || a.Queue != 3 {
		t.Fatalf("SYN on queue 3: action %v, queue %d", a.Kind, a.Queue)
	}
	if a := seg(ct.ToClient, "SA", tISS, cISS+1, 0); a.Queue != 3 {
		t.Fatalf("SYN-ACK after a SYN on queue 3 was given queue %d", a.Queue)
	}
	seg(ct.FromClient, "A", cISS+1, tISS+1, 2)
	if a := seg(ct.ToClient, "A", tISS+1, cISS+1, 0); a.Queue != 2 {
		t.Fatalf("after the client's ACK came on queue 2, a segment to it was given queue %d", a.Queue)
	}
	// A caller that does not know the queue leaves it as it was.
	seg(ct.FromClient, "A", cISS+1, tISS+1, 0)
	if a := seg(ct.ToClient, "A", tISS+1, cISS+1, 0); a.Queue != 2 {
		t.Fatalf("a client segment of unknown queue moved the connection to queue %d", a.Queue)
	}
}

// TestEndedKeepsQueue: what the netstack still sends for a connection that
// conntrack has seen end (a window update or the last ACK while the relay
// winds down, a retransmitted FIN, the RST it answers to the client's
// reply) leaves on the queue its client's segments came on: while the
// entry is held, and for ct.EndedLinger after it has left the table. Such a
// segment still counts untracked and changes nothing else. A new
// connection on the 4-tuple has its own entry, and its queue wins.
func TestEndedKeepsQueue(t *testing.T) {
	type seg func(dir ct.Dir, fl string, seq, ack uint32, queue uint16) ct.Action
	setup := func() (*ct.Table, *clock, seg) {
		tab, clk := newTable(ct.Config{})
		return tab, clk, func(dir ct.Dir, fl string, seq, ack uint32, queue uint16) ct.Action {
			return tab.Segment(dir, tuple, ct.Segment{Flags: flags(fl), Seq: seq, Ack: ack, Wnd: 1000, Queue: queue})
		}
	}
	// open runs a handshake on queue with cISS+off and attaches a relay.
	open := func(t *testing.T, tab *ct.Table, seg seg, queue uint16, off uint32) ct.ID {
		t.Helper()
		seg(ct.FromClient, "S", cISS+off, 0, queue)
		id, _ := tab.Claim(tuple, cISS+off)
		seg(ct.ToClient, "SA", tISS+off, cISS+off+1, 0)
		seg(ct.FromClient, "A", cISS+off+1, tISS+off+1, queue)
		if !tab.Relaying(id) {
			t.Fatal("Relaying refused a live entry")
		}
		return id
	}
	// closeByClient closes the connection opened with off, the client
	// first; its ACK of tcpd's FIN closes tcpd's end.
	closeByClient := func(seg seg, queue uint16, off uint32) {
		seg(ct.FromClient, "FA", cISS+off+1, tISS+off+1, queue)
		seg(ct.ToClient, "A", tISS+off+1, cISS+off+2, 0)
		seg(ct.ToClient, "FA", tISS+off+1, cISS+off+2, 0)
		seg(ct.FromClient, "A", cISS+off+2, tISS+off+2, queue)
	}
	// late is what the netstack sends after that: its FIN again.
	late := func(seg seg, off uint32) ct.Action {
		return seg(ct.ToClient, "FA", tISS+off+1, cISS+off+2, 0)
	}
	wantQueue := func(t *testing.T, a ct.Action, want uint16, what string) {
		t.Helper()
		if a.Kind != ct.ActionNone || a.Queue != want {
			t.Fatalf("%s: action %v, queue %d; want none, queue %d", what, a.Kind, a.Queue, want)
		}
	}

	t.Run("held, then released", func(t *testing.T) {
		tab, clk, seg := setup()
		id := open(t, tab, seg, 2, 0)
		closeByClient(seg, 2, 0)
		before := tab.Snapshot()
		if before.Live != 1 || before.Relays != 1 || before.States[ct.StateClosed] != 1 {
			t.Fatalf("live %d, relays %d, closed %d: the entry is not held", before.Live, before.Relays, before.States[ct.StateClosed])
		}
		clk.advance(10 * ct.EndedLinger) // held: no linger runs yet
		tab.ExpireTimeWait()
		wantQueue(t, late(seg, 0), 2, "the held connection's FIN again")
		wantQueue(t, seg(ct.ToClient, "A", tISS+2, cISS+2, 0), 2, "the held connection's last ACK again")
		other := ct.Tuple{Client: netip.MustParseAddrPort("100.64.1.2:40001"), Dst: tuple.Dst}
		if a := tab.Segment(ct.ToClient, other, ct.Segment{Flags: ct.FlagACK, Seq: tISS + 2, Ack: cISS + 2}); a.Queue != 0 {
			t.Fatalf("a segment on a 4-tuple next to the held one's was given queue %d", a.Queue)
		}
		if a := seg(ct.FromClient, "A", cISS+2, tISS+2, 1); a.Queue != 0 {
			t.Fatalf("a client segment on the held 4-tuple was given queue %d", a.Queue)
		}
		after := tab.Snapshot()
		if after.Untracked != before.Untracked+4 {
			t.Errorf("untracked went from %d to %d after 4 segments of no tracked connection", before.Untracked, after.Untracked)
		}
		after.Untracked = before.Untracked
		if fmt.Sprint(after) != fmt.Sprint(before) {
			t.Errorf("the held connection's queue changed the snapshot:\n%+v\nwas\n%+v", after, before)
		}
		if cs := tab.Conns(nil); len(cs) != 1 || cs[0].ID != id || cs[0].State != ct.StateClosed {
			t.Fatalf("Conns %+v, want the held entry %d alone", cs, id)
		}
		checkCounts(t, tab)

		tab.Released(id)
		wantQueue(t, late(seg, 0), 2, "the released connection's FIN again")
		clk.advance(ct.EndedLinger - 1)
		tab.ExpireTimeWait()
		wantQueue(t, late(seg, 0), 2, "the FIN again, just inside ct.EndedLinger of Released")
		clk.advance(1)
		wantQueue(t, late(seg, 0), 0, "the FIN again, ct.EndedLinger after Released")
		if n := tab.ExpireTimeWait(); n != 0 {
			t.Fatalf("ExpireTimeWait removed %d entries of none", n)
		}
		wantQueue(t, late(seg, 0), 0, "the FIN again, after the record expired")
	})

	t.Run("relay released first", func(t *testing.T) {
		// As in most connections: the relay has finished when the
		// client's last ACK ends the connection, and the entry leaves the
		// table at once.
		tab, clk, seg := setup()
		id := open(t, tab, seg, 2, 0)
		tab.Released(id)
		closeByClient(seg, 2, 0)
		if snap := tab.Snapshot(); snap.Live != 0 || snap.Closed != 1 {
			t.Fatalf("live %d, removed %d; want the entry gone", snap.Live, snap.Closed)
		}
		wantQueue(t, late(seg, 0), 2, "the gone connection's FIN again")
		seg(ct.FromClient, "A", cISS+2, tISS+2, 2)
		wantQueue(t, seg(ct.ToClient, "R", tISS+2, 0, 0), 2, "the netstack's RST to the client's ACK of it")
		clk.advance(ct.EndedLinger)
		tab.ExpireTimeWait()
		wantQueue(t, late(seg, 0), 0, "the FIN again, ct.EndedLinger after the end")
	})

	t.Run("a new connection's queue wins", func(t *testing.T) {
		tab, clk, seg := setup()
		old := open(t, tab, seg, 2, 0)
		closeByClient(seg, 2, 0) // held
		const off = 100000
		if a := seg(ct.FromClient, "S", cISS+off, 0, 1); a.Kind != ct.ActionOpen || a.Queue != 1 {
			t.Fatalf("a new SYN on the held 4-tuple, on queue 1: action %v, queue %d; want open, 1", a.Kind, a.Queue)
		}
		wantQueue(t, seg(ct.ToClient, "SA", tISS+off, cISS+off+1, 0), 1, "the new connection's SYN-ACK")
		// The new connection is reset, with no relay: its own queue
		// is the 4-tuple's, and the older one's release changes nothing.
		seg(ct.FromClient, "R", cISS+off+1, 0, 1)
		wantQueue(t, late(seg, 0), 1, "a segment on the 4-tuple after the new connection's reset")
		tab.Released(old)
		wantQueue(t, late(seg, 0), 1, "a segment on the 4-tuple after the old connection's release")
		clk.advance(ct.EndedLinger)
		tab.ExpireTimeWait()
		wantQueue(t, late(seg, 0), 0, "a segment on the 4-tuple ct.EndedLinger after both ended")
		checkCounts(t, tab)
	})

	t.Run("a newer record outlives an older one", func(t *testing.T) {
		tab, clk, seg := setup()
		tab.Released(open(t, tab, seg, 2, 0))
		closeByClient(seg, 2, 0)
		clk.advance(ct.EndedLinger / 2)
		const off = 100000
		tab.Released(open(t, tab, seg, 1, off))
		seg(ct.FromClient, "R", cISS+off+1, 0, 1)
		clk.advance(ct.EndedLinger / 2)
		tab.ExpireTimeWait() // the older record's time
		wantQueue(t, late(seg, 0), 1, "a segment on the 4-tuple when the older record expired")
		clk.advance(ct.EndedLinger / 2)
		tab.ExpireTimeWait()
		wantQueue(t, late(seg, 0), 0, "a segment on the 4-tuple ct.EndedLinger after the newer end")
	})

	t.Run("two held", func(t *testing.T) {
		tab, clk, seg := setup()
		older := open(t, tab, seg, 2, 0)
		seg(ct.FromClient, "R", cISS+1, 0, 2)
		newer := open(t, tab, seg, 1, 100000)
		seg(ct.FromClient, "R", cISS+100001, 0, 1)
		tab.Released(older)
		clk.advance(ct.EndedLinger)
		tab.ExpireTimeWait()
		wantQueue(t, late(seg, 0), 1, "with the newer of two held connections on queue 1 and the older released")
		tab.Released(newer)
		clk.advance(ct.EndedLinger)
		tab.ExpireTimeWait()
		wantQueue(t, late(seg, 0), 0, "ct.EndedLinger after both were released")
		if snap := tab.Snapshot(); snap.Live != 0 || snap.Relays != 0 {
			t.Fatalf("live %d, relays %d at the end; want 0, 0", snap.Live, snap.Relays)
		}
	})
}

// TestEndedBounded: a shard remembers the queues of at most
// MaxEndedPerShard ended connections, the ones beyond are not remembered;
// ended connections spread over the table are; once their linger has run
// out, the table forgets them all and gives back their memory, and
// remembers new ones again.
func TestEndedBounded(t *testing.T) {
	const spread = 1 << 16
	tab, clk := newTable(ct.Config{})
	tupleOf := func(i int) ct.Tuple {
		return ct.Tuple{
			Client: netip.AddrPortFrom(netip.AddrFrom4([4]byte{100, 64 + byte(i>>24), byte(i >> 16), byte(i >> 8)}), uint16(1024+i&0xff)),
			Dst:    netip.MustParseAddrPort("198.18.1.2:443"),
		}
	}
	end := func(tu ct.Tuple) {
		tab.Segment(ct.FromClient, tu, ct.Segment{Flags: ct.FlagSYN, Seq: cISS, Queue: 2})
		tab.Segment(ct.FromClient, tu, ct.Segment{Flags: ct.FlagRST, Seq: cISS + 1, Queue: 2})
	}
	queueOf := func(tu ct.Tuple) uint16 {
		return tab.Segment(ct.ToClient, tu, ct.Segment{Flags: ct.FlagACK, Seq: tISS + 1, Ack: cISS + 1}).Queue
	}

	// One more than the cap, all on one shard.
	var same []ct.Tuple
	shard := tab.ShardOf(tupleOf(0))
	for i := 0; len(same) <= ct.MaxEndedPerShard; i++ {
		if tu := tupleOf(spread + i); tab.ShardOf(tu) == shard {
			same = append(same, tu)
		}
	}
	for _, tu := range same {
		end(tu)
	}
	for i, tu := range same[:ct.MaxEndedPerShard] {
		if q := queueOf(tu); q != 2 {
			t.Fatalf("ended connection %d of one shard was given queue %d, want 2", i, q)
		}
	}
	if q := queueOf(same[ct.MaxEndedPerShard]); q != 0 {
		t.Fatalf("a connection ended beyond its shard's cap was given queue %d, want none", q)
	}

	// Many, spread over the table by hash.
	tab.Tick()
	before := heapAlloc()
	kept := 0
	for i := range spread {
		end(tupleOf(i))
	}
	for i := range spread {
		if queueOf(tupleOf(i)) == 2 {
			kept++
		}
	}
	t.Logf("%d of %d connections ended at once had their queue remembered", kept, spread)
	if kept < spread*9/10 {
		t.Errorf("%d of %d connections ended at once had their queue remembered, want nearly all", kept, spread)
	}
	clk.advance(ct.EndedLinger)
	tab.ExpireTimeWait()
	tab.Tick()
	after := heapAlloc()
	t.Logf("heap: %d KiB before, %d KiB after %d ended connections expired", before>>10, after>>10, spread)
	if after > before+64<<10 {
		t.Errorf("the table holds %d KiB more once its records of ended connections expired", (after-before)>>10)
	}
	for _, tu := range same {
		if q := queueOf(tu); q != 0 {
			t.Fatalf("after the linger, an ended connection was given queue %d, want none", q)
		}
	}
	end(same[ct.MaxEndedPerShard])
	if q := queueOf(same[ct.MaxEndedPerShard]); q != 2 {
		t.Fatalf("once its shard's records expired, an ended connection was given queue %d, want 2", q)
	}
	runtime.KeepAlive(tab)
}
