package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"tcpd/admin"
	"tcpd/conntrack"
)

// defaultAdminSocket is admin.socket's default in the configuration.
const defaultAdminSocket = "/run/tcpd/tcpd.sock"

// adminSocketEnv overrides defaultAdminSocket for `tcpd conns`, for a daemon
// configured with another admin.socket.
const adminSocketEnv = "TCPD_ADMIN_SOCKET"

// adminTimeout bounds how long the admin socket may stay silent in one
// request; the daemon answers from memory, so anything slower means it is
// wedged. A variable so that a test need not wait as long.
var adminTimeout = 10 * time.Second

const connsSynopsis = `Usage:
  tcpd conns [--socket PATH | --config FILE] [FILTER] [-o table|json] [-i] [-s]
  tcpd conns kill ID [--socket PATH | --config FILE]
  tcpd conns kill FILTER [--socket PATH | --config FILE]

FILTER: [--state S[,S...]] [--client-state S[,S...]] [--src PREFIX] [--dst PREFIX] [--sport N] [--dport N]

Lists the TCP connections tcpd terminates, like "ss -tan" but with both
ends: tcpd's state and the client's (as seen on the TUN), age, time in the
current state, bytes each way, RTT to the client, retransmissions, the MSS
tcpd sends with ("*": lowered to the path back to the client), handshake
time and the TIME-WAIT time left. -i adds a line of TCP details under
each row, like "ss -i": the client leg's RTO, congestion window, slow-start
threshold and receive queue, and the upstream socket's RTT, window,
retransmissions and queues as the kernel has them. -s prints totals like
"ss -s" instead.
"kill ID" resets that connection on both legs (ID from the list); "kill"
with a filter resets every connection it selects, as "ss -K" does.

It asks the running daemon over its admin socket: --socket, else
admin.socket of --config FILE, else $` + adminSocketEnv + `, else ` + defaultAdminSocket + `.`

// adminSocketPath is the admin socket a command asks: flagPath, else
// admin.socket of the configuration file configPath, else
// $TCPD_ADMIN_SOCKET, else the default. admin.socket takes effect at
// start: the file names the daemon's socket when it is the file the daemon
// started with and its admin.socket has not changed since. A file that
// does not load, or turns the socket off, is an error rather than a
// silent fall back to the default: on a host with two daemons that would
// ask the other one.
func adminSocketPath(flagPath, configPath string) (string, error) {
	if flagPath != "" {
		return flagPath, nil
	}
	if configPath != "" {
		c, err := loadConfig(configPath)
		if err != nil {
			return "", fmt.Errorf("--config: cannot read admin.socket from it (give --socket): %w", err)
		}
		if c.adminSocket() == "" {
			return "", fmt.Errorf("--config %s: admin.socket is \"\": that daemon has no admin socket", configPath)
		}
		return c.adminSocket(), nil
	}
	if p := os.Getenv(adminSocketEnv); p != "" {
		return p, nil
	}
	return defaultAdminSocket, nil
}

