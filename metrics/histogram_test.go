package metrics_test

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"tcpd/conntrack"
	"tcpd/metrics"
)

// observed are the test durations and where Prometheus' conventions put
// them. Native bucket k of schema 3 covers (2^((k-1)/8), 2^(k/8)] seconds:
//
//	0, 3 µs      → zero bucket (at or below 2^-17 s ≈ 7.6 µs)
//	200 µs       → k = ⌈8·log2(0.0002)⌉ = ⌈-98.3⌉ = -98
//	1 ms (twice) → ⌈8·log2(0.001)⌉  = ⌈-79.7⌉ = -79
//	30 ms        → ⌈8·log2(0.03)⌉   = ⌈-40.5⌉ = -40
//	2 s          → 8·log2(2) = 8, an upper bound, so k = 8
//	20 s         → ⌈8·log2(20)⌉ = ⌈34.6⌉ = 35
//	500 s        → ⌈8·log2(500)⌉ = ⌈71.7⌉ = 72
//	48 h         → past conntrack's last bucket (2^17 s ≈ 36 h, k = 136): k = 136
var (
	observed = []time.Duration{
		0, 3 * time.Microsecond, 200 * time.Microsecond, time.Millisecond, time.Millisecond,
		30 * time.Millisecond, 2 * time.Second, 20 * time.Second, 500 * time.Second, 48 * time.Hour,
	}
	wantZero   uint64 = 2
	wantNative        = map[int]uint64{-98: 1, -79: 2, -40: 1, 8: 1, 35: 1, 72: 1, 136: 1}
)

const handshakeHelp = "Client leg of the TCP handshake: tcpd's SYN-ACK sent to the client's ACK received."

func TestHistogramExport(t *testing.T) {
	var h conntrack.Histogram
	var total time.Duration
	for _, d := range observed {
		h.Observe(d)
		total += d
	}
	var snap conntrack.Snapshot
	snap.Handshake = h.Snapshot()
	_, st := testSources()
	reg := pedantic(t, metrics.NewCollector(metrics.Config{Conntrack: &fakeConntrack{snap: snap}, Stack: st}))
	srv := httptest.NewServer(metrics.Handler(reg))
	defer srv.Close()

	const name = "tcpd_tcp_handshake_duration_seconds"
	classic := fmt.Sprintf(`
# HELP %[1]s %[2]s
# TYPE %[1]s histogram
%[1]s_bucket{le="0.0001"} 2
%[1]s_bucket{le="0.00025"} 3
%[1]s_bucket{le="0.0005"} 3
%[1]s_bucket{le="0.001"} 5
%[1]s_bucket{le="0.0025"} 5
%[1]s_bucket{le="0.005"} 5
%[1]s_bucket{le="0.01"} 5
%[1]s_bucket{le="0.025"} 5
%[1]s_bucket{le="0.05"} 6
%[1]s_bucket{le="0.1"} 6
%[1]s_bucket{le="0.25"} 6
%[1]s_bucket{le="0.5"} 6
%[1]s_bucket{le="1"} 6
%[1]s_bucket{le="2.5"} 7
%[1]s_bucket{le="5"} 7
%[1]s_bucket{le="10"} 7
%[1]s_bucket{le="+Inf"} 10
%[1]s_sum %[3]v
%[1]s_count 10
`, name, handshakeHelp, total.Seconds())

	t.Run("classic buckets in text", func(t *testing.T) {
		if err := testutil.GatherAndCompare(reg, strings.NewReader(classic), name); err != nil {
			t.Error(err)
		}
	})

	t.Run("classic buckets in OpenMetrics", func(t *testing.T) {
		body, _ := scrape(t, srv.URL, string(expfmt.NewFormat(expfmt.TypeOpenMetrics)))
		for _, want := range []string{
			name + `_bucket{le="0.001"} 5`,
			name + `_bucket{le="+Inf"} 10`,
			name + `_count 10`,
		} {
			if !strings.Contains(body, want) {
				t.Errorf("OpenMetrics scrape lacks %q", want)
			}
		}
	})

	t.Run("native buckets in protobuf", func(t *testing.T) {
		fams := scrapeProto(t, srv.URL)
		f := fams[name]
		if f == nil {
			t.Fatalf("protobuf scrape lacks %s", name)
		}
		if f.GetType() != dto.MetricType_HISTOGRAM {
			t.Fatalf("type %v, want HISTOGRAM", f.GetType())
		}
		got := f.GetMetric()[0].GetHistogram()
		if got.GetSchema() != 3 {
			t.Errorf("schema %d, want 3", got.GetSchema())
		}
		if got.GetZeroThreshold() != conntrack.NativeZeroThreshold {
			t.Errorf("zero threshold %g, want %g", got.GetZeroThreshold(), conntrack.NativeZeroThreshold)
		}
		if got.GetZeroCount() != wantZero {
			t.Errorf("zero count %d, want %d", got.GetZeroCount(), wantZero)
		}
		if got.GetSampleCount() != uint64(len(observed)) {
			t.Errorf("count %d, want %d", got.GetSampleCount(), len(observed))
		}
		native, err := decodeNative(got)
		if err != nil {
			t.Fatal(err)
		}
		if !maps.Equal(native, wantNative) {
			t.Errorf("native buckets %v, want %v", native, wantNative)
		}
		var sum uint64
		for _, n := range native {
			sum += n
		}
		if sum != got.GetSampleCount()-got.GetZeroCount() {
			t.Errorf("native buckets hold %d, want count %d - zero count %d", sum, got.GetSampleCount(), got.GetZeroCount())
		}
		if len(got.GetBucket()) != len(conntrack.ClassicBounds) {
			t.Errorf("%d classic buckets beside the native ones, want %d", len(got.GetBucket()), len(conntrack.ClassicBounds))
		}
	})
}

