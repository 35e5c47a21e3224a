package kubernetes_test

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

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"golang.org/x/sys/unix"

	"tcpd/internal/netlab"
)

// closeLabs removes whatever a failed test left of its labs.
func closeLabs() error { return netlab.CloseAll() }

// podRun turns the rendered DaemonSet's pod into the podman run a kubelet
// would amount to on a gateway node: the host network (the lab's gateway
// namespace), the pod's user, capabilities, no-new-privileges and
// read-only root, its environment, the ConfigMap's files, the emptyDir as a
// tmpfs, /dev/net/tun, the image and its arguments. Everything comes from
// the manifests; nothing is repeated here.
func podRun(t *testing.T, r *rendered, netns, name, tunNode, configDir string) []string {
	t.Helper()
	ps := r.daemonSet.Spec.Template.Spec
	c := container(t, r.daemonSet)
	args := []string{"run", "--rm", "--name", name,
		"--ulimit", "nofile=20000:20000", "--ulimit", "nproc=4096:4096"}
	if !ps.HostNetwork {
		t.Fatal("the pod is not on the host network")
	}
	args = append(args, "--network", "ns:"+netns)
	psc, sc := ps.SecurityContext, c.SecurityContext
	args = append(args, "--user", fmt.Sprintf("%d:%d", *psc.RunAsUser, *psc.RunAsGroup))
	for _, d := range sc.Capabilities.Drop {
		args = append(args, "--cap-drop", strings.ToLower(string(d)))
	}
	for _, a := range sc.Capabilities.Add {
		args = append(args, "--cap-add", string(a))
	}
	if sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
		args = append(args, "--security-opt", "no-new-privileges")
	}
	if sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem {
		args = append(args, "--read-only", "--read-only-tmpfs=false")
	}
	for _, e := range c.Env {
		args = append(args, "--env", e.Name+"="+e.Value)
	}
	if lim, ok := c.Resources.Limits[corev1.ResourceMemory]; ok {
		// Its own cgroup namespace, as containerd gives a container on a
		// cgroup v2 node: tcpd then reads the limit as its own cgroup's.
		args = append(args, "--memory", strconv.FormatInt(lim.Value(), 10), "--cgroupns", "private")
	}
	vols := map[string]corev1.Volume{}
	for _, v := range ps.Volumes {
		vols[v.Name] = v
	}
	for _, m := range c.VolumeMounts {
		v := vols[m.Name]
		switch {
		case v.ConfigMap != nil:
			if v.ConfigMap.Name != r.configMap.Name {
				t.Fatalf("volume %s: ConfigMap %s, the kustomization made %s", m.Name, v.ConfigMap.Name, r.configMap.Name)
			}
			for _, it := range v.ConfigMap.Items {
				if err := os.WriteFile(filepath.Join(configDir, it.Path), []byte(r.configMap.Data[it.Key]), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			args = append(args, "--volume", configDir+":"+m.MountPath+":ro")
		case v.EmptyDir != nil:
			// An emptyDir is a fresh directory, world-writable, and with
			// fsGroup group-owned and setgid, which the kubelet bind-mounts
			// (a tmpfs when its medium is Memory; podman's --tmpfs would
			// take the image's directory's mode and not its owner).
			d := filepath.Join(configDir, "..", "emptydir-"+m.Name)
			if err := os.Mkdir(d, 0o777); err != nil {
				t.Fatal(err)
			}
			mode := os.FileMode(0o777)
			if psc.FSGroup != nil {
				if err := os.Chown(d, 0, int(*psc.FSGroup)); err != nil {
					t.Fatal(err)
				}
				mode |= os.ModeSetgid
			}
			if err := os.Chmod(d, mode); err != nil {
				t.Fatal(err)
			}
			args = append(args, "--volume", d+":"+m.MountPath+":rw")
		case v.HostPath != nil && v.HostPath.Path == "/dev/net/tun":
			args = append(args, "--device", tunNode+":"+m.MountPath)
		default:
			t.Fatalf("volume %s: %+v is not one this test knows how to give podman", m.Name, v)
		}
	}
	args = append(args, c.Image)
	args = append(args, c.Command...)
	return append(args, c.Args...)
}

// probeURL resolves a probe's httpGet on the pod's address, as the kubelet
// does: a named port is the container port of that name.
func probeURL(t *testing.T, c *corev1.Container, p *corev1.Probe, host string) string {
	t.Helper()
	port := p.HTTPGet.Port
	if port.Type == intstr.String {
		for _, cp := range c.Ports {
			if cp.Name == port.StrVal {
				port = intstr.FromInt32(cp.ContainerPort)
			}
		}
	}
	if port.Type != intstr.Int {
		t.Fatalf("probe port %s names no container port", p.HTTPGet.Port.String())
	}
	return "http://" + net.JoinHostPort(host, strconv.Itoa(port.IntValue())) + p.HTTPGet.Path
}

// TestDaemonSetPodUnderPodman builds the image with "make image" under the
// name the kustomization gives it, runs the DaemonSet's pod from the
// rendered manifests under podman in a netlab gateway namespace, and does
// what the kubelet would: the startup, readiness and liveness probes at
// their paths and ports, traffic through the gateway, "kubectl exec ...
// tcpd conns", and a stop with the pod's grace period, during which
// readiness turns 503 while the held connection still works.
func TestDaemonSetPodUnderPodman(t *testing.T) {
	pm := newPodman(t)
	lab := netlab.NewT(t, netlab.Options{})
	r := render(t)
	c := container(t, r.daemonSet)
	repo, tag, ok := strings.Cut(c.Image, ":")
	if !ok || repo != "localhost/tcpd" {
		t.Fatalf("image %q is not one make image builds", c.Image)
	}

	dir := t.TempDir()
	archive := filepath.Join(dir, "tcpd-image.tar")
	mk := exec.Command("make", "image", "IMAGE_OUT="+archive, "IMAGE_BIN="+filepath.Join(dir, "tcpd"), "VERSION="+tag)
	mk.Dir = repoRoot(t)
	if out, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("make image: %v\n%s", err, out)
	}
	if out := pm.run(t, "load", "-i", archive); !strings.Contains(out, c.Image) {
		t.Fatalf("podman load: %s", out)
	}
	tunNode := filepath.Join(dir, "tun")
	if err := unix.Mknod(tunNode, unix.S_IFCHR|0o666, int(unix.Mkdev(10, 200))); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tunNode, 0o666); err != nil {
		t.Fatal(err)
	}
	configDir := filepath.Join(dir, "config")
	if err := os.Mkdir(configDir, 0o755); err != nil {
		t.Fatal(err)
	}
	name := "tcpd-" + lab.ID
	args := podRun(t, r, "/run/netns/"+lab.Gateway.Name, name, tunNode, configDir)
	t.Logf("podman %s", strings.Join(args, " "))
	ctr, err := lab.StartProc(pm.cmd(context.Background(), args...))
	if err != nil {
		t.Fatal(err)
	}

	// The kubelet reaches a host-network pod at the node's address.
	node := lab.GatewayServerAddr4.String()
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return lab.Gateway.Dial(ctx, network, addr)
		},
	}}
	get := func(url string) (int, string) {
		resp, err := hc.Get(url)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	sp := c.StartupProbe
	startURL := probeURL(t, c, sp, node)
	deadline := time.Now().Add(time.Duration(sp.PeriodSeconds*sp.FailureThreshold) * time.Second)
	for {
		code, body := get(startURL)
		if code == http.StatusOK {
			break
		}
		select {
		case <-ctr.Exited():
			t.Fatalf("the pod exited: %v\n%s", ctr.Wait(), ctr.Logs())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("startup probe %s: %d %q after the %ds it allows\n%s", startURL, code, body, sp.PeriodSeconds*sp.FailureThreshold, ctr.Logs())
		}
		time.Sleep(time.Duration(sp.PeriodSeconds) * time.Second)
	}
	readyURL, liveURL := probeURL(t, c, c.ReadinessProbe, node), probeURL(t, c, c.LivenessProbe, node)
	for _, u := range []string{readyURL, liveURL} {
		if code, body := get(u); code != http.StatusOK {
			t.Errorf("GET %s: %d %q", u, code, body)
		}
	}

	// Traffic through the gateway, one connection held.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ready, err := ctr.WaitForLog(ctx, "ready")
	if err != nil {
		t.Fatal(err)
	}
	if err := lab.RouteIntoTUN(ready["tun"].(string)); err != nil {
		t.Fatal(err)
	}
	// tcpd's own memory limit follows its connection cap, not the
	// container's memory: the container leaves it room.
	if from, _ := ready["memory_limit_from"].(string); !strings.HasPrefix(from, "auto: ") || strings.Contains(from, "available") {
		t.Errorf("tcpd's memory limit %v comes from %q, not from its connection cap", ready["memory_limit"], from)
	}
	t.Logf("tcpd's memory limit in the pod: %v (%v)", ready["memory_limit"], ready["memory_limit_from"])
	ln, err := lab.Server.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			s, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer s.Close()
				s.SetDeadline(time.Now().Add(2 * time.Minute))
				io.Copy(s, s)
			}()
		}
	}()
	dst := net.JoinHostPort(lab.ServerAddr4.String(), strconv.Itoa(ln.Addr().(*net.TCPAddr).Port))
	held, err := lab.Client.DialTimeout("tcp", dst, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s through the pod: %v", dst, err)
	}
	defer held.Close()
	br := bufio.NewReader(held)
	echo := func(msg string) error {
		held.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(held, msg+"\n"); err != nil {
			return err
		}
		got, err := br.ReadString('\n')
		if err != nil || got != msg+"\n" {
			return fmt.Errorf("echo %q, %v", got, err)
		}
		return nil
	}
	if err := echo("through the pod"); err != nil {
		t.Fatal(err)
	}
	if out := pm.run(t, "exec", name, "tcpd", "conns"); !strings.Contains(out, dst) {
		t.Errorf("tcpd conns in the pod does not show %s:\n%s", dst, out)
	}

	// Stop as the kubelet does: SIGTERM, SIGKILL after the grace period.
	grace := *r.daemonSet.Spec.Template.Spec.TerminationGracePeriodSeconds
	stopped := make(chan error, 1)
	t0 := time.Now()
	go func() {
		out, err := pm.cmd(context.Background(), "stop", "--time", strconv.FormatInt(grace, 10), name).CombinedOutput()
		if err != nil {
			err = fmt.Errorf("%w: %s", err, out)
		}
		stopped <- err
	}()
	if _, err := ctr.WaitForLog(ctx, "shutting down"); err != nil {
		t.Fatal(err)
	}
	if code, body := get(readyURL); code != http.StatusServiceUnavailable || !strings.HasPrefix(body, "draining") {
		t.Errorf("readiness while draining: %d %q, want 503 draining", code, body)
	}
	if code, body := get(liveURL); code != http.StatusOK {
		t.Errorf("liveness while draining: %d %q, want 200", code, body)
	}
	if err := echo("while draining"); err != nil {
		t.Errorf("the held connection during the drain: %v", err)
	}
	held.Close()
	select {
	case err := <-stopped:
		if err != nil {
			t.Errorf("podman stop: %v", err)
		}
	case <-time.After(time.Duration(grace+10) * time.Second):
		t.Fatal("podman stop did not return")
	}
	if took := time.Since(t0); took >= time.Duration(grace)*time.Second {
		t.Errorf("the pod took %v to stop, not within its grace period %ds", took, grace)
	}
	if _, err := ctr.WaitForLog(ctx, "stopped"); err != nil {
		t.Errorf("tcpd did not stop cleanly: %v\n%s", err, ctr.Logs())
	}
}

// podman runs podman with its own storage, so that a test touches none of
// the machine's images and containers, and with runc (crun cannot run on
// cgroups in hybrid mode).
type podman struct {
	bin, dir string
}

// newPodman skips without root, podman or runc.
func newPodman(t *testing.T) *podman {
	t.Helper()
	if netlab.Available() != "" {
		t.Skip("tier B: needs root (CAP_NET_ADMIN) for network namespaces and a TUN")
	}
	bin, err := exec.LookPath("podman")
	if err != nil {
		t.Skip("podman not found: install the podman package")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("runc not found: install the runc package")
	}
	// Podman refuses a run root longer than 50 characters: not under
	// t.TempDir.
	dir, err := os.MkdirTemp("", "tcpd-pm-")
	if err != nil {
		t.Fatal(err)
	}
	p := &podman{bin: bin, dir: dir}
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if out, err := p.cmd(ctx, "system", "reset", "--force").CombinedOutput(); err != nil {
			t.Errorf("podman system reset: %v\n%s", err, out)
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Error(err)
		}
	})
	return p
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
