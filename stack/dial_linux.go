package stack

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// dialUpstream dials dst from src (when valid) with keepalive on, as
// currently configured, and a control hook that re-checks the address
// actually dialled against the policy and applies SO_MARK,
// SO_BINDTODEVICE and IP_BIND_ADDRESS_NO_PORT before bind and connect.
func (s *Stack) dialUpstream(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	ka := s.tune.Load().Keepalive
	d := net.Dialer{
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: ka.Idle, Interval: ka.Interval, Count: ka.Count},
		Control: func(network, address string, c syscall.RawConn) error {
			return s.controlUpstream(network, address, c, src.IsValid())
		},
	}
	if src.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
	}
	return d.DialContext(ctx, "tcp", dst.String())
}

// controlUpstream runs before the socket is bound and connected. bound
// says it will be bound to a source address: the kernel then picks its
// port at connect, from the whole 4-tuple, rather than at bind, where a
// port is taken toward every destination at once (IP_BIND_ADDRESS_NO_PORT,
// Linux 4.2).
func (s *Stack) controlUpstream(network, address string, c syscall.RawConn, bound bool) error {
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
				return
			}
		}
		if bound {
			if e := unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1); e != nil {
				serr = fmt.Errorf("set IP_BIND_ADDRESS_NO_PORT: %w", e)
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// checkSourceAddresses checks that each address is one of this host's: a
// socket binds to it, its port left for connect to choose.
func checkSourceAddresses(addrs []netip.Addr) error {
	for i, a := range addrs {
		if err := bindable(a); err != nil {
			return fmt.Errorf("source address %d, %s: %w", i, a, err)
		}
	}
	return nil
}

func bindable(a netip.Addr) error {
	family, sa := unix.AF_INET, unix.Sockaddr(&unix.SockaddrInet4{Addr: a.As4()})
	if !a.Is4() {
		family, sa = unix.AF_INET6, &unix.SockaddrInet6{Addr: a.As16()}
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1); err != nil {
		return err
	}
	if err := unix.Bind(fd, sa); err != nil {
		if err == unix.EADDRNOTAVAIL {
			return fmt.Errorf("not an address of this host (%w)", err)
		}
		return err
	}
	return nil
}
