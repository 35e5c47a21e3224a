package main

import (
	"fmt"
	"math"
	"os"
	"runtime/debug"
	"strings"
)

// memLimit is limits.memory: the Go runtime's memory limit
// (debug.SetMemoryLimit), memAuto to follow limits.max_connections, or
// memOff for none.
type memLimit int64

const (
	memAuto memLimit = -1
	memOff  memLimit = 0
)

// The auto limit: what tcpd holds with no connection, plus a share for each
// connection limits.max_connections allows. An idle connection costs about
// 20 KiB (the netstack endpoint, the socket, the relay's state); one that
// moves bytes borrows a 64 KiB relay buffer and has the netstack queue up
// to its window; 64 KiB each is a gateway at its cap with most connections
// busy. Past the limit the runtime collects garbage harder rather than
// growing: memory stays bounded by the cap, at a cost in CPU only when the
// live data itself approaches it.
const (
	memBase    = 64 << 20
	memPerConn = 64 << 10
	// memMin and memMax bound limits.memory.
	memMin = 32 << 20
	memMax = 1 << 40
)

// The auto limit never exceeds memShareNum/memShareDen of the memory the
// process may have (its cgroup's limit, else the machine's): the rest is
// for the kernel's socket buffers of the upstream sockets, which the cgroup
// charges too, and for what the runtime does not count.
const memShareNum, memShareDen = 3, 4

// memoryLimit is the limit to apply for cfg and where it comes from: the
// configuration, GOMEMLIMIT (which auto leaves alone), or auto from the
// connection cap and the memory available.
func memoryLimit(cfg memLimit, maxConns int, env string, available int64) (limit int64, source string) {
	switch {
	case cfg == memOff:
		return math.MaxInt64, "limits.memory: off"
	case cfg != memAuto:
		return int64(cfg), "limits.memory"
	case env != "":
		return -1, "GOMEMLIMIT"
	}
	limit = memBase + int64(maxConns)*memPerConn
	source = fmt.Sprintf("auto: %s + %d connections × %s", fmtBytes(memBase), maxConns, fmtBytes(memPerConn))
	if available > 0 {
		if share := available / memShareDen * memShareNum; share < limit {
			limit = max(share, memMin)
			source = fmt.Sprintf("auto: 3/4 of the %s available", fmtBytes(available))
		}
	}
	return limit, source
}

// fmtMemLimit shows a memory limit for the log: MiB or GiB with a decimal,
// "none" for no limit.
func fmtMemLimit(x int64) string {
	switch {
	case x == math.MaxInt64:
		return "none"
	case x >= 1<<30:
		return strings.TrimSuffix(fmt.Sprintf("%.1f", float64(x)/(1<<30)), ".0") + "GiB"
	}
	return strings.TrimSuffix(fmt.Sprintf("%.1f", float64(x)/(1<<20)), ".0") + "MiB"
}

// applyMemoryLimit sets the runtime's memory limit for cfg and returns it
// and where it comes from. The connections that count are those tcpd can
// hold: limits.max_connections, or fewer if the open-file limit's budget
// (fdBudget, 0 if unknown) holds fewer.
func applyMemoryLimit(cfg *config, fdBudget int) (int64, string) {
	conns := cfg.stack.MaxConnections
	if fdBudget > 0 {
		conns = min(conns, fdBudget)
	}
	limit, source := memoryLimit(cfg.memory, conns, os.Getenv("GOMEMLIMIT"), availableMemory())
	if limit >= 0 {
		debug.SetMemoryLimit(limit)
	}
	return debug.SetMemoryLimit(-1), source
}
