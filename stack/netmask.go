package stack

import (
	"net"
	"net/netip"
)

func netMask(p netip.Prefix) net.IPMask {
	return net.CIDRMask(p.Bits(), p.Addr().BitLen())
}