func cmdConns(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("conns", connsSynopsis, args, stdout, stderr)
	var socket, configPath string
	fs.StringVar(&socket, "socket", "", "the daemon's admin socket `path`")
	fs.StringVar(&configPath, "config", "", "read admin.socket from this configuration `file`")
	var states, clientStates stringList
	fs.Var(&states, "state", "only connections whose tcpd state is one of `S[,S...]` (ESTAB, TIME-WAIT, … or established, time_wait, …, or ss's groups connected, synchronized, bucket, big, all); repeatable")
	fs.Var(&clientStates, "client-state", "only connections whose client's state is one of `S[,S...]`; repeatable")
	// src, dst, sport and dport are lists only to see a repeat: each is
	// allowed once.
	var src, dst, sport, dport stringList
	fs.Var(&src, "src", "only clients inside `PREFIX` (or that address)")
	fs.Var(&dst, "dst", "only destinations inside `PREFIX` (or that address)")
	fs.Var(&sport, "sport", "only client port `N`")
	fs.Var(&dport, "dport", "only destination port `N`")
	var output string
	fs.StringVar(&output, "o", "table", "output `format`: table or json (the API's JSON, indented)")
	fs.StringVar(&output, "output", "table", "same as -o `format`")
	var info bool
	fs.BoolVar(&info, "i", false, "add each connection's TCP details on both legs, like ss -i")
	fs.BoolVar(&info, "info", false, "same as -i")
	var summary bool
	fs.BoolVar(&summary, "s", false, "print a summary: counts per state on both ends, TIME-WAIT use, latencies, counters")
	fs.BoolVar(&summary, "summary", false, "same as -s")
	// -n is accepted for the habit of "ss -tan": tcpd resolves no names.
	var numeric bool
	fs.BoolVar(&numeric, "n", false, "does nothing, for the habit of ss -n: addresses and ports are always numeric")
	fs.BoolVar(&numeric, "numeric", false, "same as -n")

	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return flagError(stderr, "conns", err)
	}
	usage := func(format string, a ...any) error { return usageError(stderr, "conns", format, a...) }
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	if socket != "" && configPath != "" {
		return usage("--socket and --config both name the socket; give one")
	}
	socket, err = adminSocketPath(socket, configPath)
	if err != nil {
		return err
	}
	c := newAdminClient(socket)
	q := url.Values{}
	var filterFlags []string
	for _, f := range []struct {
		flag, param string
		vs          []string
		once        bool
	}{
		{"state", "state", states, false}, {"client-state", "client_state", clientStates, false},
		{"src", "src", src, true}, {"dst", "dst", dst, true},
		{"sport", "sport", sport, true}, {"dport", "dport", dport, true},
	} {
		if f.once && len(f.vs) > 1 {
			// Keeping the last value, as a string flag does, would make
			// "kill --dst 198.18.1.2 --dst 0.0.0.0/0" reset every IPv4
			// connection.
			return usage("%s", repeated(f.flag, f.vs))
		}
		if set[f.flag] {
			q[f.param] = f.vs
			filterFlags = append(filterFlags, f.flag)
		}
	}
	for _, f := range []struct {
		flag, portFlag string
		vs             []string
	}{{"src", "sport", src}, {"dst", "dport", dst}} {
		if len(f.vs) == 1 {
			if hint := addressHint(f.flag, f.portFlag, f.vs[0]); hint != "" {
				return usage("%s", hint)
			}
		}
	}
	// The daemon checks the filter too; checking here with the same code
	// makes a typo a usage error (exit 2) with the daemon's words, named
	// as the flag.
	if _, err := admin.ParseFilter(q); err != nil {
		return usage("--%s", strings.Replace(err.Error(), "client_state:", "client-state:", 1))
	}

	if len(pos) > 0 {
		if pos[0] != "kill" {
			return usage("unexpected argument %q", pos[0])
		}
		for name := range set {
			if !slices.Contains([]string{"socket", "config", "n", "numeric"}, name) && !slices.Contains(filterFlags, name) {
				return usage("kill takes an ID or a filter, and --socket or --config (got -%s)", name)
			}
		}
		switch {
		case len(pos) == 1 && len(q) > 0:
			body, err := c.do(http.MethodDelete, "/v1/conns?"+q.Encode())
			if err != nil {
				return err
			}
			var r admin.Reset
			if err := json.Unmarshal(body, &r); err != nil {
				return fmt.Errorf("reply from %s: %w", socket, err)
			}
			noun := "connections"
			if r.Reset == 1 {
				noun = "connection"
			}
			fmt.Fprintf(stdout, "reset %d %s\n", r.Reset, noun)
			return nil
		case len(pos) == 1:
			return usage("kill needs a connection ID or a filter (--state, --client-state, --src, --dst, --sport, --dport; --state all for every connection)")
		case len(pos) != 2 || len(q) > 0:
			return usage("kill takes one connection ID, or a filter (--state, --client-state, --src, --dst, --sport, --dport), not both")
		}
		id, err := strconv.ParseUint(pos[1], 10, 64)
		if err != nil {
			return usage("kill: %q is not a connection ID (the ID column of \"tcpd conns\")", pos[1])
		}
		if _, err := c.do(http.MethodDelete, "/v1/conns/"+strconv.FormatUint(id, 10)); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "reset connection %d\n", id)
		return nil
	}

	if output != "table" && output != "json" {
		return usage("-o: %q is not allowed (allowed: table, json)", output)
	}
	if summary && len(filterFlags) > 0 {
		return usage("-s summarises every connection; --%s filters the list only", filterFlags[0])
	}
	if summary && info {
		return usage("-s summarises every connection; -i details the list only")
	}

	path := "/v1/conns"
	if info {
		q.Set("info", "1")
	}
	if summary {
		path = "/v1/summary"
	} else if len(q) > 0 {
		path += "?" + q.Encode()
	}
	if summary {
		body, err := c.do(http.MethodGet, path)
		if err != nil {
			return err
		}
		if output == "json" {
			var buf bytes.Buffer
			if err := json.Indent(&buf, body, "", "  "); err != nil {
				return fmt.Errorf("reply from %s: %w", socket, err)
			}
			buf.WriteByte('\n')
			_, err := stdout.Write(buf.Bytes())
			return err
		}
		var s admin.Summary
		if err := json.Unmarshal(body, &s); err != nil {
			return fmt.Errorf("reply from %s: %w", socket, err)
		}
		return printSummary(stdout, s)
	}
	body, err := c.stream(http.MethodGet, path)
	if err != nil {
		return err
	}
	defer body.Close()
	if output == "json" {
		out := &outputErr{w: stdout}
		w := bufio.NewWriterSize(out, 64<<10)
		err := copyConnsIndented(w, body)
		if ferr := w.Flush(); err == nil {
			err = ferr
		}
		switch {
		case out.err != nil:
			// The output, not the daemon, failed (a full disk).
			return fmt.Errorf("writing the listing: %w", out.err)
		case err != nil:
			return fmt.Errorf("reply from %s %w", socket, err)
		}
		return nil
	}
	// The table's columns are as wide as their widest cell, so the rows
	// are held, decoded; the reply is not.
	var rows []admin.Conn
	_, err = readConns(body, nil, func(dec *json.Decoder) error {
		var r admin.Conn
		if err := dec.Decode(&r); err != nil {
			return err
		}
		rows = append(rows, r)
		return nil
	})
	if err != nil {
		return fmt.Errorf("reply from %s %w", socket, err)
	}
	return printConns(stdout, rows, info)
}

