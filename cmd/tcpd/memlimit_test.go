package main

import (
	"math"
	"strings"
	"testing"
)

func TestMemoryLimit(t *testing.T) {
	const mib, gib = 1 << 20, 1 << 30
	for _, tc := range []struct {
		name      string
		cfg       memLimit
		maxConns  int
		env       string
		available int64
		want      int64
		source    string
	}{
		{"off", memOff, 65536, "", 8 * gib, math.MaxInt64, "off"},
		{"explicit", 512 * mib, 65536, "1GiB", 8 * gib, 512 * mib, "limits.memory"},
		{"auto leaves GOMEMLIMIT alone", memAuto, 65536, "1GiB", 8 * gib, -1, "GOMEMLIMIT"},
		{"auto follows the cap", memAuto, 1000, "", 8 * gib, 64*mib + 1000*64<<10, "1000 connections"},
		{"auto at the default cap", memAuto, 65536, "", 64 * gib, 64*mib + 4*gib, "65536 connections"},
		{"auto within the memory available", memAuto, 65536, "", 2 * gib, 1536 * mib, "3/4 of the 2GiB"},
		{"auto without knowing the memory", memAuto, 100, "", 0, 64*mib + 100*64<<10, "100 connections"},
		{"auto on a tiny machine", memAuto, 65536, "", 16 * mib, memMin, "3/4 of the 16MiB"},
	} {
		limit, source := memoryLimit(tc.cfg, tc.maxConns, tc.env, tc.available)
		if limit != tc.want || !strings.Contains(source, tc.source) {
			t.Errorf("%s: %d (%s), want %d (%s)", tc.name, limit, source, tc.want, tc.source)
		}
	}
}

func TestBytes(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		out  string
	}{
		{"512MiB", 512 << 20, "512MiB"},
		{"1536MiB", 1536 << 20, "1536MiB"},
		{"2GiB", 2 << 30, "2GiB"},
		{"1TiB", 1 << 40, "1TiB"},
		{"64KiB", 64 << 10, "64KiB"},
		{"1000000", 1000000, "1000000"},
		{"1048576B", 1 << 20, "1MiB"},
	} {
		got, err := parseBytes(tc.in)
		if err != nil || got != tc.want || fmtBytes(got) != tc.out {
			t.Errorf("parseBytes(%q) = %d, %v; fmtBytes = %q, want %d, %q", tc.in, got, err, fmtBytes(got), tc.want, tc.out)
		}
	}
	for _, bad := range []string{"", "MiB", "2GB", "-1MiB", "1.5GiB", "99999999999TiB", "lots"} {
		if got, err := parseBytes(bad); err == nil {
			t.Errorf("parseBytes(%q) = %d, want an error", bad, got)
		}
	}
}

func TestFmtMemLimit(t *testing.T) {
	for x, want := range map[int64]string{300 << 20: "300MiB", 394788864: "376.5MiB", 4<<30 + 64<<20: "4.1GiB", 2 << 30: "2GiB", math.MaxInt64: "none"} {
		if got := fmtMemLimit(x); got != want {
			t.Errorf("fmtMemLimit(%d) = %q, want %q", x, got, want)
		}
	}
}
