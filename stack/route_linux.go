package stack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// openRoutes returns the kernel's answers about the routes back to clients
// of the TUN named tun, that TUN's index, a function that reports whether
// links, routes, rules or their settings changed since it was last called,
// and one that closes the sockets.
func openRoutes(tun string) (q pathQuerier, idx int, changed func() bool, closeFn func(), err error) {
	ifi, err := net.InterfaceByName(tun)
	if err != nil {
		return nil, 0, nil, nil, fmt.Errorf("find %s: %w", tun, err)
	}
	k, err := newKernelRoutes()
	if err != nil {
		return nil, 0, nil, nil, err
	}
	w, err := newRouteWatch()
	if err != nil {
		k.close()
		return nil, 0, nil, nil, err
	}
	return k, ifi.Index, w.changed, func() {
		w.close()
		k.close()
	}, nil
}

// kernelRoutes asks the kernel, over one rtnetlink socket, what it does with
// the packets tcpd writes to its TUN. It is safe for concurrent use; one
// question at a time is on the wire.
type kernelRoutes struct {
	mu  sync.Mutex
	fd  int
	seq uint32
	buf []byte
}

// rtextFilterSkipStats is RTEXT_FILTER_SKIP_STATS (linux/rtnetlink.h): the
// link's statistics are not wanted, only its MTU.
const rtextFilterSkipStats = 1 << 3

// routeQueryTimeout bounds one question: the kernel answers in
// microseconds, and the packet loop must not wait on a socket that never
// answers.
const routeQueryTimeout = time.Second

func newKernelRoutes() (*kernelRoutes, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("rtnetlink socket: %w", err)
	}
	tv := unix.NsecToTimeval(routeQueryTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("rtnetlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("rtnetlink socket: %w", err)
	}
	return &kernelRoutes{fd: fd, buf: make([]byte, 32<<10)}, nil
}

func (k *kernelRoutes) close() error { return unix.Close(k.fd) }

// replyRoute asks how the kernel forwards a TCP segment that tcpd writes to
// the TUN with index tun, from dst to client: the route's output device and
// its MTU metric (0 when the route sets none, and the device's MTU rules).
// It is `ip route get <client> from <dst> iif <tun> ipproto tcp sport
// <dst port> dport <client port>`: the kernel runs the same input route
// lookup, reverse-path filter included, as for the real segment. Its error
// says why the kernel would drop the segment: EXDEV for the reverse-path
// filter, ENETUNREACH or EHOSTUNREACH for no route (or forwarding off).
func (k *kernelRoutes) replyRoute(tun int, client, dst netip.AddrPort) (dev, mtu int, err error) {
	fam, bits := uint8(unix.AF_INET), uint8(32)
	if client.Addr().Is6() {
		fam, bits = unix.AF_INET6, 128
	}
	req := make([]byte, unix.NLMSG_HDRLEN, 128)
	req = append(req, fam, bits, bits, 0, 0, 0, 0, 0, 0, 0, 0, 0) // struct rtmsg
	req = appendAttr(req, unix.RTA_DST, client.Addr().AsSlice())
	req = appendAttr(req, unix.RTA_SRC, dst.Addr().AsSlice())
	req = appendAttr(req, unix.RTA_IIF, binary.NativeEndian.AppendUint32(nil, uint32(tun)))
	req = appendAttr(req, unix.RTA_IP_PROTO, []byte{protoTCP})
	req = appendAttr(req, unix.RTA_SPORT, binary.BigEndian.AppendUint16(nil, dst.Port()))
	req = appendAttr(req, unix.RTA_DPORT, binary.BigEndian.AppendUint16(nil, client.Port()))
	err = k.ask(req, unix.RTM_GETROUTE, unix.RTM_NEWROUTE, func(msg []byte) error {
		dev, mtu, err = parseRoute(msg)
		return err
	})
	return dev, mtu, err
}

