package stack

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// The upstream leg is a raw non-blocking socket that tcpd opens, connects
// and relays itself, on the relay's shard: no net.Conn, no dial context,
// no goroutine of its own. Its options are set once, before connect.

var (
	// errAgain is a read or write that would block.
	errAgain = unix.EAGAIN
	// errDialTimeout is a connect that took longer than
	// upstream.dial_timeout.
	errDialTimeout = fmt.Errorf("connect: %w", os.ErrDeadlineExceeded)
	// errRelayPanic ends a connect whose relay panicked.
	errRelayPanic = errors.New("connect: relay panicked")
)

// upstreamSocket opens a socket for dst with the upstream options of t,
// binds it to src when src is valid, and starts connecting it. The handler
// looks at once whether the connect is done (connectPoll); if not, it
// completes, or fails, on the shard.
//
// A socket bound to a source address gets its port at connect, from the
// whole 4-tuple, rather than at bind, where a port would be taken toward
// every destination at once (IP_BIND_ADDRESS_NO_PORT, Linux 4.2).
func upstreamSocket(src netip.Addr, dst netip.AddrPort, t *Tunables) (int, error) {
	family := unix.AF_INET
	if !dst.Addr().Unmap().Is4() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	if err := setUpstreamOptions(fd, t); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if src.IsValid() {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("set IP_BIND_ADDRESS_NO_PORT: %w", err)
		}
		if err := unix.Bind(fd, sockaddr(netip.AddrPortFrom(src, 0))); err != nil {
			unix.Close(fd)
			return -1, &SourceAddressError{Addr: src, NotLocal: errors.Is(err, unix.EADDRNOTAVAIL), Err: fmt.Errorf("bind: %w", err)}
		}
	}
	if err := unix.Connect(fd, sockaddr(dst)); err != nil && err != unix.EINPROGRESS {
		unix.Close(fd)
		return -1, fmt.Errorf("connect %s: %w", dst, err)
	}
	return fd, nil
}

// CheckKeepalive sets ka's options and the user timeout ut (as
// Tunables.UserTimeout), as every dial does, on a socket that is then
// closed: an error wrapping unix.EINVAL says this kernel refuses them, and
// with them every upstream connection.
func CheckKeepalive(ka Keepalive, ut time.Duration) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	return setUpstreamOptions(fd, &Tunables{Keepalive: ka, UserTimeout: ut})
}

// setUpstreamOptions applies what both legs share (keepalive, and the user
// timeout that gives up on a peer silent under load as keepalive would on
// an idle one), no Nagle delay (the relay forwards what it gets as it
// gets it), and the upstream mark and interface.
func setUpstreamOptions(fd int, t *Tunables) error {
	ka := t.Keepalive
	opts := []struct {
		name       string
		level, opt int
		value      int
	}{
		{"TCP_NODELAY", unix.IPPROTO_TCP, unix.TCP_NODELAY, 1},
		{"SO_KEEPALIVE", unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{"TCP_KEEPIDLE", unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, max(int(ka.Idle.Seconds()), 1)},
		{"TCP_KEEPINTVL", unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, max(int(ka.Interval.Seconds()), 1)},
		{"TCP_KEEPCNT", unix.IPPROTO_TCP, unix.TCP_KEEPCNT, ka.Count},
		// Last, and left out when none is set: a socket has none.
		{"TCP_USER_TIMEOUT", unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, int(t.userTimeout().Milliseconds())},
	}
	if t.userTimeout() == 0 {
		opts = opts[:len(opts)-1]
	}
	for _, o := range opts {
		if err := unix.SetsockoptInt(fd, o.level, o.opt, o.value); err != nil {
			return fmt.Errorf("set %s: %w", o.name, err)
		}
	}
	if t.Mark != 0 {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(t.Mark)); err != nil {
			return fmt.Errorf("set SO_MARK %d: %w", t.Mark, err)
		}
	}
	if t.Interface != "" {
		if err := unix.BindToDevice(fd, t.Interface); err != nil {
			return fmt.Errorf("bind to device %s: %w", t.Interface, err)
		}
	}
	return nil
}

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	if a := ap.Addr().Unmap(); a.Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: a.As4()}
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

