//go:build linux

package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"tcpd/internal/netlab"
)

// The soak's tcpd: peers that die are given up within seconds, a
// half-closed connection that stays silent for 5 s is reset, and TIME_WAIT
// drains in 5 s. A reload flips congestion control and keepalive's idle time.
const (
	soakHalfClose   = 5 * time.Second
	soakKeepIdle    = 3 * time.Second
	soakTimeWait    = 5 * time.Second
	soakDialTimeout = 3 * time.Second
	// soakPace is how fast the paced streams go: 64 KiB per 50 ms.
	soakPaceChunk    = 64 << 10
	soakPaceInterval = 50 * time.Millisecond
	// soakOutage is how long a destination or a client stays gone; one of
	// each every soakOutageEvery, the two out of step.
	soakOutage      = 15 * time.Second
	soakOutageEvery = 40 * time.Second
	soakReloadEvery = 20 * time.Second
	soakWorkers     = 24
)

// soakDying is the server's address that comes and goes.
var soakDying = netip.MustParsePrefix("198.18.1.60/24")

func soakConfig(adminSocket string, flip bool) string {
	cc, idle := "reno", soakKeepIdle
	if flip {
		cc, idle = "cubic", soakKeepIdle+time.Second
	}
	return fmt.Sprintf(`upstream:
  dial_timeout: %s
tcp:
  keepalive: {idle: %s, interval: 1s, count: 2}
  half_close_timeout: %s
  time_wait: %s
  congestion_control: %s
metrics:
  listen: %q
admin:
  socket: %q
log:
  level: info
`, soakDialTimeout, idle, soakHalfClose, soakTimeWait, cc, metricsAddr, adminSocket)
}

// soakHeader is what a client sends first: the scenario and the sizes.
type soakHeader struct {
	scenario uint8
	id       uint64
	n, m     int64 // bytes the client and the server send
	k        int64 // bytes sent before a reset
	idle     time.Duration
}

const soakHeaderLen = 4 + 1 + 8 + 8*4

func (h soakHeader) marshal() []byte {
	b := make([]byte, 0, soakHeaderLen)
	b = append(b, "SOAK"...)
	b = append(b, h.scenario)
	b = binary.BigEndian.AppendUint64(b, h.id)
	b = binary.BigEndian.AppendUint64(b, uint64(h.n))
	b = binary.BigEndian.AppendUint64(b, uint64(h.m))
	b = binary.BigEndian.AppendUint64(b, uint64(h.k))
	b = binary.BigEndian.AppendUint64(b, uint64(h.idle))
	return b
}

func readSoakHeader(r io.Reader) (soakHeader, error) {
	b := make([]byte, soakHeaderLen)
	if _, err := io.ReadFull(r, b); err != nil {
		return soakHeader{}, err
	}
	if string(b[:4]) != "SOAK" || b[4] >= numSoakScenarios {
		return soakHeader{}, errors.New("not a soak header")
	}
	u := func(i int) int64 { return int64(binary.BigEndian.Uint64(b[5+8*i:])) }
	return soakHeader{scenario: b[4], id: uint64(u(0)), n: u(1), m: u(2), k: u(3), idle: time.Duration(u(4))}, nil
}

// soakStream is the deterministic content of one direction of one
// connection: the client's (up) or the server's.
func soakStream(id uint64, up bool, n int64) io.Reader {
	var key [32]byte
	binary.BigEndian.PutUint64(key[:], id)
	if up {
		key[8] = 1
	}
	return io.LimitReader(rand.NewChaCha8(key), n)
}

// verifier compares what it is written with the stream it expects and
// remembers the first difference.
type verifier struct {
	want  io.Reader
	n     int64
	wrong bool
	buf   []byte
}

func newVerifier(id uint64, up bool, n int64) *verifier {
	return &verifier{want: soakStream(id, up, n), buf: make([]byte, 64<<10)}
}

func (v *verifier) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 && !v.wrong {
		c := min(len(p), len(v.buf))
		if k, _ := io.ReadFull(v.want, v.buf[:c]); k != c || !bytes.Equal(v.buf[:c], p[:c]) {
			v.wrong = true
			break
		}
		v.n += int64(c)
		p = p[c:]
	}
	return n, nil
}

