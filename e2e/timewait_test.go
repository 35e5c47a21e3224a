//go:build linux

package e2e_test

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"tcpd/internal/netlab"
)

// TestTimeWaitDuties drives each of TIME_WAIT's duties on tcpd with crafted
// segments (testdata/timewait.py, with scapy) and checks tcpd's replies
// byte by byte. TIME_WAIT is tcpd's own: the netstack's endpoint is gone
// as soon as a connection enters it, and conntrack's record answers at the
// link. Its ACKs must be exactly the endpoint's own last ACK, the final ACK
// of the close, but for the timestamps (TSval on the endpoint's clock,
// TSecr the newest acceptable TSval, RFC 7323 4.3) and the checksum:
//   - a retransmitted FIN and an old duplicate are acknowledged;
//   - an RST is ignored (RFC 1337), the record answers after it as before;
//   - a SYN with an older sequence number and timestamp gets a challenge
//     ACK, the same SYN right after it nothing (such ACKs go at most once
//     per half second), one with newer ones opens a new connection at
//     once (RFC 6191);
//   - with tcp.time_wait_limit 1, a second connection closing meanwhile
//     overflows: it gets no TIME_WAIT, and no RST either as it enters it;
//     its FIN again reaches the netstack, which answers RST, as Linux does
//     for a connection beyond tcp_max_tw_buckets;
//   - after tcp.time_wait the record is gone: RST again.
//
// While a record holds TIME_WAIT, the netstack holds no endpoint.
func TestTimeWaitDuties(t *testing.T) {
	needScapy(t)
	for _, family := range []string{"IPv4", "IPv6"} {
		t.Run(family, func(t *testing.T) {
			t.Parallel()
			timeWaitDuties(t, family == "IPv6")
		})
	}
}

// twReport is what testdata/timewait.py prints.
type twReport struct {
	Conns map[string]struct {
		Sport    int     `json:"sport"`
		ISS      uint32  `json:"iss"`
		FinalACK string  `json:"final_ack"`
		FinTSval uint32  `json:"fin_tsval"`
		FinalAt  float64 `json:"final_at"`
	} `json:"conns"`
	Steps []struct {
		Name      string  `json:"name"`
		Sport     int     `json:"sport"`
		Sent      string  `json:"sent"`
		SentTSval uint32  `json:"sent_tsval"`
		SentMs    float64 `json:"sent_ms"`
		Replies   []struct {
			Hex string  `json:"hex"`
			Ms  float64 `json:"ms"`
		} `json:"replies"`
	} `json:"steps"`
	// Others are tcpd's packets to another connection's port than the
	// step's, which the step left out.
	Others []struct {
		Step string `json:"step"`
		Hex  string `json:"hex"`
	} `json:"others"`
}

