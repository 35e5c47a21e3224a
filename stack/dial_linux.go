package stack

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// dialUpstream dials with keepalive on, as currently configured, and a
// control hook that re-checks the address actually dialled against the
// policy and applies SO_MARK and SO_BINDTODEVICE before connect.
func (s *Stack) dialUpstream(ctx context.Context, network, address string) (net.Conn, error) {
	ka := s.tune.Load().Keepalive
	d := net.Dialer{
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: ka.Idle, Interval: ka.Interval, Count: ka.Count},
		Control:         s.controlUpstream,
	}
	return d.DialContext(ctx, network, address)
}

func (s *Stack) controlUpstream(network, address string, c syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("upstream address %q: %w", address, err)
	}
	if v := s.policy.Load().Check(ap.Addr().Unmap()); !v.Allowed {
		return fmt.Errorf("%w: %s (%s)", errDialDenied, ap.Addr(), v.Reason)
	}
	var serr error
	tune := s.tune.Load()
	ut := tune.Keepalive.userTimeout()
	err = c.Control(func(fd uintptr) {
		if e := unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(ut.Milliseconds())); e != nil {
			serr = fmt.Errorf("set TCP_USER_TIMEOUT: %w", e)
			return
		}
		if tune.Mark != 0 {
			if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(tune.Mark)); e != nil {
				serr = fmt.Errorf("set SO_MARK %d: %w", tune.Mark, e)
				return
			}
		}
		if tune.Interface != "" {
			if e := unix.BindToDevice(int(fd), tune.Interface); e != nil {
				serr = fmt.Errorf("bind to device %s: %w", tune.Interface, e)
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}
