package main

import (
	"fmt"
	"net/netip"
)

// The kernel picks the local port of every upstream connection from
// net.ipv4.ip_local_port_range (both families), one source address's range
// per destination address and port. An upstream connection tcpd closes
// first (the client closed first) keeps its port in the kernel's TIME_WAIT
// for 60 s, and unless net.ipv4.tcp_tw_reuse is 1 a new connection to the
// same destination cannot take it: rounds of short connections to one
// destination then make connect search ever longer for a port, until it
// fails with EADDRNOTAVAIL.

// portSysctls are the kernel settings portWarnings reads.
type portSysctls struct {
	// twReuse is net.ipv4.tcp_tw_reuse: 0 off, 1 on, 2 loopback only
	// (Linux's default).
	twReuse int
	// lo and hi are net.ipv4.ip_local_port_range.
	lo, hi int
}

// portWarnings says what an operator should change so that upstream
// connections to one destination do not run out of local ports: one
// warning per setting, each naming its value and what to set.
func portWarnings(k portSysctls, sources []netip.Addr, maxConns int) []string {
	var out []string
	if k.twReuse != 1 {
		out = append(out, fmt.Sprintf("net.ipv4.tcp_tw_reuse is %d: the upstream connections tcpd closes first keep their local port "+
			"in the kernel's TIME_WAIT for 60 s, and a new connection to the same destination cannot reuse it, so many short "+
			"connections to one destination slow down and then fail (EADDRNOTAVAIL); set net.ipv4.tcp_tw_reuse=1 "+
			"(sysctl -w, and in /etc/sysctl.d/)", k.twReuse))
	}
	ports := k.hi - k.lo + 1
	n := max(count4(sources), 1)
	if k.hi > 0 && ports*n < maxConns/2 {
		out = append(out, fmt.Sprintf("net.ipv4.ip_local_port_range is %d %d: %d local ports per source address, so at most %d "+
			"connections to one destination at once (limits.max_connections is %d); widen it "+
			"(net.ipv4.ip_local_port_range=\"1024 65535\") or list more upstream.source_addresses",
			k.lo, k.hi, ports, ports*n, maxConns))
	}
	return out
}

// count4 counts the IPv4 addresses among addrs.
func count4(addrs []netip.Addr) int {
	n := 0
	for _, a := range addrs {
		if a.Is4() {
			n++
		}
	}
	return n
}
