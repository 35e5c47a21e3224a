//go:build linux

package bench

import (
	"context"
	"fmt"
	"math"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"

	"tcpd/internal/netlab"
)

// The WireGuard measurement: a download through a real WireGuard tunnel of
// MTU wgMTU to a client whose SYNs offer MSS wgClientMSS, too big for the
// tunnel, as from a site-to-site peer routing a LAN without clamping. The
// kernel's forwarding delivers it by path-MTU discovery between the real
// ends (the gateway's "fragmentation needed" reaches the server); tcpd,
// which answers from the server's address and never gets that message,
// by clamping the client's MSS (tcp.mss_clamp: auto).
const (
	wgMTU       = 1420
	wgClientMSS = 1460
)

// newWireGuardPath builds a WireGuard lab whose client offers wgClientMSS.
func newWireGuardPath(name, bin string) (*path, error) {
	l, err := netlab.New(netlab.Options{WireGuard: &netlab.WireGuard{GatewayMTU: wgMTU, ClientMTU: wgMTU}})
	if err != nil {
		return nil, err
	}
	p := l.Peers[0]
	h := p.NS.Netlink()
	link, err := h.LinkByName(p.Link)
	if err == nil {
		err = h.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Scope: netlink.SCOPE_LINK, AdvMSS: wgClientMSS,
			Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}})
	}
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("client route with advmss %d: %w", wgClientMSS, err)
	}
	return &path{name: name, bin: bin, lab: l, srcs: []netip.Addr{l.ClientAddr4}}, nil
}

// wireguardPhase runs the WireGuard download cfg.Runs times on the kernel
// path and on tcpd, interleaved, with a tcpd of its own.
func (b *bencher) wireguardPhase(ctx context.Context, kernel, tcpd *path) (err error) {
	b.notef("wireguard: a download through a WireGuard tunnel of MTU %d (userspace WireGuard, the wireguard module's device package, at both ends) "+
		"to a client offering MSS %d; the kernel path relies on path-MTU discovery, tcpd on its MSS clamp", wgMTU, wgClientMSS)
	if err := b.startTCPD(ctx, tcpd, "tcpd-wireguard", mainTimeWait); err != nil {
		return err
	}
	defer func() {
		if m, serr := tcpd.scrape(ctx); serr == nil {
			b.record("wg_clamped", tcpd.name, m.sum("tcpd_tcp_mss_clamped_total"))
		}
		b.stopTCPD(tcpd, "tcpd wireguard")
	}()
	paths := []*path{kernel, tcpd}
	for _, p := range paths {
		if err := b.check(ctx, p); err != nil {
			return err
		}
	}
	for rep := range b.cfg.Runs {
		k := rep % len(paths)
		for _, p := range append(slices.Clone(paths[k:]), paths[:k]...) {
			err := b.measure(ctx, p, "wireguard download", rep, func() error {
				r, err := b.bulk(ctx, p, false, 1, fmt.Sprintf("%s-wireguard-%d", p.name, rep+1))
				if err != nil {
					b.record("wg_down", p.name, math.NaN())
					return err
				}
				b.record("wg_down", p.name, r.gbps())
				msg := fmt.Sprintf("%.2f Gbit/s (%d MB in %.1fs)", r.gbps(), r.bytes/1e6, r.dur.Seconds())
				if p.tcpd != nil {
					b.record("wg_cpu", p.name, r.cpuPerGB())
					msg += fmt.Sprintf(", tcpd %.2f CPU s/GB", r.cpuPerGB())
				}
				b.progress("%-6s %-26s run %d: %s", p.name, "wireguard download", rep+1, msg)
				return nil
			})
			if err != nil {
				return err
			}
		}
	}
	return nil
}
