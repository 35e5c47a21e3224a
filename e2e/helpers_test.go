//go:build linux

// Package e2e_test holds tcpd's tier B tests: the real binary on a real TUN in
// network namespaces the tests create and remove, driven by the kernel's own
// TCP clients and servers. They skip, saying why, when not run as root.
package e2e_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"tcpd/internal/netlab"
)

// gwConfig is the part of tcpd's configuration a test varies; the rest is the
// embedded default.
type gwConfig struct {
	MTU     int
	Offload string
	// Queues is tun.queues; "" means $TCPD_E2E_TUN_QUEUES, or auto if that
	// is unset, so that the whole suite can run with one queue and with
	// several.
	Queues           string
	Clients          []string
	DialTimeout      string
	HalfCloseTimeout string
	TimeWait         string
	TimeWaitLimit    int
	// The keys below are written only when set; unset, tcpd's defaults
	// apply.
	KeepaliveIdle, KeepaliveInterval string   // tcp.keepalive.idle, .interval
	KeepaliveCount                   int      // tcp.keepalive.count
	UserTimeout                      string   // tcp.user_timeout
	IdleTimeout                      string   // tcp.idle_timeout
	HandshakeTimeout                 string   // tcp.handshake_timeout
	CongestionControl                string   // tcp.congestion_control
	Mark                             uint32   // upstream.mark
	MaxInFlightPerClient             int      // limits.max_in_flight_per_client
	MaxConnections                   int      // limits.max_connections
	Memory                           string   // limits.memory
	RouteTable                       int      // tun.route_table
	MSSClamp                         string   // tcp.mss_clamp
	PolicyAllow                      []string // policy.allow
	ShutdownGrace                    string   // shutdown_grace
	// LogLevel is log.level; "" means debug, which logs every connection.
	LogLevel string
	// Metrics turns on the metrics listener at metricsAddr inside the
	// gateway namespace; AdminSocket, when set, is the admin socket's path.
	Metrics     bool
	AdminSocket string
	// OpenFiles, when set, is tcpd's open-file limit (not a key: the
	// process is started under it).
	OpenFiles int
	// MaxProcs, when set, is tcpd's GOMAXPROCS (not a key: the process's
	// environment), as on a gateway with that many CPUs: as many shards,
	// and as many TUN queues under tun.queues auto.
	MaxProcs int
	// SourceAddresses is upstream.source_addresses.
	SourceAddresses []string
	// Stderr, when set, is where tcpd's log goes instead of to the
	// harness (netlab.TCPDOptions.Stderr), for a test of what becomes of
	// it.
	Stderr *os.File
}

// env is the environment tcpd gets on top of the test's.
func (c gwConfig) env() []string {
	if c.MaxProcs > 0 {
		return []string{fmt.Sprintf("GOMAXPROCS=%d", c.MaxProcs)}
	}
	return nil
}

// metricsAddr is where tcpd listens for scrapes inside the gateway namespace.
const metricsAddr = "127.0.0.1:9810"

