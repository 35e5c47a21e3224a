package main

import (
	"strings"
	"testing"
)

func TestMedians(t *testing.T) {
	in := `goos: linux
BenchmarkTableSegments-2   	 7039748	       214.8 ns/op	         2.5 lockwait-ns/op	       0 B/op	       0 allocs/op
BenchmarkTableSegments-2   	 7039748	       100.0 ns/op	         1.5 lockwait-ns/op	       0 B/op	       0 allocs/op
BenchmarkTableSegments-2   	 7039748	       300.0 ns/op	         9.5 lockwait-ns/op	       0 B/op	       0 allocs/op
BenchmarkReceivePath-16    	  311676	      8294 ns/op	     24150 lockwait-ns/op	     119 B/op	       0 allocs/op
BenchmarkReceivePath-16    	  311676	      8296 ns/op	     24152 lockwait-ns/op	     121 B/op	       0 allocs/op
PASS
`
	res, err := parse(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 2 || res[0].name != "BenchmarkTableSegments-2" || res[1].name != "BenchmarkReceivePath-16" {
		t.Fatalf("parsed %d results", len(res))
	}
	for _, c := range []struct {
		r    int
		unit string
		want float64
	}{{0, "ns/op", 214.8}, {0, "lockwait-ns/op", 2.5}, {1, "ns/op", 8295}, {1, "B/op", 120}} {
		if got := median(res[c.r].byUnit[c.unit]); got != c.want {
			t.Errorf("%s %s: median %v, want %v", res[c.r].name, c.unit, got, c.want)
		}
	}
	var out strings.Builder
	write(&out, res)
	if !strings.Contains(out.String(), "214.8 ns/op [100..300]") || !strings.Contains(out.String(), "(3 runs)") {
		t.Errorf("output:\n%s", out.String())
	}
}