func timeWaitDuties(t *testing.T, v6 bool) {
	g := startGateway(t, netlab.Options{}, gwConfig{Metrics: true, TimeWait: "4s", TimeWaitLimit: 1, LogLevel: "info"})
	port := serve(t, g.Server, func(c net.Conn) {
		// One byte in, one byte out, and the server closes first.
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, make([]byte, 1)); err == nil {
			c.Write([]byte{'x'})
		}
	})
	src, dst := scriptClient(t, g, v6), g.ServerAddr4
	if v6 {
		dst = g.ServerAddr6
	}

	// While the script runs, watch for the mini-socket: a connection in
	// TIME_WAIT and no endpoint in the netstack.
	stop := make(chan struct{})
	var (
		wg      sync.WaitGroup
		miniMu  sync.Mutex
		miniSaw bool
	)
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			m := sample(t, g)
			if m["tcpd_tcp_time_wait_connections"] == 1 && m["tcpd_netstack_endpoints"] == 0 {
				miniMu.Lock()
				miniSaw = true
				miniMu.Unlock()
			}
		}
	})
	stopWatching := sync.OnceFunc(func() {
		close(stop)
		wg.Wait()
	})
	defer stopWatching()
	var rep twReport
	runScapy(t, g, 90*time.Second, &rep, "timewait.py", "--src", src.String(), "--dst", dst.String(), "--port", fmt.Sprint(port))
	stopWatching()

	for _, name := range []string{"A", "B", "C"} {
		c := rep.Conns[name]
		ack := mustPacket(t, c.FinalACK)
		if f := ack.tcp.Flags(); f != header.TCPFlagAck || ack.ts == nil || ack.tcp.AckNumber() != c.ISS+3 {
			t.Fatalf("connection %s: tcpd's final ACK %v, ack %d, timestamps %v: want a bare ACK of the FIN with timestamps",
				name, f, ack.tcp.AckNumber(), ack.ts != nil)
		}
	}
	steps := map[string]int{}
	for i, st := range rep.Steps {
		steps[st.Name] = i
		var got []string
		for _, r := range st.Replies {
			p := mustPacket(t, r.Hex)
			got = append(got, fmt.Sprintf("%v seq=%d ack=%d at %.1fms", p.tcp.Flags(), p.tcp.SequenceNumber(), p.tcp.AckNumber(), r.Ms))
		}
		t.Logf("%-7s sent %d bytes, tcpd answered %d: %v", st.Name, len(st.Sent)/2, len(st.Replies), got)
	}
	for _, o := range rep.Others {
		p := mustPacket(t, o.Hex)
		t.Logf("during %s, to port %d: %v seq=%d ack=%d", o.Step, p.tcp.DestinationPort(), p.tcp.Flags(), p.tcp.SequenceNumber(), p.tcp.AckNumber())
	}
	step := func(name string) (ref *twPacket, sentTSval uint32, replies []*twPacket, ms []float64) {
		t.Helper()
		i, ok := steps[name]
		if !ok {
			t.Fatalf("no step %q in the report", name)
		}
		st := rep.Steps[i]
		conn := map[int]string{rep.Conns["A"].Sport: "A", rep.Conns["B"].Sport: "B", rep.Conns["C"].Sport: "C"}[st.Sport]
		for _, r := range st.Replies {
			replies = append(replies, mustPacket(t, r.Hex))
			ms = append(ms, r.Ms)
		}
		return mustPacket(t, rep.Conns[conn].FinalACK), st.SentTSval, replies, ms
	}

	// The quiet half second after B's final ACK: nothing, no RST.
	if _, _, replies, _ := step("quiet"); len(replies) != 0 {
		t.Errorf("tcpd sent %d packets after B's final ACK (B overflowed the TIME_WAIT cap), want none", len(replies))
	}
	for _, name := range []string{"fin", "olddup", "fin2", "oldsyn"} {
		ref, sentTS, replies, ms := step(name)
		if name == "oldsyn" {
			// Its TSval is older than TS.Recent, which the ACK echoes:
			// fin2's.
			_, sentTS, _, _ = step("fin2")
		}
		if len(replies) != 1 {
			t.Errorf("%s: tcpd answered with %d packets, want its ACK", name, len(replies))
			continue
		}
		if err := sameACK(ref, replies[0], sentTS, ms[0]); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	for _, name := range []string{"rst"} {
		if _, _, replies, _ := step(name); len(replies) != 0 {
			t.Errorf("%s: tcpd answered with %d packets, want none", name, len(replies))
		}
	}
	i := steps["newsyn"]
	syn := mustPacket(t, rep.Steps[i].Sent)
	_, _, replies, ms := step("newsyn")
	switch {
	case len(replies) != 1 || replies[0].tcp.Flags() != header.TCPFlagSyn|header.TCPFlagAck || replies[0].tcp.AckNumber() != syn.tcp.SequenceNumber()+1:
		t.Errorf("newsyn: tcpd answered %d packets, want a SYN-ACK of the new SYN (RFC 6191)", len(replies))
	case ms[0]-rep.Steps[i].SentMs > 900:
		// A SYN the netstack dropped would be answered only after the
		// client's retransmission, 1 s later.
		t.Errorf("newsyn: the SYN-ACK came %.0f ms after the SYN, want it at once", ms[0]-rep.Steps[i].SentMs)
	default:
		t.Logf("newsyn: SYN-ACK %.1f ms after the SYN", ms[0]-rep.Steps[i].SentMs)
	}
	for _, name := range []string{"finb", "finc"} {
		_, _, replies, _ := step(name)
		if len(replies) != 1 || replies[0].tcp.Flags()&header.TCPFlagRst == 0 {
			t.Errorf("%s: tcpd answered %d packets, want one RST: no TIME_WAIT is held for the connection", name, len(replies))
		}
	}

	m := sample(t, g)
	for name, want := range map[string]float64{
		"tcpd_tcp_time_wait_acks_total":             4, // fin, olddup, fin2, oldsyn
		"tcpd_tcp_time_wait_acks_skipped_total":     1, // oldsyn's second copy
		"tcpd_tcp_time_wait_reused_total":           1, // newsyn
		"tcpd_tcp_time_wait_overflow_total":         1, // B
		"tcpd_tcp_time_wait_entered_total":          2, // A, C
		"tcpd_tcp_time_wait_connections":            0, // C expired
		"tcpd_tcp_time_wait_duration_seconds_count": 2,
		"tcpd_conntrack_corrections_total":          0,
	} {
		if m[name] != want {
			t.Errorf("%s = %v, want %v", name, m[name], want)
		}
	}
	if m["tcpd_conntrack_rst_ignored_total"] < 1 {
		t.Errorf("tcpd_conntrack_rst_ignored_total = %v, want the RST in TIME_WAIT counted", m["tcpd_conntrack_rst_ignored_total"])
	}
	miniMu.Lock()
	defer miniMu.Unlock()
	if !miniSaw {
		t.Error("no scrape showed a connection in TIME_WAIT with no endpoint in the netstack")
	}
}

