package main

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// availableMemory returns the memory this process may use: its cgroup's
// limit (cgroup v2 memory.max, or v1 memory.limit_in_bytes), or the
// machine's MemTotal if that is smaller or there is none; 0 if unknown.
func availableMemory() int64 {
	avail := memTotal()
	if c := cgroupLimit(); c > 0 && (avail == 0 || c < avail) {
		avail = c
	}
	return avail
}

// memTotal reads MemTotal from /proc/meminfo, in bytes.
func memTotal() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			f := strings.Fields(rest)
			if len(f) == 2 && f[1] == "kB" {
				if kb, err := strconv.ParseInt(f[0], 10, 64); err == nil {
					return kb << 10
				}
			}
		}
	}
	return 0
}

// cgroupLimit returns the memory limit of this process's cgroup, 0 if it
// has none or it cannot be read.
func cgroupLimit() int64 {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		// hierarchy-ID:controllers:path
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		var file string
		switch {
		case f[0] == "0" && f[1] == "":
			file = filepath.Join("/sys/fs/cgroup", f[2], "memory.max")
		case strings.Contains(","+f[1]+",", ",memory,"):
			file = filepath.Join("/sys/fs/cgroup/memory", f[2], "memory.limit_in_bytes")
		default:
			continue
		}
		if v, err := os.ReadFile(file); err == nil {
			s := strings.TrimSpace(string(v))
			// cgroup v1 says "no limit" with a number near 2^63.
			if n, err := strconv.ParseInt(s, 10, 64); err == nil && n < 1<<60 {
				return n
			}
		}
	}
	return 0
}