// soaker runs one soak.
type soaker struct {
	b    *bencher
	p    *path
	rng  *rand.Rand
	rngM sync.Mutex
	id   atomic.Uint64

	normal, dyingAddr string     // host:port of the servers
	vanisherAddr      netip.Addr // the client address that comes and goes
	clients           []netip.Addr

	// dying and vanisher say when the dying address and the vanisher
	// were last gone: a connection that overlapped an outage, or began
	// soon after one (the gateway's neighbour entry may still be marked
	// failed), may fail to connect without blame.
	dying, vanisher outage
	// deadline bounds every connection: a minute past the soak's end,
	// time enough for the longest scenario to finish on its own.
	deadline time.Time

	mu  sync.Mutex
	res SoakResult
}

func (s *soaker) count(sc int, f func(*SoakCounts)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s.res.Scenarios[soakNames[sc]])
}

func (s *soaker) violation(sc int, id uint64, format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.res.Scenarios[soakNames[sc]].Violations++
	if len(s.res.Violations) < 20 {
		s.res.Violations = append(s.res.Violations, fmt.Sprintf("%s, connection %d: %s", soakNames[sc], id, fmt.Sprintf(format, args...)))
	}
}

func (s *soaker) intn(n int64) int64 {
	s.rngM.Lock()
	defer s.rngM.Unlock()
	return s.rng.Int64N(n)
}

// outage records when something was last gone.
type outage struct {
	mu   sync.Mutex
	down bool
	// last is when the last outage began or ended.
	last time.Time
}

// outageGrace is how long after an outage a failure to connect is still
// laid to it.
const outageGrace = 5 * time.Second

func (o *outage) set(down bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.down, o.last = down, time.Now()
}

// since returns a function that reports whether an outage was under way at
// some moment from start until it is called, or ended less than
// outageGrace before.
func (o *outage) since(start time.Time) func() bool {
	return func() bool {
		o.mu.Lock()
		defer o.mu.Unlock()
		return o.down || o.last.After(start.Add(-outageGrace))
	}
}

