package admin

import (
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"testing"

	"tcpd/conntrack"
)

// maxFilterError bounds an error of ParseFilter: fixed words, the list of
// what is allowed, and at most maxEcho bytes of the request (clip), quoted
// (%q writes a byte as at most four: \xbc).
var maxFilterError = 200 + len(stateLabels()) + len(groupNames()) + 4*maxEcho + len(`""… (4294967296 bytes)`)

// FuzzParseFilter feeds GET /v1/conns's query string, as a client of the
// admin socket sends it, to ParseFilter: it never panics, an error repeats
// no more than maxEcho bytes of the request, and a filter it accepts keeps
// a connection that has what it asks for and drops one that differs in any
// single thing it asks for.
func FuzzParseFilter(f *testing.F) {
	for _, s := range []string{
		"", "state=established", "state=ESTABLISHED,time-wait&state=close_wait", "src=100.64.0.7",
		"dst=10.1.2.3/8&dport=443", "src=::ffff:100.64.0.7", "dst=::ffff:10.0.0.0/104", "dport=0",
		"dport=65536", "state=bogus", "src=fe80::1%25eth0", "x=1", "dport=1&dport=2", "state=%ff%fe",
		"src=" + strings.Repeat("9", 500), "client_state=fin_wait2&sport=40000", "sport=0", "client_state=x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return // net/http answers 400 before the handler
		}
		flt, err := ParseFilter(q)
		if err != nil {
			if n := len(err.Error()); n > maxFilterError {
				t.Fatalf("error of %d bytes (at most %d): %.300s…", n, maxFilterError, err)
			}
			return
		}
		// A connection with every property the filter asks for.
		c := conntrack.Conn{
			State: conntrack.StateEstablished,
			Tuple: conntrack.Tuple{
				Client: netip.AddrPortFrom(netip.MustParseAddr("100.64.0.7"), 40000),
				Dst:    netip.AddrPortFrom(netip.MustParseAddr("198.18.0.1"), 443),
			},
		}
		if len(flt.States) > 0 {
			c.State = flt.States[0]
		}
		if len(flt.ClientStates) > 0 {
			c.ClientState = flt.ClientStates[0]
		}
		if flt.Src.IsValid() {
			c.Tuple.Client = netip.AddrPortFrom(flt.Src.Addr(), 40000)
		}
		if flt.SrcPort != 0 {
			c.Tuple.Client = netip.AddrPortFrom(c.Tuple.Client.Addr(), flt.SrcPort)
		}
		if flt.Dst.IsValid() {
			c.Tuple.Dst = netip.AddrPortFrom(flt.Dst.Addr(), c.Tuple.Dst.Port())
		}
		if flt.DstPort != 0 {
			c.Tuple.Dst = netip.AddrPortFrom(c.Tuple.Dst.Addr(), flt.DstPort)
		}
		if !flt.Match(&c) {
			t.Fatalf("filter %+v from %q drops %+v, which has all it asks for", flt, raw, c)
		}
		// Each property it asks for, changed alone, drops the connection.
		if s, ok := stateOutside(flt.States); ok {
			d := c
			d.State = s
			if flt.Match(&d) {
				t.Fatalf("filter %+v from %q keeps state %v", flt, raw, d.State)
			}
		}
		if s, ok := stateOutside(flt.ClientStates); ok {
			d := c
			d.ClientState = s
			if flt.Match(&d) {
				t.Fatalf("filter %+v from %q keeps client state %v", flt, raw, d.ClientState)
			}
		}
		if flt.SrcPort != 0 {
			d := c
			d.Tuple.Client = netip.AddrPortFrom(c.Tuple.Client.Addr(), flt.SrcPort^1)
			if flt.Match(&d) {
				t.Fatalf("filter %+v from %q keeps client port %d", flt, raw, flt.SrcPort^1)
			}
		}
		if flt.Src.IsValid() && flt.Src.Bits() > 0 {
			d := c
			d.Tuple.Client = netip.AddrPortFrom(outside(flt.Src), 40000)
			if flt.Match(&d) {
				t.Fatalf("filter %+v from %q keeps client %v", flt, raw, d.Tuple.Client)
			}
		}
		if flt.Dst.IsValid() && flt.Dst.Bits() > 0 {
			d := c
			d.Tuple.Dst = netip.AddrPortFrom(outside(flt.Dst), c.Tuple.Dst.Port())
			if flt.Match(&d) {
				t.Fatalf("filter %+v from %q keeps destination %v", flt, raw, d.Tuple.Dst)
			}
		}
		if flt.DstPort != 0 {
			d := c
			d.Tuple.Dst = netip.AddrPortFrom(c.Tuple.Dst.Addr(), flt.DstPort^1)
			if flt.Match(&d) {
				t.Fatalf("filter %+v from %q keeps port %d", flt, raw, flt.DstPort^1)
			}
		}
	})
}

// stateOutside returns a state not in states, if states selects some
// but not all.
func stateOutside(states []conntrack.State) (conntrack.State, bool) {
	if len(states) == 0 {
		return 0, false
	}
	for s := range conntrack.NumStates {
		if !slices.Contains(states, s) {
			return s, true
		}
	}
	return 0, false
}

// outside returns an address of p's family just outside p (its first
// address with the last bit of the prefix flipped).
func outside(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	bit := p.Bits() - 1
	b[bit/8] ^= 0x80 >> (bit % 8)
	a, _ := netip.AddrFromSlice(b)
	return a
}
