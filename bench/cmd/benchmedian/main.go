// Command benchmedian reads the output of `go test -bench` with -count N
// and prints, for each benchmark and -cpu value, the median of every
// metric over the N runs with its range, in the order the benchmarks ran.
// make bench-scaling pipes its benchmarks through it.
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
)

// result is one benchmark name's runs: metric unit → values.
type result struct {
	name   string
	units  []string
	byUnit map[string][]float64
}

func main() {
	results, err := parse(os.Stdin)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchmedian:", err)
		os.Exit(1)
	}
	write(os.Stdout, results)
}

// parse collects the benchmark lines of r: "BenchmarkX-4  N  v unit  v unit ...".
func parse(r io.Reader) ([]*result, error) {
	var out []*result
	byName := map[string]*result{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") || len(f)%2 != 0 {
			continue
		}
		if _, err := strconv.ParseFloat(f[1], 64); err != nil {
			continue
		}
		res := byName[f[0]]
		if res == nil {
			res = &result{name: f[0], byUnit: map[string][]float64{}}
			byName[f[0]] = res
			out = append(out, res)
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return nil, fmt.Errorf("%s: value %q of %s: %w", f[0], f[i], f[i+1], err)
			}
			unit := f[i+1]
			if _, ok := res.byUnit[unit]; !ok {
				res.units = append(res.units, unit)
			}
			res.byUnit[unit] = append(res.byUnit[unit], v)
		}
	}
	return out, sc.Err()
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func write(w io.Writer, results []*result) {
	for _, r := range results {
		fmt.Fprintf(w, "%-36s", r.name)
		for _, u := range r.units {
			v := r.byUnit[u]
			fmt.Fprintf(w, "  %10.4g %s [%.4g..%.4g]", median(v), u, slices.Min(v), slices.Max(v))
		}
		fmt.Fprintf(w, "  (%d runs)\n", len(r.byUnit[r.units[0]]))
	}
}
