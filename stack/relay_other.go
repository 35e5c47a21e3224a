//go:build !linux

package stack

// readUpstream reads with its buffer borrowed for the whole wait: without
// Linux's non-blocking read through the RawConn, an idle upstream pins it.
func (r *relay) readUpstream() (*[]byte, int, error) {
	bp := relayBufs.Get().(*[]byte)
	n, err := r.upstream.Read(*bp)
	return bp, n, err
}
