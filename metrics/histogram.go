package metrics

import (
	"maps"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"tcpd/conntrack"
)

// histogram is a prometheus.Metric for one conntrack.HistogramSnapshot. It
// carries the classic buckets (the snapshot's Bounds) and the native ones
// (schema conntrack.NativeSchema) in the same dto.Histogram, so a scraper
// that negotiates protobuf can keep either or both, and the text formats show
// the classic ones.
type histogram struct {
	desc *prometheus.Desc
	snap *conntrack.HistogramSnapshot
}

var _ prometheus.Metric = (*histogram)(nil)

func newHistogram(d *prometheus.Desc, s *conntrack.HistogramSnapshot) *histogram {
	return &histogram{desc: d, snap: s}
}

func (h *histogram) Desc() *prometheus.Desc { return h.desc }

// Write fills m from the snapshot.
//
// Prometheus rejects a native histogram whose count differs from the sum of
// its buckets. conntrack.Histogram counts every observation in exactly one
// native bucket or the zero bucket, but its Snapshot reads those before
// Count, so an observation in progress can be in Count and not yet in a
// bucket. The exported count is therefore the sum of the native buckets, and
// the classic buckets are capped at it: all three move together and stay
// monotonic from one scrape to the next; the in-progress observation shows
// up in the next scrape.
func (h *histogram) Write(m *dto.Metric) error {
	s := h.snap
	count := s.ZeroCount
	for _, n := range s.Native {
		count += n
	}
	bounds := s.Bounds
	if bounds == nil { // a zero snapshot
		bounds = conntrack.ClassicBounds
	}
	classic := make([]*dto.Bucket, len(bounds))
	var cum uint64
	for i, le := range bounds {
		if i < len(s.Buckets) {
			cum = max(cum, s.Buckets[i]) // a zero snapshot has no Buckets
		}
		cum = min(cum, count)
		classic[i] = &dto.Bucket{CumulativeCount: new(cum), UpperBound: new(le)}
	}
	spans, deltas := nativeSpans(s.Native)
	// ZeroThreshold is not zero, which is what tells a scraper that this is
	// a native histogram even before it has any observation.
	m.Histogram = &dto.Histogram{
		SampleCount:   new(count),
		SampleSum:     new(s.Sum),
		Bucket:        classic,
		Schema:        new(int32(conntrack.NativeSchema)),
		ZeroThreshold: new(conntrack.NativeZeroThreshold),
		ZeroCount:     new(s.ZeroCount),
		PositiveSpan:  spans,
		PositiveDelta: deltas,
	}
	return nil
}

// maxGap is the longest run of empty buckets encoded as zero deltas inside a
// span rather than by starting a new span: a new span costs two varints and
// a message header, a zero delta one byte.
const maxGap = 2

// nativeSpans encodes sparse bucket counts the way the Prometheus protobuf
// format wants them. Each span covers consecutive bucket indices; its offset
// is the distance from the index after the previous span (from index 0 for
// the first span). The deltas list every covered bucket's count minus the
// previous covered bucket's, across spans, the first one relative to zero.
func nativeSpans(counts map[int]uint64) ([]*dto.BucketSpan, []int64) {
	if len(counts) == 0 {
		return nil, nil
	}
	var (
		spans  []*dto.BucketSpan
		cur    *dto.BucketSpan
		deltas = make([]int64, 0, len(counts))
		last   int64 // count of the last covered bucket
		next   int   // index after the last covered bucket
	)
	for _, k := range slices.Sorted(maps.Keys(counts)) {
		gap := k - next
		if cur == nil || gap > maxGap {
			cur = &dto.BucketSpan{Offset: new(int32(gap)), Length: new(uint32(0))}
			spans = append(spans, cur)
		} else {
			for range gap {
				deltas = append(deltas, -last)
				last = 0
				*cur.Length++
			}
		}
		n := int64(counts[k])
		deltas = append(deltas, n-last)
		last = n
		*cur.Length++
		next = k + 1
	}
	return spans, deltas
}
