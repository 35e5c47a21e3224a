//go:build linux

package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"tcpd/internal/netlab"
)

// Helpers of the robustness tests (robust_*_test.go): floods, impaired
// links, churn, misbehaving peers, malformed packets, MSS.

// sample scrapes tcpd's /metrics like scrape, but on a connection that is
// closed after the response. scrape's pooled connections stay open in tcpd
// (a goroutine and a descriptor each), which would blur the leak checks.
func sample(t *testing.T, g *gateway) map[string]float64 {
	t.Helper()
	m, err := trySample(g)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	return m
}

func trySample(g *gateway) (map[string]float64, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return g.Gateway.Dial(ctx, network, addr)
		},
	}}
	resp, err := client.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape: %s", resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out, nil
}

// waitMetrics scrapes every 100ms until cond holds or d passes, and returns
// the last scrape and whether cond held.
func waitMetrics(t *testing.T, g *gateway, d time.Duration, cond func(m map[string]float64) bool) (map[string]float64, bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		m := sample(t, g)
		if cond(m) {
			return m, true
		}
		if time.Now().After(deadline) {
			return m, false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// drop is the name of tcpd_dropped_total for reason.
func drop(reason string) string { return `tcpd_dropped_total{reason="` + reason + `"}` }

// idle reports whether tcpd holds nothing: no handshake, relay, tracking
// entry or netstack endpoint, and every state gauge at zero.
func idle(m map[string]float64) bool {
	return m["tcpd_handshakes_in_flight"] == 0 && m["tcpd_relays_active"] == 0 &&
		m["tcpd_conntrack_entries"] == 0 && m["tcpd_netstack_endpoints"] == 0 &&
		m["tcpd_netstack_tracked_endpoints"] == 0 &&
		stateSum(m, "tcpd_tcp_connection_states") == 0 && stateSum(m, "tcpd_tcp_client_connection_states") == 0
}

// holding describes what tcpd still holds, for failure messages.
func holding(m map[string]float64) string {
	return fmt.Sprintf("in flight %v, relays %v, entries %v, netstack endpoints %v (tracked %v), tcpd states %v, client states %v",
		m["tcpd_handshakes_in_flight"], m["tcpd_relays_active"], m["tcpd_conntrack_entries"],
		m["tcpd_netstack_endpoints"], m["tcpd_netstack_tracked_endpoints"],
		nonZero(m, "tcpd_tcp_connection_states"), nonZero(m, "tcpd_tcp_client_connection_states"))
}

// tunTxDropped reads how many packets the gateway kernel dropped on their
// way into tcpd's TUN (its queue full).
func tunTxDropped(t *testing.T, g *gateway) uint64 { t.Helper(); return tunStats(t, g).TxDropped }

// tcpdPid returns the pid of the tcpd process itself. netlab starts it as
// `ip netns exec <ns> tcpd ...`, and ip execs tcpd in place, so the pid of
// the started command is tcpd's; the check makes sure it stays so.
func tcpdPid(t *testing.T, g *gateway) int {
	t.Helper()
	pid := g.tcpd.Pid()
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		t.Fatalf("tcpd pid %d: %v", pid, err)
	}
	if filepath.Base(exe) != "tcpd" {
		t.Fatalf("pid %d runs %s, not tcpd: netlab's process is a wrapper", pid, exe)
	}
	return pid
}

// cpuTime returns the user plus system CPU time pid has used, from
// /proc/<pid>/stat (fields 14 and 15, in clock ticks of 1/100 s: USER_HZ is
// 100 on every Linux architecture tcpd is built for).
func cpuTime(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The command name, field 2, is in parentheses and may hold spaces.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		t.Fatalf("/proc/%d/stat: %v", pid, err)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// assertAlive checks that tcpd is still the process it was (pid) and still
// answers scrapes.
func assertAlive(t *testing.T, g *gateway, pid int) {
	t.Helper()
	select {
	case <-g.tcpd.Exited():
		t.Fatalf("tcpd exited: %v", g.tcpd.Wait())
	default:
	}
	if got := tcpdPid(t, g); got != pid {
		t.Fatalf("tcpd's pid is %d, was %d", got, pid)
	}
	sample(t, g)
}

// mibs formats a byte count in MiB.
func mibs(v float64) string { return fmt.Sprintf("%.1f MiB", v/mib) }

// lookTool returns the path of a tool the tests run, or skips the test
// saying which Debian package brings it (CI installs it).
func lookTool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s is not installed; Debian's %s package brings it (.ci/run installs it)", name, pkg)
	}
	return p
}

