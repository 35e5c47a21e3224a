package admin_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tcpd/admin"
	"tcpd/conntrack"
	"tcpd/stack"
)

// TestErrorsDoNotEchoRequests sends requests whose bad parts are long: the
// error names them, shortened, and is never longer than a line or two
// (tcpd once echoed a 100 KB parameter name back whole).
func TestErrorsDoNotEchoRequests(t *testing.T) {
	_, _, c := start(t, nil)
	long := strings.Repeat("x", 10<<10)
	for _, tc := range []struct {
		method, path string
		code         int
		want         string
	}{
		{"GET", "/v1/conns?" + long + "=1", 400, `unknown parameter "` + strings.Repeat("x", 64) + `… (10240 bytes)"`},
		{"GET", "/v1/conns?state=" + long, 400, `state: "` + strings.Repeat("x", 64) + `… (10240 bytes)" is not a TCP state`},
		{"GET", "/v1/conns?dst=" + long, 400, `dst: "` + strings.Repeat("x", 64) + `… (10240 bytes)" is not an address or prefix`},
		{"GET", "/v1/conns?dport=" + long, 400, `dport: "` + strings.Repeat("x", 64) + `… (10240 bytes)" is not a port`},
		{"DELETE", "/v1/conns/" + long, 400, `id: "` + strings.Repeat("x", 64) + `… (10240 bytes)" is not a connection id`},
		{"GET", "/" + long, 404, `no endpoint /` + strings.Repeat("x", 63) + `… (10241 bytes)`},
		{"POST", "/v1/summary?" + long, 405, `method POST not allowed on /v1/summary`},
	} {
		code, _, body := do(t, c, tc.method, tc.path, "")
		if msg := decode[admin.Error](t, body).Error; code != tc.code || !strings.Contains(msg, tc.want) {
			t.Errorf("%s %.40s…: %d %q, want %d with %q", tc.method, tc.path, code, msg, tc.code, tc.want)
		}
		if len(body) > 400 {
			t.Errorf("%s %.40s…: a %d-byte error answer", tc.method, tc.path, len(body))
		}
	}
}

// TestOversizedRequestRefused: a request line of 100 KB is refused by the
// server (431) before any handler reads it.
func TestOversizedRequestRefused(t *testing.T) {
	_, cfg, _ := start(t, nil)
	conn, err := net.Dial("unix", cfg.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(conn, "GET /v1/conns?%s=1 HTTP/1.1\r\nHost: tcpd\r\n\r\n", strings.Repeat("y", 100<<10))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("a 100 KB request line: %s, want 431", resp.Status)
	}
}

// blockingSource holds every Conns call until release is closed and
// records how many ran at once.
type blockingSource struct {
	*fakeSource
	release       chan struct{}
	running, most atomic.Int32
	calls         atomic.Int32
}

func (b *blockingSource) Conns(keep func(*conntrack.Conn) bool) []stack.ConnInfo {
	b.calls.Add(1)
	n := b.running.Add(1)
	for {
		m := b.most.Load()
		if n <= m || b.most.CompareAndSwap(m, n) {
			break
		}
	}
	<-b.release
	b.running.Add(-1)
	return b.fakeSource.Conns(keep)
}

// TestListingsCapped sends 20 listings at once, as twenty `tcpd conns`
// would: at most admin.MaxListings copy the table at once, the rest are
// told to come back (503, Retry-After) at once rather than queue, and
// the admin socket still answers a summary meanwhile.
func TestListingsCapped(t *testing.T) {
	bs := &blockingSource{release: make(chan struct{})}
	fs, cfg, _ := start(t, func(c *admin.Config) {
		bs.fakeSource = c.Source.(*fakeSource)
		c.Source = bs
	})
	_ = fs
	const n = 20
	var wg sync.WaitGroup
	codes := make(chan int, n)
	retryAfter := make(chan string, n)
	for range n {
		wg.Go(func() {
			c := unixClient(cfg.Path)
			req, _ := http.NewRequest("GET", "http://tcpd/v1/conns", nil)
			resp, err := c.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			codes <- resp.StatusCode
			if resp.StatusCode == http.StatusServiceUnavailable {
				retryAfter <- resp.Header.Get("Retry-After")
			}
		})
	}
	// The refusals come back while the first listings are held.
	deadline := time.Now().Add(5 * time.Second)
	for len(codes) < n-admin.MaxListings && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	sc := unixClient(cfg.Path)
	sc.Timeout = 5 * time.Second
	if resp, err := sc.Get("http://tcpd/v1/summary"); err != nil {
		t.Errorf("summary while listings are held: %v", err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("summary while listings are held: %s", resp.Status)
		}
	}
	close(bs.release)
	wg.Wait()
	close(codes)
	close(retryAfter)
	count := map[int]int{}
	for c := range codes {
		count[c]++
	}
	for ra := range retryAfter {
		if ra != "1" {
			t.Errorf("a busy answer's Retry-After is %q, want 1", ra)
		}
	}
	t.Logf("answers: %v; at most %d listings at once", count, bs.most.Load())
	if got := bs.most.Load(); got > admin.MaxListings {
		t.Errorf("%d listings copied the table at once, want at most %d", got, admin.MaxListings)
	}
	if count[200] < 1 || count[200]+count[503] != n || count[503] < n-admin.MaxListings {
		t.Errorf("answers %v; want at most %d served and the rest 503", count, admin.MaxListings)
	}
}

