// Package policy decides which destinations tcpd may dial on a client's
// behalf. It is secure by default: loopback, link-local (cloud metadata),
// unspecified, multicast, broadcast and reserved, private, CGNAT and
// unique-local addresses, the client prefixes themselves and every address of
// the host are denied unless an allow list names them, and a deny list wins
// over everything. IPv4 addresses embedded in IPv6 (IPv4-mapped, compatible,
// NAT64 and 6to4 forms) are judged as the IPv4 address they carry. Check is
// safe for concurrent use and does not allocate; the package does no I/O
// except reading the host's interface addresses when asked to.
package policy

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
)

// Reason says why a destination was allowed or denied. Its String is the
// value tcpd logs.
type Reason uint8

// Reasons, in the order Check applies them after the deny and allow lists.
const (
	ReasonAllowed Reason = iota // no rule matched
	ReasonAllowList
	ReasonDenyList
	ReasonLoopback
	ReasonLinkLocal
	ReasonUnspecified
	ReasonMulticast
	ReasonBroadcast
	ReasonReserved
	ReasonPrivate
	ReasonCGNAT
	ReasonUniqueLocal
	ReasonClientPrefix
	ReasonHostAddress
	numReasons
)

var reasonNames = [numReasons]string{
	ReasonAllowed:      "allowed",
	ReasonAllowList:    "allow_list",
	ReasonDenyList:     "deny_list",
	ReasonLoopback:     "loopback",
	ReasonLinkLocal:    "link_local",
	ReasonUnspecified:  "unspecified",
	ReasonMulticast:    "multicast",
	ReasonBroadcast:    "broadcast",
	ReasonReserved:     "reserved",
	ReasonPrivate:      "private",
	ReasonCGNAT:        "cgnat",
	ReasonUniqueLocal:  "unique_local",
	ReasonClientPrefix: "client_prefix",
	ReasonHostAddress:  "host_address",
}

func (r Reason) String() string {
	if r < numReasons {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason(%d)", r)
}

// Verdict is the answer for one destination.
type Verdict struct {
	Allowed bool
	Reason  Reason
}

type class struct {
	prefix netip.Prefix
	reason Reason
}

// builtin are the classes denied unless allowed. Sources: RFC 1122 3.2.1.3
// (0/8, 127/8), RFC 3927 (169.254/16), RFC 5771 (224/4), RFC 1112 (240/4),
// RFC 919 (limited broadcast), RFC 1918, RFC 6598 (100.64/10), RFC 4291
// (::/128, ::1, fe80::/10, ff00::/8), RFC 4193 (fc00::/7). 198.18/15
// (benchmarking) and 2001:db8::/32 (documentation) are deliberately not here:
// they are routable in labs and harmless elsewhere.
var builtin = []class{
	{netip.MustParsePrefix("255.255.255.255/32"), ReasonBroadcast},
	{netip.MustParsePrefix("0.0.0.0/8"), ReasonUnspecified},
	{netip.MustParsePrefix("127.0.0.0/8"), ReasonLoopback},
	{netip.MustParsePrefix("169.254.0.0/16"), ReasonLinkLocal},
	{netip.MustParsePrefix("224.0.0.0/4"), ReasonMulticast},
	{netip.MustParsePrefix("240.0.0.0/4"), ReasonReserved},
	{netip.MustParsePrefix("10.0.0.0/8"), ReasonPrivate},
	{netip.MustParsePrefix("172.16.0.0/12"), ReasonPrivate},
	{netip.MustParsePrefix("192.168.0.0/16"), ReasonPrivate},
	{netip.MustParsePrefix("100.64.0.0/10"), ReasonCGNAT},
	{netip.MustParsePrefix("::/128"), ReasonUnspecified},
	{netip.MustParsePrefix("::1/128"), ReasonLoopback},
	{netip.MustParsePrefix("fe80::/10"), ReasonLinkLocal},
	{netip.MustParsePrefix("ff00::/8"), ReasonMulticast},
	{netip.MustParsePrefix("fc00::/7"), ReasonUniqueLocal},
}

// Config describes a Policy. The zero value denies the built-in classes and
// the host's own addresses.
type Config struct {
	// Allow names prefixes that are allowed even though a built-in class,
	// a client prefix or a host address would deny them.
	Allow []netip.Prefix
	// Deny names prefixes that are always denied. Deny wins over Allow.
	Deny []netip.Prefix
	// Clients are the client prefixes; destinations inside them are denied.
	Clients []netip.Prefix
	// HostAddrs returns the host's own addresses, which are denied. Nil means
	// the addresses of every interface in the current network namespace.
	HostAddrs func() ([]netip.Addr, error)
}

// Policy is an immutable destination policy, except for the host address set
// that RefreshHostAddrs replaces atomically.
type Policy struct {
	allow, deny, clients []netip.Prefix
	hostAddrs            func() ([]netip.Addr, error)
	// host is sorted and never modified after it is stored.
	host atomic.Pointer[[]netip.Addr]
}

// New builds a Policy and reads the host's addresses once.
func New(cfg Config) (*Policy, error) {
	p := &Policy{
		allow:     canonical(cfg.Allow),
		deny:      canonical(cfg.Deny),
		clients:   canonical(cfg.Clients),
		hostAddrs: cfg.HostAddrs,
	}
	if p.hostAddrs == nil {
		p.hostAddrs = interfaceAddrs
	}
	if err := p.RefreshHostAddrs(); err != nil {
		return nil, err
	}
	return p, nil
}

func canonical(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		if !p.IsValid() {
			continue
		}
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		out = append(out, p.Masked())
	}
	return out
}

