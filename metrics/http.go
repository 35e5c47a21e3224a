package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"tcpd/internal/connlimit"
)

// maxScrapesInFlight bounds concurrent scrapes; more are answered 503. One
// or two Prometheus servers scrape tcpd, so more than this at once is a
// misconfiguration or a loop, and each scrape takes a Snapshot.
const maxScrapesInFlight = 4

// MaxConnections bounds the connections the metrics listener holds open at
// once (scrapers, probes, someone with curl): past it, the one idle longest
// is closed for a new one (see internal/connlimit). One or two Prometheus
// servers and a prober need a handful; the cap is what keeps a local
// process that opens thousands from taking the descriptors the relays and
// the admin socket need.
const MaxConnections = 16

// idleTimeout closes a keep-alive connection idle this long; a scraper
// whose interval is longer connects anew, which costs it one handshake.
const idleTimeout = 30 * time.Second

// scrapeTimeout bounds one gather; Prometheus' own default scrape timeout
// is 10s, so an answer later than that is read by no one.
const scrapeTimeout = 10 * time.Second

// Handler serves reg's metrics in every format Prometheus negotiates:
// protobuf (which carries the native histogram buckets), OpenMetrics and
// the classic text format. A collector that fails costs its own metrics
// only; the failures are counted in promhttp_metric_handler_errors_total,
// and the handler's own requests in promhttp_metric_handler_requests_total,
// both registered in reg.
func Handler(reg *prometheus.Registry) http.Handler {
	h := promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		// ErrorLog is nil: promhttp then logs nothing, and this package has
		// no logger; the error counter above is what an operator sees.
		ErrorHandling:       promhttp.ContinueOnError,
		Registry:            reg,
		MaxRequestsInFlight: maxScrapesInFlight,
		Timeout:             scrapeTimeout,
		EnableOpenMetrics:   true,
	})
	return promhttp.InstrumentMetricHandler(reg, h)
}

// indexPage is what / serves, so that someone pointing a browser at the
// port finds the metrics (and the health endpoints, when served).
func indexPage(health bool) string {
	links := `<a href="/metrics">Metrics</a>`
	if health {
		links += ` · <a href="` + HealthzPath + `">Live</a> · <a href="` + ReadyzPath + `">Ready</a>`
	}
	return `<!DOCTYPE html>
<html><head><title>tcpd</title></head>
<body><h1>tcpd</h1><p>` + links + `</p></body></html>
`
}

// Server serves /metrics and the health endpoints over HTTP on a listener
// bound by Listen.
type Server struct {
	ln   net.Listener
	srv  *http.Server
	done chan struct{} // closed when Serve has returned
	// serveErr is Serve's result; read only after done is closed.
	serveErr error

	closeOnce sync.Once
	closeErr  error
}

// Listen binds addr now, so that the caller learns that the port is taken
// before it announces readiness, and serves h on /metrics, a link to it on
// /, and, when health is not nil, /healthz and /readyz, until Close.
func Listen(addr string, h http.Handler, health Health) (*Server, error) {
	bound, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	ln := connlimit.New(bound, MaxConnections)
	mux := http.NewServeMux()
	mux.Handle("/metrics", h)
	if health != nil {
		// GET patterns match HEAD too; other methods get 405.
		mux.Handle("GET "+HealthzPath, healthHandler(health.Live))
		mux.Handle("GET "+ReadyzPath, healthHandler(health.Ready))
	}
	index := []byte(indexPage(health != nil))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write(index)
	})
	s := &Server{
		ln: ln,
		srv: &http.Server{
			Handler: mux,
			// The timeouts keep a slow or idle client from holding a
			// connection; a scrape's request is a few hundred bytes and its
			// answer is written within scrapeTimeout.
			ReadHeaderTimeout: 5 * time.Second,
			ReadTimeout:       10 * time.Second,
			WriteTimeout:      scrapeTimeout + 5*time.Second,
			IdleTimeout:       idleTimeout,
			MaxHeaderBytes:    16 << 10,
			ConnState:         ln.ConnState,
		},
		done: make(chan struct{}),
	}
	go s.serve()
	return s, nil
}

func (s *Server) serve() {
	defer close(s.done)
	s.serveErr = s.srv.Serve(s.ln)
}

// Addr returns the address the server listens on, with the port chosen by
// the system when addr asked for port 0.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Close stops accepting scrapes, waits for those in progress until ctx is
// done, and then cuts the rest off. It returns ctx's error if it had to cut
// any off, and any error Serve had stopped with. Later calls return the same
// result.
func (s *Server) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		err := s.srv.Shutdown(ctx)
		if err != nil {
			err = errors.Join(err, s.srv.Close())
		}
		<-s.done
		if !errors.Is(s.serveErr, http.ErrServerClosed) {
			err = errors.Join(err, fmt.Errorf("metrics: serve: %w", s.serveErr))
		}
		s.closeErr = err
	})
	return s.closeErr
}
