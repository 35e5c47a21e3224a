package deploy_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"tcpd/internal/netlab"
	"tcpd/internal/nspawn"
)

// systemdTest is tcpd's unit running in a container whose network namespace
// is the gateway of a netlab lab: the lab's client sends through tcpd's TUN
// to the lab's server, as a VPN client would.
type systemdTest struct {
	lab    *netlab.Lab
	c      *nspawn.Container
	ctx    context.Context
	config string // the configuration installed at /etc/tcpd/tcpd.yaml
}

// TestUnitUnderSystemd installs the unit, the sysusers file, the default
// configuration and a tcpd built with -tags wedgetest (SIGUSR2 wedges its
// packet loop) in a systemd-nspawn container booted from the host's /usr,
// and drives it with systemctl through start, traffic, reload, a watchdog
// kill, crashes, a TUN deleted from under it and stop.
func TestUnitUnderSystemd(t *testing.T) {
	if why := nspawn.Available(); why != "" {
		t.Skipf("tier D: needs systemd-nspawn as root: %s", why)
	}
	if why := netlab.Available(); why != "" {
		t.Skipf("tier D: needs network namespaces: %s", why)
	}
	began := time.Now()
	bin := buildTCPD(t, "wedgetest")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	lab := netlab.NewT(t, netlab.Options{})
	// New devices in the gateway start with strict reverse-path filtering,
	// as on many distributions: tcpd's replies arrive on its TUN from the
	// destinations' addresses and would be dropped unless tcpd turns it off
	// on the TUN, over netlink (the unit keeps /proc/sys read-only).
	if err := lab.Gateway.Sysctl("net.ipv4.conf.default.rp_filter", "1"); err != nil {
		t.Fatal(err)
	}
	c := nspawn.BootT(t, nspawn.Options{
		NetNS: "/run/netns/" + lab.Gateway.Name,
		Files: map[string]string{"/usr/bin/tcpd": bin},
	})
	t.Logf("container %s, in the gateway namespace of lab %s, booted %v after the test began (build and lab included)",
		c.Name, lab.ID, time.Since(began).Round(time.Millisecond))
	s := &systemdTest{lab: lab, c: c, ctx: ctx, config: string(readFile(t, "configs/tcpd.yaml"))}
	t.Cleanup(func() {
		if t.Failed() {
			j, err := c.Run(context.Background(), "journalctl", "--no-pager", "-o", "short-monotonic", "-n", "400", "-u", "tcpd")
			t.Logf("journal of tcpd.service (systemd at debug level):\n%s%v", j, err)
		}
	})
	s.install(t)

	steps := []struct {
		name string
		fn   func(*testing.T)
	}{
		{"start returns after READY", s.start},
		{"runs as tcpd with only CAP_NET_ADMIN", s.identity},
		{"relays through the TUN", s.traffic},
		{"reload", s.reload},
		{"watchdog restarts a wedged tcpd", s.watchdog},
		{"SIGSEGV restarts it", func(t *testing.T) { s.crash(t, "SIGSEGV", "exit-code") }},
		{"SIGKILL restarts it", func(t *testing.T) { s.crash(t, "SIGKILL", "signal") }},
		{"a deleted TUN restarts it", s.tunDeleted},
		{"stop", s.stop},
		{"a configuration error fails the start once", s.badConfig},
	}
	for _, st := range steps {
		t0 := time.Now()
		ok := t.Run(st.name, st.fn)
		t.Logf("%s: %v", st.name, time.Since(t0).Round(time.Millisecond))
		if !ok {
			return // later steps build on this one
		}
	}
	t.Logf("whole test so far: %v (the container is removed next)", time.Since(began).Round(time.Millisecond))
}

