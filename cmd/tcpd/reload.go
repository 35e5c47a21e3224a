package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"syscall"
)

const reloadSynopsis = `Usage: tcpd reload [--socket PATH | --config FILE] [--pid PID]

Asks the running daemon to re-read its configuration file, as SIGHUP does,
and waits until it has: exit status 0 once the new values are in force
(naming the settings that keep their running values until a restart), 1
with the reasons when the file was rejected, which changes nothing. The
systemd unit's ExecReload runs it, so that "systemctl reload tcpd" returns
once the reload is done, and fails when it was rejected.

The daemon is asked on its admin socket: --socket, else admin.socket of
--config FILE (an error if the file does not load), else $` + adminSocketEnv + `,
else ` + defaultAdminSocket + `. When that socket cannot be reached, or its
daemon predates POST /v1/reload, and --pid names a tcpd process, that process
is sent SIGHUP instead, without waiting for the outcome (the journal and the
metric tcpd_config_last_reload_successful have it).`

func cmdReload(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("reload", reloadSynopsis, args, stdout, stderr)
	socket := fs.String("socket", "", "the daemon's admin socket `path`")
	configPath := fs.String("config", "", "read admin.socket from this configuration `file`")
	pid := fs.Int("pid", 0, "the daemon's process `id`, sent SIGHUP when its admin socket cannot be reached")
	if err := fs.Parse(args); err != nil {
		return flagError(stderr, "reload", err)
	}
	if fs.NArg() > 0 {
		return usageError(stderr, "reload", "unexpected argument %q", fs.Arg(0))
	}
	if *socket != "" && *configPath != "" {
		return usageError(stderr, "reload", "--socket and --config both name the socket; give one")
	}
	pidSet := false
	fs.Visit(func(f *flag.Flag) { pidSet = pidSet || f.Name == "pid" })
	if *pid < 0 || (*pid == 0 && pidSet) {
		return usageError(stderr, "reload", "--pid: %d is not a process id", *pid)
	}
	path, err := adminSocketPath(*socket, *configPath)
	if err != nil {
		return err
	}

	body, _, err := newAdminClient(path).once(http.MethodPost, "/v1/reload")
	var ue *unreachableError
	var old *statusError
	if err != nil && *pid > 0 && (errors.As(err, &ue) || errors.As(err, &old) && old.code == http.StatusNotFound) {
		// Only a tcpd gets the signal: a wrong --pid must not reload, or
		// kill, something else.
		if comm, cerr := os.ReadFile(fmt.Sprintf("/proc/%d/comm", *pid)); cerr == nil && !strings.HasPrefix(strings.TrimSpace(string(comm)), "tcpd") {
			return fmt.Errorf("%v; and process %d is %s, not tcpd: not sending it SIGHUP", err, *pid, strings.TrimSpace(string(comm)))
		}
		if kerr := syscall.Kill(*pid, syscall.SIGHUP); kerr != nil {
			return fmt.Errorf("%v; and SIGHUP to process %d: %w", err, *pid, kerr)
		}
		fmt.Fprintf(stderr, "tcpd reload: %v; sent SIGHUP to process %d instead, without waiting for the outcome\n", err, *pid)
		return nil
	}
	if err != nil {
		return err
	}
	var res struct {
		Config         string   `json:"config"`
		RestartPending []string `json:"restart_pending"`
	}
	if err := json.Unmarshal(body, &res); err != nil {
		return fmt.Errorf("reply from %s: %w", path, err)
	}
	fmt.Fprintf(stdout, "reloaded %s\n", res.Config)
	if len(res.RestartPending) > 0 {
		fmt.Fprintf(stdout, "these settings keep their running values until a restart: %s\n", strings.Join(res.RestartPending, "; "))
	}
	return nil
}
