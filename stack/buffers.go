package stack

import (
	"math"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"time"

	"go.uber.org/zap"
	"gvisor.dev/gvisor/pkg/tcpip"
)

// Buffer pressure is tcpd's tcp_mem. The netstack buffers up to a
// connection's receive buffer of what its client sent and the destination
// has not taken, and up to its send buffer of what the destination sent
// and the client has not acknowledged: 1 MiB each to begin with, growing to
// 4 MiB, and more than that in the heap once filled with segments. A
// client that opens connections to a destination that reads nothing (or
// reads nothing itself) fills them, and a thousand such connections hold
// gigabytes, past the memory limit that follows the connection cap. As
// Linux shrinks what new and growing sockets get once its TCP memory passes
// tcp_mem's pressure threshold, the netstack's buffer ranges follow the
// live heap against the runtime's memory limit: at 40 % of it, new
// connections start with 64 KiB and none grows past 256 KiB; at 60 %,
// 16 KiB for both; back to the defaults below 30 %. Buffers already filled
// keep what they hold until it is read, and the connections open already
// are given the level's default too (what arrives past it is dropped, for
// its sender to send again), fixed from then on; a connection that moves
// bytes keeps moving them, in smaller windows. With no memory limit
// (limits.memory: off) there is no pressure.
type bufferLevel uint8

const (
	bufNormal bufferLevel = iota
	bufPressure
	bufSevere
)

func (l bufferLevel) String() string {
	return [...]string{"normal", "pressure", "severe"}[l]
}

// bufferRanges are the netstack's receive and send buffer sizes at each
// level: what a new connection starts with, and the most one grows to.
var bufferRanges = [...]struct{ def, max int }{
	bufNormal:   {1 << 20, 4 << 20},
	bufPressure: {64 << 10, 256 << 10},
	bufSevere:   {16 << 10, 16 << 10},
}

// bufferLevelFor is the level for a live heap of live bytes under a memory
// limit of limit, from cur: each level is entered above its threshold and
// left only 10 points of the limit below it, so that a heap near a
// threshold does not flap.
func bufferLevelFor(cur bufferLevel, live, limit int64) bufferLevel {
	if limit <= 0 || limit == math.MaxInt64 {
		return bufNormal
	}
	pct := float64(live) / float64(limit) * 100
	switch {
	case pct >= 60 || cur == bufSevere && pct >= 50:
		return bufSevere
	case pct >= 40 || cur >= bufPressure && pct >= 30:
		return bufPressure
	}
	return bufNormal
}

// bufferRangeOptions are the netstack's options for level l; 4 KiB is the
// least either buffer is set to, as Linux's tcp_rmem and tcp_wmem minimum.
func bufferRangeOptions(l bufferLevel) []transportOption {
	r := bufferRanges[l]
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: 4 << 10, Default: r.def, Max: r.max}
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: 4 << 10, Default: r.def, Max: r.max}
	return []transportOption{{"receive buffer range", &rcv}, {"send buffer range", &snd}}
}

// staleLive is how long a raised level waits for a garbage collection
// before the check runs one itself: the level reads the heap the last
// collection found live, and a heap that has stopped growing (the
// connections that held it have ended) is not collected again until the
// runtime's forced collection, two minutes on, which would keep new
// connections' buffers small all that time.
const staleLive = 2 * time.Second

// heapReading is what checkBuffers reads: the heap the last garbage
// collection found live, and how many collections have run.
func heapReading() (live int64, cycles uint64, ok bool) {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 || s[1].Value.Kind() != metrics.KindUint64 {
		return 0, 0, false
	}
	return int64(s[0].Value.Uint64()), s[1].Value.Uint64(), true
}

// setBuffers gives the relay's client leg the buffer level's default in
// both directions. The netstack keeps what either buffer holds until it is
// read or acknowledged.
func (r *relay) setBuffers() {
	def := int64(bufferRanges[r.s.stats.BufferPressure.Load()].def)
	ops := r.ep.SocketOptions()
	ops.SetReceiveBufferSize(def, true)
	ops.SetSendBufferSize(def, true)
}

// checkBuffers moves the buffer level with the live heap. The maintenance
// loop calls it every timeWaitResolution.
func (s *Stack) checkBuffers() {
	live, cycles, ok := heapReading()
	if !ok {
		return
	}
	now := time.Now().UnixNano()
	m := &s.maint
	if cycles != m.gcCycles.Load() {
		m.gcCycles.Store(cycles)
		m.gcSeen.Store(now)
	} else if s.stats.BufferPressure.Load() != uint32(bufNormal) && now-m.gcSeen.Load() >= int64(staleLive) {
		runtime.GC()
		if live, cycles, ok = heapReading(); !ok {
			return
		}
		m.gcCycles.Store(cycles)
		m.gcSeen.Store(now)
	}
	s.setBufferLevel(live, debug.SetMemoryLimit(-1))
}

// setBufferLevel applies the level for a live heap of live bytes under the
// memory limit limit, and says so when it changes.
func (s *Stack) setBufferLevel(live, limit int64) {
	cur := bufferLevel(s.stats.BufferPressure.Load())
	next := bufferLevelFor(cur, live, limit)
	if next == cur {
		return
	}
	if err := s.setTransportOptions(bufferRangeOptions(next)); err != nil {
		s.log.Error("buffer pressure", zap.Error(err))
		return
	}
	s.stats.BufferPressure.Store(uint32(next))
	// The connections open already: under pressure their buffers shrink,
	// dropping what arrives past the new size for its sender to resend;
	// once it eases they get the default again. A buffer set so is fixed,
	// as with SO_RCVBUF and SO_SNDBUF: receive moderation no longer grows
	// it.
	for _, sh := range s.shards {
		sh.postAll(reqBuffers)
	}
	r := bufferRanges[next]
	fields := []zap.Field{zap.Stringer("level", next), zap.Int64("live_heap", live), zap.Int64("memory_limit", limit),
		zap.Int("buffer_default", r.def), zap.Int("buffer_max", r.max)}
	if next > cur {
		s.log.Warn("TCP buffer memory under pressure: new connections get smaller netstack buffers, and none grows past buffer_max", fields...)
	} else {
		s.log.Info("TCP buffer pressure eased", fields...)
	}
}
