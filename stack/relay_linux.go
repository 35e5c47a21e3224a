package stack

import (
	"io"

	"golang.org/x/sys/unix"
)

// readUpstream reads the upstream socket through its RawConn, borrowing a
// buffer for each attempt and giving it back when the socket has nothing
// (EAGAIN), so that the poller waits with no buffer held. One system call
// per chunk, as a plain Read; deadlines and Close apply as to Read. A reset
// arrives as the read's own error.
func (r *relay) readUpstream() (*[]byte, int, error) {
	if r.upRaw == nil {
		bp := relayBufs.Get().(*[]byte)
		n, err := r.upstream.Read(*bp)
		return bp, n, err
	}
	var (
		bp   *[]byte
		n    int
		rerr error
	)
	err := r.upRaw.Read(func(fd uintptr) bool {
		bp = relayBufs.Get().(*[]byte)
		n, rerr = unix.Read(int(fd), *bp)
		if rerr == unix.EAGAIN {
			relayBufs.Put(bp)
			bp = nil
			return false
		}
		return true
	})
	switch {
	case err != nil: // deadline or closed, from the poller
		return bp, 0, err
	case rerr != nil:
		return bp, 0, rerr
	case n == 0:
		return bp, 0, io.EOF
	}
	return bp, n, nil
}
