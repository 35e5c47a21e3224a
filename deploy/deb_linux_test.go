package deploy_test

import (
	"bytes"
	"context"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"tcpd/internal/nspawn"
)

// debVersion is the VERSION the test builds with ("tcpd version"), and
// debianVersion its DEB_VERSION (TestDebVersionOrder tests the default).
const (
	debVersion    = "1.2.3-test"
	debianVersion = "1.2.3+test"
)

// debFiles are the files the package installs, by path in the package,
// with their mode and where they come from in the repository ("" for the
// binary).
var debFiles = []struct {
	path, mode, source string
}{
	{"./etc/tcpd/tcpd.yaml", "-rw-r--r--", "configs/tcpd.yaml"},
	{"./lib/systemd/system/tcpd.service", "-rw-r--r--", "deploy/systemd/tcpd.service"},
	{"./usr/bin/tcpd", "-rwxr-xr-x", ""},
	{"./usr/lib/sysusers.d/tcpd.conf", "-rw-r--r--", "deploy/systemd/tcpd.sysusers"},
	{"./usr/share/doc/tcpd/README.md", "-rw-r--r--", "README.md"},
	{"./usr/share/doc/tcpd/grafana/tcpd.json", "-rw-r--r--", "deploy/grafana/tcpd.json"},
	{"./usr/share/doc/tcpd/prometheus/alerts.yaml", "-rw-r--r--", "deploy/prometheus/alerts.yaml"},
	{"./usr/share/doc/tcpd/prometheus/fleet.yaml", "-rw-r--r--", "deploy/prometheus/fleet.yaml"},
}

// TestDeb builds the package with `make deb`, checks it with dpkg-deb, and,
// where a container can be booted, installs, starts and removes it under a
// real systemd.
func TestDeb(t *testing.T) {
	makeBin := needTool(t, "make", "make")
	dpkgDeb := needTool(t, "dpkg-deb", "dpkg")
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	out := t.TempDir()
	t0 := time.Now()
	cmd := exec.Command(makeBin, "--no-print-directory", "deb", "VERSION="+debVersion, "DEB_VERSION="+debianVersion, "DEB_OUT="+out, "GO="+goBin)
	cmd.Dir = root(t)
	msg, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make deb: %v\n%s", err, msg)
	}
	t.Logf("make deb: %v", time.Since(t0).Round(time.Millisecond))
	goarch, err := exec.Command(goBin, "env", "GOARCH").Output()
	if err != nil {
		t.Fatal(err)
	}
	arch := strings.TrimSpace(string(goarch))
	if a, err := exec.Command("dpkg", "--print-architecture").Output(); err == nil {
		arch = strings.TrimSpace(string(a)) // the same as GOARCH on a native build
	}
	deb := filepath.Join(out, "tcpd_"+debianVersion+"_"+arch+".deb")
	if got := strings.TrimSpace(string(msg)); !strings.HasSuffix(got, deb) {
		t.Fatalf("make deb printed %q, want the path %s", got, deb)
	}

	t.Run("control", func(t *testing.T) { checkControl(t, dpkgDeb, deb, arch) })
	t.Run("contents", func(t *testing.T) { checkContents(t, dpkgDeb, deb) })
	t.Run("maintainer scripts", func(t *testing.T) { checkScripts(t, dpkgDeb, deb) })
	t.Run("installs under systemd", func(t *testing.T) { installUnderSystemd(t, deb) })
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.Bytes())
	}
	return string(out)
}

