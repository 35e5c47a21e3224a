package deploy_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDebVersionOrder runs deploy/deb/version.sh in a scratch repository
// whose commits have fixed dates and tags, and checks that dpkg sees each
// commit's package as an upgrade of the one before: a build of the next
// commit of main must never compare as a downgrade (they did when the
// version was the bare commit hash).
func TestDebVersionOrder(t *testing.T) {
	gitBin := needTool(t, "git", "git")
	dpkg := needTool(t, "dpkg", "dpkg")

	repo := t.TempDir()
	git := func(env []string, args ...string) string {
		t.Helper()
		cmd := exec.Command(gitBin, args...)
		cmd.Dir = repo
		cmd.Env = append(os.Environ(), "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1",
			"GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.invalid",
			"GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.invalid")
		cmd.Env = append(cmd.Env, env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	script := filepath.Join(repo, "deploy", "deb", "version.sh")
	if err := os.MkdirAll(filepath.Dir(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(script, readFile(t, "deploy/deb/version.sh"), 0o755); err != nil {
		t.Fatal(err)
	}
	version := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("sh", append([]string{script}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("version.sh %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	git(nil, "init", "-q", "-b", "main")
	git(nil, "add", ".")

	// Each step commits at date (the committer's, as version.sh reads it),
	// optionally tags, and expects the version of the work tree; %s is the
	// commit's short hash. The dates are not in UTC, to check the conversion.
	steps := []struct {
		date, tag, want string
		dirty           bool
	}{
		{date: "2026-12-01T12:00:00+02:00", want: "0~git20261201100000.%s"},
		{date: "2026-12-01T12:00:01+02:00", want: "0~git20261201100001.%s"},
		{dirty: true, want: "0~git20261201100001.%s+dirty"},
		// An older author date does not matter; one second later does.
		{date: "2026-12-01T05:00:02-05:00", want: "0~git20261201100002.%s"},
		{date: "2026-12-02T00:00:00Z", tag: "v0.9.0-rc1", want: "0.9.0~rc1"},
		{date: "2026-12-02T00:00:01Z", want: "0.9.0~rc1+git20261202000001.%s"},
		{date: "2026-12-03T09:00:00Z", tag: "v0.9.0", want: "0.9.0"},
		{date: "2026-12-03T09:00:00Z", want: "0.9.0+git20261203090000.%s"},
		{dirty: true, want: "0.9.0+git20261203090000.%s+dirty"},
		{date: "2026-12-04T00:00:00Z", want: "0.9.0+git20261204000000.%s"},
		{date: "2026-12-05T00:00:00Z", tag: "v0.10.0", want: "0.10.0"},
		{date: "2026-12-06T00:00:00Z", tag: "v1.0.0", want: "1.0.0"},
	}
	var prev string
	for i, s := range steps {
		tracked := filepath.Join(repo, "file")
		if s.dirty {
			if err := os.WriteFile(tracked, []byte("uncommitted\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		} else {
			git(nil, "checkout", "-q", "--", ".")
			if err := os.WriteFile(tracked, []byte(fmt.Sprintln(i, s.date)), 0o644); err != nil {
				t.Fatal(err)
			}
			git(nil, "add", "file")
			git([]string{"GIT_COMMITTER_DATE=" + s.date, "GIT_AUTHOR_DATE=2020-01-01T00:00:00Z"}, "commit", "-q", "-m", "step")
			if s.tag != "" {
				git(nil, "tag", "-a", "-m", s.tag, s.tag)
			}
		}
		want := s.want
		if strings.Contains(want, "%s") {
			want = strings.Replace(want, "%s", git(nil, "rev-parse", "--short", "HEAD"), 1)
		}
		got := version()
		if got != want {
			t.Errorf("step %d: version %q, want %q", i, got, want)
		}
		if !s.dirty {
			if c := version("HEAD"); c != want {
				t.Errorf("step %d: version.sh HEAD gives %q, want %q", i, c, want)
			}
		}
		if prev != "" {
			if err := exec.Command(dpkg, "--compare-versions", prev, "lt", got).Run(); err != nil {
				t.Errorf("step %d: dpkg does not see %s as newer than %s", i, got, prev)
			}
		}
		prev = got
	}
}