// TestStalledReaderFreesItsListing: clients that ask for the connection
// table and then stop reading (a script piped into a pager left open) hold
// the listing slots only until the write timeout: then a listing is served
// again.
func TestStalledReaderFreesItsListing(t *testing.T) {
	// Long enough for the first rows to be encoded and written, also
	// under the race detector.
	const timeout = 3 * time.Second
	_, cfg, client := start(t, func(c *admin.Config) {
		// A table whose listing (2 MB) is ten times what a unix socket's
		// buffers hold.
		src := c.Source.(*fakeSource)
		rows := src.conns
		for i := range 5000 {
			r := rows[i%len(rows)]
			r.ID = conntrack.ID(1000 + i)
			src.conns = append(src.conns, r)
		}
		c.WriteTimeout = timeout
	})
	for range admin.MaxListings {
		c, err := net.Dial("unix", cfg.Path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := fmt.Fprint(c, "GET /v1/conns HTTP/1.1\r\nHost: tcpd\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		// Read the status line, so that its listing is known to be under
		// way, and then nothing more.
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
			t.Fatalf("a listing's status line: %q, %v", line, err)
		}
	}
	// A listing that takes a slot but returns no row.
	listing := func() int {
		resp, err := client.Get("http://tcpd/v1/conns?dport=1")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode
	}
	// Both slots held: a listing is refused meanwhile.
	if code := listing(); code != http.StatusServiceUnavailable {
		t.Fatalf("a listing while two clients stall theirs: %d, want 503", code)
	}
	start := time.Now()
	for listing() != http.StatusOK {
		if time.Since(start) > 5*time.Second {
			t.Fatalf("listings still refused %v after the stalled readers' %v write timeout", time.Since(start), timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestREADMEStatesTheWriteTimeout: README gives the write timeout as this
// package has it.
func TestREADMEStatesTheWriteTimeout(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Join(strings.Fields(string(b)), " ")
	want := fmt.Sprintf("A client that stops reading an answer loses its connection after %d s", int(admin.DefaultWriteTimeout.Seconds()))
	if !strings.Contains(text, want) {
		t.Errorf("README does not say %q", want)
	}
}

// TestListingStreamed: a listing is written as it is encoded, so what it
// allocates is the copy of the rows, not the JSON of the whole table on
// top of it. 20,000 rows are about 11 MB of JSON; encoded whole, a
// listing allocated more than twice that.
func TestListingStreamed(t *testing.T) {
	const n = 20000
	src, _, client := start(t, func(c *admin.Config) {
		src := c.Source.(*fakeSource)
		rows := src.conns
		for i := range n - len(rows) {
			r := rows[i%len(rows)]
			r.ID = conntrack.ID(1000 + i)
			src.conns = append(src.conns, r)
		}
	})
	get := func() *http.Response {
		resp, err := client.Get("http://tcpd/v1/conns")
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 {
			t.Fatalf("GET /v1/conns: %s", resp.Status)
		}
		return resp
	}
	// The streamed answer is one Conns value with every row.
	resp := get()
	var out admin.Conns
	err := json.NewDecoder(resp.Body).Decode(&out)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Conns) != n || out.Time == "" {
		t.Fatalf("%d rows and time %q, want %d rows and a time", len(out.Conns), out.Time, n)
	}
	for i, c := range out.Conns[1:] {
		if c.ID <= out.Conns[i].ID {
			t.Fatalf("row %d has id %d after %d, want ID order", i+1, c.ID, out.Conns[i].ID)
		}
	}
	out = admin.Conns{}

	// What the source's copy of the rows allocates, and then what the
	// server allocates in all for one listing, the body discarded.
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	src.Conns(nil)
	runtime.ReadMemStats(&after)
	rowsCopy := after.TotalAlloc - before.TotalAlloc
	runtime.GC()
	runtime.ReadMemStats(&before)
	resp = get()
	size, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("listing of %d rows: %d bytes of JSON; %d bytes allocated, %d of them the source's copy of the rows", n, size, alloc, rowsCopy)
	if size < n*100 {
		t.Fatalf("a listing of %d rows is %d bytes, want at least 100 bytes a row", n, size)
	}
	if raceDetector {
		t.Log("not comparing allocations under the race detector")
		return
	}
	if alloc > rowsCopy+uint64(size)/2 {
		t.Errorf("a listing allocated %d bytes beyond the rows' copy, more than half its %d bytes of JSON: it is not streamed", alloc-rowsCopy, size)
	}
}

// TestSlowReaderGetsTheWholeListing: the write timeout is how long a
// listing waits for its reader, not how long it may take: a reader that
// keeps taking a listing for longer than the timeout gets all of it.
func TestSlowReaderGetsTheWholeListing(t *testing.T) {
	const timeout = 300 * time.Millisecond
	const rows = 5000
	c := askListing(t, rows, timeout)
	// 32 KiB every 20 ms: about 1.3 s for the listing's 2 MB, four times
	// the timeout.
	var got bytes.Buffer
	buf := make([]byte, 32<<10)
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	for {
		n, err := c.Read(buf)
		got.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	took := time.Since(start)
	resp, err := http.ReadResponse(bufio.NewReader(&got), nil)
	if err != nil {
		t.Fatal(err)
	}
	var list admin.Conns
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		t.Fatalf("listing of %d bytes read over %v (write timeout %v): %v", got.Len(), took, timeout, err)
	}
	if len(list.Conns) != rows {
		t.Fatalf("%d rows, want %d", len(list.Conns), rows)
	}
	if took < 2*timeout {
		t.Fatalf("the listing took %v to read, not enough longer than the %v timeout to tell", took, timeout)
	}
}

// TestTricklingReaderIsCut: a reader that takes a little of a listing now
// and then, never stalling for the write timeout, is cut off ten timeouts
// after the listing began, freeing its slot and the copy of the table.
func TestTricklingReaderIsCut(t *testing.T) {
	// A write timeout of 2 s: under the race detector, beside other
	// packages' tests, a reader that slept 20 ms between reads stalled for
	// the 1 s it once was, and was cut after 5.4 s.
	const timeout = 2 * time.Second
	c := askListing(t, 100000, timeout) // about 40 MB of JSON
	// 64 KiB every 40 ms: no write waits near the timeout, and the whole
	// listing would take about 25 s.
	buf := make([]byte, 64<<10)
	var got bytes.Buffer
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	for {
		n, err := c.Read(buf)
		got.Write(buf[:n])
		if err != nil {
			break
		}
		time.Sleep(40 * time.Millisecond)
	}
	took := time.Since(start)
	// A whole answer ends with the last chunk of its chunked encoding.
	whole := bytes.HasSuffix(got.Bytes(), []byte("]}\n\r\n0\r\n\r\n"))
	if whole || took < 10*timeout-time.Second || took > 10*timeout+3*time.Second {
		t.Fatalf("the listing ended after %v and %d bytes (whole: %v); want it cut about %v after it began",
			took, got.Len(), whole, 10*timeout)
	}
	t.Logf("cut after %v and %d bytes", took, got.Len())
}

// askListing starts a daemon whose table holds rows connections and
// whose write timeout is timeout, and asks it for the listing on a
// connection of its own, which it returns.
func askListing(t *testing.T, rows int, timeout time.Duration) net.Conn {
	t.Helper()
	_, cfg, _ := start(t, func(c *admin.Config) {
		src := c.Source.(*fakeSource)
		first := src.conns
		src.conns = nil
		for i := range rows {
			r := first[i%len(first)]
			r.ID = conntrack.ID(1000 + i)
			src.conns = append(src.conns, r)
		}
		c.WriteTimeout = timeout
	})
	c, err := net.Dial("unix", cfg.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := fmt.Fprint(c, "GET /v1/conns HTTP/1.1\r\nHost: tcpd\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	return c
}
