// Command demo shows tcpd doing its job on a throwaway topology: it builds a
// client, gateway and server network namespace, runs tcpd in the gateway
// with the embedded default configuration, sends real traffic from the
// client through tcpd's TUN (an HTTP fetch, a denied fetch and a bulk
// transfer each way), prints what happened, and removes everything. It is
// what `sudo make demo` runs.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"tcpd/internal/netlab"
)

func main() {
	bin := flag.String("tcpd", "bin/tcpd", "tcpd `binary` to run")
	size := flag.Int64("bulk", 256<<20, "bytes to send each way in the bulk transfer")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: needs root to create network namespaces and a TUN device (try: sudo make demo)")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *bin, *size); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) {
	fmt.Printf("\n\033[1m==> "+format+"\033[0m\n", args...)
}

func run(ctx context.Context, bin string, size int64) (err error) {
	step("building a throwaway topology: client ns ── gateway ns (tcpd) ── server ns")
	lab, err := netlab.New(netlab.Options{})
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
			if strings.HasPrefix(n, lab.Client.Name[:len(lab.Client.Name)-1]) {
				err = errors.Join(err, fmt.Errorf("namespace %s was left behind", n))
			}
		}
		if err == nil {
			fmt.Println("    namespaces, links and processes removed")
		}
	}()
	fmt.Printf("    client  %-22s %s, %s\n", lab.Client.Name, lab.ClientAddr4, lab.ClientAddr6)
	fmt.Printf("    gateway %-22s no route off the machine; traffic from the client is policy-routed into tcpd's TUN\n", lab.Gateway.Name)
	fmt.Printf("    server  %-22s %s, %s\n", lab.Server.Name, lab.ServerAddr4, lab.ServerAddr6)

	step("starting tcpd with its embedded default configuration (log level debug)")
	p, err := lab.StartTCPD(ctx, bin, "", "--log-level", "debug")
	if err != nil {
		return err
	}
	logs := &logPrinter{p: p}
	logs.print()

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
		step("HTTP fetch from the client through tcpd: curl http://%s/", host)
		out, err := fetch(ctx, lab, "http://"+host+"/")
		fmt.Print(indent(out))
		if err != nil {
			return err
		}
		logs.print()
	}

	step("a fetch of the cloud metadata address is refused by tcpd's destination policy")
	out, err := fetch(ctx, lab, "http://169.254.169.254/")
	fmt.Print(indent(out))
	if err == nil {
		return errors.New("the metadata address answered; the destination policy failed")
	}
	logs.print()

	step("bulk transfer: %d MiB each way at once, checked with SHA-256", size>>20)
	if err := bulk(ctx, lab, size); err != nil {
		return err
	}
	logs.print()

	step("stopping tcpd with SIGTERM (drains, resets the rest, removes its TUN)")
	if err := p.Stop(); err != nil {
		return err
	}
	logs.print()
	return ctx.Err()
}

// fetch GETs url from the client namespace with curl, or with Go's HTTP
// client where curl is not installed.
func fetch(ctx context.Context, lab *netlab.Lab, url string) (string, error) {
	if _, err := exec.LookPath("curl"); err == nil {
		out, err := lab.Client.Command(ctx, "curl", "-sS", "--max-time", "10", "-w",
			"(HTTP %{http_code}, connected in %{time_connect}s, total %{time_total}s)\n", url).CombinedOutput()
		if err != nil {
			return string(out), fmt.Errorf("curl %s: %w", url, err)
		}
		return string(out), nil
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return lab.Client.Dial(ctx, network, addr)
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

// bulk sends size bytes each way between client and server concurrently and
// compares SHA-256 on both ends.
func bulk(ctx context.Context, lab *netlab.Lab, size int64) error {
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
		sum, n, err := exchange(c, 2, size)
		srv <- result{sum, n, err}
	}()
	c, err := lab.Client.DialTimeout("tcp", net.JoinHostPort(lab.ServerAddr4.String(), "5201"), 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	go func() { <-ctx.Done(); c.Close() }()
	start := time.Now()
	sum, n, err := exchange(c, 1, size)
	took := time.Since(start)
	if err != nil {
		return fmt.Errorf("bulk transfer: %w", err)
	}
	s := <-srv
	if s.err != nil {
		return fmt.Errorf("bulk transfer, server side: %w", s.err)
	}
	okDown := n == size && sum == streamSum(2, size)
	okUp := s.n == size && s.sum == streamSum(1, size)
	mbps := float64(size*8) / took.Seconds() / 1e6
	fmt.Printf("    client → server: %d bytes, sha256 %x…  %s\n", s.n, s.sum[:6], verdict(okUp))
	fmt.Printf("    server → client: %d bytes, sha256 %x…  %s\n", n, sum[:6], verdict(okDown))
	fmt.Printf("    took %v, %.0f Mbit/s each way (at the same time)\n", took.Round(time.Millisecond), mbps)
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

func exchange(c net.Conn, seed uint64, n int64) ([32]byte, int64, error) {
	werr := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, stream(seed, n))
		if err == nil {
			err = c.(*net.TCPConn).CloseWrite()
		}
		werr <- err
	}()
	h := sha256.New()
	got, err := io.Copy(h, c)
	return [32]byte(h.Sum(nil)), got, errors.Join(err, <-werr)
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