// TestHistogramEncoding checks the span and delta encoding of hand-made
// snapshots, and that the exported count always matches the native buckets.
func TestHistogramEncoding(t *testing.T) {
	full := slices.Repeat([]uint64{10}, len(conntrack.ClassicBounds))
	tests := []struct {
		name       string
		snap       conntrack.HistogramSnapshot
		wantSpans  [][2]int // offset, length
		wantDeltas []int64
		wantCount  uint64
		wantLast   uint64 // the last classic bucket (le="10")
	}{
		{
			name:      "empty",
			snap:      conntrack.HistogramSnapshot{},
			wantCount: 0,
		},
		{
			name:      "zero bucket only",
			snap:      conntrack.HistogramSnapshot{Count: 3, ZeroCount: 3, Buckets: slices.Repeat([]uint64{3}, len(conntrack.ClassicBounds))},
			wantCount: 3, wantLast: 3,
		},
		{
			name:       "gap of one filled, gap of three a new span",
			snap:       conntrack.HistogramSnapshot{Count: 11, Native: map[int]uint64{1: 2, 2: 3, 4: 1, 8: 5}},
			wantSpans:  [][2]int{{1, 4}, {3, 1}},
			wantDeltas: []int64{2, 1, -3, 1, 4},
			wantCount:  11,
		},
		{
			name:       "gap of two filled",
			snap:       conntrack.HistogramSnapshot{Count: 3, Native: map[int]uint64{0: 1, 3: 2}},
			wantSpans:  [][2]int{{0, 4}},
			wantDeltas: []int64{1, -1, 0, 2},
			wantCount:  3,
		},
		{
			name:       "negative indices",
			snap:       conntrack.HistogramSnapshot{Count: 4, Native: map[int]uint64{-80: 1, -79: 1, -70: 2}},
			wantSpans:  [][2]int{{-80, 2}, {8, 1}},
			wantDeltas: []int64{1, 0, 1},
			wantCount:  4,
		},
		{
			// An observation counted in Count but not yet in its bucket
			// when the snapshot was taken.
			name:       "count ahead of the buckets",
			snap:       conntrack.HistogramSnapshot{Count: 10, ZeroCount: 1, Buckets: full, Native: map[int]uint64{5: 3}},
			wantSpans:  [][2]int{{5, 1}},
			wantDeltas: []int64{3},
			wantCount:  4, wantLast: 4,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var snap conntrack.Snapshot
			snap.Dial = tt.snap
			_, st := testSources()
			fams, err := pedantic(t, metrics.NewCollector(metrics.Config{Conntrack: &fakeConntrack{snap: snap}, Stack: st})).Gather()
			if err != nil {
				t.Fatal(err)
			}
			var h *dto.Histogram
			for _, f := range fams {
				if f.GetName() == "tcpd_upstream_connect_duration_seconds" {
					h = f.GetMetric()[0].GetHistogram()
				}
			}
			if h == nil {
				t.Fatal("no tcpd_upstream_connect_duration_seconds")
			}
			var spans [][2]int
			for _, s := range h.GetPositiveSpan() {
				spans = append(spans, [2]int{int(s.GetOffset()), int(s.GetLength())})
			}
			if !slices.Equal(spans, tt.wantSpans) {
				t.Errorf("spans %v, want %v", spans, tt.wantSpans)
			}
			if !slices.Equal(h.GetPositiveDelta(), tt.wantDeltas) {
				t.Errorf("deltas %v, want %v", h.GetPositiveDelta(), tt.wantDeltas)
			}
			native, err := decodeNative(h)
			if err != nil {
				t.Fatal(err)
			}
			want := maps.Clone(tt.snap.Native)
			if want == nil {
				want = map[int]uint64{}
			}
			if !maps.Equal(native, want) {
				t.Errorf("decoded %v, want %v", native, want)
			}
			if h.GetSampleCount() != tt.wantCount {
				t.Errorf("count %d, want %d", h.GetSampleCount(), tt.wantCount)
			}
			b := h.GetBucket()
			if len(b) != len(conntrack.ClassicBounds) {
				t.Fatalf("%d classic buckets, want %d", len(b), len(conntrack.ClassicBounds))
			}
			if last := b[len(b)-1].GetCumulativeCount(); last != tt.wantLast {
				t.Errorf("classic le=10 bucket %d, want %d", last, tt.wantLast)
			}
			if h.GetZeroThreshold() == 0 {
				t.Error("zero threshold 0: a scraper could not tell the histogram is native")
			}
		})
	}
}