// timedDial connects from the client namespace and says how long it took.
func timedDial(g *gateway, addr string, d time.Duration) (net.Conn, time.Duration, error) {
	start := time.Now()
	c, err := g.Client.DialTimeout("tcp", addr, d)
	return c, time.Since(start), err
}

// echoOnce sends a short message on c and expects it back: the relay works
// both ways.
func echoOnce(c net.Conn) error {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	msg := []byte("ping through tcpd")
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

// gatewayMAC returns the MAC of the gateway's end of the client link.
func gatewayMAC(t *testing.T, g *gateway) net.HardwareAddr {
	t.Helper()
	var mac net.HardwareAddr
	if err := g.Gateway.Do(func() error {
		l, err := netlink.LinkByName(g.GatewayClientLink)
		if err != nil {
			return err
		}
		mac = l.Attrs().HardwareAddr
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return mac
}

// rawSender puts hand-built IP packets on the client's veth, addressed to
// the gateway's MAC, bypassing the client kernel's routing and TCP.
type rawSender struct {
	fd      int
	ifindex int
	mac     net.HardwareAddr
}

func newRawSender(t *testing.T, g *gateway) *rawSender {
	t.Helper()
	s := &rawSender{mac: gatewayMAC(t, g)}
	if err := g.Client.Do(func() error {
		l, err := netlink.LinkByName(g.ClientLink)
		if err != nil {
			return err
		}
		s.ifindex = l.Attrs().Index
		// Protocol 0: the socket only sends.
		s.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(s.fd) })
	return s
}

func (s *rawSender) send(t *testing.T, pkt []byte) {
	t.Helper()
	if err := s.trySend(pkt); err != nil {
		t.Fatal(err)
	}
}

// trySend is send for goroutines other than the test's.
func (s *rawSender) trySend(pkt []byte) error {
	proto := uint16(unix.ETH_P_IP)
	if pkt[0]>>4 == 6 {
		proto = unix.ETH_P_IPV6
	}
	sa := &unix.SockaddrLinklayer{Protocol: htons(proto), Ifindex: s.ifindex, Halen: 6}
	copy(sa.Addr[:], s.mac)
	if err := unix.Sendto(s.fd, pkt, 0, sa); err != nil {
		return fmt.Errorf("send raw packet: %w", err)
	}
	return nil
}

// mssOption is the TCP MSS option (RFC 9293 3.2) for mss.
func mssOption(mss uint16) []byte { return []byte{2, 4, byte(mss >> 8), byte(mss)} }

// buildSYN builds an IPv4 or IPv6 packet carrying a TCP SYN from src to dst
// with sequence number seq and the given options (padded to 4 bytes).
func buildSYN(src, dst netip.AddrPort, seq uint32, opts []byte) []byte {
	for len(opts)%4 != 0 {
		opts = append(opts, 0) // end of option list
	}
	tcpLen := header.TCPMinimumSize + len(opts)
	ipLen := header.IPv4MinimumSize
	if src.Addr().Is6() {
		ipLen = header.IPv6MinimumSize
	}
	pkt := make([]byte, ipLen+tcpLen)
	var srcA, dstA tcpip.Address
	if src.Addr().Is6() {
		srcA, dstA = tcpip.AddrFrom16(src.Addr().As16()), tcpip.AddrFrom16(dst.Addr().As16())
		header.IPv6(pkt).Encode(&header.IPv6Fields{
			PayloadLength:     uint16(tcpLen),
			TransportProtocol: header.TCPProtocolNumber,
			HopLimit:          64,
			SrcAddr:           srcA,
			DstAddr:           dstA,
		})
	} else {
		srcA, dstA = tcpip.AddrFrom4(src.Addr().As4()), tcpip.AddrFrom4(dst.Addr().As4())
		ip := header.IPv4(pkt)
		ip.Encode(&header.IPv4Fields{
			TotalLength: uint16(len(pkt)),
			ID:          uint16(seq),
			TTL:         64,
			Protocol:    uint8(header.TCPProtocolNumber),
			SrcAddr:     srcA,
			DstAddr:     dstA,
		})
		ip.SetChecksum(^ip.CalculateChecksum())
	}
	tcp := header.TCP(pkt[ipLen:])
	tcp.Encode(&header.TCPFields{
		SrcPort:    src.Port(),
		DstPort:    dst.Port(),
		SeqNum:     seq,
		DataOffset: uint8(tcpLen),
		Flags:      header.TCPFlagSyn,
		WindowSize: 65535,
	})
	copy(tcp[header.TCPMinimumSize:], opts)
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, srcA, dstA, uint16(tcpLen))
	tcp.SetChecksum(^checksum.Checksum(tcp, xsum))
	return pkt
}

// tcpSegment is one TCP segment seen on the wire by a sniffer.
type tcpSegment struct {
	src, dst netip.AddrPort
	flags    header.TCPFlags
	mss      int // the MSS option's value; 0 if absent
	payload  int // payload bytes of the packet as captured
	hdrLen   int // bytes of IP and TCP headers, options included
	// gsoSize is the segment size of a GSO (or GRO) super-packet from its
	// virtio-net header, 0 for a plain packet: the sizes of the segments it
	// stands for on a real wire.
	gsoSize int
}

// segSize is the largest payload a segment puts on the wire: its gso_size
// if it is a super-packet, else its payload.
func (s tcpSegment) segSize() int {
	if s.gsoSize > 0 {
		return min(s.gsoSize, s.payload)
	}
	return s.payload
}

// sniffer captures the TCP segments arriving on a link (the client's veth,
// tcpd's TUN), with an AF_PACKET socket. PACKET_VNET_HDR makes the
// kernel put a virtio-net header in front of each packet: veths pass GSO
// super-packets along whole, and only that header says what size the
// segments they stand for have.
type sniffer struct {
	fd      int
	linkHdr int
	mu      sync.Mutex
	segs    []tcpSegment
	stop    chan struct{}
	done    chan struct{}
}

func startSniffer(t *testing.T, g *gateway) *sniffer {
	t.Helper()
	return startSnifferOn(t, g.Client, g.ClientLink)
}

// startSnifferOn captures the TCP segments arriving on the Ethernet link in
// ns.
func startSnifferOn(t *testing.T, ns *netlab.NS, link string) *sniffer {
	t.Helper()
	return sniffLink(t, ns, link, ethHdrSize)
}

// sniffLink captures the TCP segments arriving on link in ns, whose frames
// carry a link-layer header of linkHdr bytes (0 on a TUN).
func sniffLink(t *testing.T, ns *netlab.NS, link string, linkHdr int) *sniffer {
	t.Helper()
	s := &sniffer{stop: make(chan struct{}), done: make(chan struct{}), linkHdr: linkHdr}
	if err := ns.Do(func() error {
		l, err := netlink.LinkByName(link)
		if err != nil {
			return err
		}
		proto := htons(unix.ETH_P_ALL)
		// SOCK_RAW (frames with their link-layer header): the kernel
		// takes PACKET_VNET_HDR on raw packet sockets only.
		s.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(proto))
		if err != nil {
			return err
		}
		if err := unix.SetsockoptInt(s.fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
			return fmt.Errorf("PACKET_VNET_HDR: %w", err)
		}
		tv := unix.NsecToTimeval(int64(100 * time.Millisecond))
		if err := unix.SetsockoptTimeval(s.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		if err := unix.SetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20); err != nil {
			return err
		}
		return unix.Bind(s.fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: l.Attrs().Index})
	}); err != nil {
		t.Fatalf("sniffer on %s: %v", link, err)
	}
	go s.run()
	t.Cleanup(func() { s.close() })
	return s
}