func (c gwConfig) yaml() string {
	if c.MTU == 0 {
		c.MTU = 1500
	}
	if c.Offload == "" {
		c.Offload = "auto"
	}
	if c.Queues == "" {
		c.Queues = os.Getenv("TCPD_E2E_TUN_QUEUES")
	}
	if c.Queues == "" {
		c.Queues = "auto"
	}
	if c.Clients == nil {
		c.Clients = []string{"100.64.0.0/10", "fd64::/64"}
	}
	if c.DialTimeout == "" {
		c.DialTimeout = "10s"
	}
	if c.HalfCloseTimeout == "" {
		c.HalfCloseTimeout = "60s"
	}
	if c.TimeWait == "" {
		c.TimeWait = "30s"
	}
	if c.TimeWaitLimit == 0 {
		c.TimeWaitLimit = 16384
	}
	listen := ""
	if c.Metrics {
		listen = metricsAddr
	}
	// extraTCP goes at the end of the tcp section, limits after it.
	var extraTCP, limits []string
	var ka []string
	if c.KeepaliveIdle != "" {
		ka = append(ka, "idle: "+c.KeepaliveIdle)
	}
	if c.KeepaliveInterval != "" {
		ka = append(ka, "interval: "+c.KeepaliveInterval)
	}
	if c.KeepaliveCount != 0 {
		ka = append(ka, fmt.Sprintf("count: %d", c.KeepaliveCount))
	}
	if len(ka) > 0 {
		extraTCP = append(extraTCP, "keepalive: {"+strings.Join(ka, ", ")+"}")
	}
	if c.UserTimeout != "" {
		extraTCP = append(extraTCP, "user_timeout: "+c.UserTimeout)
	}
	if c.IdleTimeout != "" {
		extraTCP = append(extraTCP, "idle_timeout: "+c.IdleTimeout)
	}
	if c.HandshakeTimeout != "" {
		extraTCP = append(extraTCP, "handshake_timeout: "+c.HandshakeTimeout)
	}
	if c.CongestionControl != "" {
		extraTCP = append(extraTCP, "congestion_control: "+c.CongestionControl)
	}
	if c.MSSClamp != "" {
		extraTCP = append(extraTCP, "mss_clamp: "+c.MSSClamp)
	}
	if c.MaxInFlightPerClient != 0 {
		limits = append(limits, fmt.Sprintf("max_in_flight_per_client: %d", c.MaxInFlightPerClient))
	}
	if c.MaxConnections != 0 {
		limits = append(limits, fmt.Sprintf("max_connections: %d", c.MaxConnections))
	}
	if c.Memory != "" {
		limits = append(limits, "memory: "+c.Memory)
	}
	var extra strings.Builder
	for _, l := range extraTCP {
		extra.WriteString("  " + l + "\n")
	}
	if len(limits) > 0 {
		extra.WriteString("limits:\n")
		for _, l := range limits {
			extra.WriteString("  " + l + "\n")
		}
	}
	if c.ShutdownGrace != "" {
		extra.WriteString("shutdown_grace: " + c.ShutdownGrace + "\n")
	}
	if len(c.PolicyAllow) > 0 {
		extra.WriteString(`policy:` + "\n" + `  allow: ["` + strings.Join(c.PolicyAllow, `", "`) + `"]` + "\n")
	}
	if c.LogLevel == "" {
		c.LogLevel = "debug"
	}
	return fmt.Sprintf(`tun:
  name: tcpd0
  mtu: %d
  addresses: ["100.64.0.1/32", "fd64::1/128"]
  offload: %s
  queues: %s
  route_table: %d
clients: ["%s"]
upstream:
  dial_timeout: %s
  mark: %d
  source_addresses: [%s]
tcp:
  half_close_timeout: %s
  time_wait: %s
  time_wait_limit: %d
%smetrics:
  listen: "%s"
admin:
  socket: "%s"
log:
  level: %s
`, c.MTU, c.Offload, c.Queues, c.RouteTable, strings.Join(c.Clients, `", "`), c.DialTimeout, c.Mark, strings.Join(c.SourceAddresses, ", "), c.HalfCloseTimeout,
		c.TimeWait, c.TimeWaitLimit, extra.String(), listen, c.AdminSocket, c.LogLevel)
}

// gateway is a lab with tcpd running in its gateway namespace and the
// client's traffic routed into tcpd's TUN.
type gateway struct {
	*netlab.Lab
	tcpd *netlab.Proc
}

func startGateway(t *testing.T, opts netlab.Options, cfg gwConfig) *gateway {
	t.Helper()
	return startGatewayOn(t, netlab.NewT(t, opts), cfg)
}

