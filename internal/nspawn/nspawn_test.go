//go:build linux

package nspawn_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"tcpd/internal/netlab"
	"tcpd/internal/nspawn"
)

// TestBootAndClose boots a container with a file layered into /usr, reads
// and writes files inside, runs a transient unit, and checks that Close
// leaves no cgroup behind.
func TestBootAndClose(t *testing.T) {
	if why := nspawn.Available(); why != "" {
		t.Skipf("tier D: needs systemd-nspawn as root: %s", why)
	}
	before, err := nspawn.Leftovers()
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "hello")
	if err := os.WriteFile(file, []byte("#!/bin/sh\necho hello from $0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := nspawn.Boot(ctx, nspawn.Options{Files: map[string]string{"/usr/bin/nspawn-test-hello": file}})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			c.Close()
		}
	}()
	t.Logf("booted %s in %v", c.Name, time.Since(t0).Round(time.Millisecond))

	if out, err := c.Run(ctx, "nspawn-test-hello"); err != nil || out != "hello from /usr/bin/nspawn-test-hello\n" {
		t.Errorf("the layered file: %q, %v", out, err)
	}
	if _, err := c.Run(ctx, "touch", "/usr/bin/x"); err == nil {
		t.Error("/usr is writable in the container")
	}
	if err := c.WriteFile(ctx, "/etc/nspawn-test/a", []byte("written"), 0o600); err != nil {
		t.Fatal(err)
	}
	if b, err := c.ReadFile(ctx, "/etc/nspawn-test/a"); err != nil || string(b) != "written" {
		t.Errorf("ReadFile: %q, %v", b, err)
	}
	if _, err := os.Stat("/etc/nspawn-test"); err == nil {
		t.Error("a file written in the container appeared on the host")
	}
	if out, err := c.Run(ctx, "systemd-run", "--wait", "--quiet", "-p", "User=nobody", "/usr/bin/true"); err != nil {
		t.Errorf("a transient unit: %v %s", err, out)
	}
	// Device policies are enforced (SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 and
	// --system-call-filter=bpf): a unit allowed only /dev/null cannot read
	// /dev/zero, and can once /dev/zero is allowed too.
	run := []string{"--wait", "--quiet", "--pipe", "--collect", "-p", "DevicePolicy=strict", "-p", "DeviceAllow=/dev/null rw"}
	out, err := c.Run(ctx, "systemd-run", append(run, "head", "-c1", "/dev/zero")...)
	if err == nil || !strings.Contains(out, "Operation not permitted") {
		t.Errorf("a unit without DeviceAllow=/dev/zero read it: %q, %v", out, err)
	}
	run = append(run, "-p", "DeviceAllow=/dev/zero r", "head", "-c1", "/dev/zero")
	if out, err := c.Run(ctx, "systemd-run", run...); err != nil || out != "\x00" {
		t.Errorf("a unit with DeviceAllow=/dev/zero could not read it: %q, %v", out, err)
	}
	st, err := c.Show(ctx, "multi-user.target", "ActiveState")
	if err != nil || st["ActiveState"] != "active" {
		t.Errorf("multi-user.target: %v, %v", st, err)
	}
	// The preset file enabled nothing the host's packages ship.
	out, err = c.Systemctl(ctx, "list-units", "--state=failed", "--plain", "--no-legend")
	if err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("failed units: %q, %v", out, err)
	}

	t1 := time.Now()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	t.Logf("closed in %v", time.Since(t1).Round(time.Millisecond))
	after, err := nspawn.Leftovers()
	if err != nil {
		t.Fatal(err)
	}
	for _, cg := range after {
		if !slices.Contains(before, cg) {
			t.Errorf("cgroup %s left behind", cg)
		}
	}
	if c.Close() != nil {
		t.Error("a second Close failed")
	}
}

// TestNetNS boots a container in an existing network namespace: its root
// may change links and /proc/sys/net there, and the changes show outside.
func TestNetNS(t *testing.T) {
	if why := nspawn.Available(); why != "" {
		t.Skipf("tier D: needs systemd-nspawn as root: %s", why)
	}
	lab := netlab.NewT(t, netlab.Options{})
	c := nspawn.BootT(t, nspawn.Options{NetNS: "/run/netns/" + lab.Gateway.Name})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := c.Run(ctx, "ip", "link", "add", "nspawntest0", "type", "veth", "peer", "name", "nspawntest1"); err != nil {
		t.Fatalf("CAP_NET_ADMIN in the container: %v %s", err, out)
	}
	if _, err := lab.Gateway.Netlink().LinkByName("nspawntest0"); err != nil {
		t.Errorf("the link made in the container is not in %s: %v", lab.Gateway.Name, err)
	}
	if out, err := c.Run(ctx, "sh", "-c", "echo 2 > /proc/sys/net/ipv4/conf/nspawntest0/rp_filter"); err != nil {
		t.Fatalf("/proc/sys/net is not writable in the container: %v %s", err, out)
	}
	if v, err := lab.Gateway.ReadSysctl("net/ipv4/conf/nspawntest0/rp_filter"); err != nil || v != "2" {
		t.Errorf("rp_filter of nspawntest0 seen from outside: %q, %v", v, err)
	}
	if out, err := c.Run(ctx, "sh", "-c", "echo 1 > /proc/sys/kernel/sysrq"); err == nil {
		t.Errorf("/proc/sys outside net is writable in the container: %s", out)
	}
}
