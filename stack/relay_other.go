//go:build !linux

package stack

// readUpstream reads with its buffer borrowed for the whole wait: without
// Linux's non-blocking read through the RawConn, an idle upstream pins it.
func (r *relay) readUpstream() (*[]byte, int, error) {
	bp := relayBufs.Get().(*[]byte)
	n, err := r.upstream.Read(*bp)
	return bp, n, err
}

// upstreamFIN takes every end of stream for the destination's FIN: the
// socket's state is not read off Linux.
func (r *relay) upstreamFIN() bool { return true }