// maxRowBytes bounds what the client reads for one row of a listing: a
// row is under 1 KiB (about 700 bytes with -i), so a longer one is not a
// listing of tcpd's and is not read on into memory.
const maxRowBytes = 1 << 20

// readConns reads a listing, the admin.Conns object, from r one row at a
// time, so that a table of a million connections is never held whole as
// JSON: begin, if not nil, gets the listing's time when the rows start;
// row decodes each row from dec. It returns how many rows it read; its
// error says after how many, and says the reply was cut off when it ended
// early (the daemon stopped in the middle of the listing).
func readConns(r io.Reader, begin func(time json.RawMessage) error, row func(dec *json.Decoder) error) (n int, err error) {
	lim := &rowLimit{r: r, left: maxRowBytes}
	dec := json.NewDecoder(lim)
	defer func() {
		switch {
		case err == nil:
		case errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF):
			err = fmt.Errorf("ended after %d connections, in the middle of the listing (did tcpd stop?): %w", n, io.ErrUnexpectedEOF)
		default:
			err = fmt.Errorf("after %d connections: %w", n, err)
		}
	}()
	delim := func(want json.Delim) error {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		if t != want {
			return fmt.Errorf("%v where the listing has %v", t, want)
		}
		return nil
	}
	if err := delim('{'); err != nil {
		return 0, err
	}
	var ts json.RawMessage
	for dec.More() {
		key, err := dec.Token()
		if err != nil {
			return n, err
		}
		switch key {
		case "time":
			if err := dec.Decode(&ts); err != nil {
				return n, err
			}
		case "conns":
			if err := delim('['); err != nil {
				return n, err
			}
			if begin != nil {
				if err := begin(ts); err != nil {
					return n, err
				}
			}
			for dec.More() {
				if err := row(dec); err != nil {
					return n, err
				}
				n++
				lim.left = maxRowBytes
			}
			if err := delim(']'); err != nil {
				return n, err
			}
		default:
			// A field a newer daemon added.
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return n, err
			}
		}
	}
	return n, delim('}')
}