// checkControl reads the control fields and the conffiles list.
func checkControl(t *testing.T, dpkgDeb, deb, arch string) {
	fields := map[string]string{}
	for _, f := range []string{"Package", "Version", "Architecture", "Maintainer", "Installed-Size", "Depends", "Section", "Priority", "Description"} {
		fields[f] = strings.TrimSpace(run(t, dpkgDeb, "--field", deb, f))
	}
	want := map[string]string{
		"Package":      "tcpd",
		"Version":      debianVersion,
		"Architecture": arch,
		"Depends":      "systemd",
		"Section":      "net",
		"Priority":     "optional",
	}
	for f, v := range want {
		if fields[f] != v {
			t.Errorf("%s: %q, want %q", f, fields[f], v)
		}
	}
	if !regexp.MustCompile(`^.+ <[^ >]+@[^ >]+>$`).MatchString(fields["Maintainer"]) {
		t.Errorf("Maintainer %q is not \"Name <address>\"", fields["Maintainer"])
	}
	if !regexp.MustCompile(`^[1-9][0-9]*$`).MatchString(fields["Installed-Size"]) {
		t.Errorf("Installed-Size %q", fields["Installed-Size"])
	}
	if desc := strings.Split(fields["Description"], "\n"); len(desc) < 2 || desc[0] == "" {
		t.Errorf("Description needs a synopsis and a long description: %q", fields["Description"])
	}
	info := run(t, dpkgDeb, "--info", deb)
	for _, member := range []string{"control", "conffiles", "md5sums", "postinst", "prerm", "postrm"} {
		if !regexp.MustCompile(`(?m)^\s+\d+ bytes,\s+\d+ lines\s+\*?\s+` + member + `\b`).MatchString(info) {
			t.Errorf("dpkg-deb --info lists no control member %s:\n%s", member, info)
		}
	}
	if got := run(t, dpkgDeb, "--info", deb, "conffiles"); got != "/etc/tcpd/tcpd.yaml\n" {
		t.Errorf("conffiles: %q, want only /etc/tcpd/tcpd.yaml", got)
	}
}

// checkContents compares `dpkg-deb --contents` with debFiles, then unpacks
// the package and compares each file with its source.
func checkContents(t *testing.T, dpkgDeb, deb string) {
	var files []string
	for _, line := range strings.Split(strings.TrimSpace(run(t, dpkgDeb, "--contents", deb)), "\n") {
		// drwxr-xr-x root/root 0 2026-01-01 12:00 ./etc/
		f := strings.Fields(line)
		if len(f) != 6 {
			t.Errorf("unexpected --contents line %q", line)
			continue
		}
		mode, owner, path := f[0], f[1], f[5]
		if owner != "root/root" {
			t.Errorf("%s owned by %s, want root/root", path, owner)
		}
		if strings.HasSuffix(path, "/") {
			if mode != "drwxr-xr-x" {
				t.Errorf("directory %s has mode %s", path, mode)
			}
			continue
		}
		files = append(files, path)
		i := slices.IndexFunc(debFiles, func(d struct{ path, mode, source string }) bool { return d.path == path })
		if i < 0 {
			t.Errorf("unexpected file %s", path)
		} else if mode != debFiles[i].mode {
			t.Errorf("%s has mode %s, want %s", path, mode, debFiles[i].mode)
		}
	}
	for _, d := range debFiles {
		if !slices.Contains(files, d.path) {
			t.Errorf("the package lacks %s", d.path)
		}
	}

	dir := t.TempDir()
	run(t, dpkgDeb, "--extract", deb, dir)
	for _, d := range debFiles {
		if d.source == "" {
			continue
		}
		got, err := os.ReadFile(filepath.Join(dir, d.path))
		if err != nil {
			t.Error(err)
			continue
		}
		if !bytes.Equal(got, readFile(t, d.source)) {
			t.Errorf("%s differs from %s", d.path, d.source)
		}
	}
	bin := filepath.Join(dir, "usr/bin/tcpd")
	if v := run(t, bin, "version"); !strings.Contains(v, debVersion) {
		t.Errorf("tcpd version: %q, want %s in it", v, debVersion)
	}
	run(t, bin, "check-config", filepath.Join(dir, "etc/tcpd/tcpd.yaml"))
	// Static: the package depends on no libc.
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("/usr/bin/tcpd is dynamically linked; the package declares no libc dependency")
		}
	}
}

// checkScripts reads the maintainer scripts: postinst creates the user and
// reloads systemd but starts nothing, prerm stops the service on removal.
func checkScripts(t *testing.T, dpkgDeb, deb string) {
	dir := filepath.Join(t.TempDir(), "DEBIAN")
	run(t, dpkgDeb, "--control", deb, dir)
	scripts := map[string]struct{ must, mustNot []string }{
		"postinst": {
			must:    []string{"systemd-sysusers tcpd.conf", "systemctl daemon-reload"},
			mustNot: []string{"systemctl start", "systemctl enable", "systemctl restart", "--now"},
		},
		"prerm":  {must: []string{"systemctl stop tcpd.service"}},
		"postrm": {must: []string{"systemctl daemon-reload"}},
	}
	for name, s := range scripts {
		path := filepath.Join(dir, name)
		fi, err := os.Stat(path)
		if err != nil {
			t.Error(err)
			continue
		}
		if fi.Mode().Perm() != 0o755 {
			t.Errorf("%s has mode %v, want 0755", name, fi.Mode().Perm())
		}
		if out, err := exec.Command("sh", "-n", path).CombinedOutput(); err != nil {
			t.Errorf("sh -n %s: %v\n%s", name, err, out)
		}
		b, _ := os.ReadFile(path)
		var code []string // without comments, which may explain what to run
		for _, l := range strings.Split(string(b), "\n") {
			if l = strings.TrimSpace(l); !strings.HasPrefix(l, "#") {
				code = append(code, l)
			}
		}
		text := strings.Join(code, "\n")
		for _, m := range s.must {
			if !strings.Contains(text, m) {
				t.Errorf("%s does not run %q", name, m)
			}
		}
		for _, m := range s.mustNot {
			if strings.Contains(text, m) {
				t.Errorf("%s contains %q: the package must not start the service", name, m)
			}
		}
	}
}

