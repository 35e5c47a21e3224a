package stack

import (
	"math"
	"net"
	"runtime"
	"runtime/debug"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

func TestBufferLevelFor(t *testing.T) {
	cases := []struct {
		cur   bufferLevel
		live  int64
		limit int64
		want  bufferLevel
	}{
		{bufNormal, 39, 100, bufNormal},
		{bufNormal, 40, 100, bufPressure},
		{bufNormal, 60, 100, bufSevere},
		{bufPressure, 31, 100, bufPressure}, // left only 10 points below
		{bufPressure, 29, 100, bufNormal},
		{bufPressure, 59, 100, bufPressure},
		{bufSevere, 51, 100, bufSevere},
		{bufSevere, 49, 100, bufPressure},
		{bufSevere, 29, 100, bufNormal},
		// No memory limit, no pressure.
		{bufSevere, 1 << 40, math.MaxInt64, bufNormal},
		{bufNormal, 1 << 40, 0, bufNormal},
	}
	for _, c := range cases {
		if got := bufferLevelFor(c.cur, c.live, c.limit); got != c.want {
			t.Errorf("bufferLevelFor(%v, %d, %d) = %v, want %v", c.cur, c.live, c.limit, got, c.want)
		}
	}
}

// TestBufferPressure: under pressure a new connection's client leg starts
// with the level's buffers, a connection open already is given them, the
// netstack lets none grow past the level's maximum, a warning says so;
// once it eases, new connections start with the defaults again.
func TestBufferPressure(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	h := newHarness(t, Config{Logger: zap.New(core)}, clientAddr)
	hold := make(chan struct{})
	defer close(hold)
	h.listen(t, func(c net.Conn) { <-hold })
	bufs := func(n int) (rcv, snd int64) {
		t.Helper()
		_, eps := h.s.reg.snapshot(nil, nil)
		if len(eps) != n {
			t.Fatalf("%d endpoints, want %d", len(eps), n)
		}
		ops := eps[n-1].SocketOptions()
		return ops.GetReceiveBufferSize(), ops.GetSendBufferSize()
	}
	ranges := func() (tcpip.TCPReceiveBufferSizeRangeOption, tcpip.TCPSendBufferSizeRangeOption) {
		var rcv tcpip.TCPReceiveBufferSizeRangeOption
		var snd tcpip.TCPSendBufferSizeRangeOption
		h.s.ns.TransportProtocolOption(tcp.ProtocolNumber, &rcv)
		h.s.ns.TransportProtocolOption(tcp.ProtocolNumber, &snd)
		return rcv, snd
	}

	if _, err := h.dial(t, 80); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "one active relay", func() bool { return h.s.Stats().Active.Load() == 1 })
	if rcv, snd := bufs(1); rcv != 1<<20 || snd != 1<<20 {
		t.Fatalf("with no pressure: buffers %d and %d, want 1 MiB", rcv, snd)
	}

	h.s.setBufferLevel(45, 100)
	if l := h.s.Stats().BufferPressure.Load(); l != uint32(bufPressure) {
		t.Fatalf("level %d at 45%% of the limit, want %d", l, bufPressure)
	}
	if rcv, snd := ranges(); rcv.Default != 64<<10 || rcv.Max != 256<<10 || snd.Default != 64<<10 || snd.Max != 256<<10 {
		t.Errorf("under pressure: ranges %+v and %+v, want 64 KiB default and 256 KiB max", rcv, snd)
	}
	waitFor(t, "the open connection's buffers to shrink", func() bool {
		rcv, snd := bufs(1)
		return rcv == 64<<10 && snd == 64<<10
	})
	if _, err := h.dial(t, 81); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "two active relays", func() bool { return h.s.Stats().Active.Load() == 2 })
	// The netstack's forwarder gives a new endpoint a receive buffer of
	// its own (1 MiB); the relay sets the level's as it starts.
	waitFor(t, "both connections' buffers to be the level's", func() bool {
		_, eps := h.s.reg.snapshot(nil, nil)
		for _, ep := range eps {
			if ep.SocketOptions().GetReceiveBufferSize() != 64<<10 || ep.SocketOptions().GetSendBufferSize() != 64<<10 {
				return false
			}
		}
		return len(eps) == 2
	})
	if w := logs.FilterMessageSnippet("under pressure").All(); len(w) != 1 || w[0].Level != zap.WarnLevel {
		t.Errorf("warnings of buffer pressure: %v, want one", w)
	}

	h.s.setBufferLevel(20, 100)
	if rcv, _ := ranges(); rcv.Default != 1<<20 || rcv.Max != 4<<20 || h.s.Stats().BufferPressure.Load() != 0 {
		t.Errorf("eased: range %+v, level %d; want 1 MiB and 4 MiB, 0", rcv, h.s.Stats().BufferPressure.Load())
	}
	if w := logs.FilterMessageSnippet("pressure eased").All(); len(w) != 1 {
		t.Errorf("messages of the pressure easing: %v, want one", w)
	}
}

// TestBufferPressureEasesWhenIdle: once what raised the level is gone, the
// level comes down within staleLive and a tick, though the runtime would
// not collect the idle heap for two minutes.
func TestBufferPressureEasesWhenIdle(t *testing.T) {
	h := newHarness(t, Config{}, clientAddr)
	runtime.GC()
	base, _, _ := heapReading()
	big := make([]byte, 64<<20)
	for i := range big {
		big[i] = 1
	}
	limit := (base + int64(len(big))) * 5 / 4 // the live heap at 80% of it
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(limit))
	runtime.GC()
	waitFor(t, "the level to rise with 64 MiB live", func() bool {
		return h.s.Stats().BufferPressure.Load() == uint32(bufSevere)
	})
	runtime.KeepAlive(big)
	big = nil
	deadline := time.Now().Add(staleLive + 3*time.Second)
	for h.s.Stats().BufferPressure.Load() != uint32(bufNormal) {
		if time.Now().After(deadline) {
			t.Fatalf("level %d %v after the heap was let go, want 0 within %v", h.s.Stats().BufferPressure.Load(), staleLive+3*time.Second, staleLive)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
