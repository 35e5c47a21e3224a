//go:build !linux

package stack

import (
	"context"
	"errors"
	"net"
	"net/netip"
)

// dialUpstream needs Linux socket options.
func (s *Stack) dialUpstream(context.Context, netip.Addr, netip.AddrPort) (net.Conn, error) {
	return nil, errors.ErrUnsupported
}

// checkSourceAddresses: source addresses need Linux socket options.
func checkSourceAddresses(addrs []netip.Addr) error {
	if len(addrs) > 0 {
		return errors.ErrUnsupported
	}
	return nil
}