// rowLimit fails a read once more than left bytes have been read since
// readConns last reset it, at the end of a row. The decoder reads ahead,
// so a row may take up to twice the bound.
type rowLimit struct {
	r    io.Reader
	left int
}

func (l *rowLimit) Read(p []byte) (int, error) {
	if l.left <= 0 {
		return 0, fmt.Errorf("a row longer than %d bytes: not a listing of tcpd's", maxRowBytes)
	}
	if len(p) > l.left {
		p = p[:l.left]
	}
	n, err := l.r.Read(p)
	l.left -= n
	return n, err
}

// outputErr remembers the first error of writing to w, so that a failed
// output is not reported as a failed reply.
type outputErr struct {
	w   io.Writer
	err error
}

func (o *outputErr) Write(p []byte) (int, error) {
	n, err := o.w.Write(p)
	if err != nil && o.err == nil {
		o.err = err
	}
	return n, err
}

// copyConnsIndented writes the listing in r to w as json.Indent with two
// spaces would, one row at a time.
func copyConnsIndented(w *bufio.Writer, r io.Reader) error {
	var buf bytes.Buffer
	first := true
	n, err := readConns(r, func(ts json.RawMessage) error {
		if ts == nil {
			ts = json.RawMessage(`""`)
		}
		w.WriteString("{\n  \"time\": ")
		w.Write(ts)
		_, err := w.WriteString(",\n  \"conns\": [")
		return err
	}, func(dec *json.Decoder) error {
		var row json.RawMessage
		if err := dec.Decode(&row); err != nil {
			return err
		}
		buf.Reset()
		if err := json.Indent(&buf, row, "    ", "  "); err != nil {
			return err
		}
		sep := ",\n    "
		if first {
			sep, first = sep[1:], false
		}
		w.WriteString(sep)
		_, err := w.Write(buf.Bytes())
		return err
	})
	if err != nil {
		return err
	}
	if n > 0 {
		w.WriteString("\n  ")
	}
	_, err = w.WriteString("]\n}\n")
	return err
}

// addressHint explains a value of --src or --dst (flag) copied from the
// table's Client or Destination column, which --src and --dst refuse: an
// address with a port, whose port belongs in portFlag, or an IPv6 address
// in brackets. It is "" for any other value.
func addressHint(flag, portFlag, v string) string {
	if ap, err := netip.ParseAddrPort(v); err == nil {
		return fmt.Sprintf("--%s: %q has a port (use --%s %s --%s %d)", flag, v, flag, ap.Addr(), portFlag, ap.Port())
	}
	if inner, ok := strings.CutPrefix(v, "["); ok {
		if inner, ok := strings.CutSuffix(inner, "]"); ok {
			if a, err := netip.ParseAddr(inner); err == nil && a.Is6() {
				return fmt.Sprintf("--%s: %q is in brackets, which only an address with a port needs (use --%s %s)", flag, v, flag, a)
			}
		}
	}
	return ""
}

// repeated is the error for a flag allowed once given len(vs) times.
func repeated(flag string, vs []string) error {
	times := fmt.Sprintf("%d times", len(vs))
	if len(vs) == 2 {
		times = "twice"
	}
	quoted := make([]string, len(vs))
	for i, v := range vs {
		quoted[i] = strconv.Quote(v)
	}
	several := "prefixes"
	if strings.HasSuffix(flag, "port") {
		several = "ports"
	}
	return fmt.Errorf("--%s: given %s, %s (allowed: once; for several %s, run the command once for each)",
		flag, times, strings.Join(quoted, " and "), several)
}

// stringList is a flag that may be given more than once.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(v string) error {
	*l = append(*l, v)
	return nil
}

// parseInterleaved parses flags that may come after positional arguments
// ("kill 42 --socket p"), which flag.Parse alone stops at, and returns the
// positional arguments. Everything after "--" is positional.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// adminClient speaks to the daemon's admin socket.
type adminClient struct {
	path string
	http *http.Client
	// busyWait is how long do waits before asking a busy daemon again.
	busyWait time.Duration
}

// unreachableError is a failure to connect to the socket, as opposed to an
// error the daemon answered with.
type unreachableError struct{ err error }

func (e *unreachableError) Error() string { return e.err.Error() }
func (e *unreachableError) Unwrap() error { return e.err }

