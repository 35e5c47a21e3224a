package metrics_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"tcpd/metrics"
)

func TestServer(t *testing.T) {
	ct, st := testSources()
	reg := metrics.NewRegistry(metrics.Config{Conntrack: ct, Stack: st, Version: "1.2.3"})
	s, err := metrics.Listen("127.0.0.1:0", metrics.Handler(reg), nil)
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
		s2, err := metrics.Listen(s.Addr().String(), metrics.Handler(reg), nil)
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
		s, err := metrics.Listen("127.0.0.1:0", h, nil)
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
		s, err := metrics.Listen("127.0.0.1:0", h, nil)
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

// fakeHealth answers the probes with whatever the test set.
type fakeHealth struct {
	mu                sync.Mutex
	live, ready       bool
	liveWhy, readyWhy string
}

func (f *fakeHealth) set(live bool, liveWhy string, ready bool, readyWhy string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.live, f.liveWhy, f.ready, f.readyWhy = live, liveWhy, ready, readyWhy
}

func (f *fakeHealth) Live() (bool, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.live, f.liveWhy
}

func (f *fakeHealth) Ready() (bool, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ready, f.readyWhy
}

func TestHealthEndpoints(t *testing.T) {
	ct, st := testSources()
	reg := metrics.NewRegistry(metrics.Config{Conntrack: ct, Stack: st})
	h := &fakeHealth{}
	s, err := metrics.Listen("127.0.0.1:0", metrics.Handler(reg), h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	base := "http://" + s.Addr().String()

	probe := func(t *testing.T, method, path string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(method, base+path, nil)
		if err != nil {
			t.Fatal(err)
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
		if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusServiceUnavailable {
			if ct := resp.Header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
				t.Errorf("%s %s: Content-Type %q", method, path, ct)
			}
			if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
				t.Errorf("%s %s: Cache-Control %q, want no-store", method, path, cc)
			}
		}
		return resp.StatusCode, string(body)
	}

	cases := []struct {
		name                    string
		live                    bool
		liveWhy                 string
		ready                   bool
		readyWhy                string
		healthz, readyz         int
		healthzBody, readyzBody string
	}{
		{"serving", true, "", true, "", 200, 200, "ok\n", "ok\n"},
		{"starting", true, "", false, "starting: TUN not attached", 200, 503, "ok\n", "starting: TUN not attached\n"},
		{"draining", true, "", false, "draining: 3 connections left", 200, 503, "ok\n", "draining: 3 connections left\n"},
		{"wedged", false, "packet loop stuck on one batch for 7s", false, "data path wedged", 503, 503,
			"packet loop stuck on one batch for 7s\n", "data path wedged\n"},
		// A reason with a line break still answers one line; no reason
		// still says something.
		{"two lines", false, "a\nb", false, "", 503, 503, "a; b\n", "unhealthy\n"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h.set(c.live, c.liveWhy, c.ready, c.readyWhy)
			if code, body := probe(t, "GET", metrics.HealthzPath); code != c.healthz || body != c.healthzBody {
				t.Errorf("GET /healthz: %d %q, want %d %q", code, body, c.healthz, c.healthzBody)
			}
			if code, body := probe(t, "GET", metrics.ReadyzPath); code != c.readyz || body != c.readyzBody {
				t.Errorf("GET /readyz: %d %q, want %d %q", code, body, c.readyz, c.readyzBody)
			}
			if code, body := probe(t, "HEAD", metrics.ReadyzPath); code != c.readyz || body != "" {
				t.Errorf("HEAD /readyz: %d %q, want %d and no body", code, body, c.readyz)
			}
		})
	}

	t.Run("other methods", func(t *testing.T) {
		for _, p := range []string{metrics.HealthzPath, metrics.ReadyzPath} {
			if code, _ := probe(t, "POST", p); code != http.StatusMethodNotAllowed {
				t.Errorf("POST %s: %d, want 405", p, code)
			}
		}
	})

	t.Run("probes are not scrapes", func(t *testing.T) {
		body, _ := scrape(t, base+"/metrics", "")
		if strings.Contains(body, `promhttp_metric_handler_requests_total{code="503"}`) &&
			!strings.Contains(body, `promhttp_metric_handler_requests_total{code="503"} 0`) {
			t.Errorf("the 503 probes were counted as failed scrapes:\n%s", body)
		}
	})

	t.Run("index links them", func(t *testing.T) {
		body, _ := scrape(t, base+"/", "")
		for _, p := range []string{metrics.HealthzPath, metrics.ReadyzPath} {
			if !strings.Contains(body, `href="`+p+`"`) {
				t.Errorf("/ does not link %s: %q", p, body)
			}
		}
	})
}

func TestHealthEndpointsOff(t *testing.T) {
	ct, st := testSources()
	reg := metrics.NewRegistry(metrics.Config{Conntrack: ct, Stack: st})
	s, err := metrics.Listen("127.0.0.1:0", metrics.Handler(reg), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	for _, p := range []string{metrics.HealthzPath, metrics.ReadyzPath} {
		resp, err := http.Get("http://" + s.Addr().String() + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s without a Health: %s, want 404", p, resp.Status)
		}
	}
}
