//go:build linux

package e2e_test

import (
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"tcpd/internal/netlab"
)

// TestIPv6ExtensionHeaders connects a real kernel client whose packets carry
// IPv6 hop-by-hop and destination options headers (RFC 8200 allows them on
// any packet; here padding only), with the TUN's offload on and off: the
// connection must work as without them. Before, tcpd refused it with RST
// (offload on: the SYN was untracked) or dropped its SYN as unverifiable
// (offload off).
func TestIPv6ExtensionHeaders(t *testing.T) {
	for _, offload := range []string{"auto", "off"} {
		t.Run("offload="+offload, func(t *testing.T) {
			t.Parallel()
			g := startGateway(t, netlab.Options{}, gwConfig{Metrics: true, Offload: offload, LogLevel: "info"})
			port := serve(t, g.Server, func(c net.Conn) {
				c.SetDeadline(time.Now().Add(10 * time.Second))
				buf := make([]byte, 64)
				n, _ := c.Read(buf)
				c.Write(buf[:n])
			})
			before := sample(t, g)
			pad := []byte{0, 0, 1, 4, 0, 0, 0, 0} // the kernel fills in the first two bytes
			var c net.Conn
			err := g.Client.Do(func() (err error) {
				d := net.Dialer{
					Timeout: 5 * time.Second,
					Control: func(_, _ string, rc syscall.RawConn) error {
						var serr error
						if err := rc.Control(func(fd uintptr) {
							if serr = unix.SetsockoptString(int(fd), unix.IPPROTO_IPV6, unix.IPV6_HOPOPTS, string(pad)); serr == nil {
								serr = unix.SetsockoptString(int(fd), unix.IPPROTO_IPV6, unix.IPV6_DSTOPTS, string(pad))
							}
						}); err != nil {
							return err
						}
						return serr
					},
				}
				c, err = d.Dial("tcp6", net.JoinHostPort(g.ServerAddr6.String(), fmt.Sprint(port)))
				return err
			})
			if err != nil {
				m := sample(t, g)
				t.Fatalf("connect with extension headers: %v; tcpd dropped %v", err, nonZero(m, "tcpd_dropped_total"))
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 5)
			if _, err := c.Read(buf); err != nil || string(buf) != "hello" {
				t.Fatalf("echo: %q, %v", buf, err)
			}
			m := sample(t, g)
			for _, k := range []string{`tcpd_dropped_total{reason="untracked"}`, `tcpd_dropped_total{reason="unverifiable"}`, "tcpd_conntrack_untracked_segments_total"} {
				if d := m[k] - before[k]; d != 0 {
					t.Errorf("%s rose by %v, want 0", k, d)
				}
			}
		})
	}
}
