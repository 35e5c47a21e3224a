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

// upstreamFIN reports whether the upstream socket's end of stream is the
// destination's FIN, rather than a failure (reset, ETIMEDOUT) whose error
// the other direction's write took first, after which the socket reads as
// EOF too. A FIN leaves the socket in CLOSE_WAIT, a failure in CLOSE. Once
// the relay has half-closed the socket itself, a FIN also leads to CLOSE
// (by way of TIME_WAIT); but then nothing else reads or writes the socket,
// and a failure is read as the error it is. When the state cannot be read,
// the end is taken for a FIN.
func (r *relay) upstreamFIN() bool {
	if r.upRaw == nil {
		return true
	}
	var (
		info *unix.TCPInfo
		ierr error
	)
	if err := r.upRaw.Control(func(fd uintptr) {
		info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil || ierr != nil {
		return true
	}
	// Read after the state: upFIN is set before the half-close that could
	// have taken the socket to CLOSE.
	return info.State != unix.BPF_TCP_CLOSE || r.upFIN.Load()
}
