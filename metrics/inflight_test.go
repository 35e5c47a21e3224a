package metrics_test

import (
	"context"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"tcpd/metrics"
)

// slowCollector blocks every Collect until release is closed.
type slowCollector struct {
	desc    *prometheus.Desc
	release chan struct{}
	// gathering counts the Collect calls in progress.
	gathering atomic.Int32
}

func (c *slowCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }
func (c *slowCollector) Collect(ch chan<- prometheus.Metric) {
	c.gathering.Add(1)
	defer c.gathering.Add(-1)
	<-c.release
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, 1)
}

// TestScrapesInFlightCapped holds four scrapes in the middle of a gather:
// a fifth is answered 503 at once, as README says, and the four finish
// once the gather does.
func TestScrapesInFlightCapped(t *testing.T) {
	reg := prometheus.NewRegistry()
	slow := &slowCollector{desc: prometheus.NewDesc("slow", "A gauge that takes its time.", nil, nil), release: make(chan struct{})}
	reg.MustRegister(slow)
	s, err := metrics.Listen("127.0.0.1:0", metrics.Handler(reg), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	url := "http://" + s.Addr().String() + "/metrics"
	scrape := func() (int, error) {
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := c.Get(url)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, nil
	}
	var wg sync.WaitGroup
	held := make(chan int, 4)
	for range 4 {
		wg.Go(func() {
			code, err := scrape()
			if err != nil {
				t.Error(err)
			}
			held <- code
		})
	}
	// The fifth, once the four are in their gathers.
	deadline := time.Now().Add(5 * time.Second)
	for slow.gathering.Load() < 4 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	code, err := scrape()
	close(slow.release)
	if err != nil {
		t.Error(err)
	}
	wg.Wait()
	close(held)
	if code != http.StatusServiceUnavailable {
		t.Errorf("a fifth scrape while four gather: %d, want 503", code)
	}
	for c := range held {
		if c != http.StatusOK {
			t.Errorf("a held scrape ended %d, want 200", c)
		}
	}
}
