package metrics

import (
	"net/http"
	"strings"
)

// The health endpoints' paths on the metrics listener. Kubernetes probes,
// load balancers and deploy/kubernetes name these.
const (
	HealthzPath = "/healthz"
	ReadyzPath  = "/readyz"
)

// Health answers the health endpoints. Both methods are called on every
// probe, concurrently with everything else, and must be cheap.
type Health interface {
	// Live reports whether the process and its packet loop make progress.
	// When they do not, reason says why in one line. /healthz answers 503
	// while it is false: a supervisor should restart tcpd.
	Live() (ok bool, reason string)
	// Ready reports whether new clients should be sent to this gateway:
	// false while it starts, drains or is wedged, with reason saying which.
	// /readyz answers 503 while it is false: a load balancer should stop
	// sending new clients, but nothing should be restarted for it.
	Ready() (ok bool, reason string)
}

// healthHandler answers a probe with 200 "ok" or 503 and the one-line
// reason, as plain text that is never cached. The body is for a person
// running curl; probes read the status.
func healthHandler(probe func() (bool, string)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		ok, reason := probe()
		h := w.Header()
		h.Set("Content-Type", "text/plain; charset=utf-8")
		h.Set("Cache-Control", "no-store")
		h.Set("X-Content-Type-Options", "nosniff")
		if ok {
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write([]byte("ok\n"))
			return
		}
		if reason == "" {
			reason = "unhealthy"
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(strings.ReplaceAll(reason, "\n", "; ") + "\n"))
	})
}
