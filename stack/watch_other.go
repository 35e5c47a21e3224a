//go:build !linux

package stack

// watchSys has no view of the host's sockets off Linux: only client
// failures are watched, through a channel.
type watchSys struct {
	wakeC chan struct{}
}

func (w *watchSys) open() error {
	w.wakeC = make(chan struct{}, 1)
	return nil
}

func (w *watchSys) wake() {
	select {
	case w.wakeC <- struct{}{}:
	default:
	}
}

func (w *watchSys) watch(*relay, uint64) bool { return false }

func (w *watchSys) close() {}

// watchFailures waits for client failures until close.
func (w *watcher) watchFailures() {
	for range w.sys.wakeC {
		failed, closing := w.takeFailed()
		resetFailed(failed)
		if closing {
			return
		}
	}
}