// soakPhase runs the soak on p, a lab of its own with a tcpd of its own.
func (b *bencher) soakPhase(ctx context.Context, p *path) (*SoakResult, error) {
	s := &soaker{b: b, p: p, rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 11))}
	s.res.Scenarios = map[string]*SoakCounts{}
	for _, n := range soakNames {
		s.res.Scenarios[n] = &SoakCounts{}
	}
	s.res.Workers = soakWorkers
	lab := p.lab
	// The dying destination's address, on the server's link.
	serverLink, err := lab.Server.Netlink().LinkByName(lab.ServerLink)
	if err != nil {
		return nil, err
	}
	dyingAddr := &netlink.Addr{IPNet: &net.IPNet{IP: soakDying.Addr().AsSlice(), Mask: net.CIDRMask(soakDying.Bits(), 32)}}
	if err := lab.Server.Netlink().AddrAdd(serverLink, dyingAddr); err != nil {
		return nil, err
	}
	clientLink, err := lab.Client.Netlink().LinkByName(lab.ClientLink)
	if err != nil {
		return nil, err
	}
	s.vanisherAddr = p.srcs[len(p.srcs)-1]
	s.clients = p.srcs[:len(p.srcs)-1]
	vanisherAddr := &netlink.Addr{IPNet: &net.IPNet{IP: s.vanisherAddr.AsSlice(), Mask: net.CIDRMask(32, 32)}}

	sock := filepath.Join(b.tmp, "soak.sock")
	proc, err := lab.StartTCPD(ctx, p.bin, soakConfig(sock, false))
	if err != nil {
		return nil, err
	}
	pid, err := tcpdPID(proc.Pid(), filepath.Base(p.bin))
	if err != nil {
		proc.Kill()
		return nil, err
	}
	p.tcpd, p.pid = proc, pid
	defer b.stopTCPD(p, "soak")

	normal, err := s.listen(lab.Server, lab.ServerAddr4)
	if err != nil {
		return nil, err
	}
	defer normal.Close()
	dying, err := s.listen(lab.Server, soakDying.Addr())
	if err != nil {
		return nil, err
	}
	defer dying.Close()
	s.normal, s.dyingAddr = normal.Addr().String(), dying.Addr().String()

	base, err := s.settle(ctx)
	if err != nil {
		return nil, fmt.Errorf("soak: before: %w", err)
	}
	s.res.Baseline = base
	b.progress("soak: %v, %d workers, tcpd pid %d; baseline %d descriptors, %d goroutines",
		b.cfg.Soak, soakWorkers, pid, int(base["process_open_fds"]), int(base["go_goroutines"]))

	start := time.Now()
	end := start.Add(b.cfg.Soak)
	s.deadline = end.Add(time.Minute)
	sctx, cancel := context.WithDeadline(ctx, end)
	defer cancel()
	var wg sync.WaitGroup
	// Outages and reloads.
	wg.Go(func() {
		s.outages(sctx, start, func(down bool) error {
			s.dying.set(down)
			if down {
				s.mu.Lock()
				s.res.Deaths++
				s.mu.Unlock()
				return lab.Server.Netlink().AddrDel(serverLink, dyingAddr)
			}
			return lab.Server.Netlink().AddrAdd(serverLink, dyingAddr)
		}, 15*time.Second)
	})
	wg.Go(func() {
		s.outages(sctx, start, func(down bool) error {
			s.vanisher.set(down)
			if down {
				s.mu.Lock()
				s.res.Vanishings++
				s.mu.Unlock()
				return lab.Client.Netlink().AddrDel(clientLink, vanisherAddr)
			}
			return lab.Client.Netlink().AddrAdd(clientLink, vanisherAddr)
		}, 35*time.Second)
	})
	wg.Go(func() { s.reloads(sctx, proc, sock) })
	var clients sync.WaitGroup
	for range soakWorkers {
		clients.Go(func() {
			for sctx.Err() == nil {
				s.one(sctx, int(s.intn(numSoakScenarios)))
			}
		})
	}
	clients.Wait()
	wg.Wait()
	s.res.Seconds = time.Since(start).Seconds()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	// Servers finish what clients left (a vanished client's stream runs
	// into tcpd's reset).
	b.progress("soak: load over after %v; waiting for tcpd to drain", time.Since(start).Round(time.Second))
	final, err := s.settle(ctx)
	if err != nil {
		s.res.Leftovers = append(s.res.Leftovers, err.Error())
	}
	s.res.Final = final
	for _, k := range soakState {
		before, after := base[k], final[k]
		slack := 0.0
		switch k {
		case "process_open_fds":
			slack = 2 // the scrape's own connection, a netlink socket
		case "go_goroutines":
			slack = 5 // the scrape's, the HTTP server's for a closing connection
		}
		if after > before+slack {
			s.res.Leftovers = append(s.res.Leftovers, fmt.Sprintf("%s: %v after, %v before", k, after, before))
		}
	}
	s.res.OK = len(s.res.Leftovers) == 0 && s.res.ReloadFailures == 0 && s.res.HeaderEOF == 0
	for _, c := range s.res.Scenarios {
		if c.Violations > 0 {
			s.res.OK = false
		}
	}
	return &s.res, nil
}

