//go:build linux

package bench

import (
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func threadCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		panic(err)
	}
	return time.Duration(ts.Nano())
}

// TestReadCost checks the /proc readers on this process: a thread that
// sleeps switches out voluntarily, one that spins spends user time.
func TestReadCost(t *testing.T) {
	ticks := clockTicks()
	c0, err := readCost(os.Getpid(), ticks)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		for range 20 {
			time.Sleep(time.Millisecond)
		}
		// Spin for 100 ms of this thread's own CPU time, however busy the
		// machine is.
		for start := threadCPU(); threadCPU()-start < 100*time.Millisecond; {
		}
		close(done)
	}()
	<-done
	c1, err := readCost(os.Getpid(), ticks)
	if err != nil {
		t.Fatal(err)
	}
	d := c1.sub(c0)
	if d.vol < 20 {
		t.Errorf("voluntary context switches grew by %d over 20 sleeps", d.vol)
	}
	// The ticks are 10 ms; the spin alone is 100 ms.
	if d.user+d.sys < 80*time.Millisecond {
		t.Errorf("CPU time grew by %v (user %v, system %v) over 100 ms of spinning", d.user+d.sys, d.user, d.sys)
	}
	pc := d.perConn(4)
	if pc.vol != float64(d.vol)/4 || pc.user != float64(d.user.Nanoseconds())/1e3/4 {
		t.Errorf("perConn(4) = %+v from %+v", pc, d)
	}
}
