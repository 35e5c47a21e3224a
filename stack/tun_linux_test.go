//go:build linux

package stack

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"testing"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"

	"tcpd/internal/netlab"
)

// TestTUNInUse: a TUN device another process holds (a tcpd started twice
// with the same tun.name) is refused before anything of it changes: a
// further queue would take some of the other process's flows, and its MTU
// and addresses are not tcpd's to set.
func TestTUNInUse(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: a network namespace and a TUN device")
	}
	lab := netlab.NewT(t, netlab.Options{})
	const name = "tcpdinuse0"
	log := zap.NewNop()
	err := lab.Gateway.Do(func() error {
		for _, queues := range []int{2, 1} {
			first, err := createTUN(TUNConfig{Name: name, MTU: 1400, TxQueueLen: 1000, Queues: queues, Offload: OffloadOff}, log)
			if err != nil {
				return fmt.Errorf("the first TUN, %d queues: %w", queues, err)
			}
			second, err := createTUN(TUNConfig{Name: name, MTU: 1280, TxQueueLen: 1000, Queues: queues,
				Addresses: []netip.Prefix{netip.MustParsePrefix("192.0.2.9/32")}}, log)
			if err == nil {
				second.Close()
				first.Close()
				return fmt.Errorf("%d queues: a second TUN on the device in use was created", queues)
			}
			l, lerr := netlink.LinkByName(name)
			addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4)
			first.Close()
			switch {
			case !errors.Is(err, ErrTUNInUse):
				return fmt.Errorf("%d queues: the second TUN: %v, want ErrTUNInUse", queues, err)
			case lerr != nil:
				return lerr
			case l.Attrs().MTU != 1400 || len(addrs) != 0:
				return fmt.Errorf("%d queues: the refused TUN left the device with MTU %d and addresses %v", queues, l.Attrs().MTU, addrs)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