// RefreshHostAddrs re-reads the host's addresses; interfaces come and go.
func (p *Policy) RefreshHostAddrs() error {
	addrs, err := p.hostAddrs()
	if err != nil {
		return fmt.Errorf("read host addresses: %w", err)
	}
	host := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		host = append(host, a.Unmap().WithZone(""))
	}
	slices.SortFunc(host, netip.Addr.Compare)
	host = slices.Compact(host)
	p.host.Store(&host)
	return nil
}

func interfaceAddrs() ([]netip.Addr, error) {
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(ifaddrs))
	for _, ia := range ifaddrs {
		if n, ok := ia.(*net.IPNet); ok {
			if a, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, a)
			}
		}
	}
	return out, nil
}

// Check decides whether dst may be dialled. It does not allocate.
func (p *Policy) Check(dst netip.Addr) Verdict {
	dst = dst.Unmap().WithZone("")
	if !dst.IsValid() {
		return Verdict{Reason: ReasonUnspecified}
	}
	embedded, hasEmbedded := embeddedV4(dst)
	if contains(p.deny, dst) || (hasEmbedded && contains(p.deny, embedded)) {
		return Verdict{Reason: ReasonDenyList}
	}
	if contains(p.allow, dst) {
		return Verdict{Allowed: true, Reason: ReasonAllowList}
	}
	if r := p.denyReason(dst); r != ReasonAllowed {
		return Verdict{Reason: r}
	}
	if hasEmbedded {
		if contains(p.allow, embedded) {
			return Verdict{Allowed: true, Reason: ReasonAllowList}
		}
		if r := p.denyReason(embedded); r != ReasonAllowed {
			return Verdict{Reason: r}
		}
	}
	return Verdict{Allowed: true, Reason: ReasonAllowed}
}

func (p *Policy) denyReason(a netip.Addr) Reason {
	for _, c := range builtin {
		if c.prefix.Contains(a) {
			return c.reason
		}
	}
	if contains(p.clients, a) {
		return ReasonClientPrefix
	}
	if host := p.host.Load(); host != nil {
		if _, ok := slices.BinarySearchFunc(*host, a, netip.Addr.Compare); ok {
			return ReasonHostAddress
		}
	}
	return ReasonAllowed
}

func contains(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

var (
	// IPv4-compatible addresses (RFC 4291 2.5.5.1, deprecated) and the NAT64
	// well-known and local-use prefixes (RFC 6052, RFC 8215) carry an IPv4
	// address in their last 32 bits; 6to4 (RFC 3056) in bits 16..47.
	v4Compatible = netip.MustParsePrefix("::/96")
	nat64        = netip.MustParsePrefix("64:ff9b::/96")
	nat64Local   = netip.MustParsePrefix("64:ff9b:1::/48")
	sixToFour    = netip.MustParsePrefix("2002::/16")
)

// embeddedV4 returns the IPv4 address an IPv6 address carries, if its form
// is one that a host or a translator on the path would deliver to it.
func embeddedV4(a netip.Addr) (netip.Addr, bool) {
	if !a.Is6() {
		return netip.Addr{}, false
	}
	b := a.As16()
	switch {
	case v4Compatible.Contains(a), nat64.Contains(a), nat64Local.Contains(a):
		return netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]}), true
	case sixToFour.Contains(a):
		return netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]}), true
	}
	return netip.Addr{}, false
}

// Summary describes the policy in one line for the start-up log.
func (p *Policy) Summary() string {
	var b strings.Builder
	b.WriteString("deny loopback, link-local, unspecified, multicast, broadcast, reserved, private, cgnat, unique-local")
	fmt.Fprintf(&b, ", %d client prefixes", len(p.clients))
	if host := p.host.Load(); host != nil {
		fmt.Fprintf(&b, ", %d host addresses", len(*host))
	}
	if len(p.allow) > 0 {
		fmt.Fprintf(&b, "; allow %s", joinPrefixes(p.allow))
	}
	if len(p.deny) > 0 {
		fmt.Fprintf(&b, "; deny %s", joinPrefixes(p.deny))
	}
	return b.String()
}

func joinPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, " ")
}
