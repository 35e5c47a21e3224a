//go:build linux

package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"

	"tcpd/internal/netlab"
)

// metricsAddr is where tcpd's metrics listener binds, inside the gateway
// namespace (tcpd's own default address).
const metricsAddr = "127.0.0.1:9810"

// extraClients is how many client addresses the idle test and the queues
// phase's connection rate spread their connections over, besides the lab's
// own: tcpd's default limits.max_connections_per_client is 4096, a gateway
// with 15000 idle connections serves many clients, and tcpd's connection
// manager keeps its per-client counts in shards of their own.
const extraClients = 63

// path is one way from the client to the server: the gateway kernel
// forwarding, or a tcpd binary.
type path struct {
	name string // "kernel", "tcpd" or "base"; "q1", "qauto" in the queues phase
	bin  string // the tcpd binary; "" on the kernel path
	// queues is tcpd's tun.queues; "" keeps its default (auto).
	queues string
	// lossDetection is tcpd's tcp.loss_detection; "" keeps its default.
	lossDetection string
	lab           *netlab.Lab
	tcpd          *netlab.Proc // nil on the kernel path
	pid           int          // tcpd's pid
	// srcs are the client namespace's addresses, the lab's first.
	srcs []netip.Addr
}

// newLab builds a lab whose client has extraClients more addresses
// (100.64.1.10 and up, inside tcpd's default client prefix 100.64.0.0/10).
// The gateway gets permanent neighbour entries for them, as the lab has for
// the first one.
func newLab() (*netlab.Lab, []netip.Addr, error) {
	l, err := netlab.New(netlab.Options{})
	if err != nil {
		return nil, nil, err
	}
	srcs := []netip.Addr{l.ClientAddr4}
	err = func() error {
		cl, err := l.Client.Netlink().LinkByName(l.ClientLink)
		if err != nil {
			return err
		}
		gl, err := l.Gateway.Netlink().LinkByName(l.GatewayClientLink)
		if err != nil {
			return err
		}
		a := netip.MustParseAddr("100.64.1.10")
		for range extraClients {
			pfx := netip.PrefixFrom(a, 32)
			ipn := &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}
			if err := l.Client.Netlink().AddrAdd(cl, &netlink.Addr{IPNet: ipn}); err != nil {
				return fmt.Errorf("address %s in %s: %w", pfx, l.Client.Name, err)
			}
			if err := l.Gateway.Netlink().NeighSet(&netlink.Neigh{
				LinkIndex:    gl.Attrs().Index,
				Family:       netlink.FAMILY_V4,
				State:        netlink.NUD_PERMANENT,
				IP:           a.AsSlice(),
				HardwareAddr: cl.Attrs().HardwareAddr,
			}); err != nil {
				return fmt.Errorf("neighbour %s in %s: %w", a, l.Gateway.Name, err)
			}
			srcs = append(srcs, a)
			a = a.Next()
		}
		return nil
	}()
	if err != nil {
		return nil, nil, errors.Join(err, l.Close())
	}
	return l, srcs, nil
}

// tcpdConfig is tcpd's embedded default configuration except for the keys
// given here; every key left out keeps its default.
func tcpdConfig(adminSocket string, timeWait time.Duration, offload, queues, lossDetection string) string {
	var b strings.Builder
	if offload != "" || queues != "" {
		b.WriteString("tun:\n")
	}
	if offload != "" {
		fmt.Fprintf(&b, "  offload: %q\n", offload)
	}
	if queues != "" {
		fmt.Fprintf(&b, "  queues: %s\n", queues)
	}
	fmt.Fprintf(&b, "metrics:\n  listen: %q\nadmin:\n  socket: %q\ntcp:\n  time_wait: %s\n",
		metricsAddr, adminSocket, timeWait)
	if lossDetection != "" {
		fmt.Fprintf(&b, "  loss_detection: %s\n", lossDetection)
	}
	return b.String()
}

// startTCPD runs tcpd in the path's gateway and routes the client's traffic
// into it.
func (b *bencher) startTCPD(ctx context.Context, p *path, name string, timeWait time.Duration) error {
	sock := filepath.Join(b.tmp, name+".sock")
	queues := p.queues
	if queues == "" {
		queues = b.cfg.Queues
	}
	proc, err := p.lab.StartTCPD(ctx, p.bin, tcpdConfig(sock, timeWait, b.cfg.Offload, queues, p.lossDetection))
	if err != nil {
		return err
	}
	pid, err := tcpdPID(proc.Pid(), filepath.Base(p.bin))
	if err != nil {
		proc.Kill()
		return err
	}
	p.tcpd, p.pid = proc, pid
	return nil
}