func (s *systemdTest) run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := s.c.Run(s.ctx, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (s *systemdTest) systemctl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := s.c.Systemctl(s.ctx, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func (s *systemdTest) show(t *testing.T) map[string]string {
	t.Helper()
	m, err := s.c.Show(s.ctx, "tcpd", "ActiveState", "SubState", "Result", "NRestarts", "MainPID", "StatusText")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// install puts the unit, the user, the configuration and the device
// permissions in place, as the Debian package and udev would.
func (s *systemdTest) install(t *testing.T) {
	t.Helper()
	// systemd logs every notification (READY=1, RELOADING=1, STOPPING=1,
	// WATCHDOG=1) at debug level.
	s.run(t, "systemd-analyze", "log-level", "debug")
	files := []struct {
		path string
		data []byte
	}{
		{"/etc/systemd/system/tcpd.service", readFile(t, unitPath)},
		{"/etc/sysusers.d/tcpd.conf", readFile(t, "deploy/systemd/tcpd.sysusers")},
		{"/etc/tcpd/tcpd.yaml", []byte(s.config)},
	}
	for _, f := range files {
		if err := s.c.WriteFile(s.ctx, f.path, f.data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// udev makes /dev/net/tun 0666 on a real host; nspawn creates it 0600.
	s.run(t, "chmod", "0666", "/dev/net/tun")
	s.run(t, "systemd-sysusers")
	s.systemctl(t, "daemon-reload")
}

// journalHas waits up to 5 s (journald may lag) for the unit's journal to
// match re, and returns the journal.
func (s *systemdTest) journalHas(t *testing.T, re string) string {
	t.Helper()
	return s.journalWithin(t, 5*time.Second, re)
}

// journalAtPriority waits up to 5 s for the messages the unit's journal
// holds at priority prio or above (journalctl -p) to match re, and returns
// them.
func (s *systemdTest) journalAtPriority(t *testing.T, prio, re string) string {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(5 * time.Second)
	for {
		j, err := s.c.Run(s.ctx, "journalctl", "--no-pager", "-o", "cat", "-u", "tcpd", "-p", prio)
		if err != nil {
			t.Fatalf("journalctl -p %s: %v", prio, err)
		}
		if rx.MatchString(j) {
			return j
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 5s the journal of tcpd.service at priority %s and above has not matched %q; it ends:\n%s", prio, re, tail(j, 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// journalWithin waits up to d for the unit's journal to match re, and
// returns the journal.
func (s *systemdTest) journalWithin(t *testing.T, d time.Duration, re string) string {
	t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.Now().Add(d)
	for {
		j, err := s.c.Journal(s.ctx, "tcpd")
		if err != nil {
			t.Fatal(err)
		}
		if rx.MatchString(j) {
			return j
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v the journal of tcpd.service has not matched %q; it ends:\n%s", d, re, tail(j, 40))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// metrics scrapes tcpd from the gateway namespace.
func (s *systemdTest) metrics() (map[string]float64, error) {
	fams, err := scrapeFamilies(s.lab.Gateway)
	if err != nil {
		return nil, err
	}
	return samples(fams), nil
}

// waitMetrics scrapes until cond holds or d has passed.
func (s *systemdTest) waitMetrics(t *testing.T, d time.Duration, what string, cond func(map[string]float64) bool) map[string]float64 {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		m, err := s.metrics()
		if err == nil && cond(m) {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s: last scrape error %v, relevant samples %v", d, what, err, pick(m, "tcpd_config_", "tcpd_connections_total", "tcpd_relay_bytes_total"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func pick(m map[string]float64, prefixes ...string) map[string]float64 {
	out := map[string]float64{}
	for k, v := range m {
		for _, p := range prefixes {
			if strings.HasPrefix(k, p) {
				out[k] = v
			}
		}
	}
	return out
}

// waitActive waits until tcpd runs with a main process other than notPID
// and at least restarts restarts, and returns `systemctl show`. It also
// reports every Result= value it saw on the way.
func (s *systemdTest) waitActive(t *testing.T, d time.Duration, notPID string, restarts int) (map[string]string, []string) {
	t.Helper()
	var results []string
	deadline := time.Now().Add(d)
	for {
		m := s.show(t)
		if len(results) == 0 || results[len(results)-1] != m["Result"] {
			results = append(results, m["Result"])
		}
		n, _ := strconv.Atoi(m["NRestarts"])
		if m["ActiveState"] == "active" && m["SubState"] == "running" && m["MainPID"] != notPID && m["MainPID"] != "0" && n >= restarts {
			return m, results
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v tcpd is not running again with a new main process (was %s) and NRestarts >= %d: %v", d, notPID, restarts, m)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (s *systemdTest) tunExists() bool {
	_, err := s.lab.Gateway.Netlink().LinkByName("tcpd0")
	return err == nil
}

// start: `systemctl start` of a Type=notify unit returns once tcpd sent
// READY=1, which it does only when the TUN, the netstack, the metrics
// listener and the admin socket are up: so all of them answer at once,
// without a retry.
func (s *systemdTest) start(t *testing.T) {
	t0 := time.Now()
	s.systemctl(t, "start", "tcpd")
	took := time.Since(t0)
	m, err := s.metrics() // no retry: READY promises the listener
	if err != nil {
		t.Fatalf("/metrics right after `systemctl start` returned: %v", err)
	}
	if !s.tunExists() {
		t.Fatal("no tcpd0 right after `systemctl start` returned")
	}
	st := s.show(t)
	if st["ActiveState"] != "active" || st["SubState"] != "running" {
		t.Fatalf("after start: %v", st)
	}
	if !strings.Contains(st["StatusText"], "connections") {
		t.Errorf("StatusText = %q, want tcpd's STATUS= line", st["StatusText"])
	}
	if m["tcpd_config_last_reload_successful"] != 1 {
		t.Errorf("tcpd_config_last_reload_successful = %v after start, want 1", m["tcpd_config_last_reload_successful"])
	}
	// systemd received READY=1 from the main process before it logged
	// the unit as started.
	j := s.journalHas(t, `Started tcpd\.service`)
	ready := regexp.MustCompile(`Got notification message from PID ` + st["MainPID"] + ` \(READY=1`).FindStringIndex(j)
	started := strings.Index(j, "Started tcpd.service")
	if ready == nil || ready[0] > started {
		t.Errorf("the journal has no READY=1 from PID %s before \"Started tcpd.service\":\n%s", st["MainPID"], tail(j, 30))
	}
	// ProtectKernelTunables makes /proc/sys read-only: tcpd turned
	// reverse-path filtering off on its TUN over netlink.
	if v, err := s.lab.Gateway.ReadSysctl("net/ipv4/conf/tcpd0/rp_filter"); err != nil || v != "0" {
		t.Errorf("rp_filter on tcpd0 = %q (%v), want 0", v, err)
	}
	t.Logf("systemctl start took %v; %s", took.Round(time.Millisecond), st["StatusText"])
}

// identity: /proc/<MainPID>/status shows user tcpd and CAP_NET_ADMIN
// (bit 12, 0x1000) alone in every capability set, and the admin socket
// carries the modes tcpd and the unit give it.
func (s *systemdTest) identity(t *testing.T) {
	pw := strings.Split(strings.TrimSpace(s.run(t, "getent", "passwd", "tcpd")), ":")
	if len(pw) < 4 {
		t.Fatalf("getent passwd tcpd: %q", pw)
	}
	uid, gid := pw[2], pw[3]
	pid := s.show(t)["MainPID"]
	status, err := s.c.ReadFile(s.ctx, "/proc/"+pid+"/status")
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]string{}
	for _, l := range strings.Split(string(status), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			fields[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	want := map[string]string{
		"Uid":        strings.Repeat(uid+" ", 3) + uid,
		"Gid":        strings.Repeat(gid+" ", 3) + gid,
		"Groups":     gid, // systemd calls initgroups(): the user's own group
		"CapInh":     "0000000000001000",
		"CapPrm":     "0000000000001000",
		"CapEff":     "0000000000001000",
		"CapBnd":     "0000000000001000",
		"CapAmb":     "0000000000001000",
		"NoNewPrivs": "1",
		"Seccomp":    "2",
	}
	for k, v := range want {
		if fields[k] != v {
			t.Errorf("/proc/%s/status %s: %q, want %q", pid, k, fields[k], v)
		}
	}
	// Every upstream socket is a descriptor. The Go runtime raises its
	// soft limit to one below the hard one at start (prlimit64, which the
	// unit's SystemCallFilter allows); systemd's default hard limit for
	// services, 524288, covers limits.max_connections.
	limits, err := s.c.ReadFile(s.ctx, "/proc/"+pid+"/limits")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^Max open files\s+(\d+)\s+(\d+)`).FindSubmatch(limits)
	if m == nil {
		t.Fatalf("no \"Max open files\" in /proc/%s/limits:\n%s", pid, limits)
	}
	soft, _ := strconv.Atoi(string(m[1]))
	hard, _ := strconv.Atoi(string(m[2]))
	if soft < hard-1 {
		t.Errorf("open files: soft limit %d, hard %d: tcpd could not raise its soft limit", soft, hard)
	}
	var cfg struct {
		Limits struct {
			MaxConnections int `yaml:"max_connections"`
		} `yaml:"limits"`
	}
	if err := yaml.Unmarshal([]byte(s.config), &cfg); err != nil || cfg.Limits.MaxConnections == 0 {
		t.Fatalf("limits.max_connections in the configuration: %v", err)
	}
	if soft < cfg.Limits.MaxConnections+1024 {
		// The container inherits the test's own hard limit.
		t.Logf("note: tcpd may open %d files here, fewer than limits.max_connections %d needs; this machine's hard limit (%d) caps it", soft, cfg.Limits.MaxConnections, hard)
	}
	got := strings.Fields(s.run(t, "stat", "-c", "%n %a %U %G", "/run/tcpd", "/run/tcpd/tcpd.sock"))
	wantStat := []string{"/run/tcpd", "750", "tcpd", "tcpd", "/run/tcpd/tcpd.sock", "660", "tcpd", "tcpd"}
	if strings.Join(got, " ") != strings.Join(wantStat, " ") {
		t.Errorf("stat: %q, want %q", got, wantStat)
	}
}

// traffic: the lab's client connects through tcpd0 to the lab's server,
// over IPv4 and IPv6; the server sees the gateway's address (tcpd dialled
// it, the kernel did not forward), and tcpd counts the relays.
func (s *systemdTest) traffic(t *testing.T) {
	if err := s.lab.RouteIntoTUN("tcpd0"); err != nil {
		t.Fatal(err)
	}
	ln, err := s.lab.Server.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		peers []netip.Addr
	)
	defer wg.Wait()
	defer ln.Close()
	wg.Add(1)
	go func() { // echo server
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			peers = append(peers, conn.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap())
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer conn.Close()
				conn.SetDeadline(time.Now().Add(10 * time.Second))
				io.Copy(conn, conn)
			}()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	const msg = "through tcpd under systemd\n"
	for _, dst := range []netip.Addr{s.lab.ServerAddr4, s.lab.ServerAddr6} {
		addr := net.JoinHostPort(dst.String(), strconv.Itoa(port))
		conn, err := s.lab.Client.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %s through tcpd0: %v", addr, err)
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		_, werr := io.WriteString(conn, msg)
		cerr := conn.(*net.TCPConn).CloseWrite()
		got, rerr := io.ReadAll(conn)
		conn.Close()
		if err := errors.Join(werr, cerr, rerr); err != nil || string(got) != msg {
			t.Fatalf("echo via %s: got %q, %v", addr, got, err)
		}
	}
	mu.Lock()
	for _, p := range peers {
		if p != s.lab.GatewayServerAddr4 && p != s.lab.GatewayServerAddr6 {
			t.Errorf("the server saw a connection from %s, not from the gateway: the kernel forwarded it, not tcpd", p)
		}
	}
	mu.Unlock()
	m := s.waitMetrics(t, 10*time.Second, `tcpd_connections_total{result="relayed"} >= 2 and the bytes counted`, func(m map[string]float64) bool {
		return m[`tcpd_connections_total{result="relayed"}`] >= 2 &&
			m[`tcpd_relay_bytes_total{direction="in"}`] >= 2*float64(len(msg)) &&
			m[`tcpd_relay_bytes_total{direction="out"}`] >= 2*float64(len(msg))
	})
	t.Logf("relayed %v connections, %v bytes each way", m[`tcpd_connections_total{result="relayed"}`], m[`tcpd_relay_bytes_total{direction="in"}`])
}

// reload: `systemctl reload` after a limit changed succeeds (this one
// needs a restart, and tcpd says so) and returns once the reload is done; a
// file with an error makes it fail while tcpd keeps running; a good file
// is accepted again.
func (s *systemdTest) reload(t *testing.T) {
	pid := s.show(t)["MainPID"]
	m0, err := s.metrics()
	if err != nil {
		t.Fatal(err)
	}
	const key = "tcpd_config_last_reload_successful"
	const stamp = "tcpd_config_last_reload_success_timestamp_seconds"
	ts0 := m0[stamp]

	// limits.max_in_flight is fixed when the netstack is built: the reload
	// succeeds and names it in a warning.
	changed := strings.Replace(s.config, "max_in_flight: 4096", "max_in_flight: 2048", 1)
	if changed == s.config {
		t.Fatal(`configs/tcpd.yaml has no "max_in_flight: 4096" to change`)
	}
	s.writeConfig(t, changed)
	s.systemctl(t, "reload", "tcpd")
	// ExecReload (tcpd reload) returns once tcpd has re-read the file:
	// the metrics say so at once.
	m1, err := s.metrics()
	if err != nil {
		t.Fatal(err)
	}
	if m1[key] != 1 || !(m1[stamp] > ts0) {
		t.Errorf("right after systemctl reload returned: %s %v, %s %v (was %v); want 1 and a later time", key, m1[key], stamp, m1[stamp], ts0)
	}
	s.journalHas(t, `Got notification message from PID `+pid+` \(RELOADING=1`)
	s.journalHas(t, `"msg":"reload: these settings need a restart[^\n]*limits\.max_in_flight`)

	s.writeConfig(t, strings.Replace(s.config, "mtu: 1500", "mtu: 70000", 1))
	if out, err := s.c.Systemctl(s.ctx, "reload", "tcpd"); err == nil {
		t.Errorf("systemctl reload of a file with an error succeeded: %s", out)
	}
	m2, err := s.metrics()
	if err != nil {
		t.Fatal(err)
	}
	if m2[key] != 0 {
		t.Errorf("right after the failed systemctl reload: %s %v, want 0", key, m2[key])
	}
	if m2[stamp] != m1[stamp] {
		t.Errorf("a rejected reload moved %s from %v to %v", stamp, m1[stamp], m2[stamp])
	}
	s.journalHas(t, `tcpd reload: reload rejected[^\n]*tun\.mtu`)
	s.journalHas(t, `"msg":"reload rejected[^\n]*tun\.mtu`)
	// The journal files each line at its level: the daemon's error and
	// ExecReload's at err, the restart warning at warning, the rest
	// below (without the "<N>" prefixes, every line of a service's output
	// is info, and journalctl -p err shows none of tcpd's).
	s.journalAtPriority(t, "err", `(?m)^tcpd reload: reload rejected[^\n]*tun\.mtu`)
	errs := s.journalAtPriority(t, "err", `(?m)^\{"level":"error"[^\n]*"msg":"reload rejected[^\n]*tun\.mtu`)
	warns := s.journalAtPriority(t, "warning", `(?m)^\{"level":"warn"[^\n]*"msg":"reload: these settings need a restart`)
	if strings.Contains(errs, "these settings need a restart") || strings.Contains(warns, `"msg":"reloaded"`) {
		t.Errorf("a line filed above its level:\nat err:\n%s\nat warning:\n%s", tail(errs, 20), tail(warns, 20))
	}
	if st := s.show(t); st["ActiveState"] != "active" || st["SubState"] != "running" || st["MainPID"] != pid {
		t.Errorf("after a rejected reload: %v, want active/running with main PID %s", st, pid)
	}

	s.writeConfig(t, s.config)
	s.systemctl(t, "reload", "tcpd")
	s.waitMetrics(t, 10*time.Second, "a successful reload again", func(m map[string]float64) bool {
		return m[key] == 1 && m[stamp] > m2[stamp]
	})
	if st := s.show(t); st["MainPID"] != pid {
		t.Errorf("reloads restarted tcpd: main PID %s, was %s", st["MainPID"], pid)
	}
}

func (s *systemdTest) writeConfig(t *testing.T, text string) {
	t.Helper()
	if err := s.c.WriteFile(s.ctx, "/etc/tcpd/tcpd.yaml", []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// watchdog: SIGUSR2 wedges the packet loop of a wedgetest build at its next
// batch; tcpd then withholds WATCHDOG=1 and systemd kills it after
// WatchdogSec and restarts it.
func (s *systemdTest) watchdog(t *testing.T) {
	st := s.show(t)
	pid := st["MainPID"]
	n0, _ := strconv.Atoi(st["NRestarts"])
	// tcpd pings every WatchdogSec/2 = 5 s while healthy.
	s.journalWithin(t, 8*time.Second, `Got notification message from PID `+pid+` \(WATCHDOG=1\)`)
	s.systemctl(t, "kill", "--kill-whom=main", "--signal=SIGUSR2", "tcpd")
	s.journalHas(t, `SIGUSR2: wedging the packet loop`)
	// A SYN gives the packet loop a batch to wedge on.
	go func() {
		conn, err := s.lab.Client.DialTimeout("tcp", net.JoinHostPort(s.lab.ServerAddr4.String(), "9"), 3*time.Second)
		if err == nil {
			conn.Close()
		}
	}()
	t0 := time.Now()
	st, results := s.waitActive(t, 30*time.Second, pid, n0+1)
	t.Logf("restarted %v after the wedge (WatchdogSec=10s); Result values seen: %v; now %v",
		time.Since(t0).Round(time.Millisecond), results, st)
	j := s.journalHas(t, `tcpd\.service: Failed with result 'watchdog'`)
	// The goroutine dump of the SIGABRT is the error that explains the
	// kill: SyslogLevel=err files what tcpd's logger did not write.
	s.journalAtPriority(t, "err", `(?m)^SIGABRT: abort$`)
	for _, re := range []string{
		`"msg":"data path wedged; withholding watchdog pings"`,
		`tcpd\.service: Watchdog timeout`,
	} {
		if !regexp.MustCompile(re).MatchString(j) {
			t.Errorf("the journal lacks %q", re)
		}
	}
	s.waitMetrics(t, 5*time.Second, "the restarted tcpd answers", func(map[string]float64) bool { return true })
	if !s.tunExists() {
		t.Error("no tcpd0 after the restart")
	}
}

// crash: a signal that kills tcpd is a failure, and Restart=on-failure
// restarts it. Go exits with status 2 on a SIGSEGV it did not cause.
func (s *systemdTest) crash(t *testing.T, sig, result string) {
	st := s.show(t)
	pid := st["MainPID"]
	n0, _ := strconv.Atoi(st["NRestarts"])
	s.systemctl(t, "kill", "--kill-whom=main", "--signal="+sig, "tcpd")
	t0 := time.Now()
	st, results := s.waitActive(t, 15*time.Second, pid, n0+1)
	t.Logf("restarted %v after %s; Result values seen: %v; now %v", time.Since(t0).Round(time.Millisecond), sig, results, st)
	s.journalHas(t, `tcpd\.service: Failed with result '`+result+`'`)
	s.waitMetrics(t, 5*time.Second, "the restarted tcpd answers", func(map[string]float64) bool { return true })
}

// tunDeleted: the TUN deleted from under tcpd (ip link del tcpd0) makes it
// exit with status 1, which Restart=on-failure answers with a new tcpd and
// a new TUN, through which traffic is relayed again once routed into it.
func (s *systemdTest) tunDeleted(t *testing.T) {
	st := s.show(t)
	pid := st["MainPID"]
	n0, _ := strconv.Atoi(st["NRestarts"])
	if out, err := s.lab.Gateway.Command(s.ctx, "ip", "link", "del", "tcpd0").CombinedOutput(); err != nil {
		t.Fatalf("ip link del tcpd0: %v: %s", err, out)
	}
	t0 := time.Now()
	st, results := s.waitActive(t, 15*time.Second, pid, n0+1)
	t.Logf("restarted %v after the TUN was deleted; Result values seen: %v; now %v", time.Since(t0).Round(time.Millisecond), results, st)
	j := s.journalHas(t, `tcpd\.service: Failed with result 'exit-code'`)
	for _, re := range []string{
		`"msg":"the TUN was deleted from under tcpd; exiting so that a restart creates it again"`,
		`tcpd\.service: Main process exited, code=exited, status=1/FAILURE`,
	} {
		if !regexp.MustCompile(re).MatchString(j) {
			t.Errorf("the journal lacks %q:\n%s", re, tail(j, 20))
		}
	}
	s.waitMetrics(t, 5*time.Second, "the restarted tcpd answers", func(map[string]float64) bool { return true })
	if !s.tunExists() {
		t.Fatal("no tcpd0 after the restart")
	}
	s.traffic(t)
}

// stop: tcpd acknowledges SIGTERM with STOPPING=1, drains, removes its TUN
// and exits 0, so the unit ends with Result=success.
func (s *systemdTest) stop(t *testing.T) {
	pid := s.show(t)["MainPID"]
	t0 := time.Now()
	s.systemctl(t, "stop", "tcpd")
	took := time.Since(t0)
	st := s.show(t)
	if st["ActiveState"] != "inactive" || st["Result"] != "success" {
		t.Errorf("after stop: %v, want inactive with Result=success", st)
	}
	j := s.journalHas(t, `Got notification message from PID `+pid+` \(STOPPING=1\)`)
	for _, re := range []string{
		`"msg":"stopped"`,
		`tcpd\.service: Main process exited, code=exited, status=0/SUCCESS`,
	} {
		if !regexp.MustCompile(re).MatchString(j) {
			t.Errorf("the journal lacks %q:\n%s", re, tail(j, 20))
		}
	}
	if s.tunExists() {
		t.Error("tcpd0 still exists after stop")
	}
	if out, err := s.c.Run(s.ctx, "test", "-e", "/run/tcpd"); err == nil {
		t.Errorf("/run/tcpd still exists after stop (RuntimeDirectory is removed): %s", out)
	}
	t.Logf("systemctl stop took %v", took.Round(time.Millisecond))
}

// badConfig: a start refused for its configuration exits with EX_CONFIG,
// which RestartPreventExitStatus= keeps systemd from restarting, so
// `systemctl status` shows tcpd's own reason.
func (s *systemdTest) badConfig(t *testing.T) {
	n0, _ := strconv.Atoi(s.show(t)["NRestarts"])
	at := strings.Index(s.config, "max_connections: 65536")
	if at < 0 {
		t.Fatal("configs/tcpd.yaml has no max_connections: 65536 line")
	}
	line := 1 + strings.Count(s.config[:at], "\n")
	s.writeConfig(t, strings.Replace(s.config, "max_connections: 65536", "max_connections: banana", 1))
	if out, err := s.c.Systemctl(s.ctx, "start", "tcpd"); err == nil {
		t.Fatalf("systemctl start with max_connections: banana succeeded: %s", out)
	}
	time.Sleep(3 * time.Second) // RestartSec=1s: a restart would have come
	m, err := s.c.Show(s.ctx, "tcpd", "ActiveState", "Result", "NRestarts", "ExecMainStatus")
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := strconv.Atoi(m["NRestarts"]); m["ActiveState"] != "failed" || m["Result"] != "exit-code" || m["ExecMainStatus"] != "78" || n != n0 {
		t.Errorf("after a start with a bad configuration: %v, want failed, Result=exit-code, ExecMainStatus=78 and no restart (NRestarts %d)", m, n0)
	}
	// systemctl status exits 3 for a failed unit; its output is what counts.
	out, _ := s.c.Systemctl(s.ctx, "status", "-n", "20", "tcpd")
	if want := fmt.Sprintf(`tcpd run: /etc/tcpd/tcpd.yaml: line %d: limits.max_connections: "banana" is not an integer`, line); !strings.Contains(out, want) {
		t.Errorf("systemctl status does not show the configuration error:\n%s", out)
	}
}
