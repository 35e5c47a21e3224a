//go:build linux

package bench

import (
	"math"
	"time"
)

// procCost is what a process has spent: CPU time in user and system mode
// (all threads, exited ones included) and context switches (live threads).
type procCost struct {
	user, sys  time.Duration
	vol, invol uint64
}

// readCost reads pid's CPU times from /proc/<pid>/stat and its context
// switches from /proc/<pid>/task/*/status.
func readCost(pid int, ticks float64) (procCost, error) {
	var c procCost
	var err error
	if c.user, c.sys, err = cpuTimes(pid, ticks); err != nil {
		return c, err
	}
	c.vol, c.invol, err = ctxSwitches(pid)
	return c, err
}

// sub returns c - o.
func (c procCost) sub(o procCost) procCost {
	return procCost{user: c.user - o.user, sys: c.sys - o.sys, vol: c.vol - o.vol, invol: c.invol - o.invol}
}

// connCost is a procCost divided by a number of connections: CPU in
// microseconds, context switches as counts.
type connCost struct {
	user, sys  float64
	vol, invol float64
}

func (c procCost) perConn(n int64) connCost {
	if n <= 0 {
		nan := math.NaN()
		return connCost{nan, nan, nan, nan}
	}
	f := float64(n)
	return connCost{
		user:  float64(c.user.Nanoseconds()) / 1e3 / f,
		sys:   float64(c.sys.Nanoseconds()) / 1e3 / f,
		vol:   float64(c.vol) / f,
		invol: float64(c.invol) / f,
	}
}
