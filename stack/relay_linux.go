package stack

import "golang.org/x/sys/unix"

// waitUpstream returns once the upstream socket has data, EOF or an error
// to report, or its read deadline passed. It peeks rather than trusting the
// poller's edge, which a previous read may already have consumed.
// A socket error the peek reports (a reset) is consumed by it, so it is
// returned here rather than left for the Read.
func (r *relay) waitUpstream() error {
	if r.upRaw == nil {
		return nil
	}
	var one [1]byte
	var perr error
	r.upRaw.Read(func(fd uintptr) bool {
		_, _, perr = unix.Recvfrom(int(fd), one[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return perr != unix.EAGAIN
	})
	if perr == unix.EAGAIN {
		return nil // deadline passed: the Read reports the timeout
	}
	return perr
}
