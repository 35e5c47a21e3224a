package admin

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"tcpd/conntrack"
	"tcpd/stack"
)

// Conns is the body of GET /v1/conns.
type Conns struct {
	// Time is when the table was read, RFC 3339 with nanoseconds.
	Time  string `json:"time"`
	Conns []Conn `json:"conns"`
}

// Conn is one connection. Durations are in seconds; zero means not known
// yet (RTT, handshake, dial) or not applicable (TIME_WAIT left).
type Conn struct {
	ID uint64 `json:"id"`
	// State is tcpd's state and ClientState the client's, as node_exporter
	// labels ("established", "time_wait", …).
	State       string `json:"state"`
	ClientState string `json:"client_state"`
	// Client and Dst are "ip:port"; Upstream is the upstream socket's local
	// address, "" before the dial completed.
	Client   string `json:"client"`
	Dst      string `json:"dst"`
	Upstream string `json:"upstream"`
	// Age is since the first SYN; InState since the current tcpd state
	// was entered.
	AgeSeconds     float64 `json:"age_seconds"`
	InStateSeconds float64 `json:"in_state_seconds"`
	// BytesIn is payload from the client, BytesOut to it.
	BytesIn       uint64  `json:"bytes_in"`
	BytesOut      uint64  `json:"bytes_out"`
	RTTSeconds    float64 `json:"rtt_seconds"`
	RTTVarSeconds float64 `json:"rttvar_seconds"`
	Retransmits   uint64  `json:"retransmits"`
	// CongestionControl is the algorithm the connection runs towards the
	// client ("reno", "cubic"), as ss -i shows it; "" before the endpoint
	// exists.
	CongestionControl   string  `json:"congestion_control"`
	HandshakeSeconds    float64 `json:"handshake_seconds"`
	DialSeconds         float64 `json:"dial_seconds"`
	TimeWaitLeftSeconds float64 `json:"time_wait_left_seconds"`
	// MSS is the MSS tcpd sends to the client with. ClientMSS is the MSS
	// option of the client's SYN as the client sent it (0: none), and
	// MSSClamped says tcpd lowered it to the path back to the client
	// (tcp.mss_clamp). AdvMSS is the MSS tcpd's SYN-ACK offered the client.
	MSS        int  `json:"mss"`
	ClientMSS  int  `json:"client_mss"`
	MSSClamped bool `json:"mss_clamped"`
	AdvMSS     int  `json:"adv_mss"`

	// RTOSeconds is the netstack's retransmission timeout toward the
	// client; Cwnd its congestion window and Ssthresh its slow-start
	// threshold, in segments (0: still in slow start); RecvQ the bytes the
	// client sent that tcpd has not read yet, SendQ those tcpd wrote to
	// the client that it has not acknowledged, sent or not (ss's Recv-Q
	// and Send-Q).
	RTOSeconds float64 `json:"rto_seconds"`
	Cwnd       uint32  `json:"cwnd"`
	Ssthresh   uint32  `json:"ssthresh"`
	RecvQ      int     `json:"recv_q"`
	SendQ      int     `json:"send_q"`
	// UpstreamTCP is the kernel's view of the upstream socket, present
	// when the listing asks for it (info=1) and tcpd holds the socket.
	UpstreamTCP *UpstreamTCP `json:"upstream_tcp,omitempty"`
}

// UpstreamTCP is the kernel's TCP_INFO and queues of an upstream socket,
// as `ss -ti` shows them.
type UpstreamTCP struct {
	RTTSeconds    float64 `json:"rtt_seconds"`
	RTTVarSeconds float64 `json:"rttvar_seconds"`
	Retransmits   uint64  `json:"retransmits"`
	Cwnd          uint32  `json:"cwnd"`
	// RecvQ is what the destination sent that tcpd has not read yet, SendQ
	// what tcpd wrote that the destination has not acknowledged, in bytes.
	RecvQ int `json:"recv_q"`
	SendQ int `json:"send_q"`
}

