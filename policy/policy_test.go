package policy_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"

	"tcpd/policy"
)

func mustNew(t *testing.T, cfg policy.Config) *policy.Policy {
	t.Helper()
	if cfg.HostAddrs == nil {
		cfg.HostAddrs = func() ([]netip.Addr, error) {
			return []netip.Addr{netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("2001:db8:ff::7")}, nil
		}
	}
	p, err := policy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParsePrefix(s)
	}
	return out
}

func TestCheckDefaults(t *testing.T) {
	p := mustNew(t, policy.Config{Clients: prefixes("100.64.0.0/10", "fd64::/64")})
	cases := []struct {
		dst     string
		allowed bool
		reason  string
	}{
		{"127.0.0.1", false, "loopback"},
		{"127.255.255.254", false, "loopback"},
		{"::1", false, "loopback"},
		{"169.254.169.254", false, "link_local"},
		{"fe80::1", false, "link_local"},
		{"0.0.0.0", false, "unspecified"},
		{"0.1.2.3", false, "unspecified"},
		{"::", false, "unspecified"},
		{"224.0.0.1", false, "multicast"},
		{"ff02::1", false, "multicast"},
		{"255.255.255.255", false, "broadcast"},
		{"240.0.0.1", false, "reserved"},
		{"10.1.2.3", false, "private"},
		{"172.16.0.1", false, "private"},
		{"172.31.255.255", false, "private"},
		{"192.168.1.1", false, "private"},
		{"100.64.1.9", false, "cgnat"},
		{"100.127.255.255", false, "cgnat"},
		{"fd00::1", false, "unique_local"},
		{"fd64::2", false, "unique_local"},
		{"203.0.113.7", false, "host_address"},
		{"2001:db8:ff::7", false, "host_address"},
		// IPv4 carried in IPv6 is judged as the IPv4 address.
		{"::ffff:127.0.0.1", false, "loopback"},
		{"::ffff:169.254.169.254", false, "link_local"},
		{"::ffff:10.0.0.1", false, "private"},
		{"::ffff:203.0.113.7", false, "host_address"},
		{"::127.0.0.1", false, "loopback"},
		{"64:ff9b::a9fe:a9fe", false, "link_local"},
		{"64:ff9b:1::10.0.0.1", false, "private"},
		{"2002:7f00:1::1", false, "loopback"},
		{"2002:c0a8:101::1", false, "private"},
		// Public and benchmark/documentation addresses pass.
		{"8.8.8.8", true, "allowed"},
		{"198.18.1.2", true, "allowed"},
		{"172.32.0.1", true, "allowed"},
		{"100.128.0.1", true, "allowed"},
		{"2001:db8:1::2", true, "allowed"},
		{"2606:4700::1111", true, "allowed"},
		{"::ffff:8.8.8.8", true, "allowed"},
		{"64:ff9b::808:808", true, "allowed"},
	}
	for _, c := range cases {
		t.Run(c.dst, func(t *testing.T) {
			v := p.Check(netip.MustParseAddr(c.dst))
			if v.Allowed != c.allowed || v.Reason.String() != c.reason {
				t.Fatalf("Check(%s) = {%v %s}, want {%v %s}", c.dst, v.Allowed, v.Reason, c.allowed, c.reason)
			}
		})
	}
}

func TestClientPrefixDenied(t *testing.T) {
	// A public client range is still denied as a destination.
	p := mustNew(t, policy.Config{Clients: prefixes("198.51.100.0/24")})
	if v := p.Check(netip.MustParseAddr("198.51.100.9")); v.Allowed || v.Reason != policy.ReasonClientPrefix {
		t.Fatalf("client address: %+v", v)
	}
	if v := p.Check(netip.MustParseAddr("::ffff:198.51.100.9")); v.Allowed || v.Reason != policy.ReasonClientPrefix {
		t.Fatalf("mapped client address: %+v", v)
	}
}

func TestAllowAndDeny(t *testing.T) {
	p := mustNew(t, policy.Config{
		Clients: prefixes("100.64.0.0/10"),
		Allow:   prefixes("10.20.0.0/16", "169.254.169.254/32", "::ffff:192.168.5.0/120"),
		Deny:    prefixes("10.20.30.0/24", "8.8.8.0/24", "2606:4700::/32"),
	})
	cases := []struct {
		dst     string
		allowed bool
		reason  policy.Reason
	}{
		{"10.20.1.1", true, policy.ReasonAllowList},
		{"::ffff:10.20.1.1", true, policy.ReasonAllowList},
		{"169.254.169.254", true, policy.ReasonAllowList},
		{"169.254.169.253", false, policy.ReasonLinkLocal},
		{"192.168.5.9", true, policy.ReasonAllowList},
		{"192.168.6.9", false, policy.ReasonPrivate},
		{"10.20.30.1", false, policy.ReasonDenyList}, // deny wins over allow
		{"10.21.0.1", false, policy.ReasonPrivate},
		{"8.8.8.8", false, policy.ReasonDenyList},
		{"64:ff9b::808:808", false, policy.ReasonDenyList},
		{"2606:4700::1111", false, policy.ReasonDenyList},
		{"8.8.4.4", true, policy.ReasonAllowed},
	}
	for _, c := range cases {
		v := p.Check(netip.MustParseAddr(c.dst))
		if v.Allowed != c.allowed || v.Reason != c.reason {
			t.Errorf("Check(%s) = {%v %s}, want {%v %s}", c.dst, v.Allowed, v.Reason, c.allowed, c.reason)
		}
	}
}