// decodeNative turns spans and deltas back into bucket counts, leaving out
// empty buckets as conntrack.HistogramSnapshot does.
func decodeNative(h *dto.Histogram) (map[int]uint64, error) {
	out := map[int]uint64{}
	deltas := h.GetPositiveDelta()
	var idx int
	var count int64
	for _, s := range h.GetPositiveSpan() {
		idx += int(s.GetOffset())
		for range s.GetLength() {
			if len(deltas) == 0 {
				return nil, errors.New("fewer deltas than the spans cover")
			}
			count += deltas[0]
			deltas = deltas[1:]
			if count < 0 {
				return nil, fmt.Errorf("bucket %d: negative count %d", idx, count)
			}
			if count > 0 {
				out[idx] = uint64(count)
			}
			idx++
		}
	}
	if len(deltas) != 0 {
		return nil, fmt.Errorf("%d deltas beyond the spans", len(deltas))
	}
	return out, nil
}

// scrape GETs url with the given Accept header and returns the body and
// the Content-Type.
func scrape(t testing.TB, url, accept string) (string, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, body)
	}
	return string(body), resp.Header.Get("Content-Type")
}

// scrapeProto scrapes url in the delimited protobuf format, the one that
// carries native histograms, and returns the families by name.
func scrapeProto(t testing.TB, url string) map[string]*dto.MetricFamily {
	t.Helper()
	body, ctype := scrape(t, url, string(expfmt.NewFormat(expfmt.TypeProtoDelim)))
	h := http.Header{"Content-Type": {ctype}}
	format := expfmt.ResponseFormat(h)
	if format.FormatType() != expfmt.TypeProtoDelim {
		t.Fatalf("asked for protobuf, got Content-Type %q", ctype)
	}
	dec := expfmt.NewDecoder(strings.NewReader(body), format)
	fams := map[string]*dto.MetricFamily{}
	for {
		var f dto.MetricFamily
		err := dec.Decode(&f)
		if errors.Is(err, io.EOF) {
			return fams
		}
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		fams[f.GetName()] = &f
	}
}
