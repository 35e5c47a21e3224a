//go:build wedgetest

package main

import (
	"errors"
	"io/fs"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// In binaries built with -tags wedgetest only, SIGUSR2 wedges the packet
// loop so that the systemd test can prove the watchdog restarts tcpd.
func (d *daemon) wedgeOnSignal() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGUSR2)
	go func() {
		<-c
		// Wedge first, log second: a test that reads the line and then
		// sends a SYN must find the loop already set to wedge on it.
		d.st.WedgeForTest()
		d.log.Warn("SIGUSR2: wedging the packet loop (wedgetest build)")
	}()
}

// holdStartEnv names a file; in wedgetest builds only, while it exists tcpd
// holds its start just before creating the TUN, with the metrics listener
// already up, so that a test can see what the health endpoints say while
// tcpd starts.
const holdStartEnv = "TCPD_TEST_HOLD_START"

func (d *daemon) holdStartForTest() {
	path := os.Getenv(holdStartEnv)
	if path == "" {
		return
	}
	d.log.Warn("holding the start while the file exists (wedgetest build)", zap.String("file", path))
	for {
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