const (
	vnetHdrSize = 10 // struct virtio_net_hdr
	ethHdrSize  = 14 // destination, source, EtherType
)

func (s *sniffer) run() {
	defer close(s.done)
	buf := make([]byte, vnetHdrSize+1<<16)
	for {
		select {
		case <-s.stop:
			return
		default:
		}
		n, from, err := unix.Recvfrom(s.fd, buf, 0)
		if err != nil {
			continue // a timeout: look at stop again
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		if n < vnetHdrSize+s.linkHdr {
			continue
		}
		seg, ok := parseSegment(buf[vnetHdrSize+s.linkHdr : n])
		if !ok {
			continue
		}
		if buf[1] != 0 { // gso_type
			seg.gsoSize = int(binary.LittleEndian.Uint16(buf[4:6]))
		}
		s.mu.Lock()
		s.segs = append(s.segs, seg)
		s.mu.Unlock()
	}
}

// segments returns what was captured so far.
func (s *sniffer) segments() []tcpSegment {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]tcpSegment(nil), s.segs...)
}

func (s *sniffer) close() {
	select {
	case <-s.stop:
		return
	default:
	}
	close(s.stop)
	<-s.done
	unix.Close(s.fd)
}

// parseSegment reads a TCP segment's addresses, flags, MSS option and
// payload length from an IPv4 or IPv6 packet (no extension headers).
func parseSegment(p []byte) (tcpSegment, bool) {
	var (
		seg      tcpSegment
		tcp      []byte
		src, dst netip.Addr
	)
	switch {
	case len(p) >= header.IPv4MinimumSize && p[0]>>4 == 4:
		ip := header.IPv4(p)
		hl, total := int(ip.HeaderLength()), int(ip.TotalLength())
		if ip.TransportProtocol() != header.TCPProtocolNumber || hl < header.IPv4MinimumSize || total > len(p) || hl > total {
			return seg, false
		}
		tcp = p[hl:total]
		src, dst = netip.AddrFrom4(ip.SourceAddress().As4()), netip.AddrFrom4(ip.DestinationAddress().As4())
	case len(p) >= header.IPv6MinimumSize && p[0]>>4 == 6:
		ip := header.IPv6(p)
		end := header.IPv6MinimumSize + int(ip.PayloadLength())
		if ip.TransportProtocol() != header.TCPProtocolNumber || end > len(p) {
			return seg, false
		}
		tcp = p[header.IPv6MinimumSize:end]
		src, dst = netip.AddrFrom16(ip.SourceAddress().As16()), netip.AddrFrom16(ip.DestinationAddress().As16())
	default:
		return seg, false
	}
	if len(tcp) < header.TCPMinimumSize {
		return seg, false
	}
	h := header.TCP(tcp)
	off := int(h.DataOffset())
	if off < header.TCPMinimumSize || off > len(tcp) {
		return seg, false
	}
	seg.src = netip.AddrPortFrom(src, h.SourcePort())
	seg.dst = netip.AddrPortFrom(dst, h.DestinationPort())
	seg.flags = h.Flags()
	seg.payload = len(tcp) - off
	seg.hdrLen = len(p) - len(tcp) + off
	if h.Flags().Contains(header.TCPFlagSyn) {
		seg.mss = mssOf(h.Options())
	}
	return seg, true
}

