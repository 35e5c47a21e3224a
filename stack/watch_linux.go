package stack

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// watchSys is the watcher's epoll set: an eventfd that wakes it for client
// failures (token 0) and every upstream socket (tokens from 1), registered
// edge-triggered with no events of its own. epoll always reports EPOLLERR
// and EPOLLHUP, and a wake-up for data (keyed EPOLLIN or EPOLLOUT) does not
// even reach the set, so moving bytes costs the watcher nothing; a socket
// error (a reset, or ETIMEDOUT from keepalive or the user timeout) wakes it.
type watchSys struct {
	epfd, evfd int
}

func (w *watchSys) open() error {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return fmt.Errorf("epoll_create1: %w", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return fmt.Errorf("eventfd: %w", err)
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &unix.EpollEvent{Events: unix.EPOLLIN}); err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return fmt.Errorf("epoll_ctl eventfd: %w", err)
	}
	w.epfd, w.evfd = epfd, evfd
	return nil
}

func (w *watchSys) wake() {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	// EAGAIN means the counter is already non-zero: the loop will wake.
	unix.Write(w.evfd, one[:])
}

// watch adds r's upstream socket under tok. It reports false when the
// socket cannot be watched (not a socket of the host, or epoll refused).
func (w *watchSys) watch(r *relay, tok uint64) bool {
	if r.upRaw == nil {
		return false
	}
	var err error
	cerr := r.upRaw.Control(func(fd uintptr) {
		ev := unix.EpollEvent{Events: unix.EPOLLET, Fd: int32(uint32(tok)), Pad: int32(uint32(tok >> 32))}
		err = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_ADD, int(fd), &ev)
	})
	return cerr == nil && err == nil
}

func (w *watchSys) close() {
	unix.Close(w.epfd)
	unix.Close(w.evfd)
}

// watchFailures waits on the epoll set until close.
func (w *watcher) watchFailures() {
	events := make([]unix.EpollEvent, 128)
	var buf [8]byte
	for {
		n, err := unix.EpollWait(w.sys.epfd, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		for _, ev := range events[:n] {
			tok := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if tok != 0 {
				if ev.Events&unix.EPOLLERR != 0 {
					w.upstreamFailed(tok)
				}
				continue
			}
			unix.Read(w.sys.evfd, buf[:])
			failed, closing := w.takeFailed()
			resetFailed(failed)
			if closing {
				return
			}
		}
	}
}
