package stack

import (
	"errors"
	"hash/maphash"
	"net/netip"
	"runtime"
	"testing"
	"time"
)

func TestSourceFor(t *testing.T) {
	a4, b4 := netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.2")
	a6 := netip.MustParseAddr("2001:db8::1")
	addrs := []netip.Addr{a4, a6, b4}
	seed := maphash.MakeSeed()
	dst4 := netip.MustParseAddrPort("203.0.113.9:443")
	dst6 := netip.MustParseAddrPort("[2001:db8:9::9]:443")
	client := netip.MustParseAddr("100.64.1.2")

	counts := map[netip.Addr]int{}
	const n = 4000
	for port := range n {
		c := netip.AddrPortFrom(client, uint16(20000+port))
		src := sourceFor(addrs, seed, c, dst4)
		counts[src]++
		if again := sourceFor(addrs, seed, c, dst4); again != src {
			t.Fatalf("the same connection got %s, then %s", src, again)
		}
	}
	if len(counts) != 2 || counts[a4] < n*4/10 || counts[b4] < n*4/10 {
		t.Errorf("connections to one IPv4 destination spread %v over the IPv4 source addresses; want about half each", counts)
	}
	if got := sourceFor(addrs, seed, netip.MustParseAddrPort("[fd64::2]:5000"), dst6); got != a6 {
		t.Errorf("IPv6 destination got source %s, want %s", got, a6)
	}
	// An IPv4-mapped destination is IPv4.
	mapped := netip.AddrPortFrom(netip.AddrFrom16(dst4.Addr().As16()), 443)
	if got := sourceFor(addrs, seed, netip.AddrPortFrom(client, 1), mapped); !got.Is4() {
		t.Errorf("IPv4-mapped destination got source %s", got)
	}
	if got := sourceFor([]netip.Addr{a6}, seed, netip.AddrPortFrom(client, 1), dst4); got.IsValid() {
		t.Errorf("no IPv4 source configured, got %s; want none (the kernel's choice)", got)
	}
}

func TestCheckSourceAddresses(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("source addresses need Linux")
	}
	if err := checkSourceAddresses([]netip.Addr{netip.MustParseAddr("127.0.0.1")}); err != nil {
		t.Errorf("loopback, an address of this host: %v", err)
	}
	// 192.0.2.0/24 is TEST-NET-1 (RFC 5737): no host has it.
	err := checkSourceAddresses([]netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("192.0.2.77")})
	if err == nil {
		t.Fatal("192.0.2.77 accepted as an address of this host")
	}
	var se *SourceAddressError
	if !errors.As(err, &se) || !se.NotLocal || se.Addr != netip.MustParseAddr("192.0.2.77") {
		t.Errorf("error %#v, want a SourceAddressError for 192.0.2.77, not local", err)
	}
	if want := "source address 192.0.2.77 is not an address of this host"; err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
}

// TestSetTunablesRejectsForeignSource: a reload naming a source address the
// host does not have is refused and changes nothing.
func TestSetTunablesRejectsForeignSource(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("source addresses need Linux")
	}
	h := newHarness(t, Config{}, clientAddr)
	tune := h.s.Tunables()
	tune.SourceAddresses = []netip.Addr{netip.MustParseAddr("192.0.2.77")}
	tune.DialTimeout = 3 * time.Second
	if err := h.s.SetTunables(tune); err == nil {
		t.Fatal("SetTunables accepted a source address the host does not have")
	}
	if got := h.s.Tunables(); len(got.SourceAddresses) != 0 || got.DialTimeout == 3*time.Second {
		t.Fatalf("a refused SetTunables changed the settings: %+v", got)
	}
	tune.SourceAddresses = []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	if err := h.s.SetTunables(tune); err != nil {
		t.Fatalf("SetTunables with loopback as the source: %v", err)
	}
}
