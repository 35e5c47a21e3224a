package main

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"strings"
	"testing"

	"tcpd/stack"
)

func TestPortWarnings(t *testing.T) {
	two := []netip.Addr{netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("198.51.100.2"), netip.MustParseAddr("2001:db8::1")}
	for _, tc := range []struct {
		name    string
		k       portSysctls
		sources []netip.Addr
		want    []string // a substring of each warning, in order
	}{
		{"Linux's defaults", portSysctls{twReuse: 2, lo: 32768, hi: 60999}, nil, []string{
			"net.ipv4.tcp_tw_reuse is 2: ",
			"net.ipv4.ip_local_port_range is 32768 60999: 28232 local ports per source address",
		}},
		{"tcp_tw_reuse off", portSysctls{twReuse: 0, lo: 1024, hi: 65535}, nil, []string{
			"net.ipv4.tcp_tw_reuse is 0: the upstream connections tcpd closes first keep their local port in the kernel's TIME_WAIT",
		}},
		{"as README advises", portSysctls{twReuse: 1, lo: 1024, hi: 65535}, nil, nil},
		{"a narrow range", portSysctls{twReuse: 1, lo: 40000, hi: 40999}, nil, []string{
			"net.ipv4.ip_local_port_range is 40000 40999: 1000 local ports per source address, so at most 1000 connections",
		}},
		{"a narrow range, two IPv4 source addresses", portSysctls{twReuse: 1, lo: 40000, hi: 49999}, two, []string{
			"at most 20000 connections to one destination at once (limits.max_connections is 65536)",
		}},
		{"wide enough with two source addresses", portSysctls{twReuse: 1, lo: 32768, hi: 60999}, two, nil},
	} {
		got := portWarnings(tc.k, tc.sources, 65536)
		if len(got) != len(tc.want) {
			t.Errorf("%s: %d warnings %q, want %d", tc.name, len(got), got, len(tc.want))
			continue
		}
		for i, w := range tc.want {
			if !strings.Contains(got[i], w) {
				t.Errorf("%s: warning %q lacks %q", tc.name, got[i], w)
			}
		}
	}
}

func TestSourceAddressesParsed(t *testing.T) {
	c, err := parseConfig([]byte("upstream:\n  source_addresses: [198.51.100.7, \"2001:db8::7\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Addr{netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("2001:db8::7")}
	if got := c.stack.SourceAddresses; len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("source addresses %v, want %v", got, want)
	}
}

// TestSourceAddressErrorNamesKey: a source address the host does not have,
// which only the stack can find (at start and at every reload), is
// reported against upstream.source_addresses.
func TestSourceAddressErrorNamesKey(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("source addresses need Linux")
	}
	// stack.New checks the tunables before it creates anything.
	_, err := stack.New(stack.Config{
		Clients:  []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")},
		Tunables: stack.Tunables{SourceAddresses: []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("198.51.100.10")}},
	})
	if err == nil {
		t.Fatal("stack.New accepted 198.51.100.10 (TEST-NET-2) as an address of this host")
	}
	if got, want := keyedStackError(err).Error(), "upstream.source_addresses: 198.51.100.10 is not an address of this host"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	other := errors.New("stack: no client prefixes configured")
	if got := keyedStackError(other); got != other {
		t.Errorf("an error without a key became %q", got)
	}
}

// TestInterfaceErrorNamesKey: an upstream interface the host does not
// have, which only the stack can find (at start and at every reload), is
// reported against upstream.interface.
func TestInterfaceErrorNamesKey(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("upstream interfaces need Linux")
	}
	name := fmt.Sprintf("tcpdnx%08x", rand.Uint32())
	// stack.New checks the tunables before it creates anything.
	_, err := stack.New(stack.Config{
		Clients:  []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")},
		Tunables: stack.Tunables{Interface: name},
	})
	if err == nil {
		t.Fatalf("stack.New accepted %s, which the host does not have, as the upstream interface", name)
	}
	want := fmt.Sprintf(`upstream.interface: %q is not an interface of this host (allowed: an existing interface, or "" for none)`, name)
	if got := keyedStackError(err).Error(); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