// Summary is the body of GET /v1/summary: conntrack.Snapshot without the
// buckets.
type Summary struct {
	Time string `json:"time"`
	Live int    `json:"live"`
	// States counts live connections by tcpd's state and ClientStates by
	// the client's; both always hold all eleven labels.
	States       map[string]uint64 `json:"states"`
	ClientStates map[string]uint64 `json:"client_states"`
	TimeWait     int               `json:"time_wait"`
	// TimeWaitLimit and TimeWaitTimeoutSeconds are the configured cap and
	// duration.
	TimeWaitLimit          int      `json:"time_wait_limit"`
	TimeWaitTimeoutSeconds float64  `json:"time_wait_timeout_seconds"`
	Counters               Counters `json:"counters"`
	// Handshake is the client leg, Dial the upstream connect, Setup the
	// client's first SYN to established.
	Handshake Latency `json:"handshake"`
	Dial      Latency `json:"dial"`
	Setup     Latency `json:"setup"`
}

// Counters are conntrack.Counters, cumulative since the daemon started.
type Counters struct {
	Opened           uint64 `json:"opened"`
	Established      uint64 `json:"established"`
	Closed           uint64 `json:"closed"`
	Resets           uint64 `json:"resets"`
	TimeWaitEntered  uint64 `json:"time_wait_entered"`
	TimeWaitOverflow uint64 `json:"time_wait_overflow"`
	TimeWaitReused   uint64 `json:"time_wait_reused"`
	RSTIgnored       uint64 `json:"rst_ignored"`
	Untracked        uint64 `json:"untracked"`
	TableFull        uint64 `json:"table_full"`
	Expired          uint64 `json:"expired"`
	Corrections      uint64 `json:"corrections"`
}

// Latency summarises one histogram; the quantiles are estimates from its
// native buckets (conntrack.HistogramSnapshot.Quantile), 0 when empty.
type Latency struct {
	Count      uint64  `json:"count"`
	P50Seconds float64 `json:"p50_seconds"`
	P99Seconds float64 `json:"p99_seconds"`
}

// ReloadResult is what a reload did: the body of a POST /v1/reload answer.
type ReloadResult struct {
	// OK says the configuration was reloaded; Error why it was not.
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	// Config is the file read ("embedded default" without one).
	Config string `json:"config"`
	// RestartPending lists the settings whose value in the file differs
	// from the one in force, which takes effect only at restart, as
	// "key: running → file".
	RestartPending []string `json:"restart_pending"`
}

// Reset is the body of a DELETE /v1/conns answer.
type Reset struct {
	// Reset is how many connections were reset.
	Reset int `json:"reset"`
}

// LogLevel is the body of GET and PUT /v1/log/level.
type LogLevel struct {
	Level string `json:"level"`
}

// Error is the body of every error response.
type Error struct {
	Error string `json:"error"`
}

// logLevels are the levels PUT /v1/log/level accepts, as in log.level.
var logLevels = []string{"debug", "info", "warn", "error"}

// maxBody bounds a request body; the largest valid one is a few bytes.
const maxBody = 4 << 10

// MaxListings bounds the GET /v1/conns requests served at once; more are
// answered 503 with Retry-After. Each copies the rows it returns (a few
// hundred bytes a row) while it writes them: with tens of thousands of
// connections that is several MiB each, and twenty at once added up.
const MaxListings = 2

type api struct {
	src    Source
	reload func(context.Context) (ReloadResult, error)
	level  zap.AtomicLevel
	log    *zap.Logger
	now    func() time.Time
	// writeTimeout is how long a listing waits for its reader to take
	// more (Config.WriteTimeout).
	writeTimeout time.Duration
	// listings holds a token per GET /v1/conns in progress.
	listings chan struct{}
}

func newAPI(cfg Config) http.Handler {
	a := &api{src: cfg.Source, reload: cfg.Reload, level: cfg.Level, log: cfg.Logger, now: cfg.Now,
		writeTimeout: cmp.Or(cfg.WriteTimeout, DefaultWriteTimeout), listings: make(chan struct{}, MaxListings)}
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/conns", a.conns)
	mux.HandleFunc("/v1/conns/{id}", a.conn)
	mux.HandleFunc("/v1/summary", a.summary)
	mux.HandleFunc("/v1/log/level", a.logLevel)
	endpoints := "/v1/conns, /v1/summary, /v1/log/level"
	if a.reload != nil {
		mux.HandleFunc("/v1/reload", a.reloadConfig)
		endpoints += ", /v1/reload"
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no endpoint %s (see %s)", clip(r.URL.Path), endpoints))
	})
	return mux
}

