//go:build !linux

package stack

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// The upstream leg's raw sockets and the shards' epoll sets are Linux's;
// elsewhere the stack does not start (New fails with
// errors.ErrUnsupported, as creating a TUN does).

var (
	errAgain       = errors.ErrUnsupported
	errDialTimeout = errors.ErrUnsupported
	errRelayPanic  = errors.New("connect: relay panicked")
	errNeedsLinux  = fmt.Errorf("needs Linux socket options: %w", errors.ErrUnsupported)
)

func upstreamSocket(netip.Addr, netip.AddrPort, *Tunables) (int, error) {
	return -1, errors.ErrUnsupported
}

func connectResult(int, bool) error    { return errors.ErrUnsupported }
func connectPoll(int) (bool, bool)     { return true, true }
func readFD(int, []byte) (int, error)  { return 0, errors.ErrUnsupported }
func writeFD(int, []byte) (int, error) { return 0, errors.ErrUnsupported }
func shutdownWrite(int) error          { return errors.ErrUnsupported }
func closeFD(int, bool)                {}
func unsentUpstream(int) (int, bool)   { return 0, false }
func sockName(int) string              { return "" }

func upstreamTCPInfo(int) (UpstreamTCP, bool) { return UpstreamTCP{}, false }

type poller struct{}

type pollEvent struct {
	token  uint64
	events uint32
}

func (*poller) open() error                { return errors.ErrUnsupported }
func (*poller) add(int, uint64) error      { return errors.ErrUnsupported }
func (*poller) arm(time.Duration)          {}
func (*poller) wait([]pollEvent, bool) int { return 0 }
func (*poller) wake()                      {}
func (*poller) close()                     {}
func (pollEvent) apply(*relay)             {}

// checkSourceAddresses: source addresses need Linux socket options.
func checkSourceAddresses(addrs []netip.Addr) error {
	if len(addrs) > 0 {
		return &SourceAddressError{Addr: addrs[0], Err: errNeedsLinux}
	}
	return nil
}

// checkInterface: binding to an interface needs Linux's SO_BINDTODEVICE.
func checkInterface(name string) error {
	if name != "" {
		return &InterfaceError{Name: name, Err: errNeedsLinux}
	}
	return nil
}

// CheckKeepalive has no kernel to ask here.
func CheckKeepalive(Keepalive, time.Duration) error { return nil }
