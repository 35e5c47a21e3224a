package admin_test

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"tcpd/admin"
	"tcpd/conntrack"
	"tcpd/stack"
)

var now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// fakeSource is a fixed table; Kill removes a row.
type fakeSource struct {
	mu    sync.Mutex
	conns []stack.ConnInfo
	snap  conntrack.Snapshot
	// returned is how many rows the last Conns call copied out.
	returned int
}

// Conns keeps Source's promise: the rows keep accepts, in ID order.
func (f *fakeSource) Conns(keep func(*conntrack.Conn) bool) []stack.ConnInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []stack.ConnInfo
	for _, c := range f.conns {
		if keep == nil || keep(&c.Conn) {
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b stack.ConnInfo) int { return cmp.Compare(a.ID, b.ID) })
	f.returned = len(out)
	return out
}

func (f *fakeSource) Snapshot() conntrack.Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.snap
}

// UpstreamTCP gives connection 3 an upstream socket; the others have none.
func (f *fakeSource) UpstreamTCP(id conntrack.ID) (stack.UpstreamTCP, bool) {
	if id != 3 {
		return stack.UpstreamTCP{}, false
	}
	return stack.UpstreamTCP{RTT: 1200 * time.Microsecond, RTTVar: 300 * time.Microsecond, Retransmits: 1, Cwnd: 10, RecvQ: 0, SendQ: 4096}, true
}

func (f *fakeSource) Kill(id conntrack.ID) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := len(f.conns)
	f.conns = slices.DeleteFunc(f.conns, func(c stack.ConnInfo) bool { return c.ID == id })
	return len(f.conns) < n
}

func conn(id conntrack.ID, client, dst string, st, cst conntrack.State) stack.ConnInfo {
	return stack.ConnInfo{Conn: conntrack.Conn{
		ID:          id,
		Tuple:       conntrack.Tuple{Client: netip.MustParseAddrPort(client), Dst: netip.MustParseAddrPort(dst)},
		State:       st,
		ClientState: cst,
	}}
}

// fixture returns three connections, listed out of ID order.
func fixture() []stack.ConnInfo {
	tw := conn(9, "100.64.0.8:40000", "198.51.100.7:80", conntrack.StateTimeWait, conntrack.StateFinWait2)
	tw.Opened = now.Add(-95 * time.Second)
	tw.Since = now.Add(-4 * time.Second)
	tw.BytesIn, tw.BytesOut = 300, 1<<20
	tw.Handshake, tw.Dial = 2*time.Millisecond, 8*time.Millisecond
	tw.TimeWaitLeft = 26 * time.Second
	tw.MSS, tw.AdvMSS, tw.SendMSS = 1400, 1460, 1400

	est := conn(3, "100.64.0.7:51000", "203.0.113.10:443", conntrack.StateEstablished, conntrack.StateEstablished)
	est.Opened = now.Add(-250 * time.Second)
	est.Since = now.Add(-249500 * time.Millisecond)
	est.BytesIn, est.BytesOut = 1234, 5678
	est.Handshake, est.Dial = 12*time.Millisecond, 30*time.Millisecond
	est.RTT, est.RTTVar, est.Retransmits = 25*time.Millisecond, 5*time.Millisecond, 2
	est.CongestionControl = "cubic"
	est.Upstream = "192.0.2.1:33000"
	est.MSS, est.ClampedFrom, est.AdvMSS, est.SendMSS = 1380, 1460, 1460, 1380
	est.RTO, est.Cwnd, est.Ssthresh, est.RecvQ = 230*time.Millisecond, 12, 8, 100

	syn := conn(12, "[fd00::7]:50000", "[2001:db8::1]:443", conntrack.StateSynRecv, conntrack.StateSynSent)
	syn.Opened = now.Add(-time.Second)
	syn.Since = now.Add(-time.Second)
	return []stack.ConnInfo{tw, est, syn}
}

func histogram(ds ...time.Duration) conntrack.HistogramSnapshot {
	var h conntrack.Histogram
	for _, d := range ds {
		h.Observe(d)
	}
	return h.Snapshot()
}

