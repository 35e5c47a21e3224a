//go:build linux

package netlab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// builds remembers what Build made in this process.
var builds struct {
	sync.Mutex
	pkgs map[string]*built
	dirs []string
}

type built struct {
	once sync.Once
	path string
	err  error
}

// ModuleRoot returns the directory of the go.mod enclosing the working
// directory.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("netlab: no go.mod above the working directory")
		}
		dir = parent
	}
}

// Build builds the main package pkg (a path relative to the module root,
// such as "./cmd/tcpd") once per process, into a temporary directory, and
// returns the binary's path. It fails t if the build fails. CloseAll removes
// the binaries.
func Build(t testing.TB, pkg string) string {
	t.Helper()
	return BuildTags(t, pkg)
}

// BuildTags is Build with "go build -tags", such as the wedgetest hooks of
// cmd/tcpd. Each package and set of tags is built once per process.
func BuildTags(t testing.TB, pkg string, tags ...string) string {
	t.Helper()
	path, err := buildOnce(pkg, tags...)
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// buildOnce is BuildTags for callers without a testing.TB (the demo, labs
// that build their own helpers).
func buildOnce(pkg string, tags ...string) (string, error) {
	key := strings.Join(append([]string{pkg}, tags...), " ")
	builds.Lock()
	if builds.pkgs == nil {
		builds.pkgs = map[string]*built{}
	}
	b := builds.pkgs[key]
	if b == nil {
		b = &built{}
		builds.pkgs[key] = b
	}
	builds.Unlock()
	b.once.Do(func() { b.path, b.err = goBuild(pkg, tags) })
	return b.path, b.err
}

// BuildTCPD returns the path of a tcpd binary: $TCPD_BIN if set (a relative
// path is taken from the module root, where make runs), otherwise
// ./cmd/tcpd built once per process with -tags leakcheck, so that a run
// that leaves a goroutine behind exits 1 and fails the test that stops it.
func BuildTCPD(t testing.TB) string {
	t.Helper()
	if bin := os.Getenv("TCPD_BIN"); bin != "" {
		if !filepath.IsAbs(bin) {
			root, err := ModuleRoot()
			if err != nil {
				t.Fatal(err)
			}
			bin = filepath.Join(root, bin)
		}
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("netlab: TCPD_BIN: %v", err)
		}
		return bin
	}
	return BuildTags(t, "./cmd/tcpd", "leakcheck")
}

func goBuild(pkg string, tags []string) (string, error) {
	root, err := ModuleRoot()
	if err != nil {
		return "", err
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		if goroot := os.Getenv("GOROOT"); goroot != "" {
			goBin = filepath.Join(goroot, "bin", "go")
		} else {
			return "", fmt.Errorf("netlab: cannot find the go command: %w", err)
		}
	}
	dir, err := os.MkdirTemp("", "netlab-build-")
	if err != nil {
		return "", err
	}
	builds.Lock()
	builds.dirs = append(builds.dirs, dir)
	builds.Unlock()
	out := filepath.Join(dir, path.Base(pkg))
	args := []string{"build", "-o", out}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	cmd := exec.Command(goBin, append(args, pkg)...)
	cmd.Dir = root
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("netlab: go build %s (in %s): %w\n%s", pkg, root, err, msg)
	}
	return out, nil
}

// removeBuilds deletes the binaries Build made.
func removeBuilds() error {
	builds.Lock()
	defer builds.Unlock()
	var errs []error
	for _, d := range builds.dirs {
		errs = append(errs, os.RemoveAll(d))
	}
	builds.dirs = nil
	builds.pkgs = nil
	return errors.Join(errs...)
}
