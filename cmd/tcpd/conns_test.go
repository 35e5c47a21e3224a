package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"tcpd/admin"
	"tcpd/conntrack"
	"tcpd/stack"
)

var connsNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// fakeSource is a fixed table; Kill removes a row.
type fakeSource struct {
	mu    sync.Mutex
	conns []stack.ConnInfo
	snap  conntrack.Snapshot
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

func testConn(id conntrack.ID, client, dst string, st, cst conntrack.State, age, inState time.Duration) stack.ConnInfo {
	return stack.ConnInfo{Conn: conntrack.Conn{
		ID:          id,
		Tuple:       conntrack.Tuple{Client: netip.MustParseAddrPort(client), Dst: netip.MustParseAddrPort(dst)},
		State:       st,
		ClientState: cst,
		Opened:      connsNow.Add(-age),
		Since:       connsNow.Add(-inState),
	}}
}

func connsFixture() []stack.ConnInfo {
	est := testConn(3, "100.64.0.7:51000", "203.0.113.10:443", conntrack.StateEstablished, conntrack.StateEstablished, 250*time.Second, 249*time.Second)
	est.BytesIn, est.BytesOut = 1234, 3<<30
	est.Handshake, est.Dial = 12*time.Millisecond, 30*time.Millisecond
	est.RTT, est.RTTVar, est.Retransmits = 3200*time.Microsecond, time.Millisecond, 2
	est.Upstream = "192.0.2.1:33000"
	est.MSS, est.ClampedFrom, est.AdvMSS, est.SendMSS = 1380, 1460, 1460, 1380
	est.CongestionControl, est.RTO, est.Cwnd, est.RecvQ, est.SendQ = "cubic", 204*time.Millisecond, 10, 512, 1448

	tw := testConn(9, "100.64.0.8:40000", "198.51.100.7:80", conntrack.StateTimeWait, conntrack.StateFinWait2, 95*time.Second, 4*time.Second)
	tw.BytesIn, tw.BytesOut = 300, 1<<20
	tw.Handshake, tw.Dial = 850*time.Microsecond, 8*time.Millisecond
	tw.TimeWaitLeft = 26 * time.Second
	tw.MSS, tw.AdvMSS, tw.SendMSS = 1460, 1460, 1460

	syn := testConn(12, "[fd00::7]:50000", "[2001:db8::1]:443", conntrack.StateSynRecv, conntrack.StateSynSent, 1500*time.Millisecond, 1500*time.Millisecond)

	old := testConn(20, "100.64.1.2:60000", "203.0.113.10:22", conntrack.StateCloseWait, conntrack.StateFinWait2, 26*time.Hour, 3*time.Hour+2*time.Minute)
	old.BytesIn, old.BytesOut = 48<<10, 999
	old.Handshake, old.Dial = 40*time.Millisecond, 2*time.Second
	old.RTT, old.Retransmits = 180*time.Millisecond, 17
	old.SendMSS = 536 // no MSS option
	return []stack.ConnInfo{syn, tw, old, est}
}

func connsSnapshot() conntrack.Snapshot {
	var s conntrack.Snapshot
	s.States[conntrack.StateEstablished] = 1
	s.States[conntrack.StateTimeWait] = 1
	s.States[conntrack.StateSynRecv] = 1
	s.States[conntrack.StateCloseWait] = 1
	s.ClientStates[conntrack.StateEstablished] = 1
	s.ClientStates[conntrack.StateFinWait2] = 2
	s.ClientStates[conntrack.StateSynSent] = 1
	s.Live = 4
	s.TimeWait, s.TimeWaitLimit, s.TimeWaitTimeout = 1, 16384, 30*time.Second
	s.Opened, s.Established, s.Closed, s.Resets = 40, 38, 36, 4
	s.TimeWaitEntered, s.TimeWaitOverflow, s.TimeWaitReused = 20, 1, 2
	s.RSTIgnored, s.Untracked, s.TableFull, s.Expired, s.Corrections = 5, 6, 7, 8, 0
	var h, d conntrack.Histogram
	for range 99 {
		h.Observe(time.Millisecond)
	}
	h.Observe(time.Second)
	d.Observe(30 * time.Millisecond)
	s.Handshake, s.Dial = h.Snapshot(), d.Snapshot()
	return s
}

// startAdmin serves the fixture on a socket in a fresh directory.
func startAdmin(t *testing.T) (*fakeSource, string) {
	t.Helper()
	src := &fakeSource{conns: connsFixture(), snap: connsSnapshot()}
	path := filepath.Join(t.TempDir(), "tcpd.sock")
	s, err := admin.Listen(admin.Config{Path: path, Source: src, Now: func() time.Time { return connsNow }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return src, path
}

func runConns(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = runMain(append([]string{"conns"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func TestConnsTable(t *testing.T) {
	_, p := startAdmin(t)
	code, out, errs := runConns(t, "--socket", p)
	if code != 0 || errs != "" {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
	want := `ID  State       Client-State  Client            Destination        Age    In-State  Bytes-In  Bytes-Out  RTT    Retrans  MSS    Handshake  TW-Left
3   ESTAB       ESTAB         100.64.0.7:51000  203.0.113.10:443   4m10s  4m9s      1.2KiB    3GiB       3.2ms  2        1380*  12ms       -
9   TIME-WAIT   FIN-WAIT-2    100.64.0.8:40000  198.51.100.7:80    1m35s  4s        300B      1MiB       -      0        1460   850µs      26s
12  SYN-RECV    SYN-SENT      [fd00::7]:50000   [2001:db8::1]:443  1.5s   1.5s      0B        0B         -      0        -      -          -
20  CLOSE-WAIT  FIN-WAIT-2    100.64.1.2:60000  203.0.113.10:22    1d2h   3h2m      48KiB     999B       180ms  17       536    40ms       -
`
	if out != want {
		t.Errorf("got\n%s\nwant\n%s", out, want)
	}
}

// TestConnsNumeric: -n, the habit of "ss -tan", is accepted and changes
// nothing: tcpd never resolves names.
func TestConnsNumeric(t *testing.T) {
	_, p := startAdmin(t)
	_, want, _ := runConns(t, "--socket", p)
	for _, args := range [][]string{{"-n"}, {"--numeric"}, {"-n", "--dport", "443"}, {"-n", "-o", "json"}} {
		code, out, errs := runConns(t, append([]string{"--socket", p}, args...)...)
		if code != 0 || errs != "" {
			t.Errorf("%q: exit %d, stderr %q", args, code, errs)
		}
		if len(args) == 1 && out != want {
			t.Errorf("%q: got\n%s\nwant the table without it\n%s", args, out, want)
		}
	}
	code, out, errs := runConns(t, "--socket", p, "kill", "-n", "--dport", "22")
	if code != 0 || out != "reset 1 connection\n" {
		t.Errorf("kill -n --dport 22: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	_, help, _ := runConns(t, "--help")
	if !strings.Contains(help, "-n\tdoes nothing, for the habit of ss -n: addresses and ports are always numeric") {
		t.Errorf("help does not explain -n:\n%s", help)
	}
}

func TestConnsFilterFlags(t *testing.T) {
	_, p := startAdmin(t)
	cases := []struct {
		args []string
		ids  []string
	}{
		{nil, []string{"3", "9", "12", "20"}},
		{[]string{"--state", "ESTAB"}, []string{"3"}},
		{[]string{"--state", "established,time-wait"}, []string{"3", "9"}},
		{[]string{"--state=TIME-WAIT", "--state", "syn_recv"}, []string{"9", "12"}},
		{[]string{"--src", "100.64.0.0/24"}, []string{"3", "9"}},
		{[]string{"--src", "fd00::7"}, []string{"12"}},
		{[]string{"--dst", "203.0.113.10"}, []string{"3", "20"}},
		{[]string{"--dst", "203.0.113.0/24", "--dport", "22"}, []string{"20"}},
		{[]string{"--dport", "443"}, []string{"3", "12"}},
		{[]string{"--dport", "8080"}, nil},
		{[]string{"--sport", "40000"}, []string{"9"}},
		{[]string{"--client-state", "FIN-WAIT-2"}, []string{"9", "20"}},
		{[]string{"--client-state", "fin_wait2", "--state", "CLOSE-WAIT"}, []string{"20"}},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, out, errs := runConns(t, append([]string{"--socket", p}, tc.args...)...)
			if code != 0 {
				t.Fatalf("exit %d, stderr %q", code, errs)
			}
			lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
			if !strings.HasPrefix(lines[0], "ID  State ") {
				t.Errorf("header %q", lines[0])
			}
			var ids []string
			for _, l := range lines[1:] {
				ids = append(ids, strings.Fields(l)[0])
			}
			if !slices.Equal(ids, tc.ids) {
				t.Errorf("ids %v, want %v\n%s", ids, tc.ids, out)
			}
		})
	}
}

func TestConnsSummary(t *testing.T) {
	_, p := startAdmin(t)
	for _, flag := range []string{"-s", "--summary"} {
		code, out, errs := runConns(t, "--socket", p, flag)
		if code != 0 || errs != "" {
			t.Fatalf("%s: exit %d, stderr %q", flag, code, errs)
		}
		want := `Total: 4 live (opened 40, established 38, closed 36)

State       tcpd  client
CLOSED      0     0
LISTEN      0     0
SYN-SENT    0     1
SYN-RECV    1     0
ESTAB       1     1
FIN-WAIT-1  0     0
FIN-WAIT-2  0     2
CLOSING     0     0
TIME-WAIT   1     0
CLOSE-WAIT  1     0
LAST-ACK    0     0

TIME-WAIT: 1 of 16384 used, timeout 30s (entered 20, overflowed 1, reused 2)

Latency    p50   p99    samples
handshake  1ms   1.1ms  100
dial       30ms  31ms   1
setup      -     -      0

Resets: 4; RSTs ignored: 5; untracked segments: 6; table full: 7; expired: 8
Corrections: 0 (tcpd states corrected from the netstack's; 0 when healthy)
`
		if out != want {
			t.Errorf("%s: got\n%s\nwant\n%s", flag, out, want)
		}
	}
}

func TestConnsJSON(t *testing.T) {
	_, p := startAdmin(t)
	code, out, errs := runConns(t, "--socket", p, "-o", "json", "--state", "time_wait")
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
	if !strings.HasPrefix(out, "{\n  \"time\": \"2026-03-01T12:00:00Z\",\n  \"conns\": [\n") {
		t.Errorf("not the API's JSON, indented:\n%s", out)
	}
	var cs admin.Conns
	if err := json.Unmarshal([]byte(out), &cs); err != nil {
		t.Fatal(err)
	}
	if len(cs.Conns) != 1 || cs.Conns[0].ID != 9 || cs.Conns[0].State != "time_wait" || cs.Conns[0].BytesOut != 1<<20 {
		t.Errorf("conns %+v", cs.Conns)
	}

	code, out, errs = runConns(t, "--socket", p, "-s", "--output=json")
	if code != 0 {
		t.Fatalf("-s -o json: exit %d, stderr %q", code, errs)
	}
	var s admin.Summary
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatal(err)
	}
	if s.Live != 4 || s.States["close_wait"] != 1 || s.TimeWaitLimit != 16384 || s.Handshake.Count != 100 {
		t.Errorf("summary %+v", s)
	}
}

// TestConnsInfo: -i puts each row's TCP details on the line under it,
// the table's columns still aligned; -o json with -i carries them too.
func TestConnsInfo(t *testing.T) {
	_, p := startAdmin(t)
	code, out, errs := runConns(t, "--socket", p, "-i", "--dport", "443")
	if code != 0 {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 5 {
		t.Fatalf("%d lines, want a header and two rows each with its details:\n%s", len(lines), out)
	}
	want := []string{
		"\tclient: cubic rtt:3.2ms/1ms rto:204ms cwnd:10 ssthresh:- retrans:2 recv-q:512 send-q:1448 | upstream 192.0.2.1:33000: rtt:1.2ms/300µs cwnd:10 retrans:1 recv-q:0 send-q:4096",
		"\tclient: - rtt:-/- rto:- cwnd:0 ssthresh:- retrans:0 recv-q:0 send-q:0 | upstream: none",
	}
	if lines[2] != want[0] || lines[4] != want[1] {
		t.Errorf("details\n%q\n%q\nwant\n%q\n%q", lines[2], lines[4], want[0], want[1])
	}
	// The rows line up with the header as without -i.
	_, plain, _ := runConns(t, "--socket", p, "--dport", "443")
	if pl := strings.Split(strings.TrimSuffix(plain, "\n"), "\n"); len(pl) != 3 || pl[0] != lines[0] || pl[1] != lines[1] || pl[2] != lines[3] {
		t.Errorf("rows with -i differ from the table without it:\n%s\n%s", out, plain)
	}

	code, out, errs = runConns(t, "--socket", p, "-i", "-o", "json", "--dport", "443")
	var cs admin.Conns
	if err := json.Unmarshal([]byte(out), &cs); code != 0 || err != nil {
		t.Fatalf("-i -o json: exit %d, %v, stderr %q", code, err, errs)
	}
	if len(cs.Conns) != 2 || cs.Conns[0].UpstreamTCP == nil || cs.Conns[0].UpstreamTCP.SendQ != 4096 || cs.Conns[1].UpstreamTCP != nil {
		t.Errorf("-i -o json rows: %+v", cs.Conns)
	}
}

func TestConnsKill(t *testing.T) {
	src, p := startAdmin(t)
	code, out, errs := runConns(t, "kill", "9", "--socket", p)
	if code != 0 || out != "reset connection 9\n" || errs != "" {
		t.Errorf("kill 9: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	if slices.ContainsFunc(src.Conns(nil), func(c stack.ConnInfo) bool { return c.ID == 9 }) {
		t.Error("connection 9 still listed after kill")
	}
	code, out, errs = runConns(t, "--socket", p, "kill", "9")
	if code != 1 || out != "" || errs != "tcpd conns: no connection 9\n" {
		t.Errorf("kill 9 again: exit %d, stdout %q, stderr %q", code, out, errs)
	}
}

// TestConnsKillFilter: "kill" with a filter resets every connection it
// selects and says how many, like "ss -K".
func TestConnsKillFilter(t *testing.T) {
	src, p := startAdmin(t)
	code, out, errs := runConns(t, "kill", "--socket", p, "--dst", "203.0.113.10")
	if code != 0 || out != "reset 2 connections\n" || errs != "" {
		t.Errorf("kill --dst 203.0.113.10: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	var left []conntrack.ID
	for _, c := range src.Conns(nil) {
		left = append(left, c.ID)
	}
	if !slices.Equal(left, []conntrack.ID{9, 12}) {
		t.Errorf("connections left %v, want 9 and 12", left)
	}
	code, out, errs = runConns(t, "kill", "--socket", p, "--client-state", "fin-wait-2", "--sport", "1")
	if code != 0 || out != "reset 0 connections\n" || errs != "" {
		t.Errorf("kill matching nothing: exit %d, stdout %q, stderr %q", code, out, errs)
	}
}

func TestConnsUnreachable(t *testing.T) {
	p := filepath.Join(t.TempDir(), "tcpd.sock")
	want := "tcpd conns: cannot reach tcpd at " + p + ": connect: no such file or directory (is tcpd running? see admin.socket)\n"
	for _, args := range [][]string{{"--socket", p}, {"--socket", p, "-s"}, {"kill", "3", "--socket", p}} {
		code, out, errs := runConns(t, args...)
		if code != 1 || out != "" || errs != want {
			t.Errorf("%q: exit %d, stdout %q, stderr %q, want 1 and %q", args, code, out, errs, want)
		}
	}
}

// TestConnsNoAnswer: a daemon that takes the request and says nothing
// (stopped, wedged) or closes the connection (it exited) gets an error
// that says so, not the HTTP client's.
func TestConnsNoAnswer(t *testing.T) {
	defer func(d time.Duration) { adminTimeout = d }(adminTimeout)
	adminTimeout = 300 * time.Millisecond
	for _, tc := range []struct {
		name string
		// answer is what the daemon does with the request.
		answer func(net.Conn)
		want   string
	}{
		{"silent", func(c net.Conn) { time.Sleep(2 * time.Second) }, "took GET /v1/conns and said nothing for 300ms (is it stopped or wedged? systemctl status tcpd)"},
		{"closes", func(c net.Conn) {}, "closed the connection before it answered GET /v1/conns (did it exit or restart? systemctl status tcpd)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "tcpd.sock")
			l, err := net.Listen("unix", p)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					c.Read(make([]byte, 4096)) // the request
					tc.answer(c)
					c.Close()
				}
			}()
			code, out, errs := runConns(t, "--socket", p)
			want := "tcpd conns: tcpd at " + p + " " + tc.want
			if code != 1 || out != "" || !strings.HasPrefix(errs, want) {
				t.Errorf("exit %d, stdout %q, stderr %q; want 1 and %q…", code, out, errs, want)
			}
		})
	}
}

func TestConnsSocketEnv(t *testing.T) {
	_, p := startAdmin(t)
	t.Setenv(adminSocketEnv, p)
	code, out, errs := runConns(t, "--dport", "22")
	if code != 0 || !strings.Contains(out, "\n20  ") {
		t.Errorf("exit %d, stdout %q, stderr %q", code, out, errs)
	}
	t.Setenv(adminSocketEnv, "")
	code, _, errs = runConns(t)
	if code != 1 || !strings.Contains(errs, "cannot reach tcpd at "+defaultAdminSocket+": ") {
		t.Errorf("empty %s: exit %d, stderr %q, want the default path", adminSocketEnv, code, errs)
	}
}

// TestConnsSocketFromConfig: --config reads admin.socket from the
// daemon's configuration file, so that a gateway configured with another
// socket is asked without repeating its path.
func TestConnsSocketFromConfig(t *testing.T) {
	_, p := startAdmin(t)
	t.Setenv(adminSocketEnv, "")
	cfg := filepath.Join(t.TempDir(), "tcpd.yaml")
	if err := os.WriteFile(cfg, []byte("admin:\n  socket: "+p+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runConns(t, "--config", cfg, "--dport", "22")
	if code != 0 || !strings.Contains(out, "\n20  ") {
		t.Errorf("--config: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	// The flag wins over the environment.
	t.Setenv(adminSocketEnv, filepath.Join(t.TempDir(), "elsewhere.sock"))
	if code, out, errs := runConns(t, "--config", cfg, "--dport", "22"); code != 0 || !strings.Contains(out, "\n20  ") {
		t.Errorf("--config with %s set: exit %d, stdout %q, stderr %q", adminSocketEnv, code, out, errs)
	}
	t.Setenv(adminSocketEnv, "")
	// A file that does not load names no socket: an error, not the default.
	if err := os.WriteFile(cfg, []byte("admin: [\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errs = runConns(t, "--config", cfg)
	if code != 1 || !strings.Contains(errs, "--config: cannot read admin.socket from it") {
		t.Errorf("--config of a broken file: exit %d, stderr %q, want an error naming --config", code, errs)
	}
}

// TestConnsHelp: help asked for goes to stdout, so that
// "tcpd conns --help | less" shows it.
func TestConnsHelp(t *testing.T) {
	for _, h := range []string{"--help", "-h"} {
		code, out, errs := runConns(t, h)
		if code != 0 || !strings.Contains(out, `like "ss -tan" but with both`) || errs != "" {
			t.Errorf("conns %s: exit %d, stdout %.60q…, stderr %q; want 0 and the help on stdout", h, code, out, errs)
		}
	}
}

// TestConnsConfigMustName: --config naming no usable socket is an error,
// not a silent fall back to the default (which on a host with two daemons
// is the other one).
func TestConnsConfigMustName(t *testing.T) {
	dir := t.TempDir()
	off := filepath.Join(dir, "off.yaml")
	if err := os.WriteFile(off, []byte("admin:\n  socket: \"\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ file, want string }{
		{filepath.Join(dir, "missing.yaml"), "tcpd conns: --config: cannot read admin.socket from it (give --socket): "},
		{off, `admin.socket is "": that daemon has no admin socket`},
	} {
		code, out, errs := runConns(t, "--config", tc.file)
		if code != 1 || out != "" || !strings.Contains(errs, tc.want) || strings.Contains(errs, defaultAdminSocket) {
			t.Errorf("--config %s: exit %d, stdout %q, stderr %q; want 1 and %q, no default socket", tc.file, code, out, errs, tc.want)
		}
	}
}

func TestConnsUsage(t *testing.T) {
	// Nothing listens here: a usage error must be found before dialling.
	p := filepath.Join(t.TempDir(), "tcpd.sock")
	cases := []struct {
		args   []string
		code   int
		stderr string
	}{
		{[]string{"--state", "bogus"}, 2, `tcpd conns: --state: "bogus" is not a TCP state (allowed: close, listen, syn_sent, syn_recv, established, fin_wait1, fin_wait2, closing, time_wait, close_wait, last_ack, or the groups all, connected, synchronized, bucket, big)`},
		{[]string{"--src", "100.64/10"}, 2, `tcpd conns: --src: "100.64/10" is not an address or prefix`},
		{[]string{"--dst", "example.com"}, 2, `tcpd conns: --dst: "example.com" is not an address or prefix`},
		// Copied from the table's Client and Destination columns.
		{[]string{"--dst", "198.18.1.2:443"}, 2, "tcpd conns: --dst: \"198.18.1.2:443\" has a port (use --dst 198.18.1.2 --dport 443)\nRun \"tcpd conns --help\" for usage.\n"},
		{[]string{"kill", "--src", "[fd64::1]:5000"}, 2, `tcpd conns: --src: "[fd64::1]:5000" has a port (use --src fd64::1 --sport 5000)`},
		{[]string{"--src", "[fd64::1]"}, 2, `tcpd conns: --src: "[fd64::1]" is in brackets, which only an address with a port needs (use --src fd64::1)`},
		{[]string{"--dst", "[2001:db8::1]:443", "--dport", "443"}, 2, `tcpd conns: --dst: "[2001:db8::1]:443" has a port (use --dst 2001:db8::1 --dport 443)`},
		{[]string{"--dst", "[198.18.1.2]"}, 2, `tcpd conns: --dst: "[198.18.1.2]" is not an address or prefix`},
		{[]string{"--dport", "0"}, 2, `tcpd conns: --dport: "0" is not a port (allowed: 1..65535)`},
		{[]string{"-o", "yaml"}, 2, `tcpd conns: -o: "yaml" is not allowed (allowed: table, json)`},
		{[]string{"-s", "--state", "ESTAB"}, 2, `tcpd conns: -s summarises every connection; --state filters the list only`},
		{[]string{"--frobnicate"}, 2, "tcpd conns: flag provided but not defined: -frobnicate\nRun \"tcpd conns --help\" for usage.\n"},
		{[]string{"list"}, 2, `tcpd conns: unexpected argument "list"`},
		{[]string{"kill"}, 2, "tcpd conns: kill needs a connection ID or a filter (--state, --client-state, --src, --dst, --sport, --dport; --state all for every connection)"},
		{[]string{"kill", "1", "2"}, 2, "tcpd conns: kill takes one connection ID"},
		{[]string{"kill", "x1"}, 2, `tcpd conns: kill: "x1" is not a connection ID`},
		{[]string{"kill", "1", "--state", "ESTAB"}, 2, "tcpd conns: kill takes one connection ID, or a filter (--state, --client-state, --src, --dst, --sport, --dport), not both"},
		{[]string{"kill", "-o", "json", "--dport", "80"}, 2, "tcpd conns: kill takes an ID or a filter, and --socket or --config (got -o)"},
		{[]string{"--config", "/etc/tcpd/tcpd.yaml"}, 2, "tcpd conns: --socket and --config both name the socket; give one"},
		{[]string{"--client-state", "nope"}, 2, `tcpd conns: --client-state: "nope" is not a TCP state`},
		{[]string{"--sport", "http"}, 2, `tcpd conns: --sport: "http" is not a port (allowed: 1..65535)`},
		{[]string{"-s", "-i"}, 2, `tcpd conns: -s summarises every connection; -i details the list only`},
		{[]string{"kill", "--state", ""}, 2, `tcpd conns: --state: empty (allowed: close, `},
		// The flag package keeps a repeated flag's last value: this would
		// reset every IPv4 connection.
		{[]string{"kill", "--dst", "198.18.1.2", "--dst", "0.0.0.0/0"}, 2, "tcpd conns: --dst: given twice, \"198.18.1.2\" and \"0.0.0.0/0\" (allowed: once; for several prefixes, run the command once for each)\nRun \"tcpd conns --help\" for usage.\n"},
		{[]string{"--src", "100.64.0.1", "--src=100.64.0.2", "--src", "100.64.0.3"}, 2, `tcpd conns: --src: given 3 times, "100.64.0.1" and "100.64.0.2" and "100.64.0.3" (allowed: once; for several prefixes`},
		{[]string{"--sport", "1", "--sport", "1"}, 2, `tcpd conns: --sport: given twice, "1" and "1" (allowed: once; for several ports, run the command once for each)`},
		{[]string{"kill", "--dport", "443", "--state", "ESTAB", "--dport", "80"}, 2, `tcpd conns: --dport: given twice, "443" and "80" (allowed: once; for several ports`},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, out, errs := runConns(t, append([]string{"--socket", p}, tc.args...)...)
			if code != tc.code || out != "" || !strings.Contains(errs, tc.stderr) {
				t.Errorf("exit %d, stdout %q, stderr %q; want %d and %q", code, out, errs, tc.code, tc.stderr)
			}
			if strings.Contains(errs, "cannot reach") {
				t.Error("dialled the socket for a usage error")
			}
		})
	}
}

func TestHumanDuration(t *testing.T) {
	cases := []struct {
		d    time.Duration
		want string
	}{
		{0, "0s"},
		{400 * time.Nanosecond, "0µs"},
		{850 * time.Microsecond, "850µs"},
		{999600 * time.Nanosecond, "1ms"},
		{2500 * time.Microsecond, "2.5ms"},
		{9960 * time.Microsecond, "10ms"},
		{12 * time.Millisecond, "12ms"},
		{999600 * time.Microsecond, "1s"},
		{3200 * time.Millisecond, "3.2s"},
		{9960 * time.Millisecond, "10s"},
		{42 * time.Second, "42s"},
		{59600 * time.Millisecond, "1m0s"},
		{250 * time.Second, "4m10s"},
		{2*time.Hour + 5*time.Minute, "2h5m"},
		{3*24*time.Hour + 4*time.Hour, "3d4h"},
	}
	for _, tc := range cases {
		if got := humanDuration(tc.d.Seconds()); got != tc.want {
			t.Errorf("humanDuration(%v) = %q, want %q", tc.d, got, tc.want)
		}
	}
}

func TestHumanBytes(t *testing.T) {
	cases := []struct {
		n    uint64
		want string
	}{
		{0, "0B"},
		{1023, "1023B"},
		{1024, "1KiB"},
		{1234, "1.2KiB"},
		{10188, "9.9KiB"},
		{10200, "10KiB"},
		{1048575, "1MiB"},
		{1258291, "1.2MiB"},
		{5 << 40, "5TiB"},
		{1 << 63, "8EiB"},
	}
	for _, tc := range cases {
		if got := humanBytes(tc.n); got != tc.want {
			t.Errorf("humanBytes(%d) = %q, want %q", tc.n, got, tc.want)
		}
	}
}

// TestConnsRetriesWhenBusy: a daemon answering 503 (too many listings at
// once) is asked again; after busyRetries it gives its message.
func TestConnsRetriesWhenBusy(t *testing.T) {
	for _, busyFor := range []int{2, busyRetries + 1} {
		path := filepath.Join(t.TempDir(), "busy.sock")
		ln, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		var calls atomic.Int32
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if int(calls.Add(1)) <= busyFor {
				w.Header().Set("Retry-After", "1")
				w.WriteHeader(http.StatusServiceUnavailable)
				w.Write([]byte(`{"error":"busy: 2 listings of the connection table in progress"}`))
				return
			}
			w.Write([]byte(`{"time":"2026-03-01T12:00:00Z","conns":[]}`))
		})}
		go srv.Serve(ln)
		c := newAdminClient(path)
		c.busyWait = time.Millisecond
		body, err := c.do("GET", "/v1/conns")
		srv.Close()
		if busyFor <= busyRetries {
			if err != nil || !strings.Contains(string(body), `"conns"`) {
				t.Errorf("busy for %d answers: %q, %v; want the listing", busyFor, body, err)
			}
		} else if err == nil || !strings.Contains(err.Error(), "busy: 2 listings") {
			t.Errorf("busy for %d answers: %v; want the daemon's busy message", busyFor, err)
		}
		if want := min(busyFor+1, busyRetries+1); int(calls.Load()) != want {
			t.Errorf("busy for %d answers: %d requests, want %d", busyFor, calls.Load(), want)
		}
	}
}

// serveAdmin serves h on a unix socket in a fresh directory, as the
// daemon's admin socket.
func serveAdmin(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tcpd.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	done := make(chan struct{})
	go func() { srv.Serve(ln); close(done) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return path
}

// writeListing writes a listing of n rows as the daemon does, one row at
// a time, each with every field set as a busy connection has them; then,
// if cut, half of one more row, and the connection drops as when the
// daemon dies. It returns the bytes written.
func writeListing(w http.ResponseWriter, n int, cut bool) int {
	w.Header().Set("Content-Type", "application/json")
	bw := bufio.NewWriterSize(w, 64<<10)
	size, _ := bw.WriteString(`{"time":"2026-03-01T12:00:00Z","conns":[`)
	row := admin.Conn{
		State: "established", ClientState: "established", Dst: "203.0.113.10:443", Upstream: "192.0.2.1:33000",
		AgeSeconds: 250.123456789, InStateSeconds: 249.987654321, BytesIn: 123456789, BytesOut: 987654321,
		RTTSeconds: 0.0032, RTTVarSeconds: 0.001, RTOSeconds: 0.204, Retransmits: 2,
		HandshakeSeconds: 0.012, DialSeconds: 0.03, MSS: 1380, MSSClamped: true,
		CongestionControl: "cubic", Cwnd: 10, RecvQ: 512, SendQ: 1448,
	}
	var b []byte
	for i := range n {
		row.ID = uint64(i + 1)
		row.Client = netip.AddrPortFrom(netip.AddrFrom4([4]byte{100, 64, byte(i >> 16), byte(i >> 8)}), uint16(i)).String()
		b, _ = json.Marshal(row)
		if i > 0 {
			bw.WriteByte(',')
			size++
		}
		k, _ := bw.Write(b)
		size += k
	}
	if cut {
		bw.WriteByte(',')
		bw.Write(b[:len(b)/2])
		bw.Flush()
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}
	k, _ := bw.WriteString("]}\n")
	bw.Flush()
	return size + k
}

// TestConnsLargeTable: a listing larger than any cap on the whole reply
// (150,000 rows, over 64 MiB) arrives whole, in the table and with -o
// json.
func TestConnsLargeTable(t *testing.T) {
	const rows = 150_000
	var size atomic.Int64
	p := serveAdmin(t, func(w http.ResponseWriter, r *http.Request) {
		size.Store(int64(writeListing(w, rows, false)))
	})
	code, out, errs := runConns(t, "--socket", p)
	if code != 0 || errs != "" {
		t.Fatalf("exit %d, stderr %q", code, errs)
	}
	if size.Load() <= 64<<20 {
		t.Fatalf("the listing is %d bytes; the test needs more than 64 MiB", size.Load())
	}
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != rows+1 || !strings.HasPrefix(lines[0], "ID  ") {
		t.Fatalf("%d lines, want a header and %d rows", len(lines), rows)
	}
	for i, l := range lines[1:] {
		if id, _, _ := strings.Cut(l, " "); id != strconv.Itoa(i+1) {
			t.Fatalf("line %d is %q, want connection %d", i+1, l, i+1)
		}
	}

	code, out, errs = runConns(t, "--socket", p, "-o", "json")
	if code != 0 || errs != "" {
		t.Fatalf("-o json: exit %d, stderr %q", code, errs)
	}
	var cs admin.Conns
	if err := json.Unmarshal([]byte(out), &cs); err != nil {
		t.Fatalf("-o json: %v", err)
	}
	if len(cs.Conns) != rows || cs.Conns[0].ID != 1 || cs.Conns[rows-1].ID != rows || cs.Conns[rows-1].BytesOut != 987654321 {
		t.Errorf("-o json: %d rows, want %d", len(cs.Conns), rows)
	}
}

// TestConnsCutOff: a listing that stops in the middle of a row (the
// daemon died) is an error that says so, for the table and -o json.
func TestConnsCutOff(t *testing.T) {
	p := serveAdmin(t, func(w http.ResponseWriter, r *http.Request) { writeListing(w, 3, true) })
	want := "tcpd conns: reply from " + p + " ended after 3 connections, in the middle of the listing (did tcpd stop?): unexpected EOF\n"
	for _, args := range [][]string{nil, {"-o", "json"}} {
		code, _, errs := runConns(t, append([]string{"--socket", p}, args...)...)
		if code != 1 || errs != want {
			t.Errorf("%q: exit %d, stderr %q; want 1 and %q", args, code, errs, want)
		}
	}
}

// TestConnsRowBound: a row far longer than any of tcpd's is not read on
// into memory.
func TestConnsRowBound(t *testing.T) {
	p := serveAdmin(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"time":"2026-03-01T12:00:00Z","conns":[{"id":1,"client":"`)
		io.WriteString(w, strings.Repeat("a", 3*maxRowBytes))
		io.WriteString(w, `"}]}`)
	})
	code, _, errs := runConns(t, "--socket", p)
	if want := " after 0 connections: a row longer than 1048576 bytes: not a listing of tcpd's\n"; code != 1 || !strings.HasSuffix(errs, want) {
		t.Errorf("exit %d, stderr %q; want 1 and %q", code, errs, want)
	}
}

// failingWriter fails every write, as a full disk does.
type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, syscall.ENOSPC }

// TestConnsOutputFails: an output that cannot be written is named as the
// failure, not the daemon's reply.
func TestConnsOutputFails(t *testing.T) {
	p := serveAdmin(t, func(w http.ResponseWriter, r *http.Request) { writeListing(w, 3000, false) })
	var errb bytes.Buffer
	code := runMain([]string{"conns", "--socket", p, "-o", "json"}, failingWriter{}, &errb)
	if want := "tcpd conns: writing the listing: no space left on device\n"; code != 1 || errb.String() != want {
		t.Errorf("exit %d, stderr %q; want 1 and %q", code, errb.String(), want)
	}
}
