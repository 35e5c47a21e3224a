package stack

import (
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"tcpd/conntrack"
)

// echoConn is a connection through the harness to an echo upstream, the
// TCP segments tcpd writes to the client seen as they go.
type echoConn struct {
	h      *harness
	c      *tcpConn
	client netip.AddrPort
	dst    netip.AddrPort

	mu    sync.Mutex
	last  conntrack.Segment // tcpd's latest segment to this client
	sizes map[uint32]int    // payload sizes of tcpd's segments, while counting
}

func newEchoConn(t *testing.T) *echoConn {
	h := newHarness(t, Config{}, clientAddr)
	h.listen(t, func(c net.Conn) { io.Copy(c, c) })
	e := &echoConn{h: h}
	h.observeOut(func(p []byte) {
		if _, _, seg, ok := parseTCP(p); ok {
			e.mu.Lock()
			e.last = seg
			if e.sizes != nil && seg.Len > 0 {
				e.sizes[seg.Len]++
			}
			e.mu.Unlock()
		}
	})
	c, err := h.dial(t, 80)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	e.c, e.client, e.dst = c, netip.MustParseAddrPort(c.LocalAddr().String()), netip.AddrPortFrom(dstAddr, 80)
	e.echo(t, 5)
	return e
}

// echo sends n bytes and reads them back.
func (e *echoConn) echo(t *testing.T, n int) {
	t.Helper()
	go e.c.Write(make([]byte, n))
	if _, err := io.ReadFull(e.c, make([]byte, n)); err != nil {
		t.Fatalf("echo of %d bytes: %v", n, err)
	}
}

// sequence returns tcpd's SND.NXT and RCV.NXT, from its latest segment,
// once the connection has been quiet for a moment.
func (e *echoConn) sequence() (sndNxt, rcvNxt uint32) {
	time.Sleep(200 * time.Millisecond)
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.last.Seq + e.last.Len, e.last.Ack
}

// segmentSizes echoes n bytes and returns the largest and smallest payload
// of tcpd's segments that carried them.
func (e *echoConn) segmentSizes(t *testing.T, n int) (largest, smallest uint32) {
	e.mu.Lock()
	e.sizes = map[uint32]int{}
	e.mu.Unlock()
	e.echo(t, n)
	e.mu.Lock()
	defer e.mu.Unlock()
	smallest = ^uint32(0)
	for s := range e.sizes {
		largest, smallest = max(largest, s), min(smallest, s)
	}
	e.sizes = nil
	return largest, smallest
}

// TestClientRSTOnlyAtRcvNxt: after data beyond a hole, which the netstack
// queues, a client's RST between the hole and that data is one the
// netstack answers with a challenge ACK: conntrack must not take it for a
// reset (it used to, leaving the connection closed in its table while the
// netstack relayed on). A RST at the hole is one.
func TestClientRSTOnlyAtRcvNxt(t *testing.T) {
	e := newEchoConn(t)
	sndNxt, rcvNxt := e.sequence()
	ep := func(fl header.TCPFlags, seq, ack uint32, n int) []byte {
		return withChecksums(buildV4(e.client, e.dst, fl, seq, ack, n))
	}
	e.h.inject <- ep(header.TCPFlagAck|header.TCPFlagPsh, rcvNxt+1000, sndNxt, 10)
	e.h.inject <- ep(header.TCPFlagRst, rcvNxt+500, 0, 0)
	time.Sleep(300 * time.Millisecond)
	e.echo(t, 5)
	rows := e.h.s.Conns(nil)
	if len(rows) != 1 || rows[0].State != conntrack.StateEstablished {
		t.Fatalf("after a RST the netstack does not take: %+v, want one row, established", rows)
	}
	if n := e.h.s.Snapshot().Resets; n != 0 {
		t.Fatalf("conntrack counted %d resets", n)
	}
	if n := rows[0].BytesIn; n != 10 {
		t.Errorf("bytes in %d, want 10 (the data out of order is not in sequence yet)", n)
	}

	_, rcvNxt = e.sequence()
	e.h.inject <- ep(header.TCPFlagRst, rcvNxt, 0, 0)
	waitFor(t, "the RST at RCV.NXT to end the connection", func() bool {
		return e.h.s.Snapshot().Resets == 1 && len(e.h.s.Conns(nil)) == 0
	})
}
