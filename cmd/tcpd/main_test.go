package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCLI(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("tun:\n  mtu: 70000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		args   []string
		code   int
		stdout string // substring
		stderr string // substring
	}{
		{nil, 2, "", "Usage:"},
		{[]string{"--help"}, 0, "tcpd run [--config FILE]", ""},
		{[]string{"help"}, 0, "tcpd check-config FILE", ""},
		{[]string{"version"}, 0, "tcpd ", ""},
		{[]string{"frobnicate"}, 2, "", "tcpd: unknown command \"frobnicate\"\nRun \"tcpd help\" for usage.\n"},
		// A flag that does not parse is named in two lines, like every
		// other usage error, not followed by the whole usage.
		{[]string{"run", "--frobnicate"}, 2, "", "tcpd run: flag provided but not defined: -frobnicate\nRun \"tcpd run --help\" for usage.\n"},
		{[]string{"reload", "--pid", "x"}, 2, "", `tcpd reload: invalid value "x" for flag -pid`},
		{[]string{"check-config", "--frobnicate"}, 2, "", "tcpd check-config: flag provided but not defined: -frobnicate"},
		// Help asked for goes to stdout, so that it pages.
		{[]string{"run", "--help"}, 0, "Runs the daemon", ""},
		{[]string{"run", "extra"}, 2, "", `tcpd run: unexpected argument "extra"`},
		{[]string{"run", "--log-level", "bogus"}, 2, "", `tcpd run: --log-level: log.level: "bogus" is not allowed (allowed: debug, info, warn, error)`},
		{[]string{"help", "conns"}, 0, `like "ss -tan" but with both`, ""},
		{[]string{"check-config", "--help"}, 0, "Validates FILE", ""},
		{[]string{"check-config", "-h"}, 0, "Validates FILE", ""},
		{[]string{"check-config"}, 2, "", "tcpd check-config: give one configuration file"},
		// An empty $VAR is not the embedded default.
		{[]string{"check-config", ""}, 2, "", "tcpd check-config: give one configuration file"},
		{[]string{"check-config", "../../configs/tcpd.yaml"}, 0, "valid", ""},
		{[]string{"check-config", bad}, 1, "", "line 2: tun.mtu: 70000 is out of range"},
		{[]string{"check-config", filepath.Join(dir, "missing.yaml")}, 1, "", "no such file"},
		// A daemon refused for its configuration exits with EX_CONFIG, which
		// the unit's RestartPreventExitStatus= names.
		{[]string{"run", "--config", bad}, 78, "", "tcpd run: " + bad + ": line 2: tun.mtu: 70000 is out of range"},
		{[]string{"run", "--config", filepath.Join(dir, "missing.yaml")}, 78, "", "no such file"},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			var out, errb bytes.Buffer
			code := runMain(c.args, &out, &errb)
			if code != c.code {
				t.Errorf("exit status %d, want %d (stderr %q)", code, c.code, errb.String())
			}
			if !strings.Contains(out.String(), c.stdout) {
				t.Errorf("stdout %q does not contain %q", out.String(), c.stdout)
			}
			if !strings.Contains(errb.String(), c.stderr) {
				t.Errorf("stderr %q does not contain %q", errb.String(), c.stderr)
			}
			// Only a bare "tcpd" answers a usage error with the usage.
			if c.code == 2 && c.args != nil && strings.Count(errb.String(), "\n") != 2 {
				t.Errorf("usage error of %d lines, want 2: %q", strings.Count(errb.String(), "\n"), errb.String())
			}
		})
	}
}

// blockedWriter is a stderr nobody reads, a full pipe: every Write blocks
// until the test ends.
type blockedWriter struct{ release chan struct{} }

func (w blockedWriter) Write(p []byte) (int, error) { <-w.release; return len(p), nil }

// TestFailureExitsWithStderrBlocked: a command that fails exits, within
// lastLineWait, even when its last line cannot be written: a daemon whose
// start failed with the journal stuck must still exit for systemd to
// restart it.
func TestFailureExitsWithStderrBlocked(t *testing.T) {
	w := blockedWriter{make(chan struct{})}
	defer close(w.release)
	start := time.Now()
	done := make(chan int, 1)
	go func() {
		done <- runMain([]string{"check-config", filepath.Join(t.TempDir(), "none.yaml")}, io.Discard, w)
	}()
	select {
	case code := <-done:
		if code != 1 {
			t.Errorf("exit %d, want 1", code)
		}
		if took := time.Since(start); took < lastLineWait/2 {
			t.Errorf("returned after %v: the blocked write did not happen", took)
		}
	case <-time.After(lastLineWait + 5*time.Second):
		t.Fatal("a failed command with its stderr blocked did not return")
	}
}
