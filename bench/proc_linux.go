//go:build linux

package bench

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// atClkTck is the auxiliary vector entry holding the clock-tick rate
// (AT_CLKTCK, <elf.h>), the unit of utime and stime in /proc/<pid>/stat.
const atClkTck = 17

// clockTicks returns sysconf(_SC_CLK_TCK) as the kernel handed it to this
// process, or 100 (the value on every mainstream Linux port) if the
// auxiliary vector cannot be read.
func clockTicks() float64 {
	b, err := os.ReadFile("/proc/self/auxv")
	if err != nil || len(b)%16 != 0 {
		return 100
	}
	for i := 0; i+16 <= len(b); i += 16 {
		if binary.NativeEndian.Uint64(b[i:]) == atClkTck {
			if v := binary.NativeEndian.Uint64(b[i+8:]); v > 0 {
				return float64(v)
			}
		}
	}
	return 100
}

// cpuTime returns the user plus system CPU time of all threads of pid.
func cpuTime(pid int, ticks float64) (time.Duration, error) {
	u, sys, err := cpuTimes(pid, ticks)
	return u + sys, err
}

// cpuTimes returns the user and the system CPU time of all threads of pid,
// those that have exited included, from fields 14 and 15 of
// /proc/<pid>/stat (proc(5)). Their unit is the clock tick (10 ms), so a
// figure per connection needs thousands of connections.
func cpuTimes(pid int, ticks float64) (user, sys time.Duration, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// comm (field 2) may contain spaces and parentheses; the fields after it
	// start after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state), so utime (14) is f[11] and stime (15) f[12].
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	tick := func(n uint64) time.Duration { return time.Duration(float64(n) / ticks * float64(time.Second)) }
	return tick(ut), tick(st), nil
}

// ctxSwitches returns the voluntary and involuntary context switches of
// every live thread of pid, summed over /proc/<pid>/task/*/status: the
// process's own status file counts its main thread only. A thread that has
// exited takes its counts with it; the Go runtime keeps its threads, so
// over a measurement that loses nothing in practice.
func ctxSwitches(pid int) (vol, invol uint64, err error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, 0, err
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name(), "status")
		v, err1 := kbField(p, "voluntary_ctxt_switches")
		n, err2 := kbField(p, "nonvoluntary_ctxt_switches")
		if err := errors.Join(err1, err2); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // the thread exited while we listed them
			}
			return 0, 0, err
		}
		vol += uint64(v)
		invol += uint64(n)
	}
	return vol, invol, nil
}

// statusKB returns a "kB" field of /proc/<pid>/status, such as VmRSS.
func statusKB(pid int, field string) (int64, error) {
	return kbField(fmt.Sprintf("/proc/%d/status", pid), field)
}

// meminfoKB returns a field of /proc/meminfo, such as Slab, in KiB.
func meminfoKB(field string) (int64, error) { return kbField("/proc/meminfo", field) }

// kbField returns the first number after "field:" in a file of such lines
// (/proc/<pid>/status, /proc/meminfo), whatever its unit.
func kbField(path, field string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || name != field {
			continue
		}
		v := strings.Fields(rest)
		if len(v) == 0 {
			break
		}
		return strconv.ParseInt(v[0], 10, 64)
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s: no %s", path, field)
}

// tcpdPID returns the pid of the tcpd process started as pid by
// `ip netns exec <ns> tcpd ...`. iproute2 execs the command in place (it
// forks only in batch mode), so this is normally pid itself; should pid
// still be ip, its child named like want is taken.
func tcpdPID(pid int, want string) (int, error) {
	if exe := exeBase(pid); exe != "ip" && exe != "" {
		return pid, nil
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	for _, e := range ents {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid(child) == pid && exeBase(child) == want {
			return child, nil
		}
	}
	return 0, fmt.Errorf("no %s process at or below pid %d (exe %q)", want, pid, exeBase(pid))
}

func exeBase(pid int) string {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return ""
	}
	return filepath.Base(strings.TrimSuffix(exe, " (deleted)"))
}

func ppid(pid int) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return -1
	}
	p, err := strconv.Atoi(f[1])
	if err != nil {
		return -1
	}
	return p
}

// maxOpenFiles returns the soft "Max open files" limit of pid.
func maxOpenFiles(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "Max open files"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				return strconv.ParseInt(f[0], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("/proc/%d/limits: no \"Max open files\"", pid)
}

// raiseNoFile raises this process's soft RLIMIT_NOFILE to its hard limit and
// returns the new soft limit.
func raiseNoFile() (uint64, error) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("getrlimit NOFILE: %w", err)
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			return 0, fmt.Errorf("setrlimit NOFILE %d: %w", lim.Max, err)
		}
	}
	return lim.Cur, nil
}

// openFiles counts this process's open descriptors.
func openFiles() (int, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0, err
	}
	return len(ents), nil
}

// kernelRelease returns uname -r.
func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}
