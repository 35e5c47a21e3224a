//go:build linux

package e2e_test

import (
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"tcpd/internal/netlab"
)

// TestUnacceptableACK sends tcpd, with scapy, segments whose acknowledgment
// no TCP takes (RFC 9293 3.10.7.4), and checks them byte by byte against
// what Linux does: in SYN-RECEIVED an ACK of anything but tcpd's SYN-ACK
// is answered <SEQ=SEG.ACK><CTL=RST> and completes nothing, with or without
// data (the netstack's forwarder alone would take it, and a forger who
// knows only its own ISN would have a connection); in ESTABLISHED data
// that acknowledges what tcpd never sent, or far less than the client has
// acknowledged already, is dropped and answered with an ACK, at most one
// each half second (RFC 5961 5.2). The destination must
// read only what the client sent with acceptable acknowledgments.
func TestUnacceptableACK(t *testing.T) {
	needScapy(t)
	g := startGateway(t, netlab.Options{}, gwConfig{Metrics: true, LogLevel: "info"})
	before := sample(t, g)
	got := make(chan string, 1)
	port := serve(t, g.Server, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(20 * time.Second))
		b, _ := io.ReadAll(c)
		got <- string(b)
	})
	src := scriptClient(t, g, false)
	var rep struct {
		ISS   uint32 `json:"iss"`
		Steps []struct {
			Name    string   `json:"name"`
			Replies []string `json:"replies"`
		} `json:"steps"`
	}
	runScapy(t, g, 60*time.Second, &rep, "badack.py", "--src", src.String(), "--dst", g.ServerAddr4.String(), "--port", fmt.Sprint(port))
	const iss = 700000 // the script's
	type want struct {
		flags    header.TCPFlags
		seq, ack uint32
	}
	wants := map[string][]want{
		"badack":  {{header.TCPFlagRst, rep.ISS + 12346, 0}},
		"baddata": {{header.TCPFlagRst, rep.ISS + 12346, 0}},
		"ack":     {{header.TCPFlagAck, rep.ISS + 1, iss + 6}},
		"unsent":  {{header.TCPFlagAck, rep.ISS + 1, iss + 6}},
		"unsent2": nil, // the half-second limit
		"data":    {{header.TCPFlagAck, rep.ISS + 1, iss + 11}},
		"tooold":  {{header.TCPFlagAck, rep.ISS + 1, iss + 11}},
	}
	for _, st := range rep.Steps {
		var replies []want
		for _, h := range st.Replies {
			p := mustPacket(t, h)
			replies = append(replies, want{p.tcp.Flags(), p.tcp.SequenceNumber(), p.tcp.AckNumber()})
			if len(p.tcp.Payload()) > 0 {
				t.Errorf("%s: tcpd answered with %d bytes of data", st.Name, len(p.tcp.Payload()))
			}
		}
		t.Logf("%-8s tcpd answered %+v", st.Name, replies)
		w, ok := wants[st.Name]
		if !ok {
			t.Fatalf("unknown step %q", st.Name)
		}
		delete(wants, st.Name)
		// The netstack may also send a window update as the relay reads
		// the data; only the first reply is the answer to the step.
		if (len(w) == 0) != (len(replies) == 0) || (len(w) > 0 && replies[0] != w[0]) {
			t.Errorf("%s: tcpd answered %+v, want %+v", st.Name, replies, w)
		}
	}
	if len(wants) > 0 {
		t.Errorf("steps missing from the report: %v", wants)
	}
	select {
	case b := <-got:
		if b != "helloworld" {
			t.Errorf("the destination read %q, want %q", b, "helloworld")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the destination's connection never ended")
	}
	m := sample(t, g)
	if d := m[`tcpd_dropped_total{reason="unacceptable_ack"}`] - before[`tcpd_dropped_total{reason="unacceptable_ack"}`]; d != 5 {
		t.Errorf(`tcpd_dropped_total{reason="unacceptable_ack"} rose by %v, want 5`, d)
	}
}