func newAdminClient(path string) *adminClient {
	dial := func(ctx context.Context, _, _ string) (net.Conn, error) {
		d := net.Dialer{Timeout: adminTimeout}
		c, err := d.DialContext(ctx, "unix", path)
		if err != nil {
			return nil, &unreachableError{err}
		}
		return idleConn{c}, nil
	}
	return &adminClient{
		path:     path,
		http:     &http.Client{Transport: &http.Transport{DialContext: dial}},
		busyWait: time.Second,
	}
}

// idleConn bounds each read and write on the admin socket by adminTimeout,
// rather than the whole exchange: a listing of a million connections takes
// longer than that to read, but a daemon that says nothing for that long
// is wedged.
type idleConn struct{ net.Conn }

func (c idleConn) Read(p []byte) (int, error) {
	c.SetReadDeadline(time.Now().Add(adminTimeout))
	return c.Conn.Read(p)
}

func (c idleConn) Write(p []byte) (int, error) {
	c.SetWriteDeadline(time.Now().Add(adminTimeout))
	return c.Conn.Write(p)
}

// busyRetries is how often do and stream ask again when the daemon is
// busy (503, too many listings at once), busyWait apart.
const busyRetries = 5

// maxReply bounds a reply read whole: a summary, a reset count, a reload's
// outcome or an error, each a few KiB. A listing is read as a stream.
const maxReply = 1 << 20

// do sends one request and returns the body of a 2xx reply; any other
// reply becomes an error carrying the daemon's message. A busy daemon is
// asked again, up to busyRetries times.
func (c *adminClient) do(method, path string) ([]byte, error) {
	for i := 0; ; i++ {
		body, busy, err := c.once(method, path)
		if !busy || i == busyRetries {
			return body, err
		}
		time.Sleep(c.busyWait)
	}
}

// stream is do for a reply too large to read whole (a listing): it returns
// the body, which the caller reads and closes.
func (c *adminClient) stream(method, path string) (io.ReadCloser, error) {
	for i := 0; ; i++ {
		body, busy, err := c.send(method, path)
		if !busy || i == busyRetries {
			return body, err
		}
		time.Sleep(c.busyWait)
	}
}

// once is one try of do; busy reports a 503.
func (c *adminClient) once(method, path string) (_ []byte, busy bool, _ error) {
	body, busy, err := c.send(method, path)
	if err != nil {
		return nil, busy, err
	}
	defer body.Close()
	b, err := io.ReadAll(io.LimitReader(body, maxReply+1))
	if err != nil {
		return nil, false, c.noAnswer(method, path, err)
	}
	if len(b) > maxReply {
		return nil, false, fmt.Errorf("%s %s on %s: reply longer than %d bytes", method, path, c.path, maxReply)
	}
	return b, false, nil
}

// send is one try of stream; busy reports a 503.
func (c *adminClient) send(method, path string) (_ io.ReadCloser, busy bool, _ error) {
	// The host is a placeholder: the transport always dials the socket.
	req, err := http.NewRequest(method, "http://tcpd"+path, nil)
	if err != nil {
		return nil, false, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ue *unreachableError
		if !errors.As(err, &ue) {
			return nil, false, c.noAnswer(method, path, err)
		}
		cause := ue.err
		var oe *net.OpError
		if errors.As(cause, &oe) {
			cause = oe.Err // "connect: no such file or directory", without the repeated path
		}
		hint := "is tcpd running? see admin.socket"
		if errors.Is(cause, os.ErrPermission) {
			hint = "run as root or as a member of the socket's group"
		}
		return nil, false, &unreachableError{fmt.Errorf("cannot reach tcpd at %s: %v (%s)", c.path, cause, hint)}
	}
	if resp.StatusCode/100 == 2 {
		return resp.Body, false, nil
	}
	defer resp.Body.Close()
	busy = resp.StatusCode == http.StatusServiceUnavailable
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxReply))
	var e admin.Error
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		return nil, busy, &statusError{resp.StatusCode, errors.New(e.Error)}
	}
	return nil, busy, &statusError{resp.StatusCode, fmt.Errorf("%s %s on %s: %s", method, path, c.path, resp.Status)}
}

