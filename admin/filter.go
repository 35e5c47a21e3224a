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
	// States lists tcpd-side states to keep, ClientStates the client's;
	// empty keeps all.
	States, ClientStates []conntrack.State
	// Src and Dst keep connections whose client or destination address is
	// inside them; an invalid (zero) prefix keeps all.
	Src, Dst netip.Prefix
	// SrcPort and DstPort keep connections from that client port or to
	// that destination port; zero keeps all.
	SrcPort, DstPort uint16
}

// filterParams are the query parameters ParseFilter understands.
var filterParams = []string{"state", "client_state", "src", "dst", "sport", "dport"}

// ParseFilter reads a Filter from the query parameters state and
// client_state (repeated or comma-separated, either spelling of
// conntrack.ParseState), src, dst (an address or a prefix), sport and
// dport. Every error names the parameter and what it allows; `tcpd conns`
// uses it to check its flags with the same words.
func ParseFilter(q url.Values) (Filter, error) {
	var f Filter
	for name := range q {
		if !slices.Contains(filterParams, name) {
			return Filter{}, fmt.Errorf("unknown parameter %q (allowed: %s)", clip(name), strings.Join(filterParams, ", "))
		}
	}
	var err error
	if f.States, err = statesParam(q, "state"); err != nil {
		return Filter{}, err
	}
	if f.ClientStates, err = statesParam(q, "client_state"); err != nil {
		return Filter{}, err
	}
	if f.Src, err = prefixParam(q, "src"); err != nil {
		return Filter{}, err
	}
	if f.Dst, err = prefixParam(q, "dst"); err != nil {
		return Filter{}, err
	}
	if f.SrcPort, err = portParam(q, "sport"); err != nil {
		return Filter{}, err
	}
	if f.DstPort, err = portParam(q, "dport"); err != nil {
		return Filter{}, err
	}
	return f, nil
}

// String gives f as the query it is parsed from, for the log.
func (f Filter) String() string {
	q := url.Values{}
	for _, st := range f.States {
		q.Add("state", st.String())
	}
	for _, st := range f.ClientStates {
		q.Add("client_state", st.String())
	}
	if f.Src.IsValid() {
		q.Set("src", f.Src.String())
	}
	if f.Dst.IsValid() {
		q.Set("dst", f.Dst.String())
	}
	if f.SrcPort != 0 {
		q.Set("sport", strconv.Itoa(int(f.SrcPort)))
	}
	if f.DstPort != 0 {
		q.Set("dport", strconv.Itoa(int(f.DstPort)))
	}
	return q.Encode()
}

// IsZero reports whether f keeps every row.
func (f Filter) IsZero() bool {
	return len(f.States) == 0 && len(f.ClientStates) == 0 && !f.Src.IsValid() && !f.Dst.IsValid() && f.SrcPort == 0 && f.DstPort == 0
}

// stateGroups are ss's state filters that name several states (ss(8),
// STATE-FILTER).
var stateGroups = []struct {
	name   string
	states func(conntrack.State) bool
}{
	{"all", func(conntrack.State) bool { return true }},
	{"connected", func(s conntrack.State) bool { return s != conntrack.StateListen && s != conntrack.StateClosed }},
	{"synchronized", func(s conntrack.State) bool {
		return s != conntrack.StateListen && s != conntrack.StateClosed && s != conntrack.StateSynSent
	}},
	{"bucket", func(s conntrack.State) bool { return s == conntrack.StateSynRecv || s == conntrack.StateTimeWait }},
	{"big", func(s conntrack.State) bool { return s != conntrack.StateSynRecv && s != conntrack.StateTimeWait }},
}

// statesParam reads the states of parameter name, repeated or
// comma-separated: state names, or ss's groups of them.
func statesParam(q url.Values, name string) ([]conntrack.State, error) {
	var states []conntrack.State
	add := func(s conntrack.State) {
		if !slices.Contains(states, s) {
			states = append(states, s)
		}
	}
	for _, v := range q[name] {
	labels:
		for label := range strings.SplitSeq(v, ",") {
			label = strings.TrimSpace(label)
			if label == "" {
				continue
			}
			if s, ok := conntrack.ParseState(label); ok {
				add(s)
				continue
			}
			for _, g := range stateGroups {
				if strings.EqualFold(label, g.name) {
					for s := range conntrack.NumStates {
						if g.states(s) {
							add(s)
						}
					}
					continue labels
				}
			}
			return nil, fmt.Errorf("%s: %q is not a TCP state (allowed: %s, or the groups %s)", name, clip(label), stateLabels(), groupNames())
		}
	}
	if _, given := q[name]; given && len(states) == 0 {
		// An empty value ("state=", a shell variable that was not set)
		// would otherwise select every connection.
		return nil, fmt.Errorf("%s: empty (allowed: %s, or the groups %s)", name, stateLabels(), groupNames())
	}
	return states, nil
}

// groupNames lists stateGroups, comma-separated.
func groupNames() string {
	names := make([]string, len(stateGroups))
	for i, g := range stateGroups {
		names[i] = g.name
	}
	return strings.Join(names, ", ")
}

// portParam reads the port of parameter name; 0 when absent.
func portParam(q url.Values, name string) (uint16, error) {
	v, ok, err := single(q, name)
	if err != nil || !ok {
		return 0, err
	}
	p, err := strconv.ParseUint(v, 10, 16)
	if err != nil || p == 0 {
		return 0, fmt.Errorf("%s: %q is not a port (allowed: 1..65535)", name, clip(v))
	}
	return uint16(p), nil
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
	if len(f.ClientStates) > 0 && !slices.Contains(f.ClientStates, c.ClientState) {
		return false
	}
	if f.Src.IsValid() && !f.Src.Contains(c.Tuple.Client.Addr().Unmap()) {
		return false
	}
	if f.Dst.IsValid() && !f.Dst.Contains(c.Tuple.Dst.Addr().Unmap()) {
		return false
	}
	if f.SrcPort != 0 && c.Tuple.Client.Port() != f.SrcPort {
		return false
	}
	if f.DstPort != 0 && c.Tuple.Dst.Port() != f.DstPort {
		return false
	}
	return true
}
