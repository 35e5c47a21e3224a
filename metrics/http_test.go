package metrics_test

import (
	"context"
	"errors"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"tcpd/metrics"
)

func TestServer(t *testing.T) {
	ct, st := testSources()
	reg := metrics.NewRegistry(metrics.Config{Conntrack: ct, Stack: st, Version: "1.2.3"})
	s, err := metrics.Listen("127.0.0.1:0", metrics.Handler(reg))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(context.Background()); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	base := "http://" + s.Addr().String()

	t.Run("text", func(t *testing.T) {
		body, ctype := scrape(t, base+"/metrics", "")
		if !strings.HasPrefix(ctype, "text/plain") {
			t.Errorf("Content-Type %q, want text/plain", ctype)
		}
		want := []string{
			`tcpd_build_info{goversion="` + runtime.Version() + `",version="1.2.3"} 1`,
			"\ngo_goroutines ",
			"\ntcpd_tcp_connection_states{state=\"established\"} 7\n",
			"\npromhttp_metric_handler_requests_total{code=\"200\"} ",
		}
		if runtime.GOOS == "linux" {
			want = append(want, "\nprocess_resident_memory_bytes ")
		}
		for _, w := range want {
			if !strings.Contains(body, w) {
				t.Errorf("scrape lacks %q", w)
			}
		}
	})

	t.Run("OpenMetrics", func(t *testing.T) {
		body, ctype := scrape(t, base+"/metrics", "application/openmetrics-text; version=1.0.0")
		if !strings.HasPrefix(ctype, "application/openmetrics-text; version=1.0.0") {
			t.Errorf("Content-Type %q, want OpenMetrics 1.0.0", ctype)
		}
		if !strings.HasSuffix(body, "# EOF\n") {
			t.Errorf("OpenMetrics scrape does not end with # EOF: ...%q", body[max(0, len(body)-80):])
		}
		if !strings.Contains(body, "tcpd_build_info{") {
			t.Error("OpenMetrics scrape lacks tcpd_build_info")
		}
	})

	t.Run("index", func(t *testing.T) {
		body, ctype := scrape(t, base+"/", "")
		if !strings.HasPrefix(ctype, "text/html") || !strings.Contains(body, `href="/metrics"`) {
			t.Errorf("/ served %q: %q", ctype, body)
		}
		resp, err := http.Get(base + "/nothing")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("/nothing: %s, want 404", resp.Status)
		}
	})

	t.Run("address in use", func(t *testing.T) {
		s2, err := metrics.Listen(s.Addr().String(), metrics.Handler(reg))
		if err == nil {
			s2.Close(context.Background())
			t.Fatalf("second Listen on %s succeeded", s.Addr())
		}
		if !strings.Contains(err.Error(), s.Addr().String()) {
			t.Errorf("error %q does not name the address", err)
		}
	})
}

func TestServerClose(t *testing.T) {
	// slow is a scrape that runs until released, to see what Close does
	// with it.
	slow := func() (h http.Handler, started <-chan struct{}, release chan<- struct{}) {
		start := make(chan struct{}, 1)
		rel := make(chan struct{})
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start <- struct{}{}
			select {
			case <-rel:
			case <-r.Context().Done():
			}
			w.Write([]byte("done\n"))
		}), start, rel
	}
	get := func(url string) <-chan error {
		errc := make(chan error, 1)
		go func() {
			resp, err := http.Get(url)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					err = errors.New(resp.Status)
				}
			}
			errc <- err
		}()
		return errc
	}

	t.Run("waits for a scrape in progress", func(t *testing.T) {
		h, started, release := slow()
		s, err := metrics.Listen("127.0.0.1:0", h)
		if err != nil {
			t.Fatal(err)
		}
		url := "http://" + s.Addr().String() + "/metrics"
		errc := get(url)
		<-started
		closed := make(chan error, 1)
		go func() { closed <- s.Close(context.Background()) }()
		select {
		case err := <-closed:
			t.Fatalf("Close returned (%v) while a scrape was in progress", err)
		case <-time.After(50 * time.Millisecond):
		}
		close(release)
		if err := <-closed; err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-errc; err != nil {
			t.Errorf("the scrape in progress failed: %v", err)
		}
		if err := s.Close(context.Background()); err != nil {
			t.Errorf("second Close: %v", err)
		}
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			t.Error("a scrape after Close succeeded")
		}
	})

	t.Run("cuts off a scrape when ctx ends", func(t *testing.T) {
		h, started, _ := slow()
		s, err := metrics.Listen("127.0.0.1:0", h)
		if err != nil {
			t.Fatal(err)
		}
		errc := get("http://" + s.Addr().String() + "/metrics")
		<-started
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		if err := s.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Close: %v, want context.DeadlineExceeded", err)
		}
		if err := <-errc; err == nil {
			t.Error("the cut-off scrape succeeded")
		}
	})
}
