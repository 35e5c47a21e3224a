//go:build !linux

package stack

import gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"

const (
	vnetHdrLen = 10
	gsoMaxSize = 0
)

// The offload path needs Linux's virtio-net TUN; elsewhere the plain path
// runs.
func (*link) setupVnet() {}
func (*link) readVnet()  {}
func (*link) writeVnet(*gvstack.PacketBuffer, *[vnetHdrLen]byte, [][]byte) ([][]byte, error) {
	return nil, nil
}
func (*link) writeVnetRaw([]byte, int) error { return nil }
