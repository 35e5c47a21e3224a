package netlab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// ownerDir records which process owns each lab, so that labs left behind by
// a test binary that died without cleaning up (killed by `go test -timeout`,
// SIGKILL) are removed by the next one.
const ownerDir = "/run/tcpd-netlab"

// processStart returns a process's start time in clock ticks since boot
// (field 22 of /proc/PID/stat), which tells a live owner from a recycled PID.
func processStart(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", err
	}
	s := string(b)
	// The command name (field 2) may contain spaces; it ends at the last ')'.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", errors.New("malformed stat")
	}
	fields := strings.Fields(s[i+1:])
	if len(fields) < 20 {
		return "", errors.New("malformed stat")
	}
	return fields[19], nil // field 22 overall
}

// claim records this process as the owner of lab id.
func claim(id string) error {
	if err := os.MkdirAll(ownerDir, 0o755); err != nil {
		return err
	}
	start, err := processStart(os.Getpid())
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(ownerDir, id), fmt.Appendf(nil, "%d %s\n", os.Getpid(), start), 0o644)
}

func release(id string) { os.Remove(filepath.Join(ownerDir, id)) }

var sweepOnce sync.Once

// sweepStale removes the labs whose owner process is gone: the processes
// still running inside their namespaces, then the namespaces (which takes
// their veths with them). It runs once per process, before its first lab.
func sweepStale() { sweepOnce.Do(sweep) }

func sweep() {
	{
		entries, err := os.ReadDir(ownerDir)
		if err != nil {
			return
		}
		for _, e := range entries {
			id := e.Name()
			if ownerAlive(id) {
				continue
			}
			// -c, -g, -s and -m (a Monitor); a WireGuard lab's further
			// peers are -c1, -c2...
			paths, _ := filepath.Glob(filepath.Join(netnsDir, nsPrefix+id+"-*"))
			for _, path := range paths {
				name := filepath.Base(path)
				killInside(name)
				deleteNS(name)
			}
			release(id)
		}
	}
}

func ownerAlive(id string) bool {
	b, err := os.ReadFile(filepath.Join(ownerDir, id))
	if err != nil {
		return false
	}
	var pid int
	var start string
	if _, err := fmt.Sscan(string(b), &pid, &start); err != nil {
		return false
	}
	if err := syscall.Kill(pid, 0); err != nil && errors.Is(err, syscall.ESRCH) {
		return false
	}
	now, err := processStart(pid)
	return err == nil && now == start
}

// killInside SIGKILLs every process in namespace name.
func killInside(name string) {
	out, err := exec.Command("ip", "netns", "pids", name).Output()
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid != os.Getpid() {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
