package bench

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
)

// The soak is an hour of a gateway's life compressed into minutes: streams
// of every size each way, idle connections that wake up and half-close
// (some after longer than tcp.half_close_timeout), destinations that die
// (their address vanishes), clients that vanish (theirs does), clients and
// servers that reset, and reloads, all at once. It checks what the relay
// must never get wrong: every byte that arrived is the right byte, every
// stream that was cut ended with a reset on the side that was still there,
// and when it is over tcpd holds nothing more than before it started. It is
// not part of the default run (`--only soak`, `--soak 3m`).

// Soak scenarios. A connection's first bytes tell the server which one it
// is.
const (
	// soakBulk: both ends send a stream at once and half-close; both must
	// receive the other's whole, then EOF.
	soakBulk = iota
	// soakIdleHalfClose: the client sends a request, idles (sometimes
	// longer than tcp.half_close_timeout), half-closes; the server answers
	// after the request's end. The client must get the answer and EOF.
	soakIdleHalfClose
	// soakServerHalfClose: the server answers, idles, half-closes; then
	// the client uploads, which the server must receive whole.
	soakServerHalfClose
	// soakDyingDestination: the server streams, paced, to a destination
	// address that vanishes now and then: a stream cut short must end with
	// a reset at the client, never EOF.
	soakDyingDestination
	// soakVanishingClient: the server streams, paced, to a client whose
	// address vanishes now and then: the server must then see a reset.
	soakVanishingClient
	// soakClientReset: the client sends part of a stream and resets; the
	// server must see a right prefix and then a reset.
	soakClientReset
	// soakServerReset: the server sends part of a stream and resets; the
	// client must see a right prefix and then a reset.
	soakServerReset
	numSoakScenarios
)

var soakNames = [numSoakScenarios]string{
	soakBulk:             "bulk both ways",
	soakIdleHalfClose:    "idle, then client half-closes",
	soakServerHalfClose:  "server half-closes after idle",
	soakDyingDestination: "destination dies",
	soakVanishingClient:  "client vanishes",
	soakClientReset:      "client resets",
	soakServerReset:      "server resets",
}

// SoakCounts are the outcomes of one scenario.
type SoakCounts struct {
	// Runs counts connections made.
	Runs int `json:"runs"`
	// Clean counts streams that ended with FIN and every byte right.
	Clean int `json:"clean"`
	// Cut counts streams cut short that ended with a reset, every byte
	// before it right.
	Cut int `json:"cut"`
	// Violations counts wrong bytes, a FIN for a cut stream, a reset where
	// nothing was cut, or a connection that never ended.
	Violations int `json:"violations"`
}

// SoakResult is what the soak found.
type SoakResult struct {
	Seconds   float64                `json:"seconds"`
	Workers   int                    `json:"workers"`
	Scenarios map[string]*SoakCounts `json:"scenarios"`
	// Deaths and Vanishings count the times the destination's and the
	// client's address went away; Reloads the SIGHUPs, ReloadFailures
	// those tcpd did not confirm.
	Deaths, Vanishings, Reloads, ReloadFailures int
	// HeaderEOF counts connections the server saw end with EOF before the
	// client's header, which every client sends first: a lie.
	HeaderEOF int `json:"header_eof"`
	// HeaderReset counts connections reset before the server read their
	// header (a client that reset at once, a cut before any byte).
	HeaderReset int `json:"header_reset"`
	// Violations are the first few violations, said in words.
	Violations []string `json:"violations"`
	// Baseline and Final are tcpd's state before the soak and once it had
	// drained; Leftovers says what did not return to the baseline.
	Baseline  map[string]float64 `json:"baseline"`
	Final     map[string]float64 `json:"final"`
	Leftovers []string           `json:"leftovers"`
	OK        bool               `json:"ok"`
}

// soakState are the gauges and counters compared before and after.
var soakState = []string{
	"tcpd_relays_active", "tcpd_conntrack_relay_entries", "tcpd_conntrack_entries", "tcpd_handshakes_in_flight",
	"tcpd_netstack_endpoints", "tcpd_netstack_tracked_endpoints", "process_open_fds", "go_goroutines",
	"tcpd_tcp_connection_states", "tcpd_tcp_client_connection_states",
	"tcpd_conntrack_corrections_total", "tcpd_handler_panics_total",
}

// Write prints the soak's outcome.
func (r *SoakResult) Write(w io.Writer) error {
	var b strings.Builder
	verdict := "OK"
	if !r.OK {
		verdict = "FAILED"
	}
	fmt.Fprintf(&b, "soak: %s after %.0fs, %d workers; %d destination deaths, %d client vanishings, %d reloads (%d unconfirmed); before a header %d resets and %d EOF\n",
		verdict, r.Seconds, r.Workers, r.Deaths, r.Vanishings, r.Reloads, r.ReloadFailures, r.HeaderReset, r.HeaderEOF)
	fmt.Fprintf(&b, "  %-32s %7s %7s %7s %10s\n", "scenario", "runs", "clean", "cut", "violations")
	for i := range numSoakScenarios {
		c := r.Scenarios[soakNames[i]]
		if c == nil {
			continue
		}
		fmt.Fprintf(&b, "  %-32s %7d %7d %7d %10d\n", soakNames[i], c.Runs, c.Clean, c.Cut, c.Violations)
	}
	for _, k := range slices.Sorted(maps.Keys(r.Final)) {
		fmt.Fprintf(&b, "  %-48s before %8.0f  after %8.0f\n", k, r.Baseline[k], r.Final[k])
	}
	for _, v := range r.Violations {
		fmt.Fprintf(&b, "  violation: %s\n", v)
	}
	for _, l := range r.Leftovers {
		fmt.Fprintf(&b, "  leftover: %s\n", l)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
