//go:build !linux

package stack

import gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"

const (
	vnetHdrLen = 10
	gsoMaxSize = 0
)

// A real TUN needs Linux; elsewhere only test devices run, which have no
// queues of their own.
func (*link) readVnet(*tunQueue)  {}
func (*link) readPlain(*tunQueue) {}
func (*link) writeQueue(_ *tunQueue, _ *gvstack.PacketBuffer, _ *[vnetHdrLen]byte, iov [][]byte) ([][]byte, error) {
	return iov, nil
}
func (*link) writeQueueRaw(*tunQueue, []byte, int) error { return nil }
