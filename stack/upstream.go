package stack

import (
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"net/netip"
)

// SourceAddressError is an address of Tunables.SourceAddresses that an
// upstream socket cannot bind to. New and SetTunables return it, so that
// the caller can name the setting it came from.
type SourceAddressError struct {
	Addr netip.Addr
	// NotLocal says that the host has no such address (EADDRNOTAVAIL).
	NotLocal bool
	Err      error
}

func (e *SourceAddressError) Error() string {
	if e.NotLocal {
		return fmt.Sprintf("source address %s is not an address of this host", e.Addr)
	}
	return fmt.Sprintf("source address %s: %v", e.Addr, e.Err)
}

func (e *SourceAddressError) Unwrap() error { return e.Err }

// InterfaceError is a Tunables.Interface that an upstream socket cannot be
// bound to (SO_BINDTODEVICE), as every dial would then fail. New and
// SetTunables return it, so that the caller can name the setting it came
// from.
type InterfaceError struct {
	Name string
	// NotFound says that the host has no interface of that name (ENODEV).
	NotFound bool
	Err      error
}

func (e *InterfaceError) Error() string {
	if e.NotFound {
		return fmt.Sprintf("upstream interface %q: no such interface on this host", e.Name)
	}
	return fmt.Sprintf("upstream interface %q: %v", e.Name, e.Err)
}

func (e *InterfaceError) Unwrap() error { return e.Err }

// sourceFor picks the source address of the connection from client to
// dst among addrs, by a hash of the 4-tuple, so that connections to one
// destination spread evenly over the addresses of its family. It returns
// the invalid address when addrs has none of that family.
func sourceFor(addrs []netip.Addr, seed maphash.Seed, client, dst netip.AddrPort) netip.Addr {
	v4 := dst.Addr().Unmap().Is4()
	n := 0
	for _, a := range addrs {
		if a.Is4() == v4 {
			n++
		}
	}
	if n == 0 {
		return netip.Addr{}
	}
	var h maphash.Hash
	h.SetSeed(seed)
	var b [2*16 + 4]byte
	c16, d16 := client.Addr().As16(), dst.Addr().As16()
	copy(b[:], c16[:])
	copy(b[16:], d16[:])
	binary.BigEndian.PutUint16(b[32:], client.Port())
	binary.BigEndian.PutUint16(b[34:], dst.Port())
	h.Write(b[:])
	k := int(h.Sum64() % uint64(n))
	for _, a := range addrs {
		if a.Is4() == v4 {
			if k == 0 {
				return a
			}
			k--
		}
	}
	return netip.Addr{} // unreachable
}
