// Command demo shows tcpd doing its job behind a real WireGuard tunnel: it
// builds two client namespaces that reach a gateway namespace over
// WireGuard (the wireguard module's device package over real TUNs, no
// kernel module or wg binary), sets the gateway up as README's "Running it
// on a WireGuard gateway" says, runs tcpd there on its embedded default
// configuration, sends real traffic through it (HTTP fetches, a denied
// fetch, a bulk transfer from a client whose MSS is too big for the
// tunnel), shows the connection manager at work (`tcpd conns` while
// transfers and held connections are live, `tcpd conns -s` after some
// close, the matching lines of /metrics), and removes everything. It is
// what `sudo make demo` runs.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"tcpd/configs"
	"tcpd/internal/netlab"
)

func main() {
	bin := flag.String("tcpd", "bin/tcpd", "tcpd `binary` to run")
	size := flag.Int64("bulk", 64<<20, "bytes to send each way in the bulk transfer")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: needs root to create network namespaces and TUN devices (try: sudo make demo)")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	err := run(ctx, *bin, *size)
	// The wgpeer binary the lab built.
	if cerr := netlab.CloseAll(); cerr != nil {
		err = errors.Join(err, cerr)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
	fmt.Printf("\ndemo done in %v\n", time.Since(start).Round(100*time.Millisecond))
}

func step(format string, args ...any) {
	fmt.Printf("\n\033[1m==> "+format+"\033[0m\n", args...)
}

// heldConns is how many connections the demo holds open from the first
// client while it shows the connection manager.
const heldConns = 6

func run(ctx context.Context, bin string, size int64) (err error) {
	step("building a throwaway topology: 2 client namespaces ══ WireGuard ══ gateway ns (tcpd) ── server ns")
	lab, err := netlab.New(netlab.Options{WireGuard: &netlab.WireGuard{Peers: 2}})
	if err != nil {
		return err
	}
	defer func() {
		step("cleaning up")
		if cerr := lab.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		left, _ := netlab.Leftovers()
		for _, n := range left {
			if strings.Contains(n, lab.ID) {
				err = errors.Join(err, fmt.Errorf("namespace %s was left behind", n))
			}
		}
		if err == nil {
			fmt.Println("    namespaces, links, WireGuard peers and processes removed")
		}
	}()
	a, b := lab.Peers[0], lab.Peers[1]
	for i, p := range lab.Peers {
		fmt.Printf("    client %d %-22s %s, %s on %s (MTU %d), a WireGuard peer of the gateway\n", i, p.NS.Name, p.Addr4, p.Addr6, p.Link, p.MTU)
	}
	fmt.Printf("    gateway  %-22s %s on %s (MTU %d), UDP %d; forwarding on; route 100.64.0.0/10 and fd64::/64 dev %s\n",
		lab.Gateway.Name, lab.GatewayClientAddr4, lab.GatewayClientLink, lab.WireGuardMTU, netlab.WireGuardPort, lab.GatewayClientLink)
	fmt.Printf("    server   %-22s %s, %s\n", lab.Server.Name, lab.ServerAddr4, lab.ServerAddr6)

	step("starting tcpd on its embedded default configuration (admin socket moved into the demo's directory)")
	dir, err := os.MkdirTemp("", "tcpd-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "tcpd.sock")
	cfg := strings.Replace(string(configs.Default), "socket: /run/tcpd/tcpd.sock", "socket: "+sock, 1)
	if cfg == string(configs.Default) {
		return errors.New("the embedded configuration has no admin socket line to move")
	}
	p, err := lab.StartTCPD(ctx, bin, cfg)
	if err != nil {
		return err
	}
	logs := &logPrinter{p: p}
	logs.print()
	fmt.Printf("    routed into %s as README says: ip rule add iif %s ipproto tcp lookup %d (and -6); ip route add default dev %s table %d\n",
		p.TUN(), lab.GatewayClientLink, netlab.TUNTable, p.TUN(), netlab.TUNTable)
	tcpd := &tcpdClient{bin: bin, sock: sock, lab: lab}

	web := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from the server namespace; you came from %s\n", r.RemoteAddr)
	})}
	ln, err := lab.Server.Listen("tcp", ":80")
	if err != nil {
		return err
	}
	go web.Serve(ln)
	defer web.Close()

	for _, host := range []string{lab.ServerAddr4.String(), "[" + lab.ServerAddr6.String() + "]"} {
		step("HTTP fetch from client 0 through the tunnel and tcpd: curl http://%s/", host)
		out, err := fetch(ctx, a.NS, "http://"+host+"/")
		fmt.Print(indent(out))
		if err != nil {
			return err
		}
	}
	step("a fetch of the cloud metadata address is refused by tcpd's destination policy")
	out, err := fetch(ctx, a.NS, "http://169.254.169.254/")
	fmt.Print(indent(out))
	if err == nil {
		return errors.New("the metadata address answered; the destination policy failed")
	}
	logs.print()

	// Client 1 routes a LAN without clamping: its SYNs offer MSS 1460
	// through a 1420-byte tunnel.
	if err := setAdvMSS(b, 1460); err != nil {
		return err
	}
	step("client 1 offers MSS 1460 through the %d-byte tunnel; meanwhile client 0 holds %d connections", b.MTU, heldConns)
	fmt.Printf("    without tcp.mss_clamp, tcpd's 1500-byte segments would not fit the tunnel and the download would stall:\n" +
		"    the kernel's \"fragmentation needed\" goes to the server's address, never to tcpd\n")
	held, err := holdConns(ctx, lab, a)
	if err != nil {
		return err
	}
	defer held.close()
	bulkDone := make(chan error, 1)
	bulkStarted := make(chan struct{})
	go func() { bulkDone <- bulk(ctx, lab, b.NS, size, bulkStarted) }()
	<-bulkStarted
	time.Sleep(300 * time.Millisecond) // let the transfer get going

	step("tcpd conns, while the transfer and the held connections are live (MSS*: lowered to the tunnel)")
	fmt.Print(indent(tcpd.conns("conns")))
	if err := <-bulkDone; err != nil {
		return err
	}

	step("closing: the server closes 3 held connections first (TIME-WAIT on tcpd's side), client 0 half-closes 2 (CLOSE-WAIT)")
	if err := held.closeSome(); err != nil {
		return err
	}
	fmt.Print(indent(tcpd.conns("conns")))
	step("tcpd conns -s")
	fmt.Print(indent(tcpd.conns("conns", "-s")))

	step("the matching lines of http://127.0.0.1:9810/metrics (inside the gateway namespace)")
	metrics, err := tcpd.metrics(ctx)
	if err != nil {
		return err
	}
	fmt.Print(indent(metrics))

	held.close()
	step("stopping tcpd with SIGTERM (drains, resets the rest, removes its TUN)")
	if err := p.Stop(); err != nil {
		return err
	}
	logs.print()
	return ctx.Err()
}

