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
	return cgroupLimitAt("/sys/fs/cgroup", string(b))
}

// cgroupLimitAt returns the smallest memory limit on the way from this
// process's cgroup (as /proc/self/cgroup lists it) up to the root of the
// hierarchy mounted at root: cgroup v2's memory.max or v1's
// memory.limit_in_bytes. A limit set on a parent (a systemd slice, a
// Kubernetes pod) binds as much as one set on the cgroup itself. Inside a
// container that shares the host's cgroup namespace the listed path does
// not exist under the container's mount, whose root is the container's own
// cgroup; the walk still reaches that root and reads its limit.
func cgroupLimitAt(root, selfCgroup string) int64 {
	var limit int64
	for _, line := range strings.Split(strings.TrimSpace(selfCgroup), "\n") {
		// hierarchy-ID:controllers:path
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 {
			continue
		}
		var dir, name string
		switch {
		case f[0] == "0" && f[1] == "":
			dir, name = root, "memory.max"
		case strings.Contains(","+f[1]+",", ",memory,"):
			dir, name = filepath.Join(root, "memory"), "memory.limit_in_bytes"
		default:
			continue
		}
		for p := filepath.Clean("/" + f[2]); ; p = filepath.Dir(p) {
			if n := readLimit(filepath.Join(dir, p, name)); n > 0 && (limit == 0 || n < limit) {
				limit = n
			}
			if p == "/" {
				break
			}
		}
	}
	return limit
}

// readLimit reads one cgroup limit file: 0 for "max", for v1's "no limit"
// (a number near 2^63), or when the file is absent or unreadable.
func readLimit(file string) int64 {
	v, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(v)), 10, 64)
	if err != nil || n <= 0 || n >= 1<<60 {
		return 0
	}
	return n
}
