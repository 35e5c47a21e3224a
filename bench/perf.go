package bench

import (
	"bufio"
	"bytes"
	"strconv"
	"strings"
)

// parsePerfCSV reads the counts of `perf stat -x ,` output, keyed by event
// name. A line whose first field is not a number (comments, "<not
// counted>", "<not supported>", perf's "Events enabled" messages) is
// skipped, so that an event perf could not count is absent rather than 0.
func parsePerfCSV(b []byte) (map[string]float64, error) {
	counts := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ",")
		if len(f) < 3 {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil || f[2] == "" {
			continue
		}
		counts[f[2]] += v
	}
	return counts, sc.Err()
}
