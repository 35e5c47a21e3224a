package main

import (
	"fmt"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"

	"tcpd/conntrack"
)

// statusEvery is how often STATUS= tells systemd the live connection counts.
const statusEvery = 5 * time.Second

// notify sends one sd_notify message. Outside systemd (no NOTIFY_SOCKET) it
// does nothing.
func (d *daemon) notify(state string) {
	if _, err := sd.SdNotify(false, state); err != nil {
		d.log.Warn("sd_notify", zap.String("state", state), zap.Error(err))
	}
}

// status renders the one-line STATUS= text.
func status(s conntrack.Snapshot, active int64) string {
	return fmt.Sprintf("%d connections: %d established, %d syn_recv, %d close_wait, %d fin_wait2, %d time_wait/%d; %d relays",
		s.Live, s.States[conntrack.StateEstablished], s.States[conntrack.StateSynRecv],
		s.States[conntrack.StateCloseWait], s.States[conntrack.StateFinWait2],
		s.States[conntrack.StateTimeWait], s.TimeWaitLimit, active)
}

// supervise reports status to systemd and pings its watchdog while the data
// path makes progress, until done is closed. A wedged packet loop stops the
// pings, so systemd restarts the service after WatchdogSec.
func (d *daemon) supervise(done <-chan struct{}) {
	interval, err := sd.SdWatchdogEnabled(false)
	if err != nil {
		d.log.Warn("read systemd watchdog settings", zap.Error(err))
	}
	ping := interval / 2
	if ping <= 0 || ping > statusEvery {
		ping = statusEvery
	}
	t := time.NewTicker(ping)
	defer t.Stop()
	lastStatus := time.Time{}
	wasHealthy := true
	for {
		select {
		case <-done:
			return
		case now := <-t.C:
			healthy, why := d.st.Healthy()
			if healthy && interval > 0 {
				d.notify(sd.SdNotifyWatchdog)
			}
			if healthy != wasHealthy {
				if healthy {
					d.log.Info("data path making progress again")
				} else {
					d.log.Error("data path wedged; withholding watchdog pings", zap.String("why", why))
				}
				wasHealthy = healthy
			}
			if now.Sub(lastStatus) >= statusEvery {
				d.notify("STATUS=" + status(d.st.Snapshot(), d.st.Stats().Active.Load()))
				lastStatus = now
			}
		}
	}
}
