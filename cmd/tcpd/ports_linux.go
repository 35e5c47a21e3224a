package main

import (
	"fmt"
	"os"
	"strings"
)

// readPortSysctls reads net.ipv4.tcp_tw_reuse and
// net.ipv4.ip_local_port_range of tcpd's network namespace.
func readPortSysctls() (portSysctls, error) {
	var k portSysctls
	b, err := os.ReadFile("/proc/sys/net/ipv4/tcp_tw_reuse")
	if err != nil {
		return k, err
	}
	if _, err := fmt.Sscan(strings.TrimSpace(string(b)), &k.twReuse); err != nil {
		return k, fmt.Errorf("net.ipv4.tcp_tw_reuse: %w", err)
	}
	b, err = os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return k, err
	}
	if _, err := fmt.Sscan(string(b), &k.lo, &k.hi); err != nil {
		return k, fmt.Errorf("net.ipv4.ip_local_port_range: %w", err)
	}
	return k, nil
}
