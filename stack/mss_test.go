package stack

import (
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"tcpd/conntrack"
)

// fakeRoutes answers the clamp's questions about routes back to clients.
type fakeRoutes struct {
	mu     sync.Mutex
	mtu    int   // the route's own MTU metric; 0: the device's
	devMTU int   // the device's MTU
	err    error // the kernel's refusal to forward tcpd's replies
	outErr error // its failure to route its own packets to the client
	asked  int
	tun    int // the TUN index of the last question
}

func (f *fakeRoutes) replyRoute(tun int, client, dst netip.AddrPort) (int, int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.asked++
	f.tun = tun
	return 7, f.mtu, f.err
}

func (f *fakeRoutes) outputRoute(client netip.Addr) (int, int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return 7, f.mtu, f.outErr
}

func (f *fakeRoutes) linkMTU(idx int) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.devMTU, nil
}

// synWithOptions builds an IPv4 or IPv6 SYN carrying opts, with a valid
// checksum.
func synWithOptions(src, dst netip.AddrPort, opts []byte) []byte {
	tcpLen := header.TCPMinimumSize + len(opts)
	var pkt []byte
	var s, d tcpip.Address
	if src.Addr().Is4() {
		pkt = buildV4(src, dst, header.TCPFlagSyn, 1, 0, len(opts))
		s, d = tcpip.AddrFrom4(src.Addr().As4()), tcpip.AddrFrom4(dst.Addr().As4())
		header.IPv4(pkt).SetChecksum(^header.IPv4(pkt).CalculateChecksum())
	} else {
		pkt = buildV6(src, dst, header.TCPFlagSyn, 1, 0, len(opts))
		s, d = tcpip.AddrFrom16(src.Addr().As16()), tcpip.AddrFrom16(dst.Addr().As16())
	}
	tcp := header.TCP(pkt[len(pkt)-tcpLen:])
	tcp[12] = byte(tcpLen/4) << 4
	copy(tcp[header.TCPMinimumSize:], opts)
	tcp.SetChecksum(^checksum.Checksum(tcp, header.PseudoHeaderChecksum(header.TCPProtocolNumber, s, d, uint16(tcpLen))))
	return pkt
}

// TestSetMSS rewrites MSS options wherever they sit among the options,
// aligned or not, and checks the result's checksum.
func TestSetMSS(t *testing.T) {
	c4, d4 := netip.MustParseAddrPort("100.64.1.2:40000"), netip.MustParseAddrPort("198.18.1.2:80")
	c6, d6 := netip.MustParseAddrPort("[fd64::2]:40000"), netip.MustParseAddrPort("[2001:db8:1::2]:443")
	cases := []struct {
		name     string
		src, dst netip.AddrPort
		opts     []byte
		found    bool
	}{
		{"IPv4, MSS first", c4, d4, []byte{2, 4, 0x05, 0xb4}, true},
		{"IPv6, MSS first", c6, d6, []byte{2, 4, 0x05, 0xa0}, true},
		{"IPv4, MSS at an odd offset", c4, d4, []byte{1, 2, 4, 0x05, 0xb4, 1, 1, 1}, true},
		{"IPv6, after SACK-permitted and timestamps", c6, d6, []byte{4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 4, 0x05, 0xa0, 1, 1, 0}, true},
		{"no MSS option", c4, d4, []byte{1, 1, 4, 2}, false},
		{"MSS after the end of the list", c4, d4, []byte{0, 2, 4, 0x05, 0xb4, 0, 0, 0}, false},
		{"malformed length before MSS", c4, d4, []byte{8, 1, 2, 4, 0x05, 0xb4, 0, 0}, false},
	}
	for _, c := range cases {
		pkt := synWithOptions(c.src, c.dst, c.opts)
		if verifyChecksums(pkt) != csumValid {
			t.Fatalf("%s: the test's SYN has a bad checksum", c.name)
		}
		_, _, seg, ok := parseTCP(pkt)
		if !ok {
			t.Fatalf("%s: parseTCP refused the SYN", c.name)
		}
		if got := setMSS(pkt, 1200, true); got != c.found {
			t.Errorf("%s: found the option %v, want %v", c.name, got, c.found)
		}
		_, _, after, _ := parseTCP(pkt)
		switch {
		case verifyChecksums(pkt) != csumValid:
			t.Errorf("%s: checksum wrong after the rewrite", c.name)
		case c.found && (seg.MSS == 0 || after.MSS != 1200):
			t.Errorf("%s: MSS %d before, %d after; want the option read, then 1200", c.name, seg.MSS, after.MSS)
		case !c.found && (seg.MSS != 0 || after.MSS != 0):
			t.Errorf("%s: MSS %d, %d; want none", c.name, seg.MSS, after.MSS)
		}
	}
}

// FuzzSetMSS: whatever a SYN parseTCP accepts holds, rewriting its MSS
// neither panics nor spoils a valid checksum.
func FuzzSetMSS(f *testing.F) {
	c4, d4 := netip.MustParseAddrPort("100.64.1.2:40000"), netip.MustParseAddrPort("198.18.1.2:80")
	c6, d6 := netip.MustParseAddrPort("[fd64::2]:40000"), netip.MustParseAddrPort("[2001:db8:1::2]:443")
	f.Add(synWithOptions(c4, d4, []byte{2, 4, 0x05, 0xb4}))
	f.Add(synWithOptions(c6, d6, []byte{1, 2, 4, 0x05, 0xa0, 0, 0, 0}))
	f.Fuzz(func(t *testing.T, pkt []byte) {
		_, _, seg, ok := parseTCP(pkt)
		if !ok || seg.Flags&0x02 == 0 {
			return
		}
		valid := verifyChecksums(pkt) == csumValid
		found := setMSS(pkt, 1000, true)
		if found != (seg.MSS != 0 || mssFoundZero(pkt)) {
			t.Fatalf("setMSS found the option: %v; parseTCP read MSS %d", found, seg.MSS)
		}
		if valid && verifyChecksums(pkt) != csumValid {
			t.Fatal("a valid checksum became invalid")
		}
	})
}

// mssFoundZero reports an MSS option whose value is 0, which parseTCP
// cannot tell from none.
func mssFoundZero(pkt []byte) bool {
	var tcp []byte
	if pkt[0]>>4 == 4 {
		ihl := int(pkt[0]&0x0f) * 4
		tcp = pkt[ihl:binary.BigEndian.Uint16(pkt[2:4])]
	} else {
		tcp = pkt[ipv6Header : ipv6Header+int(binary.BigEndian.Uint16(pkt[4:6]))]
	}
	at := mssOptionAt(tcp[tcpMinHeader : int(tcp[12]>>4)*4])
	return at >= 0
}

// TestMSSClamp runs real connections from a client stack whose SYN offers
// MSS 1380 (its MTU is 1420) through tcpd's stack, whose TUN has the same
// MTU, and checks what tcpd's netstack was told, what it sent, and what
// conntrack and the counters say.
func TestMSSClamp(t *testing.T) {
	cases := []struct {
		name   string
		clamp  int
		routes *fakeRoutes
		// want is the MSS tcpd's netstack reads; clamped whether tcpd
		// lowered it.
		want    int
		clamped bool
		warn    string
	}{
		{"auto, route MTU 1300", MSSClampAuto, &fakeRoutes{devMTU: 1300}, 1260, true, ""},
		{"auto, route with its own mtu 1280", MSSClampAuto, &fakeRoutes{mtu: 1280, devMTU: 1500}, 1240, true, ""},
		{"auto, route MTU above the client's", MSSClampAuto, &fakeRoutes{devMTU: 1500}, 1380, false, ""},
		// The clamp holds even while the kernel would drop the replies:
		// they flow as soon as that is fixed.
		{"auto, reverse-path filter", MSSClampAuto, &fakeRoutes{err: syscall.EXDEV, devMTU: 1300}, 1260, true, "reverse-path filter"},
		{"auto, no route", MSSClampAuto, &fakeRoutes{err: syscall.ENETUNREACH, outErr: syscall.ENETUNREACH}, 1380, false, "would not forward"},
		{"fixed 1000", 1000, &fakeRoutes{devMTU: 1500}, 1000, true, ""},
		{"fixed above the client's", 1400, &fakeRoutes{devMTU: 1300}, 1380, false, ""},
		{"off", MSSClampOff, &fakeRoutes{devMTU: 1300}, 1380, false, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			core, logs := observer.New(zap.WarnLevel)
			h := newHarness(t, Config{Tunables: Tunables{MSSClamp: c.clamp}, routes: c.routes, Logger: zap.New(core)}, clientAddr)
			var largest int
			var mu sync.Mutex
			h.observeOut(func(pkt []byte) {
				if _, _, seg, ok := parseTCP(pkt); ok && seg.Len > 0 {
					mu.Lock()
					largest = max(largest, len(pkt))
					mu.Unlock()
				}
			})
			h.listen(t, func(c net.Conn) { io.Copy(c, io.LimitReader(zeros{}, 1<<20)) })
			conn, err := h.dial(t, 80)
			if err != nil {
				t.Fatal(err)
			}
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			if n, err := io.Copy(io.Discard, conn); n != 1<<20 {
				t.Fatalf("downloaded %d bytes: %v", n, err)
			}
			cs := h.s.Conns(nil)
			if len(cs) == 0 {
				t.Fatal("no connection in the table")
			}
			ci := cs[0]
			clampedFrom := uint16(0)
			if c.clamped {
				clampedFrom = 1380
			}
			if int(ci.MSS) != c.want || ci.ClampedFrom != clampedFrom || ci.SendMSS != c.want || ci.AdvMSS != 1380 {
				t.Errorf("conntrack: MSS %d clamped from %d, send MSS %d, advertised %d; want %d from %d, %d, 1380",
					ci.MSS, ci.ClampedFrom, ci.SendMSS, ci.AdvMSS, c.want, clampedFrom, c.want)
			}
			wantCount := uint64(0)
			if c.clamped {
				wantCount = 1
			}
			if got := h.s.Stats().MSSClamped.Load(); got != wantCount {
				t.Errorf("MSSClamped = %d, want %d", got, wantCount)
			}
			// The netstack's segments carry at most the MSS of payload,
			// less its option space.
			mu.Lock()
			defer mu.Unlock()
			if largest > c.want+ipv4TCPHeaders {
				t.Errorf("tcpd sent a %d-byte packet with MSS %d: more than %d", largest, c.want, c.want+ipv4TCPHeaders)
			}
			t.Logf("largest packet %d bytes for MSS %d", largest, c.want)
			var warned []string
			for _, e := range logs.All() {
				warned = append(warned, e.Message)
			}
			switch {
			case c.warn == "" && len(warned) > 0:
				t.Errorf("warnings %q, want none", warned)
			case c.warn != "" && (len(warned) != 1 || !strings.Contains(warned[0], c.warn)):
				t.Errorf("warnings %q, want one about %q", warned, c.warn)
			}
		})
	}
}

// TestPathCache checks that the route back to a client is asked once per
// client, again once the routes changed, and again after pathTTL.
func TestPathCache(t *testing.T) {
	now := time.Unix(1000, 0)
	f := &fakeRoutes{devMTU: 1420}
	p := &paths{q: f, tun: 3, log: zap.NewNop(), now: func() time.Time { return now }, m: map[netip.Addr]pathEntry{}}
	a := netip.MustParseAddrPort("100.64.2.10:40000")
	b := netip.MustParseAddrPort("[fd64::2:a]:40000")
	dst := netip.MustParseAddrPort("198.18.1.2:80")
	dst6 := netip.MustParseAddrPort("[2001:db8:1::2]:80")
	check := func(what string, c, d netip.AddrPort, want uint16, asked int) {
		t.Helper()
		if got := p.mss(c, d); got != want || f.asked != asked {
			t.Errorf("%s: MSS %d after %d questions, want %d after %d", what, got, f.asked, want, asked)
		}
	}
	check("first SYN", a, dst, 1380, 1)
	if f.tun != 3 {
		t.Errorf("asked about the route from TUN index %d, want 3", f.tun)
	}
	check("same client, other port", netip.AddrPortFrom(a.Addr(), 40001), dst, 1380, 1)
	check("IPv6 client", b, dst6, 1360, 2)
	f.devMTU = 1280
	check("cached", a, dst, 1380, 2)
	p.gen.Add(1) // a route changed
	check("after a route change", a, dst, 1240, 3)
	now = now.Add(pathTTL)
	check("after the TTL", b, dst6, 1220, 4)
	// A route the kernel would not use for tcpd's replies is asked
	// again sooner; the clamp meanwhile follows the kernel's own route.
	f.err = syscall.EXDEV
	c := netip.MustParseAddrPort("100.64.2.11:40000")
	check("refused", c, dst, 1240, 5)
	check("refused, cached", c, dst, 1240, 5)
	now = now.Add(pathRetry)
	check("refused, retried", c, dst, 1240, 6)
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// withIPv6Headers returns pkt, an IPv6 packet with no extension header,
// with the headers of kinds kinds (each 8 bytes, options padding only, or
// an empty routing header) put between its fixed header and its payload.
func withIPv6Headers(pkt []byte, kinds ...byte) []byte {
	out := append([]byte(nil), pkt[:ipv6Header]...)
	next := pkt[6]
	out[6] = kinds[0]
	for i, k := range kinds {
		nh := next
		if i+1 < len(kinds) {
			nh = kinds[i+1]
		}
		ext := []byte{nh, 0, 1, 4, 0, 0, 0, 0} // PadN
		if k == 43 {
			ext = []byte{nh, 0, 4, 0, 0, 0, 0, 0} // segment routing, no segment left
		}
		out = append(out, ext...)
	}
	out = append(out, pkt[ipv6Header:]...)
	binary.BigEndian.PutUint16(out[4:6], uint16(len(out)-ipv6Header))
	return out
}

// TestIPv6ExtensionHeaders: TCP behind hop-by-hop and destination options
// headers, which RFC 8200 allows on any packet and the netstack takes, is
// parsed, tracked, checked and clamped as without them; behind a routing
// header (whose final destination the checksum counts) it is left to the
// netstack, unverifiable and untracked. Before, any extension header made
// a SYN untracked, and the handler refused it (RST, counted untracked).
func TestIPv6ExtensionHeaders(t *testing.T) {
	c6, d6 := netip.MustParseAddrPort("[fd64::2]:40000"), netip.MustParseAddrPort("[2001:db8:1::2]:443")
	syn := synWithOptions(c6, d6, []byte{2, 4, 0x05, 0xa0})
	for _, kinds := range [][]byte{{0}, {60}, {0, 60}} {
		pkt := withIPv6Headers(syn, kinds...)
		if v := verifyChecksums(pkt); v != csumValid {
			t.Fatalf("headers %v: checksums %v, want valid", kinds, v)
		}
		src, dst, seg, ok := parseTCP(pkt)
		if !ok || src != c6 || dst != d6 || seg.Flags != conntrack.FlagSYN || seg.Seq != 1 || seg.MSS != 1440 {
			t.Fatalf("headers %v: parseTCP = %v %v %+v %v", kinds, src, dst, seg, ok)
		}
		if !setMSS(pkt, 1200, true) {
			t.Fatalf("headers %v: setMSS found no MSS option", kinds)
		}
		if _, _, seg, _ := parseTCP(pkt); seg.MSS != 1200 || verifyChecksums(pkt) != csumValid {
			t.Fatalf("headers %v: after setMSS, MSS %d and checksums %v; want 1200, valid", kinds, seg.MSS, verifyChecksums(pkt))
		}
		if !slices.Equal(pkt[ipv6Header:ipv6Header+8*len(kinds)], withIPv6Headers(syn, kinds...)[ipv6Header:ipv6Header+8*len(kinds)]) {
			t.Fatalf("headers %v: setMSS wrote into the extension headers", kinds)
		}
		pkt[len(pkt)-1] ^= 0x40 // a bit of the MSS option
		if v := verifyChecksums(pkt); v != csumBad {
			t.Fatalf("headers %v: a flipped bit, checksums %v, want bad", kinds, v)
		}
	}
	routed := withIPv6Headers(syn, 43)
	if _, _, _, ok := parseTCP(routed); ok {
		t.Error("TCP behind a routing header parsed")
	}
	if v := verifyChecksums(routed); v != csumUnverifiable {
		t.Errorf("TCP behind a routing header: checksums %v, want unverifiable", v)
	}
}

// TestRetransmittedSYNACKTimestamp: the netstack resends a lost SYN-ACK
// with the first one's TSval; the link gives the retransmission the clock
// of its sending, so that the client's echo measures the round trip from
// it, not from the lost one, and the connection's RTT is its own (about a
// second, the SYN-ACK's retransmission timeout, without).
func TestRetransmittedSYNACKTimestamp(t *testing.T) {
	h := newHarness(t, Config{}, clientAddr)
	h.listen(t, func(c net.Conn) { io.Copy(c, c) })
	var mu sync.Mutex
	var tsvals []uint32
	var sent []time.Time
	h.dropOut(func(p []byte) bool {
		tcp := ownTCPHeader(p)
		if len(tcp) < header.TCPMinimumSize || header.TCP(tcp).Flags() != header.TCPFlagSyn|header.TCPFlagAck {
			return false
		}
		opts := header.ParseSynOptions(tcp[header.TCPMinimumSize:int(tcp[12]>>4)*4], true)
		mu.Lock()
		defer mu.Unlock()
		tsvals = append(tsvals, opts.TSVal)
		sent = append(sent, time.Now())
		return len(tsvals) == 1 // the first is lost
	})
	c, err := h.dial(t, 80)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mu.Lock()
	ts, at := append([]uint32(nil), tsvals...), append([]time.Time(nil), sent...)
	mu.Unlock()
	if len(ts) < 2 {
		t.Fatalf("%d SYN-ACKs, want the lost one and its retransmission", len(ts))
	}
	gap := at[1].Sub(at[0]).Milliseconds()
	if d := int64(ts[1] - ts[0]); d < gap-10 || d > gap+10 {
		t.Errorf("the retransmitted SYN-ACK's TSval is %d ms after the first's, sent %d ms later; want the clock of its sending", d, gap)
	}
	waitFor(t, "the relay", func() bool { return h.s.Stats().Active.Load() == 1 })
	_, eps := h.s.reg.snapshot(nil, nil)
	var info tcpip.TCPInfoOption
	if err := eps[0].GetSockOpt(&info); err != nil {
		t.Fatal(err)
	}
	if info.RTT > 200*time.Millisecond {
		t.Errorf("the connection's RTT is %v after a lost SYN-ACK (retransmitted %d ms after the first), want the client's own, well under 200ms", info.RTT, gap)
	}
}