func snapshot() conntrack.Snapshot {
	var s conntrack.Snapshot
	s.States[conntrack.StateEstablished] = 1
	s.States[conntrack.StateTimeWait] = 1
	s.States[conntrack.StateSynRecv] = 1
	s.ClientStates[conntrack.StateEstablished] = 1
	s.ClientStates[conntrack.StateFinWait2] = 1
	s.ClientStates[conntrack.StateSynSent] = 1
	s.Live = 3
	s.TimeWait, s.TimeWaitLimit, s.TimeWaitTimeout = 1, 16384, 30*time.Second
	s.Opened, s.Established, s.Closed, s.Resets = 40, 38, 37, 4
	s.TimeWaitEntered, s.TimeWaitOverflow, s.TimeWaitReused = 20, 1, 2
	s.RSTIgnored, s.Untracked, s.TableFull, s.Expired, s.Corrections = 5, 6, 7, 8, 9
	s.Handshake = histogram(time.Millisecond, time.Millisecond, 100*time.Millisecond)
	s.Dial = histogram(10 * time.Millisecond)
	return s
}

// start serves a fakeSource on a socket in a fresh directory.
func start(t *testing.T, mut func(*admin.Config)) (*fakeSource, admin.Config, *http.Client) {
	t.Helper()
	src := &fakeSource{conns: fixture(), snap: snapshot()}
	cfg := admin.Config{
		Path:   filepath.Join(t.TempDir(), "tcpd.sock"),
		Source: src,
		Level:  zap.NewAtomicLevelAt(zapcore.InfoLevel),
		Now:    func() time.Time { return now },
	}
	if mut != nil {
		mut(&cfg)
	}
	s, err := admin.Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return src, cfg, unixClient(cfg.Path)
}

func unixClient(path string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
}

// do sends one request and returns the status and body.
func do(t *testing.T, c *http.Client, method, path, body string) (int, http.Header, []byte) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://tcpd"+path, r)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusNoContent && resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("%s %s: Content-Type %q", method, path, resp.Header.Get("Content-Type"))
	}
	return resp.StatusCode, resp.Header, b
}

func decode[T any](t *testing.T, b []byte) T {
	t.Helper()
	var v T
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	return v
}

