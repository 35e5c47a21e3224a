package deploy_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"tcpd/internal/netlab"
)

// podman runs podman with its own storage under dir, so that a test never
// touches the machine's images and containers and leaves nothing behind,
// and with runc (crun cannot run on cgroups in hybrid mode).
type podman struct {
	bin, dir string
}

func (p *podman) cmd(ctx context.Context, args ...string) *exec.Cmd {
	global := []string{
		"--root", filepath.Join(p.dir, "root"),
		"--runroot", filepath.Join(p.dir, "runroot"),
		"--storage-driver", "overlay",
		"--runtime", "runc",
		"--cgroup-manager", "cgroupfs",
		"--events-backend", "file",
		"--tmpdir", filepath.Join(p.dir, "tmp"),
	}
	return exec.CommandContext(ctx, p.bin, append(global, args...)...)
}

func (p *podman) run(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := p.cmd(ctx, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("podman %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// TestImageUnderPodman builds the image with "make image", loads it into
// podman and runs it as a user would run it on a gateway: in the gateway's
// network namespace, every capability dropped but CAP_NET_ADMIN, the TUN
// device passed in. Client traffic then goes through the container; the
// health endpoints, the metrics and "tcpd conns" answer; the process runs
// as user 65532 with CAP_NET_ADMIN and nothing else; /proc/sys is
// read-only in the container and rp_filter is still turned off on the TUN;
// SIGTERM drains and the container exits 0.
func TestImageUnderPodman(t *testing.T) {
	bin := needTool(t, "podman", "podman")
	needTool(t, "runc", "runc")
	makeBin := needTool(t, "make", "make")
	lab := netlab.NewT(t, netlab.Options{})
	// A fresh TUN inherits "default"; tcpd must turn it off itself.
	if err := lab.Gateway.Sysctl("net.ipv4.conf.default.rp_filter", "1"); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	archive := filepath.Join(dir, "tcpd-image.tar")
	const version = "podmantest"
	mk := exec.Command(makeBin, "image", "IMAGE_OUT="+archive, "IMAGE_BIN="+filepath.Join(dir, "tcpd"), "VERSION="+version)
	mk.Dir = root(t)
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("make image: %v\n%s", err, out)
	}

	// Podman refuses a run root longer than 50 characters: not under
	// t.TempDir.
	pmDir, err := os.MkdirTemp("", "tcpd-pm-")
	if err != nil {
		t.Fatal(err)
	}
	pm := &podman{bin: bin, dir: pmDir}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if out, err := pm.cmd(ctx, "system", "reset", "--force").CombinedOutput(); err != nil {
			t.Errorf("podman system reset: %v\n%s", err, out)
		}
		if err := os.RemoveAll(pmDir); err != nil {
			t.Error(err)
		}
	})
	if err := os.MkdirAll(filepath.Join(pm.dir, "tmp"), 0o700); err != nil {
		t.Fatal(err)
	}
	if out := pm.run(t, "load", "-i", archive); !strings.Contains(out, "localhost/tcpd:"+version) {
		t.Fatalf("podman load: %s", out)
	}
	if user := pm.run(t, "image", "inspect", "--format", "{{.Config.User}}", "localhost/tcpd:"+version); user != "65532:65532" {
		t.Errorf("image user %q", user)
	}

	// The host's /dev/net/tun is 0600 here; udev makes it 0666 on a normal
	// host, and podman gives the container the node's mode. A node of our
	// own stands in for it.
	tunNode := filepath.Join(dir, "tun")
	if err := unix.Mknod(tunNode, unix.S_IFCHR|0o666, int(unix.Mkdev(10, 200))); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tunNode, 0o666); err != nil { // past the umask
		t.Fatal(err)
	}

	name := "tcpd-" + lab.ID
	run := pm.cmd(context.Background(), "run", "--rm", "--name", name,
		"--network", "ns:/run/netns/"+lab.Gateway.Name,
		"--cap-drop", "all", "--cap-add", "NET_ADMIN",
		"--device", tunNode+":/dev/net/tun",
		"--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096",
		"localhost/tcpd:"+version) // the image's own command and configuration
	ctr, err := lab.StartProc(run)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ready, err := ctr.WaitForLog(ctx, "ready")
	if err != nil {
		t.Fatalf("the container did not get ready: %v\n%s", err, ctr.Logs())
	}
	if ready["config"] != "/etc/tcpd/tcpd.yaml" || ready["admin_socket"] != "/run/tcpd/tcpd.sock" {
		t.Errorf("ready line %v: not the image's configuration", ready)
	}
	if err := lab.RouteIntoTUN(ready["tun"].(string)); err != nil {
		t.Fatal(err)
	}

	// Traffic through the container.
	ln, err := lab.Server.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(time.Minute))
				io.Copy(c, c)
			}()
		}
	}()
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	var held net.Conn
	for i, dst := range []string{lab.ServerAddr4.String(), lab.ServerAddr6.String()} {
		c, err := lab.Client.DialTimeout("tcp", net.JoinHostPort(dst, port), 5*time.Second)
		if err != nil {
			t.Fatalf("dial %s through the container: %v", dst, err)
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		msg := fmt.Sprintf("through the container to %s\n", dst)
		if _, err := io.WriteString(c, msg); err != nil {
			t.Fatal(err)
		}
		got, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || got != msg {
			t.Fatalf("echo via %s: %q, %v", dst, got, err)
		}
		if i == 0 {
			held = c // kept open for "tcpd conns"
			defer held.Close()
		} else {
			c.Close()
		}
	}

	hc := nsClient(lab.Gateway)
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err := hc.Get("http://" + metricsAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(b) != "ok\n" {
			t.Errorf("GET %s: %s %q", path, resp.Status, b)
		}
	}
	fams, err := scrapeFamilies(lab.Gateway)
	if err != nil {
		t.Fatal(err)
	}
	if v := samples(fams)[`tcpd_connections_total{result="relayed"}`]; v < 2 {
		t.Errorf(`tcpd_connections_total{result="relayed"} = %v, want >= 2`, v)
	}
	conns := pm.run(t, "exec", name, "tcpd", "conns")
	if !strings.Contains(conns, net.JoinHostPort(lab.ServerAddr4.String(), port)) {
		t.Errorf("tcpd conns in the container does not show the held connection:\n%s", conns)
	}

	// What the process is allowed.
	pid, err := strconv.Atoi(pm.run(t, "inspect", "--format", "{{.State.Pid}}", name))
	if err != nil {
		t.Fatal(err)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]string{}
	for _, line := range strings.Split(string(status), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	if uids := strings.Fields(fields["Uid"]); len(uids) != 4 || uids[0] != "65532" || uids[1] != "65532" {
		t.Errorf("tcpd runs as uid %q, want 65532", fields["Uid"])
	}
	const netAdmin = "0000000000001000" // 1 << CAP_NET_ADMIN (12)
	for _, k := range []string{"CapEff", "CapPrm", "CapBnd"} {
		if fields[k] != netAdmin {
			t.Errorf("%s = %s, want %s (CAP_NET_ADMIN alone)", k, fields[k], netAdmin)
		}
	}
	if fields["CapAmb"] != "0000000000000000" {
		t.Errorf("CapAmb = %s: the file capability, not an ambient one, must grant CAP_NET_ADMIN", fields["CapAmb"])
	}
	// /proc/sys is read-only in the container, as in Kubernetes: rp_filter
	// must have gone through netlink.
	mi, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		t.Fatal(err)
	}
	roSys := false
	for _, line := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(line); len(f) > 5 && f[4] == "/proc/sys" {
			roSys = strings.HasPrefix(f[5], "ro")
		}
	}
	if !roSys {
		t.Log("note: /proc/sys is not mounted read-only in this container")
	}
	if v, err := lab.Gateway.ReadSysctl("net/ipv4/conf/tcpd0/rp_filter"); err != nil || v != "0" {
		t.Errorf("rp_filter on tcpd0 = %q (%v), want 0", v, err)
	}

	// SIGTERM to podman reaches tcpd, which drains and exits 0.
	held.Close()
	if err := ctr.Stop(); err != nil {
		t.Errorf("stopping the container: %v", err)
	}
	if _, err := ctr.WaitForLog(ctx, "stopped"); err != nil {
		t.Errorf("tcpd did not stop cleanly: %v\n%s", err, ctr.Logs())
	}
}