// outputRoute is `ip route get <client>`: the route the kernel would give a
// packet it sent to client itself, for its device and MTU metric when the
// forwarding lookup of replyRoute fails.
func (k *kernelRoutes) outputRoute(client netip.Addr) (dev, mtu int, err error) {
	fam, bits := uint8(unix.AF_INET), uint8(32)
	if client.Is6() {
		fam, bits = unix.AF_INET6, 128
	}
	req := make([]byte, unix.NLMSG_HDRLEN, 64)
	req = append(req, fam, bits, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
	req = appendAttr(req, unix.RTA_DST, client.AsSlice())
	err = k.ask(req, unix.RTM_GETROUTE, unix.RTM_NEWROUTE, func(msg []byte) error {
		dev, mtu, err = parseRoute(msg)
		return err
	})
	return dev, mtu, err
}

// parseRoute reads the output device and the MTU metric of an
// RTM_NEWROUTE.
func parseRoute(msg []byte) (dev, mtu int, err error) {
	if len(msg) < unix.SizeofRtMsg {
		return 0, 0, errors.New("short RTM_NEWROUTE")
	}
	err = walkAttrs(msg[unix.SizeofRtMsg:], func(typ uint16, v []byte) {
		switch typ {
		case unix.RTA_OIF:
			if len(v) >= 4 {
				dev = int(binary.NativeEndian.Uint32(v))
			}
		case unix.RTA_METRICS:
			walkAttrs(v, func(typ uint16, v []byte) {
				if typ == unix.RTAX_MTU && len(v) >= 4 {
					mtu = int(binary.NativeEndian.Uint32(v))
				}
			})
		}
	})
	return dev, mtu, err
}

// linkMTU returns the MTU of the link with index idx.
func (k *kernelRoutes) linkMTU(idx int) (int, error) {
	req := make([]byte, unix.NLMSG_HDRLEN, 64)
	var ifi [unix.SizeofIfInfomsg]byte
	binary.NativeEndian.PutUint32(ifi[4:8], uint32(idx))
	req = append(req, ifi[:]...)
	req = appendAttr(req, unix.IFLA_EXT_MASK, binary.NativeEndian.AppendUint32(nil, rtextFilterSkipStats))
	mtu := 0
	err := k.ask(req, unix.RTM_GETLINK, unix.RTM_NEWLINK, func(msg []byte) error {
		if len(msg) < unix.SizeofIfInfomsg {
			return errors.New("short RTM_NEWLINK")
		}
		return walkAttrs(msg[unix.SizeofIfInfomsg:], func(typ uint16, v []byte) {
			if typ == unix.IFLA_MTU && len(v) >= 4 {
				mtu = int(binary.NativeEndian.Uint32(v))
			}
		})
	})
	if err == nil && mtu == 0 {
		err = fmt.Errorf("link %d: no MTU in the kernel's answer", idx)
	}
	return mtu, err
}

// ask sends one request (req holds room for the netlink header) and hands
// the payload of the answer of type want to parse. An NLMSG_ERROR answer
// returns its errno.
func (k *kernelRoutes) ask(req []byte, typ, want uint16, parse func([]byte) error) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.seq++
	seq := k.seq
	binary.NativeEndian.PutUint32(req[0:4], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:6], typ)
	binary.NativeEndian.PutUint16(req[6:8], unix.NLM_F_REQUEST)
	binary.NativeEndian.PutUint32(req[8:12], seq)
	binary.NativeEndian.PutUint32(req[12:16], 0)
	if err := unix.Sendto(k.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("rtnetlink send: %w", err)
	}
	for {
		n, _, err := unix.Recvfrom(k.fd, k.buf, 0)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("rtnetlink receive: %w", err)
		}
		for b := k.buf[:n]; len(b) >= unix.NLMSG_HDRLEN; {
			l := int(binary.NativeEndian.Uint32(b[0:4]))
			if l < unix.NLMSG_HDRLEN || l > len(b) {
				return errors.New("rtnetlink: malformed answer")
			}
			msg := b[unix.NLMSG_HDRLEN:l]
			mtyp := binary.NativeEndian.Uint16(b[4:6])
			mseq := binary.NativeEndian.Uint32(b[8:12])
			b = b[min(nlAlign(l), len(b)):]
			if mseq != seq {
				continue // the answer to an earlier question that timed out
			}
			switch mtyp {
			case unix.NLMSG_ERROR:
				if len(msg) < 4 {
					return errors.New("rtnetlink: short error")
				}
				if e := int32(binary.NativeEndian.Uint32(msg[0:4])); e != 0 {
					return unix.Errno(-e)
				}
				return errors.New("rtnetlink: acknowledged, not answered")
			case want:
				return parse(msg)
			}
		}
	}
}

func nlAlign(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

func appendAttr(b []byte, typ uint16, v []byte) []byte {
	l := unix.SizeofRtAttr + len(v)
	b = binary.NativeEndian.AppendUint16(b, uint16(l))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, v...)
	for len(b)%unix.RTA_ALIGNTO != 0 {
		b = append(b, 0)
	}
	return b
}

// walkAttrs calls fn for each route attribute in b.
func walkAttrs(b []byte, fn func(typ uint16, v []byte)) error {
	for len(b) >= unix.SizeofRtAttr {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		if l < unix.SizeofRtAttr || l > len(b) {
			return errors.New("rtnetlink: malformed attribute")
		}
		fn(binary.NativeEndian.Uint16(b[2:4])&^unix.NLA_F_NESTED, b[unix.SizeofRtAttr:l])
		b = b[min((l+unix.RTA_ALIGNTO-1)&^(unix.RTA_ALIGNTO-1), len(b)):]
	}
	return nil
}

// routeWatch subscribes to the kernel's announcements of changed links,
// routes, rules and per-interface settings (forwarding, rp_filter), IPv4 and
// IPv6. changed drains what has arrived without blocking. The kernel queues
// an announcement before the change's own request returns, so a SYN that
// follows a change always finds it: reading on the packet path, one system
// call per lookup, leaves no window in which a goroutine has yet to read it.
type routeWatch struct{ fd int }

func newRouteWatch() (*routeWatch, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("rtnetlink socket: %w", err)
	}
	groups := uint32(unix.RTMGRP_LINK | unix.RTMGRP_IPV4_ROUTE | unix.RTMGRP_IPV6_ROUTE | unix.RTMGRP_IPV4_RULE)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: groups}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("rtnetlink subscribe: %w", err)
	}
	// IPv6 rules, and the settings the kernel announces, have group
	// numbers beyond the bind mask.
	for _, g := range []int{unix.RTNLGRP_IPV6_RULE, unix.RTNLGRP_IPV4_NETCONF, unix.RTNLGRP_IPV6_NETCONF} {
		if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, g); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("rtnetlink subscribe to group %d: %w", g, err)
		}
	}
	return &routeWatch{fd: fd}, nil
}

// changed reports whether anything was announced since the last call. A
// lost announcement (the socket's queue overran) counts as a change.
func (w *routeWatch) changed() bool {
	var buf [8 << 10]byte
	changed := false
	for {
		_, _, err := unix.Recvfrom(w.fd, buf[:], unix.MSG_DONTWAIT)
		switch {
		case err == nil, errors.Is(err, unix.ENOBUFS):
			changed = true
		case errors.Is(err, unix.EINTR):
		default: // EAGAIN: drained
			return changed
		}
	}
}

func (w *routeWatch) close() error { return unix.Close(w.fd) }
