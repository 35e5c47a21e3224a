// Package lockwait measures how long goroutines wait on locks, so that a
// parallel benchmark can report its contention per operation next to its
// time per operation. It reads the runtime's own cumulative count
// (runtime/metrics "/sync/mutex/wait/total:seconds": sync.Mutex,
// sync.RWMutex and the runtime's internal locks), which is always on and
// not sampled, unlike the mutex profile that names the locks.
package lockwait

import (
	"runtime/metrics"
	"testing"
	"time"
)

const metric = "/sync/mutex/wait/total:seconds"

// Total returns how long all goroutines of the process have waited on
// locks since it started.
func Total() time.Duration {
	s := []metrics.Sample{{Name: metric}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindFloat64 {
		return 0
	}
	return time.Duration(s[0].Value.Float64() * float64(time.Second))
}

// Report adds the metric "lockwait-ns/op" to b: the time goroutines spent
// waiting on locks since since (a Total taken when the timed part began),
// divided by b.N. Call it when the timed part has ended.
func Report(b *testing.B, since time.Duration) {
	if b.N == 0 {
		return
	}
	b.ReportMetric(float64(Total()-since)/float64(b.N), "lockwait-ns/op")
}
