package admin

import (
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"tcpd/conntrack"
)

// Filter selects rows of GET /v1/conns. The zero Filter selects every row.
type Filter struct {
	// States lists tcpd-side states to keep; empty keeps all.
	States []conntrack.State
	// Src and Dst keep connections whose client or destination address is
	// inside them; an invalid (zero) prefix keeps all.
	Src, Dst netip.Prefix
	// DstPort keeps connections to that port; zero keeps all.
	DstPort uint16
}

// filterParams are the query parameters ParseFilter understands.
var filterParams = []string{"state", "src", "dst", "dport"}

// ParseFilter reads a Filter from the query parameters state (repeated or
// comma-separated, either spelling of conntrack.ParseState), src, dst (an
// address or a prefix) and dport. Every error names the parameter and what
// it allows; `tcpd conns` uses it to check its flags with the same words.
func ParseFilter(q url.Values) (Filter, error) {
	var f Filter
	for name := range q {
		if !slices.Contains(filterParams, name) {
			return Filter{}, fmt.Errorf("unknown parameter %q (allowed: %s)", clip(name), strings.Join(filterParams, ", "))
		}
	}
	for _, v := range q["state"] {
		for name := range strings.SplitSeq(v, ",") {
			name = strings.TrimSpace(name)
			if name == "" {
				continue
			}
			s, ok := conntrack.ParseState(name)
			if !ok {
				return Filter{}, fmt.Errorf("state: %q is not a TCP state (allowed: %s)", clip(name), stateLabels())
			}
			if !slices.Contains(f.States, s) {
				f.States = append(f.States, s)
			}
		}
	}
	var err error
	if f.Src, err = prefixParam(q, "src"); err != nil {
		return Filter{}, err
	}
	if f.Dst, err = prefixParam(q, "dst"); err != nil {
		return Filter{}, err
	}
	if v, ok, err := single(q, "dport"); err != nil {
		return Filter{}, err
	} else if ok {
		p, err := strconv.ParseUint(v, 10, 16)
		if err != nil || p == 0 {
			return Filter{}, fmt.Errorf("dport: %q is not a port (allowed: 1..65535)", clip(v))
		}
		f.DstPort = uint16(p)
	}
	return f, nil
}

// single returns the one value of parameter name, if present.
func single(q url.Values, name string) (string, bool, error) {
	vs := q[name]
	switch len(vs) {
	case 0:
		return "", false, nil
	case 1:
		return vs[0], true, nil
	}
	return "", false, fmt.Errorf("%s: given %d times (allowed: once)", name, len(vs))
}

// prefixParam reads an address (as a one-address prefix) or a prefix. Host
// bits are dropped (10.1.2.3/8 means 10.0.0.0/8), and IPv4-mapped IPv6 is
// read as IPv4, as the table's addresses are compared unmapped.
func prefixParam(q url.Values, name string) (netip.Prefix, error) {
	v, ok, err := single(q, name)
	if err != nil || !ok {
		return netip.Prefix{}, err
	}
	if strings.Contains(v, "/") {
		if p, err := netip.ParsePrefix(v); err == nil {
			if p.Addr().Is4In6() && p.Bits() >= 96 {
				p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
			}
			return p.Masked(), nil
		}
	} else if a, err := netip.ParseAddr(v); err == nil && a.Zone() == "" {
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	return netip.Prefix{}, fmt.Errorf("%s: %q is not an address or prefix (allowed: e.g. 100.64.0.7, 100.64.0.0/10, 2001:db8::/32)", name, clip(v))
}

// maxEcho bounds what an error message repeats of a request: enough to
// recognise a typo, not a way to make tcpd write back whatever it is sent.
const maxEcho = 64

// clip shortens s to at most maxEcho bytes (on a character boundary),
// saying how long it was.
func clip(s string) string {
	if len(s) <= maxEcho {
		return s
	}
	cut := maxEcho
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s… (%d bytes)", s[:cut], len(s))
}

// stateLabels lists the node_exporter spellings, comma-separated.
func stateLabels() string {
	names := make([]string, 0, conntrack.NumStates)
	for s := range conntrack.NumStates {
		names = append(names, s.String())
	}
	return strings.Join(names, ", ")
}

// Match reports whether the filter keeps c; it is the keep function of
// Source.Conns.
func (f Filter) Match(c *conntrack.Conn) bool {
	if len(f.States) > 0 && !slices.Contains(f.States, c.State) {
		return false
	}
	if f.Src.IsValid() && !f.Src.Contains(c.Tuple.Client.Addr().Unmap()) {
		return false
	}
	if f.Dst.IsValid() && !f.Dst.Contains(c.Tuple.Dst.Addr().Unmap()) {
		return false
	}
	if f.DstPort != 0 && c.Tuple.Dst.Port() != f.DstPort {
		return false
	}
	return true
}
