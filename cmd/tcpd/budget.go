package main

import (
	"fmt"

	"tcpd/admin"
	"tcpd/metrics"
	"tcpd/stack"
)

// tcpd's descriptors: one per relayed connection and per handshake in
// progress (its upstream socket; the client leg lives in the netstack and
// costs none), and its own, which must never run out: the TUN's queues, the
// epoll sets, the netlink sockets, the log, the metrics listener and the
// admin socket with the connections each may hold (one more than its cap
// while it makes room).

// fdOwnBase covers tcpd's own descriptors other than its listeners'
// connections and those it holds per CPU: stdio, the Go runtime's epoll
// set and wake-up, the listeners themselves, the netlink sockets of the
// policy and the TUN setup, the log, and a margin for the odd file opened
// for a moment (/proc, /sys).
const fdOwnBase = 64

// fdReserve is what tcpd keeps for itself out of its open-file limit: the
// base, a descriptor per TUN queue and per relay shard (one per CPU each
// with tun.queues auto: 128 on a 64-core gateway, which a fixed reserve
// left /metrics and /healthz without at full load), and its listeners'
// connections.
func fdReserve(c *config) int {
	return fdOwnBase + stack.PerCPUDescriptors(c.stack.TUN) + metrics.MaxConnections + 1 + admin.MaxConnections + 1
}

// fdBudget is how tcpd's open-file limit divides.
type fdBudget struct {
	// limit is the open-file limit (RLIMIT_NOFILE, the soft limit, which
	// the Go runtime raises to the hard one at start).
	limit int
	// conns is what the limit leaves for relayed connections and
	// handshakes in progress: the stack's FDBudget.
	conns int
}

func newFDBudget(limit int, c *config) fdBudget {
	return fdBudget{limit: limit, conns: limit - fdReserve(c)}
}

// fdNeed is the open-file limit the caps of c need: limits.max_connections
// counts handshakes in progress with the relayed connections (the
// admission compares both together against it), so it bounds every
// upstream socket.
func fdNeed(c *config) int {
	return c.stack.MaxConnections + fdReserve(c)
}

// check says whether the caps of c fit in the limit. It returns an error
// when the limit leaves no descriptor for a connection at all, and a
// warning, with the numbers and what to change, when it leaves fewer than
// the caps allow.
func (b fdBudget) check(c *config) (warning string, err error) {
	need := fdNeed(c)
	if b.conns < 1 {
		return "", fmt.Errorf("the open-file limit (RLIMIT_NOFILE) is %d: tcpd keeps %d descriptors for itself and has none left for connections; "+
			"raise the limit (LimitNOFILE= under systemd, ulimit -n) to at least %d", b.limit, fdReserve(c), need)
	}
	if need <= b.limit {
		return "", nil
	}
	return fmt.Sprintf("the open-file limit (RLIMIT_NOFILE) is %d, and limits.max_connections (%d) "+
		"upstream sockets plus %d of tcpd's own need %d: at most %d connections and handshakes at once, more are refused "+
		"(tcpd_dropped_total{reason=\"fd_limit\"}); raise the limit (LimitNOFILE=) to %d, or lower limits.max_connections to %d",
		b.limit, c.stack.MaxConnections, fdReserve(c), need, b.conns, need, b.conns), nil
}

// checkFDCaps is check-config's view: an error when the caps of c cannot
// be met by any open-file limit this host allows a process (fs.nr_open),
// and a warning when they exceed this process's own limit, which may not be
// the one the daemon runs with (systemd's LimitNOFILE=).
func checkFDCaps(c *config, nrOpen, own int) (warning string, err error) {
	need := fdNeed(c)
	if nrOpen > 0 && need > nrOpen {
		return "", fmt.Errorf("limits.max_connections: %d connections and %d descriptors of tcpd's own need "+
			"%d open files, more than this host allows any process (fs.nr_open %d) (allowed: at most %d, or raise the sysctl fs.nr_open)",
			c.stack.MaxConnections, fdReserve(c), need, nrOpen, max(nrOpen-fdReserve(c), 1))
	}
	if own > 0 && need > own {
		return fmt.Sprintf("warning: limits.max_connections (%d) and %d of tcpd's own need %d open files; "+
			"this shell's limit is %d: run tcpd with a higher one (the unit's LimitNOFILE=), or it refuses connections beyond %d",
			c.stack.MaxConnections, fdReserve(c), need, own, max(own-fdReserve(c), 0)), nil
	}
	return "", nil
}