// twPacket is an IP packet of tcpd's, parsed.
type twPacket struct {
	raw []byte
	tcp header.TCP
	// ts is the timestamps option inside raw, at tsOff; nil if there is
	// none.
	ts    []byte
	tsOff int
}

func mustPacket(t *testing.T, h string) *twPacket {
	t.Helper()
	raw, err := hex.DecodeString(h)
	if err != nil || len(raw) == 0 {
		t.Fatalf("packet %q: %v", h, err)
	}
	p := &twPacket{raw: raw}
	tcpOff := 0
	switch raw[0] >> 4 {
	case 4:
		tcpOff = int(header.IPv4(raw).HeaderLength())
	case 6:
		tcpOff = header.IPv6MinimumSize
	default:
		t.Fatalf("packet %q: not IP", h)
	}
	if len(raw) < tcpOff+header.TCPMinimumSize {
		t.Fatalf("packet %q: too short", h)
	}
	p.tcp = header.TCP(raw[tcpOff:])
	opts := p.tcp.Options()
	for i := 0; i < len(opts); {
		switch {
		case opts[i] == 0:
			i = len(opts)
		case opts[i] == 1:
			i++
		case i+1 < len(opts) && opts[i] == 8 && opts[i+1] == 10 && i+10 <= len(opts):
			p.ts, p.tsOff = opts[i:i+10], tcpOff+header.TCPMinimumSize+i
			i = len(opts)
		case i+1 < len(opts) && opts[i+1] >= 2:
			i += int(opts[i+1])
		default:
			i = len(opts)
		}
	}
	return p
}

// sameACK checks that got is ref, tcpd's endpoint's own last ACK, byte for
// byte but for its timestamps and TCP checksum: TSval no earlier than ref's
// nor later than the time since ref allows, TSecr the TSval of the
// segment it answers, and a valid checksum.
func sameACK(ref, got *twPacket, wantTSecr uint32, ms float64) error {
	if len(got.raw) != len(ref.raw) || got.ts == nil || ref.ts == nil {
		return fmt.Errorf("reply of %d bytes (timestamps %v), want %d like the final ACK", len(got.raw), got.ts != nil, len(ref.raw))
	}
	refTS, gotTS := binary.BigEndian.Uint32(ref.ts[2:6]), binary.BigEndian.Uint32(got.ts[2:6])
	// The netstack's timestamp clock counts milliseconds; the reply's
	// arrival was measured at the sniffer, a few milliseconds off.
	if d := int32(gotTS - refTS); d < 0 || float64(d) > ms+50 {
		return fmt.Errorf("TSval %d is %d ms after the final ACK's %d, which came %.1f ms earlier", gotTS, d, refTS, ms)
	}
	want := bytes.Clone(ref.raw)
	binary.BigEndian.PutUint32(want[ref.tsOff+2:], gotTS)
	binary.BigEndian.PutUint32(want[ref.tsOff+6:], wantTSecr)
	wtcp := header.TCP(want[len(want)-len(ref.tcp):])
	var src, dst tcpip.Address
	if want[0]>>4 == 4 {
		ip := header.IPv4(want)
		src, dst = ip.SourceAddress(), ip.DestinationAddress()
	} else {
		ip := header.IPv6(want)
		src, dst = ip.SourceAddress(), ip.DestinationAddress()
	}
	wtcp.SetChecksum(0)
	sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(wtcp)))
	wtcp.SetChecksum(^checksum.Checksum(wtcp, sum))
	if !bytes.Equal(want, got.raw) {
		return fmt.Errorf("reply\n% x\nwant (the final ACK, TSval %d, TSecr %d)\n% x", got.raw, gotTS, wantTSecr, want)
	}
	return nil
}
