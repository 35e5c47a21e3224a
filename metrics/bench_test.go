package metrics_test

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"

	"tcpd/conntrack"
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

// BenchmarkScrapeLiveTable scrapes a registry whose conntrack source is a
// real table holding 15,000 established connections, the most a gateway on
// this machine's file limit would hold: the scrape's cost includes taking
// the table's snapshot.
func BenchmarkScrapeLiveTable(b *testing.B) {
	tab := conntrack.New(conntrack.Config{})
	for i := range 15000 {
		tu := conntrack.Tuple{
			Client: netip.AddrPortFrom(netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}), 40000),
			Dst:    netip.MustParseAddrPort("198.18.1.2:443"),
		}
		tab.Segment(conntrack.FromClient, tu, conntrack.Segment{Flags: conntrack.FlagSYN, Seq: 1})
		tab.Segment(conntrack.ToClient, tu, conntrack.Segment{Flags: conntrack.FlagSYN | conntrack.FlagACK, Seq: 9, Ack: 2})
		tab.Segment(conntrack.FromClient, tu, conntrack.Segment{Flags: conntrack.FlagACK, Seq: 2, Ack: 10})
	}
	if n := tab.Snapshot().States[conntrack.StateEstablished]; n != 15000 {
		b.Fatalf("%d established", n)
	}
	_, st := testSources()
	h := metrics.Handler(metrics.NewRegistry(metrics.Config{Conntrack: tab, Stack: st, Version: "bench"}))
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusOK {
			b.Fatalf("status %d", w.Code)
		}
	}
}