// setAdvMSS makes the peer's IPv4 SYNs offer mss, as a route's advmss does.
func setAdvMSS(p *netlab.Peer, mss int) error {
	h := p.NS.Netlink()
	l, err := h.LinkByName(p.Link)
	if err != nil {
		return err
	}
	return h.RouteReplace(&netlink.Route{LinkIndex: l.Attrs().Index, Scope: netlink.SCOPE_LINK, AdvMSS: mss,
		Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}})
}

// fetch GETs url from ns with curl, or with Go's HTTP client where curl is
// not installed.
func fetch(ctx context.Context, ns *netlab.NS, url string) (string, error) {
	if _, err := exec.LookPath("curl"); err == nil {
		out, err := ns.Command(ctx, "curl", "-sS", "--max-time", "10", "-w",
			"(HTTP %{http_code}, connected in %{time_connect}s, total %{time_total}s)\n", url).CombinedOutput()
		if err != nil {
			return string(out), fmt.Errorf("curl %s: %w", url, err)
		}
		return string(out), nil
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return ns.Dial(ctx, network, addr)
		},
	}}
	start := time.Now()
	resp, err := client.Get(url)
	if err != nil {
		return err.Error() + "\n", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return fmt.Sprintf("%s(HTTP %d, total %v)\n", body, resp.StatusCode, time.Since(start).Round(time.Microsecond)), err
}

// bulk sends size bytes each way between ns and the server at once and
// compares SHA-256 on both ends. started is closed once connected.
func bulk(ctx context.Context, lab *netlab.Lab, ns *netlab.NS, size int64, started chan<- struct{}) error {
	connected := false
	defer func() {
		if !connected {
			close(started)
		}
	}()
	ln, err := lab.Server.Listen("tcp", ":5201")
	if err != nil {
		return err
	}
	defer ln.Close()
	type result struct {
		sum [32]byte
		n   int64
		err error
	}
	srv := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srv <- result{err: err}
			return
		}
		defer c.Close()
		sum, n, err := exchange(c, 2, size, true)
		srv <- result{sum, n, err}
	}()
	c, err := ns.DialTimeout("tcp", net.JoinHostPort(lab.ServerAddr4.String(), "5201"), 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	connected = true
	close(started)
	go func() { <-ctx.Done(); c.Close() }()
	c.SetDeadline(time.Now().Add(40 * time.Second))
	begin := time.Now()
	sum, n, err := exchange(c, 1, size, false)
	took := time.Since(begin)
	if err != nil {
		return fmt.Errorf("bulk transfer: %w (received %d bytes)", err, n)
	}
	s := <-srv
	if s.err != nil {
		return fmt.Errorf("bulk transfer, server side: %w", s.err)
	}
	okDown := n == size && sum == streamSum(2, size)
	okUp := s.n == size && s.sum == streamSum(1, size)
	mbps := float64(size*8) / took.Seconds() / 1e6
	fmt.Printf("    bulk: client 1 → server: %d bytes, sha256 %x…  %s\n", s.n, s.sum[:6], verdict(okUp))
	fmt.Printf("    bulk: server → client 1: %d bytes, sha256 %x…  %s\n", n, sum[:6], verdict(okDown))
	fmt.Printf("    bulk: took %v, %.0f Mbit/s each way (at the same time, through WireGuard and tcpd)\n", took.Round(time.Millisecond), mbps)
	if !okUp || !okDown {
		return errors.New("bulk transfer corrupted or truncated")
	}
	return nil
}

