package metrics_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"tcpd/metrics"
)

// BenchmarkScrape measures one scrape of the whole registry (tcpd's
// Collector, the Go and process collectors). The Collector exports an
// aggregated Snapshot, counts per state and histograms with a fixed bucket
// range, so its cost does not depend on how many connections the table
// holds; the Snapshot here has every state and every native bucket in the
// usual range populated, the most a scrape ever has to encode. Taking the
// Snapshot itself is conntrack's cost and is not measured here.
func BenchmarkScrape(b *testing.B) {
	_, st := testSources()
	reg := metrics.NewRegistry(metrics.Config{
		Conntrack: &fakeConntrack{snap: realisticSnapshot()},
		Stack:     st,
		Reload:    fakeReload{ok: true},
		Version:   "bench",
	})
	b.Run("gather", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := reg.Gather(); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, f := range []struct{ name, accept string }{
		{"text", "text/plain; version=0.0.4"},
		{"protobuf", "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"},
	} {
		b.Run(f.name, func(b *testing.B) {
			h := metrics.Handler(reg)
			req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
			req.Header.Set("Accept", f.accept)
			b.ReportAllocs()
			for b.Loop() {
				w := httptest.NewRecorder()
				h.ServeHTTP(w, req)
				if w.Code != http.StatusOK {
					b.Fatalf("status %d", w.Code)
				}
			}
		})
	}
}
