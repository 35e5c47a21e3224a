//go:build linux

package e2e_test

import (
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"tcpd/internal/netlab"
)

// mssTUNMTU is the TUN's MTU in TestRobustMSS; the lab's veths keep 1500.
const mssTUNMTU = 1280

// TestRobustMSS checks the MSS tcpd advertises and the segments it sends
// with a TUN MTU (1280) below the links' (1500). Its SYN-ACK must offer
// MTU - 40 (1240) over IPv4 and MTU - 60 (1220) over IPv6 whatever the
// client's SYN offered (536, or no option at all); its data segments must
// respect the client's MSS (536, from a route with advmss 536) and, by
// default, the TUN's MTU. Segments are seen on the client's veth; the
// virtio-net header the sniffer asks for gives the segment size of the GSO
// super-packets that veths pass along whole.
func TestRobustMSS(t *testing.T) {
	g := startGateway(t, netlab.Options{}, gwConfig{MTU: mssTUNMTU, Metrics: true})
	port := serve(t, g.Server, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(30 * time.Second))
		var b [1]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return
		}
		if b[0] == 'd' { // download: send 4 MiB
			io.Copy(c, stream(9, 4*mib))
			return
		}
		io.Copy(io.Discard, c)
	})
	sn := startSniffer(t, g)
	raw := newRawSender(t, g)

	t.Run("SYN-ACK", func(t *testing.T) {
		// From the client's own addresses, on ports it has no socket on:
		// the client's kernel resets the SYN-ACKs, which ends the
		// handshakes at once.
		cases := []struct {
			name string
			src  netip.AddrPort
			dst  netip.Addr
			opts []byte
			want int
		}{
			{"IPv4, MSS 536", netip.AddrPortFrom(g.ClientAddr4, 40001), g.ServerAddr4, mssOption(536), mssTUNMTU - 40},
			{"IPv4, no MSS option", netip.AddrPortFrom(g.ClientAddr4, 40002), g.ServerAddr4, nil, mssTUNMTU - 40},
			{"IPv6, MSS 536", netip.AddrPortFrom(g.ClientAddr6, 40003), g.ServerAddr6, mssOption(536), mssTUNMTU - 60},
			{"IPv6, no MSS option", netip.AddrPortFrom(g.ClientAddr6, 40004), g.ServerAddr6, nil, mssTUNMTU - 60},
		}
		for _, c := range cases {
			raw.send(t, buildSYN(c.src, netip.AddrPortFrom(c.dst, uint16(port)), 1000, c.opts))
		}
		for _, c := range cases {
			var synAck *tcpSegment
			waitFor(5*time.Second, func() bool {
				for _, s := range sn.segments() {
					if s.dst == c.src && s.flags == header.TCPFlagSyn|header.TCPFlagAck {
						synAck = &s
						return true
					}
				}
				return false
			})
			if synAck == nil {
				t.Errorf("%s: no SYN-ACK from tcpd within 5s", c.name)
				continue
			}
			t.Logf("%s: SYN-ACK offers MSS %d", c.name, synAck.mss)
			if synAck.mss != c.want {
				t.Errorf("%s: tcpd's SYN-ACK offers MSS %d, want %d (TUN MTU %d)", c.name, synAck.mss, c.want, mssTUNMTU)
			}
		}
	})

	// transfer downloads and uploads 4 MiB and returns the largest segment
	// tcpd sent on that connection, and how many data segments it sent.
	transfer := func(t *testing.T) (largest, segs, gso int) {
		t.Helper()
		addr := net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port))
		for _, mode := range []byte{'d', 'u'} {
			c, err := g.Client.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(30 * time.Second))
			local := netip.MustParseAddrPort(c.LocalAddr().String())
			c.Write([]byte{mode})
			if mode == 'd' {
				if n, err := io.Copy(io.Discard, c); err != nil || n != 4*mib {
					t.Fatalf("download: %d bytes, %v", n, err)
				}
			} else {
				if _, err := io.Copy(c, stream(9, 4*mib)); err != nil {
					t.Fatalf("upload: %v", err)
				}
			}
			c.Close()
			time.Sleep(200 * time.Millisecond) // the sniffer's last packets
			for _, s := range sn.segments() {
				if s.dst != local || s.payload == 0 {
					continue
				}
				segs++
				if s.gsoSize > 0 {
					gso++
				}
				largest = max(largest, s.segSize())
			}
		}
		return largest, segs, gso
	}

	t.Run("client MSS 536", func(t *testing.T) {
		setClientRoute(t, g, 536)
		defer setClientRoute(t, g, 0)
		largest, segs, gso := transfer(t)
		t.Logf("with the client's MSS at 536: %d data segments from tcpd (%d GSO super-packets), the largest %d bytes", segs, gso, largest)
		if segs == 0 {
			t.Fatal("no data segment from tcpd seen on the client's veth")
		}
		if largest > 536 {
			t.Errorf("tcpd sent a %d-byte segment to a client whose MSS is 536", largest)
		}
	})

	t.Run("default", func(t *testing.T) {
		largest, segs, gso := transfer(t)
		t.Logf("with the client's MSS at 1460 (its link's MTU): %d data segments from tcpd (%d GSO super-packets), the largest %d bytes", segs, gso, largest)
		if segs == 0 {
			t.Fatal("no data segment from tcpd seen on the client's veth")
		}
		if largest > mssTUNMTU-40 {
			t.Errorf("tcpd sent a %d-byte segment, more than its TUN's MTU allows (%d)", largest, mssTUNMTU-40)
		}
	})
}

// setClientRoute replaces the client's IPv4 default route with one whose
// advmss is mss (0: none), so that the client's SYNs offer that MSS.
func setClientRoute(t *testing.T, g *gateway, mss int) {
	t.Helper()
	if err := g.Client.Do(func() error {
		l, err := netlink.LinkByName(g.ClientLink)
		if err != nil {
			return err
		}
		return netlink.RouteReplace(&netlink.Route{
			LinkIndex: l.Attrs().Index,
			Dst:       &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
			Gw:        g.GatewayClientAddr4.AsSlice(),
			AdvMSS:    mss,
		})
	}); err != nil {
		t.Fatalf("client default route with advmss %d: %v", mss, err)
	}
}
