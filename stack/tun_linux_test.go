//go:build linux

package stack

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

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

// TestTUNNameTakenByAnotherKind: when tun.name is an interface that is not
// a TUN device, here one end of a veth in a namespace of the test's own,
// creating the TUN fails saying so, not with TUNSETIFF's bare "invalid
// argument", and without first retrying as a single queue.
func TestTUNNameTakenByAnotherKind(t *testing.T) {
	l := netlab.NewT(t, netlab.Options{})
	name := l.GatewayClientLink // a veth, removed with the lab
	for _, queues := range []int{1, 2} {
		core, logs := observer.New(zap.WarnLevel)
		var err error
		if derr := l.Gateway.Do(func() error {
			dev, cerr := createTUN(TUNConfig{Name: name, MTU: 1500, Queues: queues, Offload: OffloadAuto}, zap.New(core))
			if cerr == nil {
				dev.Close()
			}
			err = cerr
			return nil
		}); derr != nil {
			t.Fatal(derr)
		}
		want := "create TUN " + name + ": an interface named " + name + " already exists and is a veth, not a TUN device " +
			"(TUNSETIFF: invalid argument); set tun.name to a name no other interface has"
		if err == nil || err.Error() != want {
			t.Errorf("%d queues: error %v\nwant %s", queues, err, want)
		}
		if !errors.Is(err, errNotTUN) {
			t.Errorf("%d queues: error %v is not errNotTUN", queues, err)
		}
		for _, e := range logs.All() {
			if strings.Contains(e.Message, "queue") {
				t.Errorf("%d queues: logged %q, as if the kernel had refused a multi-queue TUN", queues, e.Message)
			}
		}
	}
}
