package deploy_test

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// root returns the module root: go test runs in deploy/.
func root(t testing.TB) string {
	t.Helper()
	dir, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		t.Fatalf("module root: %v", err)
	}
	return dir
}

// readFile returns a file of the repository, by its path from the root.
func readFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root(t), name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// needTool skips the test when name is not installed.
func needTool(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not found: install the %s package", name, pkg)
	}
	return p
}

// buildTCPD builds ./cmd/tcpd with the given build tags into a temporary
// directory and returns the binary's path.
func buildTCPD(t testing.TB, tags ...string) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	out := filepath.Join(t.TempDir(), "tcpd")
	args := []string{"build", "-o", out}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	cmd := exec.Command(goBin, append(args, "./cmd/tcpd")...)
	cmd.Dir = root(t)
	if msg, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %v ./cmd/tcpd: %v\n%s", tags, err, msg)
	}
	return out
}

// unitEntry is one Key=Value line of a unit file.
type unitEntry struct {
	Section, Key, Value string
}

// parseUnit reads a unit file's Key=Value lines in order. It knows no line
// continuations, which the unit does not use.
func parseUnit(t testing.TB, text string) []unitEntry {
	t.Helper()
	var (
		out     []unitEntry
		section string
	)
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[' && line[len(line)-1] == ']':
			section = line[1 : len(line)-1]
		case strings.HasSuffix(line, `\`):
			t.Fatalf("unit line %d: continuation lines are not handled by this test", n)
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("unit line %d: %q is not Key=Value", n, line)
			}
			out = append(out, unitEntry{section, strings.TrimSpace(k), strings.TrimSpace(v)})
		}
	}
	return out
}

// unitValues returns every value of section's key, in order.
func unitValues(entries []unitEntry, section, key string) []string {
	var vs []string
	for _, e := range entries {
		if e.Section == section && e.Key == key {
			vs = append(vs, e.Value)
		}
	}
	return vs
}