// GET and DELETE /v1/conns
func (a *api) conns(w http.ResponseWriter, r *http.Request) {
	if !allow(w, r, http.MethodGet, http.MethodDelete) {
		return
	}
	q := r.URL.Query()
	// info=1 adds the kernel's view of each upstream socket, as ss -i.
	var info bool
	if vs, ok := q["info"]; ok {
		if r.Method != http.MethodGet || len(vs) != 1 || (vs[0] != "1" && vs[0] != "true") {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("info: %q is not allowed (allowed: 1 or true, once, on GET)", clip(strings.Join(vs, ","))))
			return
		}
		info = true
		q.Del("info")
	}
	f, err := ParseFilter(q)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	select {
	case a.listings <- struct{}{}:
		defer func() { <-a.listings }()
	default:
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf(
			"busy: %d listings of the connection table in progress, the most at once; try again in a second", MaxListings))
		return
	}
	if r.Method == http.MethodDelete {
		// Under a listing's slot: it walks the table as a listing does.
		a.resetMatching(w, f)
		return
	}
	now := a.now()
	// The table filters while it copies, so a narrow query on a large
	// table copies only what it returns.
	var upstream func(conntrack.ID) (stack.UpstreamTCP, bool)
	if info {
		upstream = a.src.UpstreamTCP
	}
	writeConns(newDeadlineWriter(w, a.writeTimeout), now, a.src.Conns(f.Match), upstream)
}

// deadlineWriter moves the connection's write deadline on before each
// write of a listing, up to a last one: the server's WriteTimeout bounds a
// whole answer, which a table of a million rows, read as fast as a client
// reads, can outlast. A listing is cut when its reader stops taking it for
// the timeout, or at the latest maxListingTimeouts timeouts after it
// began, so that a reader that takes a little now and then cannot hold a
// listing slot, and the copy of the table, for ever.
type deadlineWriter struct {
	http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
	last    time.Time
}

// maxListingTimeouts is how many write timeouts a listing may take in
// all: 5 minutes by default, where tcpd conns took 4.6 s for two
// listings of 150,000 rows (cmd/tcpd TestConnsLargeTable).
const maxListingTimeouts = 10

func newDeadlineWriter(w http.ResponseWriter, timeout time.Duration) *deadlineWriter {
	return &deadlineWriter{ResponseWriter: w, rc: http.NewResponseController(w), timeout: timeout,
		last: time.Now().Add(maxListingTimeouts * timeout)}
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	deadline := time.Now().Add(d.timeout)
	if deadline.After(d.last) {
		deadline = d.last
	}
	d.rc.SetWriteDeadline(deadline)
	return d.ResponseWriter.Write(p)
}

// writeConns answers a listing as a Conns object, one row at a time: a
// table of tens of thousands of rows is tens of MiB of JSON, which
// encoded whole would be held in memory on top of the copy of the rows
// (twice over while its buffer grows). A write error means the client
// went away, or stopped reading for the write timeout: the rest is not
// encoded. upstream, if not nil, adds each row's upstream socket.
func writeConns(w http.ResponseWriter, now time.Time, cs []stack.ConnInfo, upstream func(conntrack.ID) (stack.UpstreamTCP, bool)) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	bw := bufio.NewWriterSize(w, 64<<10)
	ts, _ := json.Marshal(now.Format(time.RFC3339Nano))
	bw.WriteString(`{"time":`)
	bw.Write(ts)
	bw.WriteString(`,"conns":[`)
	enc := json.NewEncoder(bw)
	var row Conn
	for i, c := range cs {
		if i > 0 {
			bw.WriteByte(',')
		}
		row = connRow(c, now)
		if upstream != nil {
			if u, ok := upstream(c.ID); ok {
				row.UpstreamTCP = &UpstreamTCP{
					RTTSeconds: u.RTT.Seconds(), RTTVarSeconds: u.RTTVar.Seconds(),
					Retransmits: u.Retransmits, Cwnd: u.Cwnd, RecvQ: u.RecvQ, SendQ: u.SendQ,
				}
			}
		}
		if enc.Encode(&row) != nil {
			return
		}
	}
	bw.WriteString("]}\n")
	bw.Flush()
}

