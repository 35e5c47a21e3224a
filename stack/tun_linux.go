package stack

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// createTUN creates the TUN device with the queues cfg asks for, gives it
// its MTU, addresses and transmit queue length through netlink and brings it
// up. What it could not set without harm to the data path is logged.
func createTUN(cfg TUNConfig, log *zap.Logger) (*queueTUN, error) {
	want := cfg.queueCount()
	var (
		dev *queueTUN
		err error
	)
	switch cfg.Offload {
	case OffloadOff:
		dev, err = openTUN(cfg.Name, want, false, log)
	default:
		dev, err = openTUN(cfg.Name, want, true, log)
		if err != nil && cfg.Offload == OffloadAuto && errors.Is(err, errNoOffload) {
			log.Info("the kernel did not accept the virtio-net header offloads; the TUN carries plain packets", zap.Error(err))
			dev, err = openTUN(cfg.Name, want, false, log)
		}
		if err != nil && cfg.Offload == OffloadOn && errors.Is(err, errNoOffload) {
			err = fmt.Errorf("%w (tun.offload: on)", err)
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

// errNoOffload says the kernel refused the virtio-net header or the TCP
// segmentation offloads that come with it.
var errNoOffload = errors.New("the kernel did not accept the virtio-net header offloads")

// tunOffloads are the offloads the offload path asks of the kernel: it may
// hand tcpd TCP super-packets (TSO) with checksums left to do (CSUM), and
// tcpd writes such super-packets for the kernel to cut.
const tunOffloads = unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6

// queueTUN is the TUN device as tcpd opens it itself: a file descriptor
// per queue, all of them with or without the virtio-net header.
type queueTUN struct {
	name  string
	files []*os.File
	vnet  bool
}

func (d *queueTUN) tunFiles() []*os.File { return d.files }
func (d *queueTUN) vnetHdr() bool        { return d.vnet }

// Name returns the device's name.
func (d *queueTUN) Name() (string, error) { return d.name, nil }

// MTU returns the device's MTU, as the kernel has it now.
func (d *queueTUN) MTU() (int, error) {
	l, err := netlink.LinkByName(d.name)
	if err != nil {
		return 0, fmt.Errorf("find TUN %s: %w", d.name, err)
	}
	return l.Attrs().MTU, nil
}

// Events returns nil: tcpd acts on no link event of its own TUN.
func (d *queueTUN) Events() <-chan tun.Event { return nil }

// Close closes every queue; the last one removes the device.
func (d *queueTUN) Close() error {
	var errs []error
	for _, f := range d.files {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}

// openTUN opens the TUN name with want queues, the first of which creates
// it. With more than one, the device is created with IFF_MULTI_QUEUE and
// each further descriptor attaches a queue to it. Where the kernel refuses
// a multi-queue device, or a further queue, tcpd carries on with the queues
// it has and says so. The flags are checked as the kernel reports them
// (TUNGETIFF), not assumed.
func openTUN(name string, want int, vnet bool, log *zap.Logger) (*queueTUN, error) {
	if err := tunInUse(name); err != nil {
		return nil, err
	}
	flags := uint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if vnet {
		flags |= unix.IFF_VNET_HDR
	}
	multi := want > 1
	if multi {
		flags |= unix.IFF_MULTI_QUEUE
	}
	f, got, err := openQueue(name, flags, vnet)
	if err != nil && multi && !errors.Is(err, errNoOffload) && !errors.Is(err, errNotTUN) {
		log.Warn("the kernel refused a multi-queue TUN; using one queue", zap.String("tun", name),
			zap.Int("queues_wanted", want), zap.Error(err))
		multi, flags = false, flags&^unix.IFF_MULTI_QUEUE
		f, got, err = openQueue(name, flags, vnet)
	}
	if err != nil {
		return nil, err
	}
	d := &queueTUN{name: name, files: []*os.File{f}, vnet: vnet}
	if vnet && got&unix.IFF_VNET_HDR == 0 {
		d.Close()
		return nil, fmt.Errorf("%w: the device's flags %#x lack IFF_VNET_HDR", errNoOffload, got)
	}
	if multi && got&unix.IFF_MULTI_QUEUE == 0 {
		log.Warn("the TUN came up with one queue: its flags lack IFF_MULTI_QUEUE", zap.String("tun", name),
			zap.Int("queues_wanted", want), zap.Uint16("flags", got))
		multi = false
	}
	for multi && len(d.files) < want {
		f, _, err := openQueue(name, flags, vnet)
		if err != nil {
			log.Warn("the kernel refused a further TUN queue; using those it gave", zap.String("tun", name),
				zap.Int("queues_wanted", want), zap.Int("queues", len(d.files)), zap.Error(err))
			break
		}
		d.files = append(d.files, f)
	}
	return d, nil
}

// tunInUse returns ErrTUNInUse if a multi-queue TUN device named name
// exists with a queue attached: another process holds it, such as a tcpd
// started twice (a single-queue one in use, the kernel refuses: EBUSY).
// The kernel would let tcpd attach a further queue to a multi-queue device
// and then steer some of the other process's flows to it, and tcpd would
// answer those connections, unknown to it, with RST; nor may tcpd set the
// other's MTU and addresses. A persistent device nobody holds is taken.
func tunInUse(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil // none yet: tcpd creates it
	}
	if t, ok := l.(*netlink.Tuntap); ok && t.Queues+t.DisabledQueues > 0 {
		return fmt.Errorf("%s has %d queues attached: %w", name, t.Queues+t.DisabledQueues, ErrTUNInUse)
	}
	return nil
}

// openQueue opens /dev/net/tun and attaches it to the TUN name with flags,
// creating the device if it does not exist, and returns it non-blocking
// with the flags the kernel reports for the device.
func openQueue(name string, flags uint16, vnet bool) (*os.File, uint16, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, 0, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	fail := func(err error) (*os.File, uint16, error) {
		unix.Close(fd)
		return nil, 0, err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return fail(err)
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EBUSY) {
			if why := notTUN(name, err); why != nil {
				return fail(why)
			}
		}
		if errors.Is(err, unix.EBUSY) {
			// A single-queue TUN device another process holds (the
			// kernel reports no queue count for one).
			return fail(fmt.Errorf("%s: %w", name, ErrTUNInUse))
		}
		return fail(fmt.Errorf("TUNSETIFF %s flags %#x: %w", name, flags, err))
	}
	if err := unix.IoctlIfreq(fd, unix.TUNGETIFF, ifr); err != nil {
		return fail(fmt.Errorf("TUNGETIFF %s: %w", name, err))
	}
	got := ifr.Uint16()
	if vnet {
		if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, tunOffloads); err != nil {
			return fail(fmt.Errorf("%w: TUNSETOFFLOAD: %w", errNoOffload, err))
		}
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return fail(err)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun"), got, nil
}

// errNotTUN says that the TUN's name is taken by an interface of another
// kind.
var errNotTUN = errors.New("not a TUN device")

// notTUN explains TUNSETIFF's refusal, err, when name is an interface that
// is not a TUN device: the kernel's answer then is EINVAL (EBUSY with
// IFF_TUN_EXCL), which says nothing of the cause. It returns nil when name
// is a TUN device, or no interface at all.
func notTUN(name string, err error) error {
	l, lerr := netlink.LinkByName(name)
	if lerr != nil || l.Type() == "tuntap" {
		return nil
	}
	kind := l.Type()
	switch {
	case kind == "device":
		// No link kind: a physical NIC, or loopback.
		kind = "a hardware or loopback device"
	case strings.IndexAny(kind, "aeiou") == 0:
		kind = "an " + kind
	default:
		kind = "a " + kind
	}
	return fmt.Errorf("an interface named %s already exists and is %s, %w (TUNSETIFF: %w); set tun.name to a name no other interface has",
		name, kind, errNotTUN, err)
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
	if err := netlink.LinkSetMTU(l, cfg.MTU); err != nil {
		return fmt.Errorf("set MTU %d on %s: %w", cfg.MTU, cfg.Name, err)
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
	if cfg.RouteTable != 0 {
		for _, dst := range []*net.IPNet{
			{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
			{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)},
		} {
			r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: dst, Table: cfg.RouteTable, Scope: netlink.SCOPE_LINK}
			if err := netlink.RouteReplace(r); err != nil {
				return fmt.Errorf("add route %s dev %s table %d: %w", dst, cfg.Name, cfg.RouteTable, err)
			}
		}
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
