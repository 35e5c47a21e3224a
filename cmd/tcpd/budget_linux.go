package main

import (
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// openFileLimit returns the process's open-file limit (the soft limit,
// which the Go runtime raised to the hard one at start), or 0 if it cannot
// be read or is unlimited.
func openFileLimit() int {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil || rl.Cur == unix.RLIM_INFINITY || rl.Cur > 1<<30 {
		return 0
	}
	return int(rl.Cur)
}

// hostOpenFileMax returns fs.nr_open, the most open files any process may
// be allowed, or 0 if it cannot be read.
func hostOpenFileMax() int {
	b, err := os.ReadFile("/proc/sys/fs/nr_open")
	if err != nil {
		return 0
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0
	}
	return n
}
