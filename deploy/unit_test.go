package deploy_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

const unitPath = "deploy/systemd/tcpd.service"

// maxExposure is the highest overall exposure `systemd-analyze security`
// may give the unit, on its 0–10 scale.
const maxExposure = 2.0

// stopMargin is how much longer than shutdown_grace systemd must wait after
// SIGTERM: tcpd resets what is left, closes the TUN and its listeners.
const stopMargin = 5 * time.Second

// defaultConfig decodes configs/tcpd.yaml, the file the package installs.
func defaultConfig(t *testing.T) map[string]any {
	t.Helper()
	var cfg map[string]any
	if err := yaml.Unmarshal(readFile(t, "configs/tcpd.yaml"), &cfg); err != nil {
		t.Fatalf("configs/tcpd.yaml: %v", err)
	}
	return cfg
}

// defaultAdminSocket is admin.socket in configs/tcpd.yaml, which the
// unit's ExecReload names.
func defaultAdminSocket(t *testing.T) string {
	t.Helper()
	a, _ := defaultConfig(t)["admin"].(map[string]any)
	p, _ := a["socket"].(string)
	if p == "" {
		t.Fatal("configs/tcpd.yaml sets no admin.socket")
	}
	return p
}

// TestUnitSettings checks the settings tcpd's behaviour relies on, and that
// they agree with the default configuration.
func TestUnitSettings(t *testing.T) {
	u := parseUnit(t, string(readFile(t, unitPath)))
	want := map[string]string{
		"Type":                  "notify",
		"ExecStart":             "/usr/bin/tcpd run --config /etc/tcpd/tcpd.yaml",
		"ExecReload":            "/usr/bin/tcpd reload --socket " + defaultAdminSocket(t) + " --pid $MAINPID",
		"Restart":               "on-failure",
		"WatchdogSec":           "10s",
		"User":                  "tcpd",
		"Group":                 "tcpd",
		"AmbientCapabilities":   "CAP_NET_ADMIN",
		"CapabilityBoundingSet": "CAP_NET_ADMIN",
		"DevicePolicy":          "closed",
		"DeviceAllow":           "/dev/net/tun rw",
		"RuntimeDirectory":      "tcpd",
		"ProtectSystem":         "strict",
		"UMask":                 "0077",
		"NoNewPrivileges":       "yes",
	}
	for key, v := range want {
		if got := unitValues(u, "Service", key); !slices.Equal(got, []string{v}) {
			t.Errorf("[Service] %s = %q, want exactly %q", key, got, v)
		}
	}
	if got := unitValues(u, "Install", "WantedBy"); !slices.Equal(got, []string{"multi-user.target"}) {
		t.Errorf("[Install] WantedBy = %q, want multi-user.target", got)
	}

	cfg := defaultConfig(t)

	// systemd must let SIGTERM's drain finish before it sends SIGKILL.
	grace, err := time.ParseDuration(cfg["shutdown_grace"].(string))
	if err != nil {
		t.Fatalf("configs/tcpd.yaml shutdown_grace: %v", err)
	}
	stop, err := time.ParseDuration(strings.Join(unitValues(u, "Service", "TimeoutStopSec"), ""))
	if err != nil {
		t.Fatalf("TimeoutStopSec: %v", err)
	}
	if stop < grace+stopMargin {
		t.Errorf("TimeoutStopSec=%v < shutdown_grace %v + %v", stop, grace, stopMargin)
	}

	// The admin socket must live in the RuntimeDirectory systemd creates
	// for the tcpd user (ProtectSystem=strict leaves nothing else writable).
	sock := cfg["admin"].(map[string]any)["socket"].(string)
	if filepath.Dir(sock) != "/run/tcpd" {
		t.Errorf("configs/tcpd.yaml admin.socket %s is not in RuntimeDirectory /run/tcpd", sock)
	}

	// tcpd sets rp_filter on its TUN over netlink, so /proc/sys stays
	// read-only as a whole (the systemd test checks that rp_filter is 0).
	if !slices.Contains(unitValues(u, "Service", "ProtectKernelTunables"), "yes") {
		t.Error("ProtectKernelTunables is not yes")
	}
	for _, p := range unitValues(u, "Service", "ReadWritePaths") {
		if strings.HasPrefix(p, "/proc/sys") {
			t.Errorf("ReadWritePaths=%s: tcpd writes nothing under /proc/sys", p)
		}
	}
	// RestrictAddressFamilies must keep what tcpd uses: netlink for the
	// TUN, unix for the admin socket, inet for everything else.
	fams := strings.Fields(strings.Join(unitValues(u, "Service", "RestrictAddressFamilies"), " "))
	for _, f := range []string{"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"} {
		if !slices.Contains(fams, f) {
			t.Errorf("RestrictAddressFamilies lacks %s", f)
		}
	}
}