// settle waits until tcpd holds no connection at all (up to TIME_WAIT and
// the handshake timeout) and returns its state.
func (s *soaker) settle(ctx context.Context) (map[string]float64, error) {
	deadline := time.Now().Add(soakTimeWait + 60*time.Second)
	for {
		m, err := s.p.scrape(ctx)
		if err != nil {
			return nil, err
		}
		out := map[string]float64{}
		for _, k := range soakState {
			out[k] = m.sum(k)
		}
		idle := true
		for _, k := range soakState[:6] {
			if out[k] != 0 {
				idle = false
			}
		}
		if out["tcpd_tcp_connection_states"] != 0 || out["tcpd_tcp_client_connection_states"] != 0 {
			idle = false
		}
		if idle {
			// Past the moment: goroutines of closed connections end.
			time.Sleep(2 * time.Second)
			if m, err = s.p.scrape(ctx); err == nil {
				for _, k := range soakState {
					out[k] = m.sum(k)
				}
			}
			return out, err
		}
		if time.Now().After(deadline) {
			return out, fmt.Errorf("tcpd never drained: %v", out)
		}
		if err := sleep(ctx, 500*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

// outages takes something away for soakOutage every soakOutageEvery, the
// first at offset, and brings it back at the end.
func (s *soaker) outages(ctx context.Context, start time.Time, set func(down bool) error, offset time.Duration) {
	next := start.Add(offset)
	for {
		if sleep(ctx, time.Until(next)) != nil {
			return
		}
		if err := set(true); err != nil {
			s.b.notef("soak: outage: %v", err)
			return
		}
		err := sleep(ctx, soakOutage)
		if rerr := set(false); rerr != nil {
			s.b.notef("soak: end of outage: %v", rerr)
			return
		}
		if err != nil {
			return
		}
		next = next.Add(soakOutageEvery)
	}
}

// reloads rewrites tcpd's configuration and sends SIGHUP every
// soakReloadEvery, checking that tcpd says it reloaded.
func (s *soaker) reloads(ctx context.Context, proc *netlab.Proc, sock string) {
	flip := false
	for sleep(ctx, soakReloadEvery) == nil {
		flip = !flip
		if err := os.WriteFile(proc.ConfigPath(), []byte(soakConfig(sock, flip)), 0o644); err != nil {
			s.b.notef("soak: reload: %v", err)
			return
		}
		before := 0
		for _, l := range proc.LogLines() {
			if l["msg"] == "reloaded" {
				before++
			}
		}
		s.mu.Lock()
		s.res.Reloads++
		s.mu.Unlock()
		syscall.Kill(proc.Pid(), syscall.SIGHUP)
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		seen := 0
		_, err := proc.WaitForLine(wctx, func(l map[string]any) bool {
			if l["msg"] == "reloaded" {
				seen++
			}
			return seen > before
		})
		cancel()
		if err != nil && ctx.Err() == nil {
			s.mu.Lock()
			s.res.ReloadFailures++
			s.mu.Unlock()
		}
	}
}

// listen serves soak connections on host in ns.
func (s *soaker) listen(ns *netlab.NS, host netip.Addr) (net.Listener, error) {
	ln, err := ns.Listen("tcp", netip.AddrPortFrom(host, 0).String())
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				s.serveOne(c.(*net.TCPConn))
			}()
		}
	}()
	return ln, nil
}

// pacedWrite writes n bytes of the server's stream at soakPace.
func pacedWrite(c net.Conn, id uint64, n int64) error {
	r := soakStream(id, false, n)
	buf := make([]byte, soakPaceChunk)
	for {
		k, rerr := io.ReadFull(r, buf)
		if k > 0 {
			if _, err := c.Write(buf[:k]); err != nil {
				return err
			}
		}
		if rerr != nil {
			return nil
		}
		time.Sleep(soakPaceInterval)
	}
}