// installUnderSystemd installs the package with dpkg in a container whose
// /usr is writable, then checks what the maintainer scripts did: the user
// exists, the unit is known but neither enabled nor started, it starts from
// the packaged paths, removal stops it cleanly and keeps the conffile, and
// purge removes it.
func installUnderSystemd(t *testing.T, deb string) {
	c := nspawn.BootT(t, nspawn.Options{WritableUsr: true})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	must := func(name string, args ...string) string {
		t.Helper()
		out, err := c.Run(ctx, name, args...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	data, err := os.ReadFile(deb)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WriteFile(ctx, "/tmp/tcpd.deb", data, 0o644); err != nil {
		t.Fatal(err)
	}
	// The container's /var is empty: give dpkg an empty database. The
	// host's systemd is in the container, but not in that database.
	must("sh", "-c", "mkdir -p /var/lib/dpkg/info /var/lib/dpkg/updates /var/lib/dpkg/triggers && touch /var/lib/dpkg/status /var/lib/dpkg/available")
	t.Logf("dpkg -i:\n%s", must("dpkg", "--install", "--force-depends", "/tmp/tcpd.deb"))

	if pw := must("getent", "passwd", "tcpd"); !strings.Contains(pw, ":tcpd VPN TCP terminator:") {
		t.Errorf("getent passwd tcpd: %q", pw)
	}
	st, err := c.Show(ctx, "tcpd", "LoadState", "ActiveState", "UnitFileState", "FragmentPath")
	if err != nil {
		t.Fatal(err)
	}
	if st["LoadState"] != "loaded" || st["ActiveState"] != "inactive" || st["UnitFileState"] != "disabled" ||
		!strings.HasSuffix(st["FragmentPath"], "/lib/systemd/system/tcpd.service") {
		t.Errorf("after dpkg -i: %v, want the packaged unit loaded, inactive and disabled", st)
	}

	must("chmod", "0666", "/dev/net/tun") // udev's job on a real host
	must("systemctl", "start", "tcpd")
	if st, _ := c.Show(ctx, "tcpd", "ActiveState", "SubState"); st["ActiveState"] != "active" {
		j, _ := c.Journal(ctx, "tcpd")
		t.Fatalf("the packaged tcpd does not start: %v\n%s", st, tail(j, 30))
	}

	t0 := time.Now()
	must("dpkg", "--remove", "tcpd")
	took := time.Since(t0)
	j, _ := c.Journal(ctx, "tcpd")
	if !strings.Contains(j, "Main process exited, code=exited, status=0/SUCCESS") && !strings.Contains(j, "Deactivated successfully") {
		t.Errorf("dpkg --remove (prerm) did not stop tcpd cleanly in %v:\n%s", took.Round(time.Millisecond), tail(j, 20))
	}
	if out, err := c.Run(ctx, "test", "-e", "/usr/bin/tcpd"); err == nil {
		t.Errorf("/usr/bin/tcpd survives dpkg --remove %s", out)
	}
	if _, err := c.Run(ctx, "test", "-e", "/etc/tcpd/tcpd.yaml"); err != nil {
		t.Error("dpkg --remove removed the conffile /etc/tcpd/tcpd.yaml; only purge may")
	}
	must("dpkg", "--purge", "tcpd")
	if _, err := c.Run(ctx, "test", "-e", "/etc/tcpd/tcpd.yaml"); err == nil {
		t.Error("/etc/tcpd/tcpd.yaml survives dpkg --purge")
	}
	t.Logf("dpkg --remove stopped tcpd in %v", took.Round(time.Millisecond))
}
