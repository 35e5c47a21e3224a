package conntrack

import (
	"math"
	"slices"
	"sync/atomic"
	"time"
)

// ClassicBounds are the upper bounds, in seconds, of the classic buckets of
// every latency histogram: 100 µs to 10 s in 1-2.5-5 steps, the range a
// handshake can take between a LAN and a lossy mobile link. A Histogram
// whose bounds are not set has these.
var ClassicBounds = []float64{
	0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
	0.1, 0.25, 0.5, 1, 2.5, 5, 10,
}

// TimeWaitBounds are the classic buckets of the TIME_WAIT dwell, to 5 min
// (tcp.time_wait is 1s..5m) with the round values it is set to as bounds,
// so that entries held for the whole of it (the dwell is then exactly
// tcp.time_wait) fall in the bucket it closes; the buckets under a second
// count entries a new SYN reused (RFC 6191).
var TimeWaitBounds = []float64{
	0.1, 0.5, 1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240, 300,
}

// LifetimeBounds are the classic buckets of connection lifetimes: 10 ms (a
// request and its answer) to a day (a tunnel kept open).
var LifetimeBounds = []float64{
	0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400,
}

// maxClassic is the most classic bounds a Histogram can have.
const maxClassic = 17

// NativeSchema is the Prometheus native-histogram schema of the sparse
// buckets: schema 3 grows each bucket by 2^(1/8) ≈ 1.09, the closest schema
// to the conventional factor 1.1.
const NativeSchema = 3

// Native buckets cover 2^nativeMinExp s (≈ 7.6 µs) to 2^nativeMaxExp s
// (≈ 36 h, past the longest classic bound); observations below go to the
// zero bucket, above to the last bucket. That bounds the bucket count at
// (nativeMaxExp-nativeMinExp)·8 = 272, of which a scrape carries only the
// ones not empty.
const (
	nativeMinExp        = -17
	nativeMaxExp        = 17
	nativePerOctave     = 1 << NativeSchema
	numNativeBuckets    = (nativeMaxExp - nativeMinExp) * nativePerOctave
	nativeFirstIndex    = nativeMinExp*nativePerOctave + 1
	NativeZeroThreshold = 1.0 / (1 << -nativeMinExp)
)

// Histogram counts durations in fixed classic buckets and in native
// (exponential) buckets at once. Observe is lock-free and allocation-free.
// The zero value has ClassicBounds; SetBounds gives it others.
type Histogram struct {
	bounds  []float64 // nil: ClassicBounds
	count   atomic.Uint64
	sumNano atomic.Int64
	classic [maxClassic + 1]atomic.Uint64 // the bounds' buckets, then +Inf
	zero    atomic.Uint64
	native  [numNativeBuckets]atomic.Uint64
}

// SetBounds gives h classic bounds other than ClassicBounds: increasing,
// at most 17. It must be called before the first Observe.
func (h *Histogram) SetBounds(bounds []float64) {
	if len(bounds) > maxClassic || !slices.IsSorted(bounds) {
		panic("conntrack: histogram bounds not increasing or more than 17")
	}
	h.bounds = bounds
}

// Bounds are h's classic bounds.
func (h *Histogram) Bounds() []float64 {
	if h.bounds == nil {
		return ClassicBounds
	}
	return h.bounds
}

// Observe records one duration. Negative durations count as zero.
func (h *Histogram) Observe(d time.Duration) {
	if d < 0 {
		d = 0
	}
	s := d.Seconds()
	h.count.Add(1)
	h.sumNano.Add(int64(d))
	bounds := h.Bounds()
	i := 0
	for i < len(bounds) && s > bounds[i] {
		i++
	}
	h.classic[i].Add(1)
	if s <= NativeZeroThreshold {
		h.zero.Add(1)
		return
	}
	h.native[nativeSlot(s)].Add(1)
}

// nativeSlot maps s > NativeZeroThreshold to its bucket's slot. Bucket index
// k (Prometheus' convention) covers (2^((k-1)/8), 2^(k/8)].
func nativeSlot(s float64) int {
	frac, exp := math.Frexp(s) // s = frac·2^exp, frac in [0.5, 1)
	// Index within the octave: the smallest j with frac ≤ 2^((j-8)/8).
	j := int(math.Ceil(math.Log2(frac)*nativePerOctave)) + nativePerOctave
	k := (exp-1)*nativePerOctave + j
	slot := k - nativeFirstIndex
	if slot < 0 {
		return 0
	}
	if slot >= numNativeBuckets {
		return numNativeBuckets - 1
	}
	return slot
}

// HistogramSnapshot is a consistent-enough copy of a Histogram for export:
// each field is read atomically, and Count is read last so that it is never
// smaller than the sum of the buckets read before it.
type HistogramSnapshot struct {
	Count uint64
	Sum   float64 // seconds
	// Bounds are the classic buckets' upper bounds, in seconds.
	Bounds []float64
	// Cumulative counts for Bounds, as Prometheus wants them.
	Buckets []uint64
	// ZeroCount counts observations at or below NativeZeroThreshold.
	ZeroCount uint64
	// Native maps a native bucket index (schema NativeSchema) to its count;
	// only non-empty buckets are present.
	Native map[int]uint64
}

// Snapshot copies the histogram.
func (h *Histogram) Snapshot() HistogramSnapshot { return snapshotOf([]*Histogram{h}) }

// snapshotOf copies the sum of hs, the stripes of one histogram.
func snapshotOf(hs []*Histogram) HistogramSnapshot {
	bounds := hs[0].Bounds()
	s := HistogramSnapshot{Bounds: bounds, Buckets: make([]uint64, len(bounds)), Native: map[int]uint64{}}
	classic := make([]uint64, len(bounds)+1)
	var count uint64
	var sum int64
	for _, h := range hs {
		for i := range classic {
			classic[i] += h.classic[i].Load()
		}
		s.ZeroCount += h.zero.Load()
		for i := range h.native {
			if n := h.native[i].Load(); n > 0 {
				s.Native[i+nativeFirstIndex] += n
			}
		}
		sum += h.sumNano.Load()
		count += h.count.Load()
	}
	var cum uint64
	for i := range bounds {
		cum += classic[i]
		s.Buckets[i] = cum
	}
	cum += classic[len(bounds)]
	s.Sum = time.Duration(sum).Seconds()
	s.Count = max(count, cum)
	return s
}

// Quantile estimates the q-quantile (0..1) from the native buckets, for
// tests and `tcpd conns -s`. It returns 0 for an empty histogram.
func (s HistogramSnapshot) Quantile(q float64) float64 {
	total := s.ZeroCount
	for _, n := range s.Native {
		total += n
	}
	if total == 0 {
		return 0
	}
	rank := q * float64(total)
	seen := float64(s.ZeroCount)
	if rank <= seen {
		return 0
	}
	for k := nativeFirstIndex; k < nativeFirstIndex+numNativeBuckets; k++ {
		n := float64(s.Native[k])
		if n == 0 {
			continue
		}
		if seen+n >= rank {
			lo := math.Exp2(float64(k-1) / nativePerOctave)
			hi := math.Exp2(float64(k) / nativePerOctave)
			return lo + (hi-lo)*(rank-seen)/n
		}
		seen += n
	}
	return math.Exp2(float64(nativeFirstIndex+numNativeBuckets-1) / nativePerOctave)
}