func verdict(ok bool) string {
	if ok {
		return "identical"
	}
	return "MISMATCH"
}

func stream(seed uint64, n int64) io.Reader {
	var key [32]byte
	key[0] = byte(seed)
	return io.LimitReader(rand.NewChaCha8(key), n)
}

func streamSum(seed uint64, n int64) [32]byte {
	h := sha256.New()
	io.Copy(h, stream(seed, n))
	return [32]byte(h.Sum(nil))
}

// exchange sends n bytes of stream seed on c while it reads c to EOF, and
// returns what it read's SHA-256 and length. With finLast, it sends its FIN
// only once it has read the other end's: the close order is then the same on
// every run (the other end closes first, and tcpd's end of the connection
// never waits in TIME-WAIT), so the demo's TIME-WAIT count is exact.
func exchange(c net.Conn, seed uint64, n int64, finLast bool) ([32]byte, int64, error) {
	werr := make(chan error, 1)
	eof := make(chan struct{})
	go func() {
		_, err := io.Copy(c, stream(seed, n))
		if finLast {
			<-eof
		}
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	h := sha256.New()
	got, err := io.Copy(h, c)
	close(eof)
	return [32]byte(h.Sum(nil)), got, errors.Join(err, <-werr)
}

// held is a set of connections from a client to the server, held open.
type held struct {
	ln             net.Listener
	client, server []net.Conn
}

// holdConns opens heldConns connections from p to the server, half over
// IPv6, and waits until the server has accepted them all.
func holdConns(ctx context.Context, lab *netlab.Lab, p *netlab.Peer) (*held, error) {
	ln, err := lab.Server.Listen("tcp", ":7000")
	if err != nil {
		return nil, err
	}
	h := &held{ln: ln}
	accepted := make(chan net.Conn, heldConns)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	for i := range heldConns {
		dst := lab.ServerAddr4
		if i%2 == 1 {
			dst = lab.ServerAddr6
		}
		c, err := p.NS.DialTimeout("tcp", netip.AddrPortFrom(dst, 7000).String(), 5*time.Second)
		if err != nil {
			h.close()
			return nil, err
		}
		h.client = append(h.client, c)
	}
	for range heldConns {
		select {
		case c := <-accepted:
			h.server = append(h.server, c)
		case <-time.After(5 * time.Second):
			h.close()
			return nil, errors.New("the server did not accept the held connections")
		case <-ctx.Done():
			h.close()
			return nil, ctx.Err()
		}
	}
	return h, nil
}

// closeSome has the server close three connections first (the client's
// kernel answers the FIN and closes too, so tcpd's end ends in TIME-WAIT)
// and the client half-close two (tcpd's end in CLOSE-WAIT, the client's in
// FIN-WAIT-2), and waits a moment for the segments to cross.
func (h *held) closeSome() error {
	for _, c := range h.server[:3] {
		c.Close()
	}
	// The client answers the server's FIN with its own once it reads EOF.
	closed := map[net.Conn]bool{}
	deadline := time.Now().Add(2 * time.Second)
	for len(closed) < 3 && time.Now().Before(deadline) {
		for _, c := range h.client {
			if closed[c] {
				continue
			}
			c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
			var b [1]byte
			if _, err := c.Read(b[:]); errors.Is(err, io.EOF) {
				c.Close()
				closed[c] = true
			}
		}
	}
	half := 0
	for _, c := range h.client {
		c.SetReadDeadline(time.Time{})
		if !closed[c] && half < 2 {
			if err := c.(*net.TCPConn).CloseWrite(); err != nil {
				return err
			}
			half++
		}
	}
	time.Sleep(300 * time.Millisecond)
	return nil
}

func (h *held) close() {
	for _, c := range h.client {
		c.Close()
	}
	for _, c := range h.server {
		c.Close()
	}
	h.ln.Close()
}

// tcpdClient asks the running tcpd, as an operator would.
type tcpdClient struct {
	bin, sock string
	lab       *netlab.Lab
}

func (t *tcpdClient) conns(args ...string) string {
	out, err := exec.Command(t.bin, append(args, "--socket", t.sock)...).CombinedOutput()
	if err != nil {
		return fmt.Sprintf("tcpd %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// metrics scrapes /metrics in the gateway namespace and returns the lines
// the demo talks about: the state gauge, the handshake histogram's count
// and an estimate of its median, TIME_WAIT occupancy, the MSS clamp and the
// drops.
func (t *tcpdClient) metrics(ctx context.Context) (string, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return t.lab.Gateway.Dial(ctx, network, addr)
		},
	}}
	resp, err := client.Get("http://127.0.0.1:9810/metrics")
	if err != nil {
		return "", fmt.Errorf("scrape: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	var out strings.Builder
	var buckets []bucket
	var count float64
	var drops []string
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		name, value, ok := sample(line)
		if !ok {
			continue
		}
		switch {
		case strings.HasPrefix(name, "tcpd_tcp_connection_states{"),
			name == "tcpd_tcp_time_wait_connections", name == "tcpd_tcp_time_wait_limit",
			name == "tcpd_tcp_mss_clamped_total":
			out.WriteString(line + "\n")
		case strings.HasPrefix(name, "tcpd_tcp_handshake_duration_seconds_bucket{"):
			le := name[strings.Index(name, `le="`)+4 : len(name)-2]
			b := bucket{value: value}
			if b.le, err = strconv.ParseFloat(le, 64); err != nil {
				b.le = math.Inf(1)
			}
			buckets = append(buckets, b)
		case name == "tcpd_tcp_handshake_duration_seconds_count":
			count = value
			out.WriteString(line + "\n")
		case strings.HasPrefix(name, "tcpd_dropped_total{"):
			if value != 0 {
				drops = append(drops, line)
			}
		}
	}
	fmt.Fprintf(&out, "# tcpd_tcp_handshake_duration_seconds p50 ≈ %s (from its buckets, as histogram_quantile(0.5, ...) would say)\n",
		formatSeconds(quantile(0.5, buckets, count)))
	if len(drops) == 0 {
		out.WriteString("# tcpd_dropped_total: 0 for every reason\n")
	}
	for _, d := range drops {
		out.WriteString(d + "\n")
	}
	return out.String(), nil
}

type bucket struct{ le, value float64 }

// sample splits a line of the text format into its name (with labels) and
// value.
func sample(line string) (string, float64, bool) {
	if line == "" || line[0] == '#' {
		return "", 0, false
	}
	i := strings.LastIndexByte(line, ' ')
	if i < 0 {
		return "", 0, false
	}
	v, err := strconv.ParseFloat(line[i+1:], 64)
	return line[:i], v, err == nil
}

// quantile estimates the q-quantile from cumulative classic buckets, by
// linear interpolation inside the bucket that holds it, as Prometheus'
// histogram_quantile does.
func quantile(q float64, bs []bucket, count float64) float64 {
	if count == 0 || len(bs) == 0 {
		return math.NaN()
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].le < bs[j].le })
	rank := q * count
	prevLe, prevCount := 0.0, 0.0
	for _, b := range bs {
		if b.value >= rank {
			if math.IsInf(b.le, 1) {
				return prevLe
			}
			return prevLe + (b.le-prevLe)*(rank-prevCount)/(b.value-prevCount)
		}
		prevLe, prevCount = b.le, b.value
	}
	return prevLe
}

func formatSeconds(s float64) string {
	if math.IsNaN(s) {
		return "-"
	}
	return time.Duration(s * float64(time.Second)).Round(time.Microsecond).String()
}

// logPrinter prints tcpd's JSON log lines that arrived since the last call,
// one readable line each.
type logPrinter struct {
	p    *netlab.Proc
	seen int
}

func (l *logPrinter) print() {
	time.Sleep(100 * time.Millisecond) // let the last lines of a step arrive
	lines := l.p.LogLines()
	for _, m := range lines[min(l.seen, len(lines)):] {
		fmt.Println("    tcpd | " + format(m))
	}
	l.seen = len(lines)
}

func format(m map[string]any) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-5v %v", m["level"], m["msg"])
	keys := make([]string, 0, len(m))
	for k := range m {
		switch k {
		case "level", "msg", "ts", "caller", "logger":
		default:
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		v, _ := json.Marshal(m[k])
		fmt.Fprintf(&b, " %s=%s", k, v)
	}
	return b.String()
}

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return ""
	}
	return "    " + strings.ReplaceAll(s, "\n", "\n    ") + "\n"
}