func TestRefreshHostAddrs(t *testing.T) {
	addrs := []netip.Addr{netip.MustParseAddr("203.0.113.1")}
	var fail error
	p := mustNew(t, policy.Config{HostAddrs: func() ([]netip.Addr, error) { return addrs, fail }})
	a, b := netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("203.0.113.2")
	if p.Check(a).Allowed || !p.Check(b).Allowed {
		t.Fatal("initial host set not applied")
	}
	addrs = []netip.Addr{b}
	if err := p.RefreshHostAddrs(); err != nil {
		t.Fatal(err)
	}
	if !p.Check(a).Allowed || p.Check(b).Allowed {
		t.Fatal("refreshed host set not applied")
	}
	fail = errors.New("netlink gone")
	if err := p.RefreshHostAddrs(); err == nil {
		t.Fatal("refresh error not reported")
	}
	if p.Check(b).Allowed {
		t.Fatal("a failed refresh must keep the previous host set")
	}
	if _, err := policy.New(policy.Config{HostAddrs: func() ([]netip.Addr, error) { return nil, fail }}); err == nil {
		t.Fatal("New must fail when host addresses cannot be read")
	}
}

func TestRealHostAddrs(t *testing.T) {
	// With no HostAddrs, the policy reads this machine's interfaces: it must
	// hold every one of their addresses, and deny each.
	p, err := policy.New(policy.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[netip.Addr]bool{}
	for _, ia := range ifaddrs {
		if n, ok := ia.(*net.IPNet); ok {
			a, _ := netip.AddrFromSlice(n.IP)
			seen[a.Unmap()] = true
		}
	}
	for a := range seen {
		if v := p.Check(a); v.Allowed {
			t.Errorf("host address %s allowed", a)
		}
	}
	if want := fmt.Sprintf(", %d host addresses", len(seen)); !strings.Contains(p.Summary(), want) {
		t.Fatalf("summary %q does not count the %d interface addresses", p.Summary(), len(seen))
	}
}

func TestCheckDoesNotAllocate(t *testing.T) {
	p := mustNew(t, policy.Config{Clients: prefixes("100.64.0.0/10"), Allow: prefixes("10.0.0.0/8")})
	dsts := []netip.Addr{netip.MustParseAddr("8.8.8.8"), netip.MustParseAddr("::ffff:10.1.1.1"), netip.MustParseAddr("2002:7f00:1::1"), netip.MustParseAddr("203.0.113.7")}
	n := testing.AllocsPerRun(1000, func() {
		for _, d := range dsts {
			p.Check(d)
		}
	})
	if n != 0 {
		t.Fatalf("Check allocates %.1f times per run", n)
	}
}

func FuzzCheck(f *testing.F) {
	for _, s := range []string{"127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::1", "2002::1", "fe80::1%eth0", "8.8.8.8"} {
		a := netip.MustParseAddr(s)
		f.Add(a.AsSlice())
	}
	p, err := policy.New(policy.Config{Clients: []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")},
		HostAddrs: func() ([]netip.Addr, error) { return nil, nil }})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		a, ok := netip.AddrFromSlice(b)
		if !ok {
			return
		}
		v := p.Check(a)
		// The IPv4-mapped form never gets a different answer from the
		// plain IPv4 address.
		if a.Is4() {
			m := netip.AddrFrom16(a.As16())
			if w := p.Check(m); w != v {
				t.Fatalf("Check(%s)=%+v but Check(%s)=%+v", a, v, m, w)
			}
		}
		if v.Allowed && (a.Unmap().IsLoopback() || a.Unmap().IsLinkLocalUnicast() || a.Unmap().IsPrivate() || a.Unmap().IsMulticast() || a.Unmap().IsUnspecified()) {
			t.Fatalf("Check(%s) allowed a built-in class", a)
		}
	})
}

func BenchmarkCheck(b *testing.B) {
	p, _ := policy.New(policy.Config{Clients: prefixes("100.64.0.0/10", "fd64::/64")})
	d := netip.MustParseAddr("198.18.1.2")
	b.ReportAllocs()
	for b.Loop() {
		p.Check(d)
	}
}

func TestReasonNames(t *testing.T) {
	seen := map[string]bool{}
	for r := policy.ReasonAllowed; r <= policy.ReasonHostAddress; r++ {
		n := r.String()
		if n == "" || strings.HasPrefix(n, "reason(") || seen[n] {
			t.Errorf("reason %d is named %q", r, n)
		}
		seen[n] = true
	}
	if n := (policy.ReasonHostAddress + 1).String(); n != "reason(14)" {
		t.Errorf("an unknown reason is %q", n)
	}
}
