//go:build !linux

package stack

import gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"

// queueIO holds a queue's system call state on Linux.
type queueIO struct{ iov [][]byte }

const vnetHdrLen = 10

// A real TUN needs Linux; elsewhere only test devices run, which have no
// queues of their own.
func (*link) readQueueLoop(*tunQueue) {}
func (*link) writeQueue(*tunQueue, *gvstack.PacketBuffer, *[vnetHdrLen]byte, *queueIO) error {
	return nil
}
func (*link) writeQueueRaw(*tunQueue, []byte, int) error { return nil }
