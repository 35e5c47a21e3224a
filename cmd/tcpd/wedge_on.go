//go:build wedgetest

package main

import (
	"os"
	"os/signal"
	"syscall"
)

// In binaries built with -tags wedgetest only, SIGUSR2 wedges the packet
// loop so that the systemd test can prove the watchdog restarts tcpd.
func (d *daemon) wedgeOnSignal() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGUSR2)
	go func() {
		<-c
		d.log.Warn("SIGUSR2: wedging the packet loop (wedgetest build)")
		d.st.WedgeForTest()
	}()
}