// stopTCPD stops the path's tcpd with SIGTERM and notes anything odd in its
// exit or its log.
func (b *bencher) stopTCPD(p *path, name string) {
	if p.tcpd == nil {
		return
	}
	if err := p.tcpd.Stop(); err != nil {
		b.notef("%s: tcpd did not stop cleanly: %v", name, firstLine(err.Error()))
	}
	b.checkLog(p.tcpd, name)
	p.tcpd = nil
}

// checkLog notes panics and warnings in a tcpd's JSON log.
func (b *bencher) checkLog(proc *netlab.Proc, name string) {
	if strings.Contains(proc.Logs(), "panic") {
		b.notef("%s: tcpd's log mentions a panic", name)
	}
	counts := map[string]int{}
	first := map[string]string{}
	for _, m := range proc.LogLines() {
		lvl, _ := m["level"].(string)
		if lvl == "warn" || lvl == "error" {
			counts[lvl]++
			if first[lvl] == "" {
				b, _ := json.Marshal(m)
				first[lvl] = string(b)
			}
		}
	}
	for _, lvl := range []string{"error", "warn"} {
		if counts[lvl] > 0 {
			b.notef("%s: tcpd logged %d %s line(s), first: %q", name, counts[lvl], lvl, first[lvl])
		}
	}
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// cpu returns tcpd's CPU time so far, zero on the kernel path.
func (p *path) cpu(ticks float64) (time.Duration, error) {
	if p.tcpd == nil {
		return 0, nil
	}
	return cpuTime(p.pid, ticks)
}

// rss returns tcpd's resident set size in KiB.
func (p *path) rss() (int64, error) { return statusKB(p.pid, "VmRSS") }

// scrape reads the path's tcpd's metrics.
func (p *path) scrape(ctx context.Context) (series, error) {
	return scrape(ctx, p.lab.Gateway, metricsAddr)
}

// check moves one byte each way through the path, from every client
// address, to fail early and clearly if the path does not work at all.
func (b *bencher) check(ctx context.Context, p *path) error {
	srv, err := serve(p.lab.Server, p.lab.ServerAddr4, 1, func(c net.Conn) error {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		_, err := io.Copy(c, c)
		return err
	})
	if err != nil {
		return err
	}
	defer srv.Close()
	for _, src := range p.srcs {
		err := p.lab.Client.Do(func() error {
			d := net.Dialer{Timeout: 5 * time.Second, FallbackDelay: -1, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
			c, err := d.DialContext(ctx, "tcp", srv.addrs[0])
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write([]byte{'x'}); err != nil {
				return err
			}
			var one [1]byte
			_, err = io.ReadFull(c, one[:])
			return err
		})
		if err != nil {
			return fmt.Errorf("%s path from %s to %s: %w", p.name, src, srv.addrs[0], err)
		}
	}
	return nil
}

// startProfile runs cfg.ProfileCmd for a tcpd bulk transfer and returns the
// function that stops it.
func (b *bencher) startProfile(p *path, name string) func() {
	if b.cfg.ProfileCmd == "" || p.tcpd == nil {
		return func() {}
	}
	r := strings.NewReplacer("{pid}", strconv.Itoa(p.pid),
		"{seconds}", strconv.Itoa(int(b.cfg.Bulk.Round(time.Second)/time.Second)), "{name}", name)
	cmd := exec.Command("sh", "-c", r.Replace(b.cfg.ProfileCmd))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	// Own process group, so that SIGINT reaches the profiler under sh;
	// SIGKILL if this process dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		b.notef("profile %s: %v", name, err)
		return func() {}
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	return func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
		select {
		case err := <-done:
			// Ending on the SIGINT it was sent is the normal way out.
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				if ws, ok := ee.Sys().(syscall.WaitStatus); ok &&
					(ws.Signal() == syscall.SIGINT || ws.ExitStatus() == 130) {
					err = nil
				}
			}
			if err != nil {
				b.notef("profile %s: %v", name, err)
			}
		case <-time.After(10 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
			b.notef("profile %s: killed, still running 10s after SIGINT", name)
		}
	}
}
