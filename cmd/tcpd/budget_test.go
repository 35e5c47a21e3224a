package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
)

func TestFDBudget(t *testing.T) {
	c := defaultConfig() // 65536 connections and handshakes together
	need := 65536 + fdReserve
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
		{limit: 131072, budget: 131072 - fdReserve, comment: "the unit's LimitNOFILE: everything fits"},
		{limit: need, budget: need - fdReserve, comment: "exactly enough"},
		{limit: 20000, budget: 20000 - fdReserve, warn: []string{
			"is 20000", "limits.max_connections (65536)",
			"at most " + itoa(20000-fdReserve) + " connections", `reason="fd_limit"`, "LimitNOFILE=) to " + itoa(need),
			"lower limits.max_connections to " + itoa(20000-fdReserve),
		}, comment: "a low limit: a warning with the numbers and what to change"},
		{limit: fdReserve, err: true, comment: "nothing left for connections"},
	} {
		b := newFDBudget(tc.limit)
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
	if err == nil || !strings.HasPrefix(err.Error(), "limits.max_connections: 65536") || !strings.Contains(err.Error(), "(allowed: at most "+itoa(need-1-fdReserve)+", or raise the sysctl fs.nr_open)") {
		t.Errorf("caps above fs.nr_open: %v; want an error naming the key", err)
	}
	if w, err := checkFDCaps(c, 0, 0); w != "" || err != nil {
		t.Errorf("limits unknown: %q, %v; want nothing", w, err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

// TestREADMEStatesTheFDNeed: README's figure for the default caps is
// fdNeed's.
func TestREADMEStatesTheFDNeed(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	n := fdNeed(defaultConfig())
	want := fmt.Sprintf("needs an open-file limit of %d,%03d", n/1000, n%1000)
	if text := strings.Join(strings.Fields(string(b)), " "); !strings.Contains(text, want) {
		t.Errorf("README does not say %q", want)
	}
}
