package stack

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// createTUN creates the TUN device, gives it its addresses and transmit
// queue length through netlink and brings it up. What it could not set
// without harm to the data path is logged.
func createTUN(cfg TUNConfig, log *zap.Logger) (tun.Device, error) {
	var (
		dev tun.Device
		err error
	)
	switch cfg.Offload {
	case OffloadOff:
		dev, err = createPlainTUN(cfg.Name, cfg.MTU)
	default:
		dev, err = tun.CreateTUN(cfg.Name, cfg.MTU)
		if err == nil && cfg.Offload == OffloadOn && dev.BatchSize() <= 1 {
			dev.Close()
			err = errors.New("the kernel did not accept the virtio-net header offloads (tun.offload: on)")
		}
	}
	if err != nil {
		return nil, fmt.Errorf("create TUN %s: %w", cfg.Name, err)
	}
	if err := configureTUN(cfg, log); err != nil {
		dev.Close()
		return nil, err
	}
	return dev, nil
}

// createPlainTUN opens a TUN without the virtio-net header: one packet per
// read and write, for kernels or setups where offload is unwanted.
func createPlainTUN(name string, mtu int) (tun.Device, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF: %w", err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return tun.CreateTUNFromFile(os.NewFile(uintptr(fd), "/dev/net/tun"), mtu)
}

// configureTUN sets the queue length, the addresses and the up flag, and
// turns off reverse-path filtering on the device: tcpd answers from the
// destinations' addresses, which the kernel would otherwise expect on
// another interface. It also keeps the kernel from sending its own IPv6
// control packets into the device (quietIPv6).
func configureTUN(cfg TUNConfig, log *zap.Logger) error {
	l, err := netlink.LinkByName(cfg.Name)
	if err != nil {
		return fmt.Errorf("find TUN %s: %w", cfg.Name, err)
	}
	if err := netlink.LinkSetTxQLen(l, cfg.TxQueueLen); err != nil {
		return fmt.Errorf("set txqueuelen %d on %s: %w", cfg.TxQueueLen, cfg.Name, err)
	}
	for _, p := range cfg.Addresses {
		a := &netlink.Addr{IPNet: netlink.NewIPNet(p.Addr().AsSlice())}
		a.IPNet.Mask = netMask(p)
		if p.Addr().Is6() {
			// No duplicate address detection on a point-to-point device:
			// it would hold the address tentative for a second or more.
			a.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrReplace(l, a); err != nil {
			return fmt.Errorf("add address %s to %s: %w", p, cfg.Name, err)
		}
	}
	if err := setRPFilter(l, 0); err != nil {
		return fmt.Errorf("disable rp_filter on %s: %w", cfg.Name, err)
	}
	// While the device is down, in this order: the silent leave needs
	// multicast still on.
	if err := quietIPv6(cfg.Name); err != nil {
		log.Debug("the kernel may send IPv6 control packets into the TUN, which tcpd ignores", zap.Error(err))
	}
	if err := netlink.LinkSetMulticastOff(l); err != nil {
		return fmt.Errorf("turn multicast off on %s: %w", cfg.Name, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("bring %s up: %w", cfg.Name, err)
	}
	return nil
}

// ipv4DevconfRPFilter is IPV4_DEVCONF_RP_FILTER (linux/ip.h), the index of
// net.ipv4.conf.<dev>.rp_filter among a device's IPv4 settings.
const ipv4DevconfRPFilter = 8

// setRPFilter sets net.ipv4.conf.<link>.rp_filter over rtnetlink
// (IFLA_AF_SPEC > AF_INET > IFLA_INET_CONF), which needs CAP_NET_ADMIN
// only, where writing /proc/sys needs it mounted writable: a container
// runtime (and systemd's ProtectKernelTunables) mounts it read-only.
func setRPFilter(l netlink.Link, v uint32) error {
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(l.Attrs().Index)
	req.AddData(msg)
	spec := nl.NewRtAttr(unix.IFLA_AF_SPEC, nil)
	conf := spec.AddRtAttr(unix.AF_INET, nil).AddRtAttr(unix.IFLA_INET_CONF, nil)
	conf.AddRtAttr(ipv4DevconfRPFilter, nl.Uint32Attr(v))
	req.AddData(spec)
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// quietIPv6 keeps the kernel from originating IPv6 control traffic on the
// TUN, which is still down: no router solicitations (accept_ra,
// router_solicitations), and no MLD reports for the all-routers groups a
// forwarding host joins on every interface. Turning the device's own
// forwarding flag off leaves those groups; it only says whether the kernel
// acts as a router on the device, while what it forwards follows
// net.ipv6.conf.all.forwarding. MLDv1 first, because an MLDv2 leave is
// reported once the device comes up, and an MLDv1 leave of a group never
// reported is silent. With multicast off afterwards, which keeps a later
// change of "all" from joining those groups again, the kernel sends
// nothing into the TUN. These settings exist only under /proc/sys (IPv6
// takes none over rtnetlink), which a container or systemd's
// ProtectKernelTunables mounts read-only; then the link ignores what the
// kernel sends (linkScoped) and nothing is lost.
func quietIPv6(name string) error {
	for _, kv := range [][2]string{{"force_mld_version", "1"}, {"forwarding", "0"}, {"accept_ra", "0"}, {"router_solicitations", "0"}} {
		path := "/proc/sys/net/ipv6/conf/" + name + "/" + kv[0]
		if err := os.WriteFile(path, []byte(kv[1]), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("set net.ipv6.conf.%s.%s=%s: %w", name, kv[0], kv[1], err)
		}
	}
	return nil
}

// rpFilterMode returns the reverse-path filter mode the kernel applies to
// packets arriving on the TUN, the larger of "all" and the TUN's own (0
// off, 1 strict, 2 loose), "" if unknown.
func rpFilterMode(tun string) string {
	mode := ""
	for _, dev := range []string{"all", tun} {
		b, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + dev + "/rp_filter")
		if err != nil {
			return ""
		}
		mode = max(mode, strings.TrimSpace(string(b)))
	}
	return mode
}

// ForwardingWarnings explains what in the kernel's forwarding settings
// keeps tcpd from working for the client prefixes' families: the clients'
// packets reach the TUN, and tcpd's replies leave it, only by forwarding.
// Reverse-path filtering is judged per client instead, by the kernel itself
// (kernelRoutes.replyRoute), once routes into the TUN exist.
func ForwardingWarnings(tun string, clients []netip.Prefix) []string {
	var v4, v6 bool
	for _, p := range clients {
		v4 = v4 || p.Addr().Is4()
		v6 = v6 || p.Addr().Is6()
	}
	var out []string
	read := func(path string) string {
		b, err := os.ReadFile(path)
		if err != nil {
			return "" // no such family: nothing to say
		}
		return strings.TrimSpace(string(b))
	}
	if v4 && read("/proc/sys/net/ipv4/conf/"+tun+"/forwarding") == "0" {
		out = append(out, "IPv4 forwarding is off (net.ipv4.ip_forward is 0): the kernel forwards neither clients' IPv4 packets into "+
			tun+" nor tcpd's replies back to them; set net.ipv4.ip_forward=1")
	}
	if v6 && read("/proc/sys/net/ipv6/conf/all/forwarding") == "0" {
		out = append(out, "IPv6 forwarding is off (net.ipv6.conf.all.forwarding is 0): the kernel forwards neither clients' IPv6 packets into "+
			tun+" nor tcpd's replies back to them; set net.ipv6.conf.all.forwarding=1")
	}
	return out
}