// mssOf returns the value of the MSS option among TCP options, as sent
// (no clamping), or 0 if there is none.
func mssOf(opts []byte) int {
	for i := 0; i < len(opts); {
		switch opts[i] {
		case 0: // end of option list
			return 0
		case 1: // no-operation
			i++
			continue
		}
		if i+1 >= len(opts) || opts[i+1] < 2 {
			return 0
		}
		if opts[i] == 2 && opts[i+1] == 4 && i+4 <= len(opts) {
			return int(binary.BigEndian.Uint16(opts[i+2:]))
		}
		i += int(opts[i+1])
	}
	return 0
}

// tcpInfo reads the kernel's TCP_INFO of a client-side connection.
func tcpInfo(t *testing.T, c net.Conn) *unix.TCPInfo {
	t.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	var ierr error
	if err := rc.Control(func(fd uintptr) { info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil {
		t.Fatal(err)
	}
	if ierr != nil {
		t.Fatalf("TCP_INFO: %v", ierr)
	}
	return info
}

// isTimeout reports a deadline expiry.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// countingWriter counts the bytes a connection's writes have accepted.
type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// plateau samples f every 250ms until it has not grown for quiet, or d
// passes; it returns the last value and whether it settled.
func plateau(d, quiet time.Duration, f func() int64) (int64, bool) {
	deadline := time.Now().Add(d)
	last, since := f(), time.Now()
	for time.Now().Before(deadline) {
		time.Sleep(250 * time.Millisecond)
		v := f()
		if v != last {
			last, since = v, time.Now()
			continue
		}
		if time.Since(since) >= quiet {
			return v, true
		}
	}
	return last, false
}

// errno names an error's errno, for reports.
func errno(err error) string {
	var e syscall.Errno
	if errors.As(err, &e) {
		return unix.ErrnoName(e)
	}
	if err == nil {
		return "nil"
	}
	return err.Error()
}