func connRow(c stack.ConnInfo, now time.Time) Conn {
	row := Conn{
		ID:                  uint64(c.ID),
		State:               c.State.String(),
		ClientState:         c.ClientState.String(),
		Client:              c.Tuple.Client.String(),
		Dst:                 c.Tuple.Dst.String(),
		Upstream:            c.Upstream,
		AgeSeconds:          since(now, c.Opened),
		InStateSeconds:      since(now, c.Since),
		BytesIn:             c.BytesIn,
		BytesOut:            c.BytesOut,
		RTTSeconds:          c.RTT.Seconds(),
		RTTVarSeconds:       c.RTTVar.Seconds(),
		Retransmits:         c.Retransmits,
		CongestionControl:   c.CongestionControl,
		HandshakeSeconds:    c.Handshake.Seconds(),
		DialSeconds:         c.Dial.Seconds(),
		TimeWaitLeftSeconds: c.TimeWaitLeft.Seconds(),
		MSS:                 c.SendMSS,
		ClientMSS:           int(c.MSS),
		MSSClamped:          c.ClampedFrom != 0,
		AdvMSS:              int(c.AdvMSS),
		RTOSeconds:          c.RTO.Seconds(),
		Cwnd:                c.Cwnd,
		Ssthresh:            c.Ssthresh,
		RecvQ:               c.RecvQ,
		SendQ:               c.SendQ,
	}
	if c.ClampedFrom != 0 {
		row.ClientMSS = int(c.ClampedFrom)
	}
	return row
}

// since is now-t in seconds, 0 for an unset t or a t in the future.
func since(now, t time.Time) float64 {
	if t.IsZero() || t.After(now) {
		return 0
	}
	return now.Sub(t).Seconds()
}

// resetMatching answers DELETE /v1/conns: every connection f keeps is
// reset on both legs, as `ss -K` kills the sockets its filter selects. A
// filter is required: an empty one would reset the whole gateway.
func (a *api) resetMatching(w http.ResponseWriter, f Filter) {
	if f.IsZero() {
		writeError(w, http.StatusBadRequest, fmt.Sprintf(
			"a filter is required to reset connections (allowed: %s; DELETE /v1/conns/ID resets one)", strings.Join(filterParams, ", ")))
		return
	}
	// The IDs alone: keep collects them and keeps no row, so nothing is
	// copied or joined with the netstack's view.
	var ids []conntrack.ID
	a.src.Conns(func(c *conntrack.Conn) bool {
		if f.Match(c) {
			ids = append(ids, c.ID)
		}
		return false
	})
	n := 0
	for _, id := range ids {
		if a.src.Kill(id) {
			n++
		}
	}
	a.log.Info("connections reset by admin request", zap.Int("reset", n), zap.String("filter", f.String()))
	writeJSON(w, http.StatusOK, Reset{Reset: n})
}

// DELETE /v1/conns/{id}
func (a *api) conn(w http.ResponseWriter, r *http.Request) {
	if !allow(w, r, http.MethodDelete) {
		return
	}
	v := r.PathValue("id")
	id, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("id: %q is not a connection id (allowed: a decimal number, as listed by GET /v1/conns)", clip(v)))
		return
	}
	if !a.src.Kill(conntrack.ID(id)) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no connection %d", id))
		return
	}
	// An operator's action, not traffic: one line per request, so it is
	// logged at info unlike the per-connection lines of the data path.
	a.log.Info("connection reset by admin request", zap.Uint64("id", id))
	w.WriteHeader(http.StatusNoContent)
}