// noAnswer is the error of a request the daemon took and did not answer
// whole: it said nothing for adminTimeout (stopped, or wedged: under
// systemd its watchdog restarts it), or it closed the connection (it
// exited or restarted meanwhile). Anything else is err as it is.
func (c *adminClient) noAnswer(method, path string, err error) error {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("tcpd at %s took %s %s and said nothing for %v (is it stopped or wedged? systemctl status tcpd): %w",
			c.path, method, path, adminTimeout, err)
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("tcpd at %s closed the connection before it answered %s %s (did it exit or restart? systemctl status tcpd): %w",
			c.path, method, path, err)
	}
	return fmt.Errorf("%s %s on %s: %w", method, path, c.path, err)
}

// statusError is an answer of the daemon other than 2xx; its message is
// the daemon's.
type statusError struct {
	code int
	err  error
}

func (e *statusError) Error() string { return e.err.Error() }
func (e *statusError) Unwrap() error { return e.err }

// printConns writes the table, like `ss -tan` with both ends' states;
// with info, each row is followed by its TCP details, like `ss -tani`.
func printConns(w io.Writer, rows []admin.Conn, info bool) error {
	if info {
		// The detail lines go between the rows once tabwriter has aligned
		// them: a line without cells would end its column block.
		var table bytes.Buffer
		if err := printConns(&table, rows, false); err != nil {
			return err
		}
		lines := strings.SplitAfter(table.String(), "\n")
		var b strings.Builder
		b.WriteString(lines[0])
		for i, r := range rows {
			b.WriteString(lines[i+1])
			b.WriteString("\t" + detailLine(r) + "\n")
		}
		_, err := io.WriteString(w, b.String())
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tState\tClient-State\tClient\tDestination\tAge\tIn-State\tBytes-In\tBytes-Out\tRTT\tRetrans\tMSS\tHandshake\tTW-Left")
	for _, r := range rows {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n",
			r.ID, ssName(r.State), ssName(r.ClientState), r.Client, r.Dst,
			humanDuration(r.AgeSeconds), humanDuration(r.InStateSeconds),
			humanBytes(r.BytesIn), humanBytes(r.BytesOut),
			knownDuration(r.RTTSeconds), r.Retransmits, mssColumn(r), knownDuration(r.HandshakeSeconds),
			knownDuration(r.TimeWaitLeftSeconds))
	}
	return tw.Flush()
}

// detailLine is a row's TCP details in ss -i's style: the client leg, as
// the netstack has it, then the upstream socket, as the kernel has it.
func detailLine(r admin.Conn) string {
	ssthresh := "-"
	if r.Ssthresh > 0 {
		ssthresh = strconv.FormatUint(uint64(r.Ssthresh), 10)
	}
	cc := r.CongestionControl
	if cc == "" {
		cc = "-"
	}
	client := fmt.Sprintf("client: %s rtt:%s/%s rto:%s cwnd:%d ssthresh:%s retrans:%d recv-q:%d send-q:%d",
		cc, knownDuration(r.RTTSeconds), knownDuration(r.RTTVarSeconds), knownDuration(r.RTOSeconds),
		r.Cwnd, ssthresh, r.Retransmits, r.RecvQ, r.SendQ)
	u := r.UpstreamTCP
	if u == nil {
		return client + " | upstream: none"
	}
	local := r.Upstream
	if local == "" {
		local = "-"
	}
	return fmt.Sprintf("%s | upstream %s: rtt:%s/%s cwnd:%d retrans:%d recv-q:%d send-q:%d",
		client, local, knownDuration(u.RTTSeconds), knownDuration(u.RTTVarSeconds), u.Cwnd, u.Retransmits, u.RecvQ, u.SendQ)
}

// mssColumn is the MSS tcpd sends with, marked "*" when tcpd lowered the
// client's MSS to the path back to it; "-" for a row without one.
func mssColumn(r admin.Conn) string {
	switch {
	case r.MSS == 0:
		return "-"
	case r.MSSClamped:
		return strconv.Itoa(r.MSS) + "*"
	}
	return strconv.Itoa(r.MSS)
}

