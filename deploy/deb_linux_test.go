package deploy_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/md5"
	"debug/elf"
	"fmt"
	"io"
	"io/fs"
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

// debPackage is the package's name: not "tcpd", which is Debian's TCP
// wrappers package (7.6.q-32 in bookworm, whose higher version apt would
// install over ours).
const debPackage = "tcpd-gateway"

// debFiles are the files the package installs, by path in the package,
// with their mode and where they come from in the repository ("" for the
// binary, the copyright file and the changelog, which the build makes).
var debFiles = []struct {
	path, mode, source string
}{
	{"./etc/tcpd/tcpd.yaml", "-rw-r--r--", "configs/tcpd.yaml"},
	{"./lib/systemd/system/tcpd.service", "-rw-r--r--", "deploy/systemd/tcpd.service"},
	{"./usr/bin/tcpd", "-rwxr-xr-x", ""},
	{"./usr/lib/sysusers.d/tcpd.conf", "-rw-r--r--", "deploy/systemd/tcpd.sysusers"},
	{"./usr/share/doc/tcpd-gateway/README.md", "-rw-r--r--", "README.md"},
	{"./usr/share/doc/tcpd-gateway/changelog.gz", "-rw-r--r--", ""},
	{"./usr/share/doc/tcpd-gateway/copyright", "-rw-r--r--", ""},
	{"./usr/share/tcpd-gateway/grafana/tcpd.json", "-rw-r--r--", "deploy/grafana/tcpd.json"},
	{"./usr/share/tcpd-gateway/prometheus/alerts.yaml", "-rw-r--r--", "deploy/prometheus/alerts.yaml"},
	{"./usr/share/tcpd-gateway/prometheus/fleet.yaml", "-rw-r--r--", "deploy/prometheus/fleet.yaml"},
}