// GET /v1/summary
func (a *api) summary(w http.ResponseWriter, r *http.Request) {
	if !allow(w, r, http.MethodGet) {
		return
	}
	now := a.now()
	s := a.src.Snapshot()
	out := Summary{
		Time:                   now.Format(time.RFC3339Nano),
		Live:                   s.Live,
		States:                 make(map[string]uint64, conntrack.NumStates),
		ClientStates:           make(map[string]uint64, conntrack.NumStates),
		TimeWait:               s.TimeWait,
		TimeWaitLimit:          s.TimeWaitLimit,
		TimeWaitTimeoutSeconds: s.TimeWaitTimeout.Seconds(),
		Counters: Counters{
			Opened:           s.Opened,
			Established:      s.Established,
			Closed:           s.Closed,
			Resets:           s.Resets,
			TimeWaitEntered:  s.TimeWaitEntered,
			TimeWaitOverflow: s.TimeWaitOverflow,
			TimeWaitReused:   s.TimeWaitReused,
			RSTIgnored:       s.RSTIgnored,
			Untracked:        s.Untracked,
			TableFull:        s.TableFull,
			Expired:          s.Expired,
			Corrections:      s.Corrections,
		},
		Handshake: latency(s.Handshake),
		Dial:      latency(s.Dial),
		Setup:     latency(s.Setup),
	}
	for st := range conntrack.NumStates {
		out.States[st.String()] = s.States[st]
		out.ClientStates[st.String()] = s.ClientStates[st]
	}
	writeJSON(w, http.StatusOK, out)
}

func latency(h conntrack.HistogramSnapshot) Latency {
	return Latency{Count: h.Count, P50Seconds: h.Quantile(0.5), P99Seconds: h.Quantile(0.99)}
}

// POST /v1/reload: 200 with the outcome once the configuration is
// reloaded; 422 with the reason when the file was rejected (nothing
// changed); 503 when no reload ran.
func (a *api) reloadConfig(w http.ResponseWriter, r *http.Request) {
	if !allow(w, r, http.MethodPost) {
		return
	}
	res, err := a.reload(r.Context())
	switch {
	case err != nil:
		writeError(w, http.StatusServiceUnavailable, "reload not run: "+err.Error())
	case !res.OK:
		writeError(w, http.StatusUnprocessableEntity, res.Error)
	default:
		writeJSON(w, http.StatusOK, res)
	}
}

// GET and PUT /v1/log/level
func (a *api) logLevel(w http.ResponseWriter, r *http.Request) {
	if !allow(w, r, http.MethodGet, http.MethodPut) {
		return
	}
	if r.Method == http.MethodPut {
		var body LogLevel
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&body); err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("empty")
			}
			writeError(w, http.StatusBadRequest, fmt.Sprintf(`body: %v (want e.g. {"level": "debug"})`, err))
			return
		}
		if _, err := dec.Token(); !errors.Is(err, io.EOF) {
			writeError(w, http.StatusBadRequest, "body: more than one JSON value")
			return
		}
		if !slices.Contains(logLevels, body.Level) {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("level: %q is not allowed (allowed: %s)", body.Level, strings.Join(logLevels, ", ")))
			return
		}
		var l zapcore.Level
		if err := l.UnmarshalText([]byte(body.Level)); err != nil {
			writeError(w, http.StatusBadRequest, "level: "+err.Error())
			return
		}
		old := a.level.Level()
		a.level.SetLevel(l)
		if old != l {
			a.log.Info("log level changed by admin request", zap.Stringer("from", old), zap.Stringer("to", l))
		}
	}
	writeJSON(w, http.StatusOK, LogLevel{Level: a.level.Level().String()})
}

// allow answers 405 unless r's method is one of methods.
func allow(w http.ResponseWriter, r *http.Request, methods ...string) bool {
	if slices.Contains(methods, r.Method) {
		return true
	}
	w.Header().Set("Allow", strings.Join(methods, ", "))
	writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed on %s (allowed: %s)", clip(r.Method), clip(r.URL.Path), strings.Join(methods, ", ")))
	return false
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	// A write error means the client went away; there is no one to tell.
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, Error{Error: msg})
}