// printSummary writes totals, like `ss -s`.
func printSummary(w io.Writer, s admin.Summary) error {
	c := s.Counters
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "Total: %d live (opened %d, established %d, closed %d)\n\n", s.Live, c.Opened, c.Established, c.Closed)
	fmt.Fprintln(tw, "State\ttcpd\tclient")
	for st := range conntrack.NumStates {
		fmt.Fprintf(tw, "%s\t%d\t%d\n", st.SSName(), s.States[st.String()], s.ClientStates[st.String()])
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nTIME-WAIT: %d of %d used, timeout %s (entered %d, overflowed %d, reused %d)\n\n",
		s.TimeWait, s.TimeWaitLimit, humanDuration(s.TimeWaitTimeoutSeconds), c.TimeWaitEntered, c.TimeWaitOverflow, c.TimeWaitReused)
	fmt.Fprintln(tw, "Latency\tp50\tp99\tsamples")
	for _, l := range []struct {
		name string
		l    admin.Latency
	}{{"handshake", s.Handshake}, {"dial", s.Dial}, {"setup", s.Setup}} {
		p50, p99 := "-", "-"
		if l.l.Count > 0 {
			p50, p99 = humanDuration(l.l.P50Seconds), humanDuration(l.l.P99Seconds)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", l.name, p50, p99, l.l.Count)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "\nResets: %d; RSTs ignored: %d; untracked segments: %d; table full: %d; expired: %d\n",
		c.Resets, c.RSTIgnored, c.Untracked, c.TableFull, c.Expired)
	_, err := fmt.Fprintf(w, "Corrections: %d (tcpd states corrected from the netstack's; 0 when healthy)\n", c.Corrections)
	return err
}

// ssName turns an API state label into the name `ss` prints.
func ssName(label string) string {
	if s, ok := conntrack.ParseState(label); ok {
		return s.SSName()
	}
	return strings.ToUpper(label)
}

// knownDuration is humanDuration, or "-" for zero (not known, or not
// applicable).
func knownDuration(sec float64) string {
	if sec <= 0 {
		return "-"
	}
	return humanDuration(sec)
}

// humanDuration formats seconds with about two significant digits:
// 850µs, 2.5ms, 12ms, 3.2s, 42s, 4m10s, 2h5m, 3d4h.
func humanDuration(sec float64) string {
	d := time.Duration(math.Round(sec * 1e9))
	const day = 24 * time.Hour
	if d <= 0 {
		return "0s"
	}
	if r := d.Round(time.Microsecond); r < time.Millisecond {
		return fmt.Sprintf("%dµs", r/time.Microsecond)
	}
	if r := d.Round(100 * time.Microsecond); r < 10*time.Millisecond {
		return oneDecimal(float64(r)/float64(time.Millisecond), "ms")
	}
	if r := d.Round(time.Millisecond); r < time.Second {
		return fmt.Sprintf("%dms", r/time.Millisecond)
	}
	if r := d.Round(100 * time.Millisecond); r < 10*time.Second {
		return oneDecimal(r.Seconds(), "s")
	}
	if r := d.Round(time.Second); r < time.Hour {
		if r < time.Minute {
			return fmt.Sprintf("%ds", r/time.Second)
		}
		return fmt.Sprintf("%dm%ds", r/time.Minute, r%time.Minute/time.Second)
	}
	if r := d.Round(time.Minute); r < day {
		return fmt.Sprintf("%dh%dm", r/time.Hour, r%time.Hour/time.Minute)
	}
	r := d.Round(time.Hour)
	return fmt.Sprintf("%dd%dh", r/day, r%day/time.Hour)
}

// humanBytes formats a byte count in binary units with about two
// significant digits: 300B, 1.2KiB, 56KiB, 1MiB.
func humanBytes(n uint64) string {
	if n < 1024 {
		return fmt.Sprintf("%dB", n)
	}
	v := float64(n)
	for _, unit := range []string{"KiB", "MiB", "GiB", "TiB", "PiB"} {
		v /= 1024
		if r := math.Round(v*10) / 10; r < 10 {
			return oneDecimal(r, unit)
		}
		if r := math.Round(v); r < 1024 {
			return fmt.Sprintf("%.0f%s", r, unit)
		}
	}
	return fmt.Sprintf("%.0fEiB", v/1024)
}

// oneDecimal formats v with one decimal, dropping a ".0".
func oneDecimal(v float64, unit string) string {
	return strings.TrimSuffix(strconv.FormatFloat(v, 'f', 1, 64), ".0") + unit
}
