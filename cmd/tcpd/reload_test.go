package main

import (
	"context"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"tcpd/admin"
)

// startReloadAdmin serves an admin socket whose reload returns res.
func startReloadAdmin(t *testing.T, res admin.ReloadResult) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tcpd.sock")
	s, err := admin.Listen(admin.Config{Path: path, Source: &fakeSource{}, Reload: func(context.Context) (admin.ReloadResult, error) {
		return res, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return path
}

func runReload(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb strings.Builder
	code = runMain(append([]string{"reload"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func TestReloadCommand(t *testing.T) {
	ok := startReloadAdmin(t, admin.ReloadResult{OK: true, Config: "/etc/tcpd/tcpd.yaml", RestartPending: []string{"tun.mtu: 1500 → 1400"}})
	code, out, errs := runReload(t, "--socket", ok)
	if want := "reloaded /etc/tcpd/tcpd.yaml\nthese settings keep their running values until a restart: tun.mtu: 1500 → 1400\n"; code != 0 || out != want || errs != "" {
		t.Errorf("a reload that worked: exit %d, stdout %q, stderr %q; want 0 and %q", code, out, errs, want)
	}

	bad := startReloadAdmin(t, admin.ReloadResult{Config: "/etc/tcpd/tcpd.yaml", Error: "reload rejected; the running configuration stays in force: line 3: tcp.time_wait: 0s is out of range"})
	code, out, errs = runReload(t, "--socket", bad)
	if want := "tcpd reload: reload rejected; the running configuration stays in force: line 3: tcp.time_wait: 0s is out of range\n"; code != 1 || out != "" || errs != want {
		t.Errorf("a rejected reload: exit %d, stdout %q, stderr %q; want 1 and %q", code, out, errs, want)
	}

	// The socket from the configuration file.
	cfg := filepath.Join(t.TempDir(), "tcpd.yaml")
	if err := os.WriteFile(cfg, []byte("admin:\n  socket: "+ok+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv(adminSocketEnv, "")
	if code, out, errs := runReload(t, "--config", cfg); code != 0 || !strings.HasPrefix(out, "reloaded ") {
		t.Errorf("--config naming the socket: exit %d, stdout %q, stderr %q", code, out, errs)
	}

	for _, args := range [][]string{{"now"}, {"--socket", ok, "--config", cfg}} {
		if code, _, _ := runReload(t, args...); code != 2 {
			t.Errorf("reload %q: exit %d, want 2", args, code)
		}
	}
}

// TestReloadFallsBackToSIGHUP: with no admin socket to ask, --pid gets the
// daemon SIGHUP, as the unit's ExecReload did before tcpd reload existed.
func TestReloadFallsBackToSIGHUP(t *testing.T) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	gone := filepath.Join(t.TempDir(), "none.sock")
	code, out, errs := runReload(t, "--socket", gone)
	if code != 1 || out != "" || !strings.Contains(errs, "cannot reach tcpd at "+gone) {
		t.Errorf("no socket, no --pid: exit %d, stdout %q, stderr %q; want 1 and cannot reach", code, out, errs)
	}
	// Only a tcpd gets the signal, and only a process id is one.
	if code, _, errs := runReload(t, "--socket", gone, "--pid", "1"); code != 1 || !strings.Contains(errs, "not tcpd: not sending it SIGHUP") {
		t.Errorf("--pid 1: exit %d, stderr %q; want 1 and a refusal", code, errs)
	}
	for _, bad := range []string{"-5", "0"} {
		if code, _, errs := runReload(t, "--socket", gone, "--pid", bad); code != 2 || !strings.Contains(errs, "is not a process id") {
			t.Errorf("--pid %s: exit %d, stderr %q; want a usage error", bad, code, errs)
		}
	}
	code, out, errs = runReload(t, "--socket", gone, "--pid", itoa(os.Getpid()))
	if code != 0 || out != "" || !strings.Contains(errs, "sent SIGHUP to process") {
		t.Errorf("no socket, --pid: exit %d, stdout %q, stderr %q; want 0 and a SIGHUP", code, out, errs)
	}
	select {
	case <-hup:
	case <-time.After(5 * time.Second):
		t.Error("no SIGHUP arrived")
	}

	// A daemon from before POST /v1/reload (a new binary, the daemon not
	// restarted yet) answers 404: the same fallback.
	path := filepath.Join(t.TempDir(), "old.sock")
	s, err := admin.Listen(admin.Config{Path: path, Source: &fakeSource{}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	code, _, errs = runReload(t, "--socket", path)
	if code != 1 || !strings.Contains(errs, "no endpoint /v1/reload") {
		t.Errorf("an old daemon, no --pid: exit %d, stderr %q; want 1 and the 404", code, errs)
	}
	code, _, errs = runReload(t, "--socket", path, "--pid", itoa(os.Getpid()))
	if code != 0 || !strings.Contains(errs, "sent SIGHUP to process") {
		t.Errorf("an old daemon, --pid: exit %d, stderr %q; want 0 and a SIGHUP", code, errs)
	}
	select {
	case <-hup:
	case <-time.After(5 * time.Second):
		t.Error("no SIGHUP arrived for the old daemon")
	}
}