// serveOne is the server's side of a soak connection; it judges what the
// server receives, and whether a cut stream reached it as a reset.
func (s *soaker) serveOne(c *net.TCPConn) {
	c.SetDeadline(s.deadline)
	h, err := readSoakHeader(c)
	if err != nil {
		// A connection cut before its header: the client judges. A FIN
		// there would be a lie: every client sends its header first.
		s.mu.Lock()
		switch {
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
			s.res.HeaderEOF++
		case isReset(err):
			s.res.HeaderReset++
		}
		s.mu.Unlock()
		return
	}
	sc := int(h.scenario)
	recv := func() (*verifier, error) {
		v := newVerifier(h.id, true, h.n)
		_, err := io.Copy(v, c)
		return v, err
	}
	switch sc {
	case soakBulk:
		done := make(chan error, 1)
		go func() {
			_, err := io.Copy(c, soakStream(h.id, false, h.m))
			if err == nil {
				err = c.CloseWrite()
			}
			done <- err
		}()
		v, err := recv()
		werr := <-done
		if err != nil || werr != nil || v.wrong || v.n != h.n {
			s.violation(sc, h.id, "server received %d of %d bytes (wrong %v), read %v, write %v", v.n, h.n, v.wrong, err, werr)
		}
	case soakIdleHalfClose:
		v, err := recv()
		if err != nil || v.wrong || v.n != h.n {
			s.violation(sc, h.id, "server received %d of %d bytes (wrong %v) then %v", v.n, h.n, v.wrong, err)
			return
		}
		io.Copy(c, soakStream(h.id, false, h.m))
	case soakServerHalfClose:
		if _, err := io.Copy(c, soakStream(h.id, false, h.m)); err != nil {
			s.violation(sc, h.id, "server's answer: %v", err)
			return
		}
		time.Sleep(h.idle)
		c.CloseWrite()
		v, err := recv()
		if err != nil || v.wrong || v.n != h.n {
			s.violation(sc, h.id, "after its half-close the server received %d of %d bytes (wrong %v) then %v", v.n, h.n, v.wrong, err)
		}
	case soakDyingDestination:
		// The client judges; the server only streams.
		if pacedWrite(c, h.id, h.m) == nil {
			c.CloseWrite()
			io.Copy(io.Discard, c)
		}
	case soakVanishingClient:
		err := pacedWrite(c, h.id, h.m)
		if err == nil {
			c.CloseWrite()
			_, err = io.Copy(io.Discard, c)
			if err == nil {
				s.count(sc, func(c *SoakCounts) { c.Clean++ })
				return
			}
		}
		if isReset(err) {
			s.count(sc, func(c *SoakCounts) { c.Cut++ })
			return
		}
		s.violation(sc, h.id, "the server's stream ended with %v, want a reset or a clean end", err)
	case soakClientReset:
		v, err := recv()
		switch {
		case v.wrong:
			s.violation(sc, h.id, "server received wrong bytes after %d", v.n)
		case err == nil:
			s.violation(sc, h.id, "server read EOF after %d of the %d bytes sent before the client's reset", v.n, h.k)
		case isReset(err):
			s.count(sc, func(c *SoakCounts) { c.Cut++ })
		default:
			s.violation(sc, h.id, "server read %d bytes then %v, want a reset", v.n, err)
		}
	case soakServerReset:
		io.Copy(c, soakStream(h.id, false, h.k))
		c.SetLinger(0)
	}
}

