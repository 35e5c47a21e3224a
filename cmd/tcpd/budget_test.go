package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"tcpd/stack"
)

func TestFDBudget(t *testing.T) {
	c := defaultConfig() // 65536 connections and handshakes together
	need := 65536 + fdReserve(c)
	if got := fdNeed(c); got != need {
		t.Fatalf("fdNeed = %d, want %d", got, need)
	}
	for _, tc := range []struct {
		limit   int
		warn    []string // substrings of the warning; nil: none
		err     bool
		budget  int
		comment string
	}{
		{limit: 131072, budget: 131072 - fdReserve(c), comment: "the unit's LimitNOFILE: everything fits"},
		{limit: need, budget: need - fdReserve(c), comment: "exactly enough"},
		{limit: 20000, budget: 20000 - fdReserve(c), warn: []string{
			"is 20000", "limits.max_connections (65536)",
			"at most " + itoa(20000-fdReserve(c)) + " connections", `reason="fd_limit"`, "LimitNOFILE=) to " + itoa(need),
			"lower limits.max_connections to " + itoa(20000-fdReserve(c)),
		}, comment: "a low limit: a warning with the numbers and what to change"},
		{limit: fdReserve(c), err: true, comment: "nothing left for connections"},
	} {
		b := newFDBudget(tc.limit, c)
		if !tc.err && b.conns != tc.budget {
			t.Errorf("%s: budget %d, want %d", tc.comment, b.conns, tc.budget)
		}
		warning, err := b.check(c)
		if (err != nil) != tc.err {
			t.Errorf("%s: error %v, want one: %v", tc.comment, err, tc.err)
			continue
		}
		if err != nil {
			if !strings.Contains(err.Error(), "at least "+itoa(need)) {
				t.Errorf("%s: error %q does not say what limit is needed", tc.comment, err)
			}
			continue
		}
		if (warning != "") != (tc.warn != nil) {
			t.Errorf("%s: warning %q", tc.comment, warning)
		}
		for _, w := range tc.warn {
			if !strings.Contains(warning, w) {
				t.Errorf("%s: warning %q lacks %q", tc.comment, warning, w)
			}
		}
	}
}

// TestFDReserveGrowsWithCPUs: the reserve holds a descriptor per TUN queue
// and per relay shard, which grow with the CPUs; a fixed one left a
// 64-core gateway's /metrics and /healthz without descriptors at full load.
func TestFDReserveGrowsWithCPUs(t *testing.T) {
	one, many := defaultConfig(), defaultConfig()
	one.stack.TUN.Queues, many.stack.TUN.Queues = 1, 256
	if d := fdReserve(many) - fdReserve(one); d != 255 {
		t.Errorf("the reserve grew by %d from 1 TUN queue to 256, want 255", d)
	}
	auto := defaultConfig()
	if min := fdOwnBase + 2*runtime.GOMAXPROCS(0); fdReserve(auto) < min {
		t.Errorf("with tun.queues auto the reserve is %d, less than the base and a queue and a shard per P (%d)", fdReserve(auto), min)
	}
}

func TestCheckConfigFDCaps(t *testing.T) {
	c := defaultConfig()
	need := fdNeed(c)
	if w, err := checkFDCaps(c, 1<<20, 1<<20); w != "" || err != nil {
		t.Errorf("caps that fit: %q, %v", w, err)
	}
	w, err := checkFDCaps(c, 1<<20, 20000)
	if err != nil || !strings.Contains(w, "warning: limits.max_connections (65536)") || !strings.Contains(w, "this shell's limit is 20000") {
		t.Errorf("caps above this process's limit: %q, %v; want a warning", w, err)
	}
	_, err = checkFDCaps(c, need-1, 1<<20)
	if err == nil || !strings.HasPrefix(err.Error(), "limits.max_connections: 65536") || !strings.Contains(err.Error(), "(allowed: at most "+itoa(need-1-fdReserve(c))+", or raise the sysctl fs.nr_open)") {
		t.Errorf("caps above fs.nr_open: %v; want an error naming the key", err)
	}
	if w, err := checkFDCaps(c, 0, 0); w != "" || err != nil {
		t.Errorf("limits unknown: %q, %v; want nothing", w, err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestREADMEStatesTheFDNeed: README's figure for the default caps is
// fdNeed's, but for what grows with the CPUs, two per CPU with tun.queues
// auto.
func TestREADMEStatesTheFDNeed(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	c := defaultConfig()
	if c.stack.TUN.Queues != 0 || stack.PerCPUDescriptors(c.stack.TUN) != 2*min(runtime.GOMAXPROCS(0), stack.MaxAutoQueues) {
		t.Fatalf("the default is not tun.queues auto with a queue and a shard per CPU")
	}
	n := fdNeed(c) - stack.PerCPUDescriptors(c.stack.TUN)
	want := fmt.Sprintf("needs an open-file limit of %d,%03d with the reserve, plus two per CPU with `tun.queues` auto", n/1000, n%1000)
	if text := strings.Join(strings.Fields(string(b)), " "); !strings.Contains(text, want) {
		t.Errorf("README does not say %q", want)
	}
}