// TestDeb builds the package with `make deb`, checks it with dpkg-deb, and,
// where a container can be booted, installs, starts and removes it under a
// real systemd, then upgrades a running install of the package's earlier
// name, tcpd, to it.
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
	deb := filepath.Join(out, debPackage+"_"+debianVersion+"_"+arch+".deb")
	if got := strings.TrimSpace(string(msg)); !strings.HasSuffix(got, deb) {
		t.Fatalf("make deb printed %q, want the path %s", got, deb)
	}

	t.Run("control", func(t *testing.T) { checkControl(t, dpkgDeb, deb, arch) })
	t.Run("contents", func(t *testing.T) { checkContents(t, dpkgDeb, deb) })
	t.Run("maintainer scripts", func(t *testing.T) { checkScripts(t, dpkgDeb, deb) })
	t.Run("installs under systemd", func(t *testing.T) { installUnderSystemd(t, dpkgDeb, deb) })
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
	for _, f := range []string{"Package", "Version", "Architecture", "Maintainer", "Installed-Size", "Depends", "Conflicts", "Replaces", "Section", "Priority", "Description"} {
		fields[f] = strings.TrimSpace(run(t, dpkgDeb, "--field", deb, f))
	}
	want := map[string]string{
		"Package":      debPackage,
		"Version":      debianVersion,
		"Architecture": arch,
		"Depends":      "systemd",
		// Debian's TCP wrappers install /usr/sbin/tcpd, which comes first
		// in root's PATH.
		"Conflicts": "tcpd",
		// This package's earlier builds, named tcpd, had versions from
		// 0~<hash> to <7 hex digits> (558fdc9 > 7.6.q-32): no range holds
		// them all and leaves out Debian's tcpd, so Replaces has none.
		"Replaces": "tcpd",
		"Section":  "net",
		"Priority": "optional",
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
	checkChangelog(t, filepath.Join(dir, "usr/share/doc", debPackage, "changelog.gz"))
	bin := filepath.Join(dir, "usr/bin/tcpd")
	checkCopyright(t, filepath.Join(dir, "usr/share/doc", debPackage, "copyright"), bin)
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

// checkChangelog reads the changelog the build writes: one entry, for this
// package and version, in Debian's format (dpkg-parsechangelog, if
// installed, must parse it).
func checkChangelog(t *testing.T, path string) {
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if want := debPackage + " (" + debianVersion + ") unstable; urgency=medium"; lines[0] != want {
		t.Errorf("changelog starts %q, want %q", lines[0], want)
	}
	if len(lines) < 5 || !strings.HasPrefix(lines[2], "  * ") {
		t.Errorf("changelog has no change listed:\n%s", b)
	}
	trailer := regexp.MustCompile(`^ -- .+ <[^ >]+@[^ >]+>  (Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} \+0000$`)
	if last := lines[len(lines)-1]; !trailer.MatchString(last) {
		t.Errorf("changelog ends %q, not a Debian changelog trailer", last)
	}
	if parse, err := exec.LookPath("dpkg-parsechangelog"); err == nil {
		plain := filepath.Join(t.TempDir(), "changelog")
		if err := os.WriteFile(plain, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if v := strings.TrimSpace(run(t, parse, "-l", plain, "-S", "Version")); v != debianVersion {
			t.Errorf("dpkg-parsechangelog: version %q, want %q", v, debianVersion)
		}
	}
}

// checkCopyright reads the copyright file: Debian's machine-readable
// format, tcpd's own paragraphs (deploy/deb/copyright) first, then one
// paragraph, with a licence, for the Go standard library and for each
// module that go version -m says the binary was linked with.
func checkCopyright(t *testing.T, path, bin string) {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	if !strings.HasPrefix(text, string(readFile(t, "deploy/deb/copyright"))) {
		t.Error("the copyright file does not start with deploy/deb/copyright")
	}
	paragraphs := strings.Split(strings.TrimRight(text, "\n"), "\n\n")
	if !strings.HasPrefix(paragraphs[0], "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n") {
		t.Errorf("the copyright file's header has no Format field:\n%s", paragraphs[0])
	}
	field := regexp.MustCompile(`^[A-Za-z][A-Za-z-]*: ?`)
	files := map[string]bool{}
	for _, p := range paragraphs[1:] {
		fields := map[string]string{}
		for i, l := range strings.Split(p, "\n") {
			switch {
			case strings.HasPrefix(l, " ") && i > 0:
			case field.MatchString(l):
				k, v, _ := strings.Cut(l, ":")
				fields[k] = strings.TrimSpace(v)
			default:
				t.Errorf("copyright: line %q is neither a field nor a continuation", l)
			}
		}
		if fields["Files"] == "" || fields["Copyright"] == "" || fields["License"] == "" {
			t.Errorf("copyright paragraph without Files, Copyright and License:\n%s", p)
		}
		files[fields["Files"]] = true
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	want := []string{"*"}
	for _, l := range strings.Split(run(t, goBin, "version", "-m", bin), "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) == 2 && strings.HasSuffix(f[0], ":"):
			want = append(want, "std@"+f[1]+"/*")
		case len(f) >= 3 && f[0] == "dep":
			want = append(want, f[1]+"@"+f[2]+"/*")
		case len(f) >= 3 && f[0] == "=>":
			want[len(want)-1] = f[1] + "@" + f[2] + "/*"
		}
	}
	if len(want) < 5 {
		t.Fatalf("go version -m %s lists %d modules: %v", bin, len(want), want)
	}
	for _, w := range want {
		if !files[w] {
			t.Errorf("the copyright file has no paragraph Files: %s", w)
		}
	}
	if len(files) != len(want) {
		t.Errorf("copyright paragraphs for %d file sets, want %d: %v", len(files), len(want), want)
	}
}

// checkScripts reads the maintainer scripts: postinst creates the user and
// reloads systemd but starts nothing (but in its takeover from the
// package's earlier name), prerm stops the service on removal.
func checkScripts(t *testing.T, dpkgDeb, deb string) {
	dir := filepath.Join(t.TempDir(), "DEBIAN")
	run(t, dpkgDeb, "--control", deb, dir)
	scripts := map[string]struct{ must, mustNot []string }{
		"postinst": {
			must:    []string{"systemd-sysusers tcpd.conf", "systemctl daemon-reload"},
			mustNot: []string{"systemctl enable", "systemctl restart", "--now"},
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
		if name == "postinst" {
			// The one start allowed: in takeover, of a service the
			// earlier package's prerm stopped (installUnderSystemd).
			fn := regexp.MustCompile(`(?s)\ntakeover\(\) \{\n.*?\n\}\n`).FindString(text)
			if !strings.Contains(fn, "systemctl start tcpd.service") {
				t.Errorf("postinst has no takeover() that starts tcpd.service:\n%s", text)
			}
			if strings.Contains(strings.Replace(text, fn, "", 1), "systemctl start") {
				t.Errorf("postinst starts tcpd outside takeover():\n%s", text)
			}
		}
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
// purge removes it. Then it installs the package over a running, enabled
// install of its earlier name (tcpd) whose configuration was edited.
func installUnderSystemd(t *testing.T, dpkgDeb, deb string) {
	c := nspawn.BootT(t, nspawn.Options{WritableUsr: true})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	must := mustRun(ctx, t, c)
	for path, src := range map[string]string{"/tmp/tcpd.deb": deb, "/tmp/tcpd-old.deb": oldNamedDeb(t, dpkgDeb, deb)} {
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.WriteFile(ctx, path, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The container's /var is empty: give dpkg an empty database. The
	// host's systemd is in the container, but not in that database.
	must("sh", "-c", "mkdir -p /var/lib/dpkg/info /var/lib/dpkg/updates /var/lib/dpkg/triggers && touch /var/lib/dpkg/status /var/lib/dpkg/available")
	t.Logf("dpkg -i:\n%s", must("dpkg", "--install", "--force-depends", "/tmp/tcpd.deb"))

	if got := must("dpkg-query", "--show", "--showformat", "${Package} ${Version} ${Status}", debPackage); got != debPackage+" "+debianVersion+" install ok installed" {
		t.Errorf("dpkg-query --show %s: %q", debPackage, got)
	}
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
	must("dpkg", "--remove", debPackage)
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
	must("dpkg", "--purge", debPackage)
	if _, err := c.Run(ctx, "test", "-e", "/etc/tcpd/tcpd.yaml"); err == nil {
		t.Error("/etc/tcpd/tcpd.yaml survives dpkg --purge")
	}
	t.Logf("dpkg --remove stopped tcpd in %v", took.Round(time.Millisecond))

	t.Run("takes over from tcpd", func(t *testing.T) { takeOver(ctx, t, c) })
}

// takeOver installs the package's earlier build, named tcpd, enables and
// starts it, edits its configuration and adds a drop-in, as an operator
// would, then installs this package over it, as an upgrade: the edited
// configuration stays as it is and becomes this package's conffile, the
// service runs again (the earlier prerm stopped it) with the drop-in,
// enabled, and purging what is left of tcpd takes none of it away.
func takeOver(ctx context.Context, t *testing.T, c *nspawn.Container) {
	must := mustRun(ctx, t, c)
	must("dpkg", "--install", "--force-depends", "/tmp/tcpd-old.deb")
	must("systemctl", "enable", "--now", "tcpd")
	// A change tcpd checks when it starts: an operator's edit.
	must("sed", "-i", "s/^  max_connections: .*/  max_connections: 12345/", "/etc/tcpd/tcpd.yaml")
	edited := must("cat", "/etc/tcpd/tcpd.yaml")
	if !strings.Contains(edited, "\n  max_connections: 12345\n") {
		t.Fatal("sed did not edit limits.max_connections")
	}
	dropIn := "[Service]\nEnvironment=TCPD_TAKEOVER_TEST=1\n"
	if err := c.WriteFile(ctx, "/etc/systemd/system/tcpd.service.d/local.conf", []byte(dropIn), 0o644); err != nil {
		t.Fatal(err)
	}
	must("systemctl", "daemon-reload")
	before, err := c.Show(ctx, "tcpd", "ActiveState", "MainPID")
	if err != nil || before["ActiveState"] != "active" {
		t.Fatalf("the earlier package's tcpd is not running: %v %v", before, err)
	}

	t.Logf("dpkg -i over tcpd:\n%s", must("dpkg", "--install", "--force-depends", "/tmp/tcpd.deb"))
	if got := must("dpkg-query", "--show", "--showformat", "${Status}", debPackage); got != "install ok installed" {
		t.Errorf("%s: %q, want installed", debPackage, got)
	}
	// dpkg keeps tcpd's record as "config-files", for its obsolete conffile.
	if got, err := c.Run(ctx, "dpkg-query", "--show", "--showformat", "${db:Status-Status}", "tcpd"); err == nil && got != "config-files" && got != "not-installed" {
		t.Errorf("the earlier package tcpd is %s, want it removed", got)
	}
	if got := must("cat", "/etc/tcpd/tcpd.yaml"); got != edited {
		t.Error("the edited /etc/tcpd/tcpd.yaml was not kept")
	}
	if got := must("dpkg-query", "--search", "/etc/tcpd/tcpd.yaml"); got != debPackage+": /etc/tcpd/tcpd.yaml\n" {
		t.Errorf("dpkg-query --search /etc/tcpd/tcpd.yaml: %q, want it %s's", got, debPackage)
	}
	if out, err := c.Run(ctx, "test", "-e", "/usr/share/doc/tcpd"); err == nil {
		t.Errorf("/usr/share/doc/tcpd survives %s", out)
	}
	check := func(when string) {
		t.Helper()
		st, err := c.Show(ctx, "tcpd", "ActiveState", "UnitFileState", "MainPID", "Environment", "FragmentPath")
		if err != nil {
			t.Fatal(err)
		}
		if st["ActiveState"] != "active" || st["UnitFileState"] != "enabled" || st["MainPID"] == before["MainPID"] ||
			st["Environment"] != "TCPD_TAKEOVER_TEST=1" || !strings.HasSuffix(st["FragmentPath"], "/lib/systemd/system/tcpd.service") {
			j, _ := c.Journal(ctx, "tcpd")
			t.Errorf("%s: %v, want tcpd running anew (not pid %s), enabled, with the drop-in\n%s", when, st, before["MainPID"], tail(j, 20))
		}
	}
	check("after the upgrade")
	// What dpkg kept of tcpd goes with "apt purge ~c" and the like; its
	// postrm would remove the enablement and the drop-ins.
	if _, err := c.Run(ctx, "dpkg-query", "--show", "tcpd"); err == nil {
		must("dpkg", "--purge", "tcpd")
	}
	check("after dpkg --purge tcpd")
	if got := must("cat", "/etc/tcpd/tcpd.yaml"); got != edited {
		t.Error("dpkg --purge tcpd changed /etc/tcpd/tcpd.yaml")
	}
}

// oldPostinst is the postinst of the package's builds named tcpd, which had
// no takeover: its prerm and postrm are the same as this package's.
const oldPostinst = `#!/bin/sh
set -e

case "$1" in
configure)
	systemd-sysusers tcpd.conf
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload
		if [ -n "$2" ]; then
			systemctl try-restart tcpd.service || true
		fi
	fi
	;;
esac

exit 0
`

// oldNamedDeb builds, from the package deb, one as the builds before the
// rename were: named tcpd, at a version as they had (an abbreviated commit
// hash), without Conflicts or Replaces, with its documentation, dashboard
// and rules under /usr/share/doc/tcpd, and without the takeover.
func oldNamedDeb(t *testing.T, dpkgDeb, deb string) string {
	tree := filepath.Join(t.TempDir(), "old")
	run(t, dpkgDeb, "--raw-extract", deb, tree)
	rename := func(from, to string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(tree, to)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(tree, from), filepath.Join(tree, to)); err != nil {
			t.Fatal(err)
		}
	}
	rename("usr/share/doc/"+debPackage, "usr/share/doc/tcpd")
	rename("usr/share/"+debPackage+"/grafana", "usr/share/doc/tcpd/grafana")
	rename("usr/share/"+debPackage+"/prometheus", "usr/share/doc/tcpd/prometheus")
	for _, gone := range []string{"usr/share/" + debPackage, "usr/share/doc/tcpd/copyright", "usr/share/doc/tcpd/changelog.gz"} {
		if err := os.Remove(filepath.Join(tree, gone)); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(tree, "DEBIAN/postinst"), []byte(oldPostinst), 0o755); err != nil {
		t.Fatal(err)
	}

	var sums bytes.Buffer
	err := filepath.WalkDir(tree, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			if d != nil && d.Name() == "DEBIAN" {
				return filepath.SkipDir
			}
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(tree, path)
		fmt.Fprintf(&sums, "%x  %s\n", md5.Sum(b), rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "DEBIAN/md5sums"), sums.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}

	control, err := os.ReadFile(filepath.Join(tree, "DEBIAN/control"))
	if err != nil {
		t.Fatal(err)
	}
	var old []string
	for _, l := range strings.Split(string(control), "\n") {
		switch {
		case strings.HasPrefix(l, "Package: "):
			l = "Package: tcpd"
		case strings.HasPrefix(l, "Version: "):
			// Above both 1 and Debian's 7.6.q-32, as many were.
			l = "Version: 558fdc9"
		case strings.HasPrefix(l, "Conflicts: "), strings.HasPrefix(l, "Replaces: "):
			continue
		}
		old = append(old, l)
	}
	if err := os.WriteFile(filepath.Join(tree, "DEBIAN/control"), []byte(strings.Join(old, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "tcpd_558fdc9.deb")
	run(t, dpkgDeb, "--root-owner-group", "--build", tree, out)
	return out
}

// mustRun returns a function that runs a command in c and returns its
// output, failing the test if it fails.
func mustRun(ctx context.Context, t *testing.T, c *nspawn.Container) func(name string, args ...string) string {
	return func(name string, args ...string) string {
		t.Helper()
		out, err := c.Run(ctx, name, args...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
}