func TestConns(t *testing.T) {
	_, _, c := start(t, nil)
	code, _, b := do(t, c, "GET", "/v1/conns", "")
	if code != http.StatusOK {
		t.Fatalf("status %d: %s", code, b)
	}
	got := decode[admin.Conns](t, b)
	want := admin.Conns{
		Time: "2026-03-01T12:00:00Z",
		Conns: []admin.Conn{
			{ID: 3, State: "established", ClientState: "established", Client: "100.64.0.7:51000", Dst: "203.0.113.10:443",
				Upstream: "192.0.2.1:33000", AgeSeconds: 250, InStateSeconds: 249.5, BytesIn: 1234, BytesOut: 5678,
				RTTSeconds: 0.025, RTTVarSeconds: 0.005, Retransmits: 2, CongestionControl: "cubic", HandshakeSeconds: 0.012, DialSeconds: 0.03,
				MSS: 1380, ClientMSS: 1460, MSSClamped: true, AdvMSS: 1460,
				RTOSeconds: 0.23, Cwnd: 12, Ssthresh: 8, RecvQ: 100},
			{ID: 9, State: "time_wait", ClientState: "fin_wait2", Client: "100.64.0.8:40000", Dst: "198.51.100.7:80",
				AgeSeconds: 95, InStateSeconds: 4, BytesIn: 300, BytesOut: 1 << 20,
				HandshakeSeconds: 0.002, DialSeconds: 0.008, TimeWaitLeftSeconds: 26,
				MSS: 1400, ClientMSS: 1400, AdvMSS: 1460},
			{ID: 12, State: "syn_recv", ClientState: "syn_sent", Client: "[fd00::7]:50000", Dst: "[2001:db8::1]:443",
				AgeSeconds: 1, InStateSeconds: 1},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got\n%+v\nwant\n%+v", got, want)
	}
	// The wire names are the API, whatever the Go fields are called.
	var raw struct {
		Conns []map[string]any `json:"conns"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for k := range raw.Conns[0] {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	wantKeys := []string{"adv_mss", "age_seconds", "bytes_in", "bytes_out", "client", "client_mss", "client_state",
		"congestion_control", "cwnd", "dial_seconds", "dst", "handshake_seconds", "id", "in_state_seconds", "mss", "mss_clamped",
		"recv_q", "retransmits", "rto_seconds", "rtt_seconds", "rttvar_seconds", "send_q", "ssthresh", "state", "time_wait_left_seconds", "upstream"}
	if !slices.Equal(keys, wantKeys) {
		t.Errorf("keys %q, want %q", keys, wantKeys)
	}
}

// TestConnsInfo: info=1 adds the kernel's view of each upstream socket
// tcpd holds, as ss -i adds its details; without it no row has one.
func TestConnsInfo(t *testing.T) {
	_, _, c := start(t, nil)
	upstreams := func(query string) map[uint64]*admin.UpstreamTCP {
		t.Helper()
		code, _, b := do(t, c, "GET", "/v1/conns"+query, "")
		if code != http.StatusOK {
			t.Fatalf("GET /v1/conns%s: status %d: %s", query, code, b)
		}
		m := map[uint64]*admin.UpstreamTCP{}
		for _, r := range decode[admin.Conns](t, b).Conns {
			m[r.ID] = r.UpstreamTCP
		}
		return m
	}
	for id, u := range upstreams("") {
		if u != nil {
			t.Errorf("connection %d has upstream_tcp without info=1: %+v", id, u)
		}
	}
	got := upstreams("?info=1&dport=443")
	want := &admin.UpstreamTCP{RTTSeconds: 0.0012, RTTVarSeconds: 0.0003, Retransmits: 1, Cwnd: 10, RecvQ: 0, SendQ: 4096}
	if len(got) != 2 || !reflect.DeepEqual(got[3], want) || got[12] != nil {
		t.Errorf("info=1&dport=443: %v (3: %+v), want 3 with %+v and 12 without", got, got[3], want)
	}
	for _, tc := range []struct{ method, query string }{
		{"GET", "?info=2"}, {"GET", "?info=1&info=1"}, {"DELETE", "?info=1&dport=443"},
	} {
		code, _, b := do(t, c, tc.method, "/v1/conns"+tc.query, "")
		if code != http.StatusBadRequest || !strings.HasPrefix(decode[admin.Error](t, b).Error, "info: ") {
			t.Errorf("%s %s: status %d body %s, want 400 about info", tc.method, tc.query, code, b)
		}
	}
}

func TestConnsFilter(t *testing.T) {
	src, _, c := start(t, nil)
	cases := []struct {
		query string
		ids   []uint64
	}{
		{"", []uint64{3, 9, 12}},
		{"state=established", []uint64{3}},
		{"state=established,time_wait", []uint64{3, 9}},
		{"state=ESTAB&state=TIME-WAIT", []uint64{3, 9}},
		{"state=syn-recv", []uint64{12}},
		{"state=fin_wait2", nil}, // tcpd's state, not the client's
		{"src=100.64.0.7", []uint64{3}},
		{"src=100.64.0.0/24", []uint64{3, 9}},
		{"src=100.64.0.9/24", []uint64{3, 9}},
		{"src=fd00::/8", []uint64{12}},
		{"dst=2001:db8::/32", []uint64{12}},
		{"dst=203.0.113.10", []uint64{3}},
		{"dst=::ffff:203.0.113.0/120", []uint64{3}},
		{"dport=443", []uint64{3, 12}},
		{"dport=443&src=100.64.0.0/10", []uint64{3}},
		{"dport=22", nil},
		{"sport=51000", []uint64{3}},
		{"sport=51000&dport=80", nil},
		{"client_state=fin_wait2", []uint64{9}},
		{"client_state=SYN-SENT,established", []uint64{3, 12}},
		{"client_state=established&state=established", []uint64{3}},
		{"client_state=established&state=time_wait", nil},
		{"state=bucket", []uint64{9, 12}},             // ss's groups: syn_recv and time_wait
		{"state=big", []uint64{3}},                    // all but those
		{"state=synchronized", []uint64{3, 9, 12}},    // connected, past syn_sent
		{"client_state=synchronized", []uint64{3, 9}}, // the client of 12 is in syn_sent
		{"state=connected&client_state=all", []uint64{3, 9, 12}},
	}
	for _, tc := range cases {
		t.Run(tc.query, func(t *testing.T) {
			code, _, b := do(t, c, "GET", "/v1/conns?"+tc.query, "")
			if code != http.StatusOK {
				t.Fatalf("status %d: %s", code, b)
			}
			var ids []uint64
			for _, r := range decode[admin.Conns](t, b).Conns {
				ids = append(ids, r.ID)
			}
			if !slices.Equal(ids, tc.ids) {
				t.Errorf("ids %v, want %v", ids, tc.ids)
			}
			// The filter runs in the table, which copies only the rows
			// it keeps.
			src.mu.Lock()
			defer src.mu.Unlock()
			if src.returned != len(tc.ids) {
				t.Errorf("the source copied %d rows for %d kept", src.returned, len(tc.ids))
			}
		})
	}
	// An empty result is an empty list, not null.
	if _, _, b := do(t, c, "GET", "/v1/conns?dport=22", ""); !strings.Contains(string(b), `"conns":[]`) {
		t.Errorf("empty result %s", b)
	}
}

func TestConnsFilterErrors(t *testing.T) {
	_, _, c := start(t, nil)
	cases := []struct{ query, msg string }{
		{"state=bogus", `state: "bogus" is not a TCP state (allowed: close, listen, syn_sent, syn_recv, established, fin_wait1, fin_wait2, closing, time_wait, close_wait, last_ack, or the groups all, connected, synchronized, bucket, big)`},
		{"state=established,nope", `state: "nope" is not a TCP state (allowed: close, `},
		{"src=nonsense", `src: "nonsense" is not an address or prefix (allowed: e.g. `},
		{"dst=10.0.0.0/40", `dst: "10.0.0.0/40" is not an address or prefix`},
		{"dst=fe80::1%25eth0", `dst: "fe80::1%eth0" is not an address or prefix`},
		{"dport=0", `dport: "0" is not a port (allowed: 1..65535)`},
		{"dport=70000", `dport: "70000" is not a port (allowed: 1..65535)`},
		{"dport=https", `dport: "https" is not a port (allowed: 1..65535)`},
		{"dport=80&dport=443", `dport: given 2 times (allowed: once)`},
		{"sport=0", `sport: "0" is not a port (allowed: 1..65535)`},
		{"state=", `state: empty (allowed: close, `},
		{"client_state=,", `client_state: empty (allowed: close, `},
		{"client_state=estab,bogus", `client_state: "bogus" is not a TCP state (allowed: close, `},
		{"port=80", `unknown parameter "port" (allowed: state, client_state, src, dst, sport, dport)`},
	}
	for _, tc := range cases {
		t.Run(tc.query, func(t *testing.T) {
			code, _, b := do(t, c, "GET", "/v1/conns?"+tc.query, "")
			if code != http.StatusBadRequest {
				t.Errorf("status %d, want 400", code)
			}
			if e := decode[admin.Error](t, b); !strings.HasPrefix(e.Error, tc.msg) {
				t.Errorf("error %q, want prefix %q", e.Error, tc.msg)
			}
		})
	}
}

func TestSummary(t *testing.T) {
	_, _, c := start(t, nil)
	code, _, b := do(t, c, "GET", "/v1/summary", "")
	if code != http.StatusOK {
		t.Fatalf("status %d: %s", code, b)
	}
	got := decode[admin.Summary](t, b)
	zero := func() map[string]uint64 {
		m := map[string]uint64{}
		for s := range conntrack.NumStates {
			m[s.String()] = 0
		}
		return m
	}
	states, client := zero(), zero()
	states["established"], states["time_wait"], states["syn_recv"] = 1, 1, 1
	client["established"], client["fin_wait2"], client["syn_sent"] = 1, 1, 1
	snap := snapshot()
	want := admin.Summary{
		Time: "2026-03-01T12:00:00Z", Live: 3, States: states, ClientStates: client,
		TimeWait: 1, TimeWaitLimit: 16384, TimeWaitTimeoutSeconds: 30,
		Counters: admin.Counters{Opened: 40, Established: 38, Closed: 37, Resets: 4, TimeWaitEntered: 20,
			TimeWaitOverflow: 1, TimeWaitReused: 2, RSTIgnored: 5, Untracked: 6, TableFull: 7, Expired: 8, Corrections: 9},
		Handshake: admin.Latency{Count: 3, P50Seconds: snap.Handshake.Quantile(0.5), P99Seconds: snap.Handshake.Quantile(0.99)},
		Dial:      admin.Latency{Count: 1, P50Seconds: snap.Dial.Quantile(0.5), P99Seconds: snap.Dial.Quantile(0.99)},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got\n%+v\nwant\n%+v", got, want)
	}
	if len(got.States) != int(conntrack.NumStates) || len(got.ClientStates) != int(conntrack.NumStates) {
		t.Errorf("states %v, client states %v: want all %d", got.States, got.ClientStates, conntrack.NumStates)
	}
	// The quantiles are estimates, but they must land in the right buckets.
	if p := got.Handshake.P50Seconds; p < 0.0009 || p > 0.0011 {
		t.Errorf("handshake p50 %v, want ≈ 1ms", p)
	}
	if p := got.Handshake.P99Seconds; p < 0.09 || p > 0.11 {
		t.Errorf("handshake p99 %v, want ≈ 100ms", p)
	}
}

func TestKill(t *testing.T) {
	src, _, c := start(t, nil)
	if code, _, b := do(t, c, "DELETE", "/v1/conns/9", ""); code != http.StatusNoContent || len(b) != 0 {
		t.Errorf("first DELETE: status %d body %q, want 204 and none", code, b)
	}
	if n := len(src.Conns(nil)); n != 2 {
		t.Errorf("%d connections left, want 2", n)
	}
	code, _, b := do(t, c, "DELETE", "/v1/conns/9", "")
	if code != http.StatusNotFound || strings.TrimSpace(string(b)) != `{"error":"no connection 9"}` {
		t.Errorf("second DELETE: status %d body %s", code, b)
	}
	code, _, b = do(t, c, "DELETE", "/v1/conns/x9", "")
	if code != http.StatusBadRequest || !strings.Contains(decode[admin.Error](t, b).Error, `id: "x9" is not a connection id`) {
		t.Errorf("bad id: status %d body %s", code, b)
	}
}

// TestResetMatching: DELETE /v1/conns with a filter resets every
// connection it keeps and says how many, as `ss -K` does; without a
// filter it resets nothing.
func TestResetMatching(t *testing.T) {
	src, _, c := start(t, nil)
	code, _, b := do(t, c, "DELETE", "/v1/conns", "")
	if code != http.StatusBadRequest || !strings.HasPrefix(decode[admin.Error](t, b).Error, "a filter is required to reset connections") {
		t.Errorf("DELETE with no filter: status %d body %s, want 400", code, b)
	}
	code, _, b = do(t, c, "DELETE", "/v1/conns?dport=x", "")
	if code != http.StatusBadRequest || !strings.HasPrefix(decode[admin.Error](t, b).Error, `dport: "x" is not a port`) {
		t.Errorf("DELETE with a bad filter: status %d body %s, want 400", code, b)
	}
	if n := len(src.Conns(nil)); n != 3 {
		t.Fatalf("%d connections left after refused resets, want 3", n)
	}
	code, _, b = do(t, c, "DELETE", "/v1/conns?dport=443", "")
	if code != http.StatusOK || decode[admin.Reset](t, b).Reset != 2 {
		t.Errorf("DELETE ?dport=443: status %d body %s, want 200 and 2 reset", code, b)
	}
	var left []uint64
	for _, r := range src.Conns(nil) {
		left = append(left, uint64(r.ID))
	}
	if !slices.Equal(left, []uint64{9}) {
		t.Errorf("connections left %v, want [9] (the one to port 80)", left)
	}
	code, _, b = do(t, c, "DELETE", "/v1/conns?dport=443", "")
	if code != http.StatusOK || decode[admin.Reset](t, b).Reset != 0 {
		t.Errorf("DELETE ?dport=443 again: status %d body %s, want 200 and 0 reset", code, b)
	}
}

// TestReload: POST /v1/reload answers once the daemon's reload is done:
// 200 with what it did, 422 with why the file was rejected, 503 when no
// reload ran; without a Reload the endpoint does not exist.
func TestReload(t *testing.T) {
	var next struct {
		res admin.ReloadResult
		err error
	}
	calls := 0
	_, _, c := start(t, func(cfg *admin.Config) {
		cfg.Reload = func(context.Context) (admin.ReloadResult, error) {
			calls++
			return next.res, next.err
		}
	})
	next.res = admin.ReloadResult{OK: true, Config: "/etc/tcpd/tcpd.yaml", RestartPending: []string{"tun.mtu: 1500 → 1400"}}
	code, _, b := do(t, c, "POST", "/v1/reload", "")
	if got := decode[admin.ReloadResult](t, b); code != http.StatusOK || !reflect.DeepEqual(got, next.res) {
		t.Errorf("a reload that worked: status %d body %s, want 200 and %+v", code, b, next.res)
	}
	next.res = admin.ReloadResult{Config: "/etc/tcpd/tcpd.yaml", Error: "reload rejected; the running configuration stays in force: line 3: tcp.time_wait: 0s is out of range"}
	code, _, b = do(t, c, "POST", "/v1/reload", "")
	if code != http.StatusUnprocessableEntity || decode[admin.Error](t, b).Error != next.res.Error {
		t.Errorf("a rejected reload: status %d body %s, want 422 and the reason", code, b)
	}
	next.err = errors.New("tcpd is stopping")
	code, _, b = do(t, c, "POST", "/v1/reload", "")
	if code != http.StatusServiceUnavailable || decode[admin.Error](t, b).Error != "reload not run: tcpd is stopping" {
		t.Errorf("no reload run: status %d body %s, want 503", code, b)
	}
	code, h, _ := do(t, c, "GET", "/v1/reload", "")
	if code != http.StatusMethodNotAllowed || h.Get("Allow") != "POST" || calls != 3 {
		t.Errorf("GET /v1/reload: status %d Allow %q after %d reloads, want 405, POST and 3", code, h.Get("Allow"), calls)
	}

	_, _, plain := start(t, nil)
	if code, _, b := do(t, plain, "POST", "/v1/reload", ""); code != http.StatusNotFound {
		t.Errorf("POST /v1/reload without a Reload: status %d body %s, want 404", code, b)
	}
}

func TestLogLevel(t *testing.T) {
	_, cfg, c := start(t, nil)
	if code, _, b := do(t, c, "GET", "/v1/log/level", ""); code != http.StatusOK || strings.TrimSpace(string(b)) != `{"level":"info"}` {
		t.Errorf("GET: status %d body %s", code, b)
	}
	if code, _, b := do(t, c, "PUT", "/v1/log/level", `{"level":"debug"}`); code != http.StatusOK || strings.TrimSpace(string(b)) != `{"level":"debug"}` {
		t.Errorf("PUT debug: status %d body %s", code, b)
	}
	if l := cfg.Level.Level(); l != zapcore.DebugLevel {
		t.Errorf("level %v after PUT debug", l)
	}
	if _, _, b := do(t, c, "GET", "/v1/log/level", ""); strings.TrimSpace(string(b)) != `{"level":"debug"}` {
		t.Errorf("GET after PUT: %s", b)
	}
	bad := []struct{ body, msg string }{
		{`{"level":"trace"}`, `level: "trace" is not allowed (allowed: debug, info, warn, error)`},
		{`{"level":"panic"}`, `level: "panic" is not allowed (allowed: debug, info, warn, error)`},
		{`{"level":""}`, `level: "" is not allowed`},
		{`{"lvl":"warn"}`, `body: json: unknown field "lvl"`},
		{`level=warn`, `body: invalid character`},
		{``, `body: empty`},
		{`{"level":"warn"} {}`, `body: more than one JSON value`},
	}
	for _, tc := range bad {
		code, _, b := do(t, c, "PUT", "/v1/log/level", tc.body)
		if code != http.StatusBadRequest || !strings.HasPrefix(decode[admin.Error](t, b).Error, tc.msg) {
			t.Errorf("PUT %s: status %d body %s, want 400 %q", tc.body, code, b, tc.msg)
		}
	}
	if l := cfg.Level.Level(); l != zapcore.DebugLevel {
		t.Errorf("level %v after rejected PUTs, want debug", l)
	}
}

func TestRouting(t *testing.T) {
	_, _, c := start(t, nil)
	cases := []struct {
		method, path string
		code         int
		allow, msg   string
	}{
		{"POST", "/v1/conns", 405, "GET, DELETE", "method POST not allowed on /v1/conns (allowed: GET, DELETE)"},
		{"GET", "/v1/conns/3", 405, "DELETE", "method GET not allowed on /v1/conns/3 (allowed: DELETE)"},
		{"DELETE", "/v1/summary", 405, "GET", "method DELETE not allowed on /v1/summary (allowed: GET)"},
		{"POST", "/v1/log/level", 405, "GET, PUT", "method POST not allowed on /v1/log/level (allowed: GET, PUT)"},
		{"GET", "/v2/conns", 404, "", "no endpoint /v2/conns (see /v1/conns, /v1/summary, /v1/log/level)"},
		{"GET", "/", 404, "", "no endpoint / (see /v1/conns, /v1/summary, /v1/log/level)"},
	}
	for _, tc := range cases {
		code, h, b := do(t, c, tc.method, tc.path, "")
		if code != tc.code || h.Get("Allow") != tc.allow || decode[admin.Error](t, b).Error != tc.msg {
			t.Errorf("%s %s: status %d Allow %q body %s, want %d %q %q", tc.method, tc.path, code, h.Get("Allow"), b, tc.code, tc.allow, tc.msg)
		}
	}
}

func TestListenSocketFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run", "tcpd")
	path := filepath.Join(dir, "tcpd.sock")
	s, err := admin.Listen(admin.Config{Path: path, Source: &fakeSource{}})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode %v, want socket 0660", fi.Mode())
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if perm := di.Mode().Perm(); perm&^0o750 != 0 {
		t.Errorf("directory mode %v, want at most 0750", perm)
	}
	// The zero Level is a level of its own, at info.
	if code, _, b := do(t, unixClient(path), "GET", "/v1/log/level", ""); code != 200 || strings.TrimSpace(string(b)) != `{"level":"info"}` {
		t.Errorf("log level: status %d body %s", code, b)
	}

	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("after Close: %v, want the socket file gone", err)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestListenMode(t *testing.T) {
	_, cfg, _ := start(t, func(c *admin.Config) { c.Mode = 0o600 })
	fi, err := os.Lstat(cfg.Path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", fi.Mode().Perm())
	}
}

func TestListenLive(t *testing.T) {
	_, cfg, c := start(t, nil)
	_, err := admin.Listen(cfg)
	if want := "another tcpd is running on " + cfg.Path; err == nil || err.Error() != want {
		t.Fatalf("second Listen: %v, want %q", err, want)
	}
	// The first server keeps its socket.
	if code, _, b := do(t, c, "GET", "/v1/summary", ""); code != http.StatusOK {
		t.Errorf("first server after second Listen: status %d body %s", code, b)
	}
}

// TestCheckFree: the check a daemon makes before it takes anything else
// says what Listen would, and removes nothing.
func TestCheckFree(t *testing.T) {
	_, cfg, _ := start(t, nil)
	if want := "another tcpd is running on " + cfg.Path; admin.CheckFree(cfg.Path) == nil || admin.CheckFree(cfg.Path).Error() != want {
		t.Errorf("CheckFree of a live socket: %v, want %q", admin.CheckFree(cfg.Path), want)
	}
	if err := admin.CheckFree(filepath.Join(t.TempDir(), "none.sock")); err != nil {
		t.Errorf("CheckFree of no file: %v", err)
	}
	stale := filepath.Join(t.TempDir(), "tcpd.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if err := admin.CheckFree(stale); err != nil {
		t.Errorf("CheckFree of a stale socket: %v", err)
	}
	if _, err := os.Lstat(stale); err != nil {
		t.Errorf("CheckFree removed the stale socket: %v", err)
	}
}

func TestListenStale(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tcpd.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("stale socket file: %v", err)
	}
	_, _, c := start(t, func(cfg *admin.Config) { cfg.Path = path })
	if code, _, b := do(t, c, "GET", "/v1/summary", ""); code != http.StatusOK {
		t.Errorf("status %d body %s", code, b)
	}
}

func TestListenNotSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tcpd.sock")
	if err := os.WriteFile(path, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := admin.Listen(admin.Config{Path: path, Source: &fakeSource{}})
	if want := path + " exists and is not a socket"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Listen: %v, want %q", err, want)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "keep me" {
		t.Errorf("file after Listen: %q, %v", b, err)
	}
}

func TestListenConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tcpd.sock")
	if _, err := admin.Listen(admin.Config{Source: &fakeSource{}}); err == nil || err.Error() != "admin socket: no path" {
		t.Errorf("no path: %v", err)
	}
	if _, err := admin.Listen(admin.Config{Path: path}); err == nil || err.Error() != "admin socket: no source" {
		t.Errorf("no source: %v", err)
	}
}

// Close removes the socket file only while it is the one it bound: a
// successor that took the path over keeps its own.
func TestCloseKeepsSuccessor(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tcpd.sock")
	old, err := admin.Listen(admin.Config{Path: path, Source: &fakeSource{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	_, _, c := start(t, func(cfg *admin.Config) { cfg.Path = path })
	if err := old.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if code, _, b := do(t, c, "GET", "/v1/summary", ""); code != http.StatusOK {
		t.Errorf("successor after the old server closed: status %d body %s", code, b)
	}
}
