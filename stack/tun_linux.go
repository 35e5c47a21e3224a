package stack

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// createTUN creates the TUN device, gives it its addresses and transmit
// queue length through netlink and brings it up.
func createTUN(cfg TUNConfig) (tun.Device, error) {
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
	if err := configureTUN(cfg); err != nil {
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
// another interface.
func configureTUN(cfg TUNConfig) error {
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

// RPFilterWarning returns a non-empty explanation when the host's
// reverse-path filter would drop tcpd's replies: the effective value for a
// device is the maximum of "all" and the device's own, and tcpd can only
// lower the latter.
func RPFilterWarning() string {
	b, err := os.ReadFile("/proc/sys/net/ipv4/conf/all/rp_filter")
	if err != nil {
		return ""
	}
	if v := strings.TrimSpace(string(b)); v != "0" {
		return "net.ipv4.conf.all.rp_filter is " + v + ": replies written to the TUN from destination addresses may be dropped; set it to 0 (per-interface values still apply to other interfaces)"
	}
	return ""
}