// TestSysusers checks the sysusers.d line, and that systemd-sysusers turns
// it into a system user and group in an empty root.
func TestSysusers(t *testing.T) {
	text := string(readFile(t, "deploy/systemd/tcpd.sysusers"))
	var lines []string
	for _, l := range strings.Split(text, "\n") {
		if l = strings.TrimSpace(l); l != "" && l[0] != '#' {
			lines = append(lines, l)
		}
	}
	if want := `u tcpd - "tcpd VPN TCP terminator" - -`; !slices.Equal(lines, []string{want}) {
		t.Fatalf("tcpd.sysusers lines = %q, want exactly %q", lines, want)
	}
	if os.Geteuid() != 0 {
		t.Skip("running systemd-sysusers --root needs root")
	}
	bin := needTool(t, "systemd-sysusers", "systemd")
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "--root="+dir, filepath.Join(root(t), "deploy/systemd/tcpd.sysusers")).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-sysusers: %v\n%s", err, out)
	}
	passwd, err := os.ReadFile(filepath.Join(dir, "etc/passwd"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^tcpd:x:(\d+):(\d+):tcpd VPN TCP terminator:/:(\S+)$`).FindStringSubmatch(string(passwd))
	if m == nil {
		t.Fatalf("no tcpd user in /etc/passwd:\n%s", passwd)
	}
	if uid, _ := strconv.Atoi(m[1]); uid == 0 || uid >= 1000 {
		t.Errorf("tcpd's uid %d is not a system uid", uid)
	}
	if m[1] != m[2] {
		t.Errorf("tcpd's uid %s and gid %s differ; the group tcpd should match", m[1], m[2])
	}
	group, err := os.ReadFile(filepath.Join(dir, "etc/group"))
	if err != nil || !regexp.MustCompile(`(?m)^tcpd:x:`+m[2]+`:`).Match(group) {
		t.Errorf("no group tcpd with gid %s: %v\n%s", m[2], err, group)
	}
}

// TestUnitVerify runs `systemd-analyze verify` on the unit, with ExecStart
// and ExecReload pointing at a freshly built tcpd (verify checks that the
// binary exists). Unknown keys and bad values only warn, so any output is a
// failure.
func TestUnitVerify(t *testing.T) {
	analyze := needTool(t, "systemd-analyze", "systemd")
	unit := string(readFile(t, unitPath))
	bin := buildTCPD(t)
	for _, exec := range []string{"ExecStart=/usr/bin/tcpd ", "ExecReload=/usr/bin/tcpd "} {
		if strings.Count(unit, exec) != 1 {
			t.Fatalf("the unit has no single %q line", exec)
		}
		unit = strings.Replace(unit, exec, strings.Replace(exec, "/usr/bin/tcpd", bin, 1), 1)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "tcpd.service")
	if err := os.WriteFile(path, []byte(unit), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(analyze, "verify", path)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil || stderr.Len() > 0 || stdout.Len() > 0 {
		t.Fatalf("systemd-analyze verify: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
}

// TestUnitSecurity runs `systemd-analyze security --offline=yes` on the unit
// as shipped: it must pass --threshold (10 × maxExposure) and report an
// overall exposure of at most maxExposure.
func TestUnitSecurity(t *testing.T) {
	analyze := needTool(t, "systemd-analyze", "systemd")
	var stdout, stderr bytes.Buffer
	threshold := strconv.Itoa(int(maxExposure * 10))
	cmd := exec.Command(analyze, "security", "--offline=yes", "--threshold="+threshold, "--no-pager",
		filepath.Join(root(t), unitPath))
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil || stderr.Len() > 0 {
		t.Fatalf("systemd-analyze security --threshold=%s: %v\nstdout:\n%s\nstderr:\n%s", threshold, err, stdout.String(), stderr.String())
	}
	m := regexp.MustCompile(`Overall exposure level for tcpd\.service: ([0-9.]+)`).FindStringSubmatch(stdout.String())
	if m == nil {
		t.Fatalf("no overall exposure in the output:\n%s", stdout.String())
	}
	exposure, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	var open []string
	for _, l := range strings.Split(stdout.String(), "\n") {
		if strings.HasPrefix(l, "✗") {
			open = append(open, strings.Join(strings.Fields(l), " "))
		}
	}
	t.Logf("overall exposure %.1f (at most %.1f); what remains open:\n%s", exposure, maxExposure, strings.Join(open, "\n"))
	if exposure > maxExposure {
		t.Errorf("exposure %.1f > %.1f", exposure, maxExposure)
	}
}