// connectResult is the outcome of a non-blocking connect whose socket
// became writable or reported an error: only an error needs SO_ERROR.
func connectResult(fd int, errored bool) error {
	if !errored {
		return nil
	}
	v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return fmt.Errorf("connect: SO_ERROR: %w", err)
	}
	if v != 0 {
		return fmt.Errorf("connect: %w", unix.Errno(v))
	}
	return nil
}

// connectPoll looks, without waiting, whether a connect in progress is
// done, and whether the socket reports an error (SO_ERROR says which).
func connectPoll(fd int) (done, failed bool) {
	p := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	if n, err := unix.Poll(p, 0); err != nil || n == 0 {
		return false, false
	}
	failed = p[0].Revents&(unix.POLLERR|unix.POLLHUP) != 0
	return failed || p[0].Revents&unix.POLLOUT != 0, failed
}

func readFD(fd int, b []byte) (int, error) {
	for {
		n, err := unix.Read(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		return n, nil
	}
}

func writeFD(fd int, b []byte) (int, error) {
	for {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		return n, nil
	}
}

func shutdownWrite(fd int) error { return unix.Shutdown(fd, unix.SHUT_WR) }

// closeFD closes fd; with rst, abortively (SO_LINGER 0), so that the peer
// gets RST rather than FIN.
func closeFD(fd int, rst bool) {
	if rst {
		unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	}
	unix.Close(fd)
}

// upstreamTCPInfo reads TCP_INFO and the queue lengths of an upstream
// socket.
func upstreamTCPInfo(fd int) (UpstreamTCP, bool) {
	ti, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return UpstreamTCP{}, false
	}
	u := UpstreamTCP{
		RTT:         time.Duration(ti.Rtt) * time.Microsecond,
		RTTVar:      time.Duration(ti.Rttvar) * time.Microsecond,
		Retransmits: uint64(ti.Total_retrans),
		Cwnd:        ti.Snd_cwnd,
	}
	if n, err := unix.IoctlGetInt(fd, unix.SIOCINQ); err == nil {
		u.RecvQ = n
	}
	if n, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ); err == nil {
		u.SendQ = n
	}
	return u, true
}

// unsentUpstream is what the socket holds that its peer has not
// acknowledged (SIOCOUTQ); ok is false if it cannot be read.
func unsentUpstream(fd int) (int, bool) {
	n, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ)
	return n, err == nil
}

// sockName is the socket's local address, "" if it cannot be read.
func sockName(fd int) string {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return ""
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port)).String()
	}
	return ""
}

// checkSourceAddresses checks that each address is one of this host's: a
// socket binds to it, its port left for connect to choose.
func checkSourceAddresses(addrs []netip.Addr) error {
	for _, a := range addrs {
		if err := bindable(a); err != nil {
			return &SourceAddressError{Addr: a, NotLocal: errors.Is(err, unix.EADDRNOTAVAIL), Err: err}
		}
	}
	return nil
}

// checkInterface checks that upstream sockets can be bound to the
// interface name, as every dial binds them ("" binds none): the kernel
// refuses a name it does not have with ENODEV, and would refuse each
// connection's socket the same way.
func checkInterface(name string) error {
	if name == "" {
		return nil
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return &InterfaceError{Name: name, Err: fmt.Errorf("socket: %w", err)}
	}
	defer unix.Close(fd)
	if err := unix.BindToDevice(fd, name); err != nil {
		return &InterfaceError{Name: name, NotFound: errors.Is(err, unix.ENODEV), Err: fmt.Errorf("SO_BINDTODEVICE: %w", err)}
	}
	return nil
}

func bindable(a netip.Addr) error {
	family := unix.AF_INET
	if !a.Is4() {
		family = unix.AF_INET6
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1); err != nil {
		return err
	}
	if err := unix.Bind(fd, sockaddr(netip.AddrPortFrom(a, 0))); err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	return nil
}