// startGatewayOn starts tcpd in lab, which the test may have changed
// first (addresses, sysctls).
func startGatewayOn(t *testing.T, lab *netlab.Lab, cfg gwConfig) *gateway {
	t.Helper()
	bin := netlab.BuildTCPD(t)
	// The context bounds tcpd's whole life, which the cleanup below ends.
	p, err := lab.StartTCPDWith(context.Background(), bin, cfg.yaml(), netlab.TCPDOptions{OpenFiles: cfg.OpenFiles, Env: cfg.env(), Stderr: cfg.Stderr, TUN: "tcpd0"})
	if err != nil {
		t.Fatalf("start tcpd: %v", err)
	}
	g := &gateway{Lab: lab, tcpd: p}
	t.Cleanup(func() {
		err := p.Stop()
		if t.Failed() {
			t.Logf("tcpd log:\n%s", p.Logs())
		}
		if err != nil {
			t.Errorf("tcpd did not stop cleanly: %v", err)
		}
		if logs := p.Logs(); strings.Contains(logs, "panic") {
			t.Errorf("tcpd logged a panic:\n%s", logs)
		}
	})
	return g
}

// server runs handler for every connection accepted on [::]:port in the
// server namespace (dual-stack, so IPv4 and IPv6 clients both reach it).
func serve(t *testing.T, ns *netlab.NS, handler func(net.Conn)) int {
	t.Helper()
	ln, err := ns.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handler(c)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// stream is a deterministic pseudo-random byte stream whose SHA-256 both ends
// can know in advance.
func stream(seed uint64, n int64) io.Reader {
	var key [32]byte
	key[0] = byte(seed)
	key[1] = byte(seed >> 8)
	return io.LimitReader(rand.NewChaCha8(key), n)
}

func streamSum(seed uint64, n int64) [32]byte {
	h := sha256.New()
	io.Copy(h, stream(seed, n))
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

// exchange sends n bytes of stream(send) on c while receiving until EOF, and
// returns the SHA-256 and length of what it received. It half-closes c after
// sending.
func exchange(c net.Conn, send uint64, n int64) (sum [32]byte, got int64, err error) {
	errc := make(chan error, 1)
	go func() {
		_, err := io.Copy(c, stream(send, n))
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		errc <- err
	}()
	h := sha256.New()
	got, rerr := io.Copy(h, c)
	werr := <-errc
	copy(sum[:], h.Sum(nil))
	return sum, got, errors.Join(rerr, werr)
}

// bulkServer answers every connection by sending n bytes of stream(seed)
// while hashing what it receives; the hashes reach the test through sums.
func bulkServer(seed uint64, n int64, sums chan<- [32]byte) func(net.Conn) {
	return func(c net.Conn) {
		sum, _, err := exchange(c, seed, n)
		if err != nil {
			return
		}
		sums <- sum
	}
}

// assertBulk moves n bytes each way through addr and checks both SHA-256s.
func assertBulk(t *testing.T, g *gateway, host string, n int64) {
	t.Helper()
	sums := make(chan [32]byte, 1)
	port := serve(t, g.Server, bulkServer(2, n, sums))
	addr := net.JoinHostPort(host, fmt.Sprint(port))
	c, err := g.Client.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Minute))
	sum, got, err := exchange(c, 1, n)
	if err != nil {
		t.Fatalf("exchange with %s: %v (received %d of %d bytes)", addr, err, got, n)
	}
	if got != n || sum != streamSum(2, n) {
		t.Fatalf("client received %d bytes with sha256 %x, want %d bytes with %x", got, sum[:8], n, streamSum(2, n))
	}
	select {
	case s := <-sums:
		if s != streamSum(1, n) {
			t.Fatalf("server received sha256 %x, want %x", s[:8], streamSum(1, n))
		}
	case <-time.After(30 * time.Second):
		t.Fatal("server never finished")
	}
}

func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }
func isReset(err error) bool   { return errors.Is(err, syscall.ECONNRESET) }

// noAccept asserts that ln accepts nothing within d.
func noAccept(t *testing.T, ln net.Listener, d time.Duration) {
	t.Helper()
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(d))
	c, err := ln.Accept()
	if err == nil {
		c.Close()
		t.Fatalf("%s accepted a connection from %s; the policy must keep it unreachable", ln.Addr(), c.RemoteAddr())
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("accept on %s: %v", ln.Addr(), err)
	}
}

func readAllString(c net.Conn) (string, error) {
	var b bytes.Buffer
	_, err := io.Copy(&b, c)
	return b.String(), err
}