// one runs one connection of scenario sc from a client.
func (s *soaker) one(ctx context.Context, sc int) {
	id := s.id.Add(1)
	h := soakHeader{scenario: uint8(sc), id: id}
	src, dst := s.clients[s.intn(int64(len(s.clients)))], s.normal
	excused := func() bool { return false }
	switch sc {
	case soakBulk:
		h.n, h.m = s.intn(4<<20), s.intn(4<<20)
	case soakIdleHalfClose:
		h.n, h.m, h.idle = 1+s.intn(64<<10), 1+s.intn(64<<10), time.Duration(500+s.intn(8000))*time.Millisecond
	case soakServerHalfClose:
		h.n, h.m, h.idle = 1+s.intn(64<<10), 1+s.intn(64<<10), time.Duration(500+s.intn(8000))*time.Millisecond
	case soakDyingDestination:
		dst, h.m = s.dyingAddr, 1+s.intn(20<<20)
		excused = s.dying.since(time.Now())
	case soakVanishingClient:
		src, h.m = s.vanisherAddr, 1+s.intn(20<<20)
		excused = s.vanisher.since(time.Now())
	case soakClientReset:
		h.n = 1 + s.intn(4<<20)
		h.k = s.intn(h.n)
	case soakServerReset:
		h.m = 1 + s.intn(4<<20)
		h.k = s.intn(h.m)
	}
	var c *net.TCPConn
	err := s.p.lab.Client.Do(func() error {
		// Not cancelled with ctx: a connect that completes then would be
		// closed before its header, which the server counts as a lie.
		d := net.Dialer{Timeout: 2 * soakDialTimeout, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
		nc, err := d.Dial("tcp", dst)
		if err == nil {
			c = nc.(*net.TCPConn)
		}
		return err
	})
	if err != nil {
		if ctx.Err() == nil && !excused() {
			s.violation(sc, id, "connect from %s to %s: %v", src, dst, err)
		}
		sleep(ctx, 100*time.Millisecond)
		return
	}
	defer c.Close()
	s.count(sc, func(c *SoakCounts) { c.Runs++ })
	c.SetDeadline(s.deadline)
	if _, err := c.Write(h.marshal()); err != nil {
		if !excused() {
			s.violation(sc, id, "header: %v", err)
		}
		return
	}
	recv := func(n int64) (*verifier, error) {
		v := newVerifier(id, false, n)
		_, err := io.Copy(v, c)
		return v, err
	}
	clean := func(v *verifier, err error, want int64, what string) {
		if err != nil || v.wrong || v.n != want {
			s.violation(sc, id, "%s: client received %d of %d bytes (wrong %v) then %v", what, v.n, want, v.wrong, err)
			return
		}
		s.count(sc, func(c *SoakCounts) { c.Clean++ })
	}
	switch sc {
	case soakBulk:
		done := make(chan error, 1)
		go func() {
			_, err := io.Copy(c, soakStream(id, true, h.n))
			if err == nil {
				err = c.CloseWrite()
			}
			done <- err
		}()
		v, err := recv(h.m)
		if werr := <-done; werr != nil && err == nil {
			err = werr
		}
		clean(v, err, h.m, "bulk")
	case soakIdleHalfClose:
		io.Copy(c, soakStream(id, true, h.n))
		time.Sleep(h.idle)
		c.CloseWrite()
		v, err := recv(h.m)
		clean(v, err, h.m, fmt.Sprintf("after %v idle and a half-close", h.idle))
	case soakServerHalfClose:
		v, err := recv(h.m)
		if err != nil || v.wrong || v.n != h.m {
			s.violation(sc, id, "the server's answer and half-close after %v idle: client received %d of %d bytes (wrong %v) then %v",
				h.idle, v.n, h.m, v.wrong, err)
			return
		}
		if _, err := io.Copy(c, soakStream(id, true, h.n)); err != nil {
			s.violation(sc, id, "upload after the server's half-close: %v", err)
			return
		}
		c.CloseWrite()
		s.count(sc, func(c *SoakCounts) { c.Clean++ })
	case soakDyingDestination:
		v, err := recv(h.m)
		switch {
		case v.wrong:
			s.violation(sc, id, "client received wrong bytes after %d", v.n)
		case err == nil && v.n == h.m:
			s.count(sc, func(c *SoakCounts) { c.Clean++ })
		case err == nil:
			s.violation(sc, id, "EOF after %d of %d bytes: a cut stream that looks complete", v.n, h.m)
		case isReset(err):
			s.count(sc, func(c *SoakCounts) { c.Cut++ })
		default:
			s.violation(sc, id, "client received %d of %d bytes then %v, want a reset", v.n, h.m, err)
		}
	case soakVanishingClient:
		// The server judges: this client may have vanished.
		v, err := recv(h.m)
		if v.wrong {
			s.violation(sc, id, "client received wrong bytes after %d", v.n)
		}
		if err == nil {
			c.CloseWrite()
		}
	case soakClientReset:
		io.Copy(c, soakStream(id, true, h.k))
		c.SetLinger(0)
	case soakServerReset:
		v, err := recv(h.k)
		switch {
		case v.wrong:
			s.violation(sc, id, "client received wrong bytes after %d", v.n)
		case err == nil:
			s.violation(sc, id, "EOF after %d bytes of a stream the server reset", v.n)
		case isReset(err):
			s.count(sc, func(c *SoakCounts) { c.Cut++ })
		default:
			s.violation(sc, id, "client received %d bytes then %v, want a reset", v.n, err)
		}
	}
}

func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }
