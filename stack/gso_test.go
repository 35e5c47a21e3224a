package stack

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"
)

// gsoChannel is a channel endpoint that offers the host GSO that tcpd's
// link offers on the offload path, with the same size.
type gsoChannel struct{ *channel.Endpoint }

func (gsoChannel) GSOMaxSize() uint32 { return gsoMaxSize }

// TestDownReadLeavesInOneSegment checks that what the relay reads from the
// upstream in one go leaves a netstack whose link does GSO as tcpd's does as
// one segment, so one TUN write and one packet through the kernel: the
// netstack cuts a write larger than its GSO segment into a full segment and
// a runt, and merges only whole writes. The sender is a netstack with the
// link's GSO, the receiver a second one; once the connection's window has
// grown, a write of the relay's read size must leave as one packet.
func TestDownReadLeavesInOneSegment(t *testing.T) {
	newNS := func(ep gvstack.LinkEndpoint, addr tcpip.Address) *gvstack.Stack {
		s := gvstack.New(gvstack.Options{
			NetworkProtocols:   []gvstack.NetworkProtocolFactory{ipv4.NewProtocol},
			TransportProtocols: []gvstack.TransportProtocolFactory{tcp.NewProtocol},
		})
		if err := s.CreateNIC(1, ep); err != nil {
			t.Fatal(err)
		}
		if err := s.AddProtocolAddress(1, tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber,
			AddressWithPrefix: addr.WithPrefix()}, gvstack.AddressProperties{}); err != nil {
			t.Fatal(err)
		}
		s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, NIC: 1}})
		t.Cleanup(func() { s.Close(); s.Wait() })
		return s
	}
	senderAddr := tcpip.AddrFrom4([4]byte{198, 18, 1, 2})
	receiverAddr := tcpip.AddrFrom4([4]byte{100, 64, 1, 2})
	sendLink := channel.New(1024, 1500, "")
	sendLink.SupportedGSOKind = gvstack.HostGSOSupported
	recvLink := channel.New(1024, 1500, "")
	// The sender leaves the TCP checksum to the "kernel", as on the
	// offload path; the receiver trusts it, as the kernel does.
	recvLink.LinkEPCapabilities = gvstack.CapabilityRXChecksumOffload
	sender := newNS(gsoChannel{sendLink}, senderAddr)
	receiver := newNS(recvLink, receiverAddr)

	// The pumps carry packets both ways; the sender's data packets are
	// counted, with their payload, while counting is on.
	var counting atomic.Bool
	var mu sync.Mutex
	var sizes []int
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	pump := func(from, to *channel.Endpoint, count bool) {
		defer wg.Done()
		for {
			pkt := from.ReadContext(ctx)
			if pkt == nil {
				return
			}
			b := pkt.ToBuffer()
			raw := b.Flatten()
			b.Release()
			pkt.DecRef()
			if ip := header.IPv4(raw); count && counting.Load() && len(raw) >= header.IPv4MinimumSize {
				tcpHdr := header.TCP(ip.Payload())
				if n := len(ip.Payload()) - int(tcpHdr.DataOffset()); n > 0 {
					mu.Lock()
					sizes = append(sizes, n)
					mu.Unlock()
				}
			}
			in := gvstack.NewPacketBuffer(gvstack.PacketBufferOptions{Payload: buffer.MakeWithData(raw)})
			to.InjectInbound(ipv4.ProtocolNumber, in)
			in.DecRef()
		}
	}
	wg.Add(2)
	go pump(sendLink, recvLink, true)
	go pump(recvLink, sendLink, false)
	t.Cleanup(func() { cancel(); wg.Wait() })

	ln, err := gonet.ListenTCP(receiver, tcpip.FullAddress{NIC: 1, Addr: receiverAddr, Port: 80}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var received atomic.Int64
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 1<<20)
		for {
			n, err := c.Read(buf)
			received.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()

	var wq waiter.Queue
	ep, terr := sender.NewEndpoint(tcp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if terr != nil {
		t.Fatal(terr)
	}
	defer ep.Close()
	we, ch := waiter.NewChannelEntry(waiter.WritableEvents)
	wq.EventRegister(&we)
	defer wq.EventUnregister(&we)
	// writable waits for the sender to signal that it can write.
	writable := func(what string) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: no writable signal in 5 s", what)
		}
	}
	if terr := ep.Connect(tcpip.FullAddress{NIC: 1, Addr: receiverAddr, Port: 80}); terr != nil {
		if _, ok := terr.(*tcpip.ErrConnectStarted); !ok {
			t.Fatal(terr)
		}
		writable("connect")
	}

	// write writes n bytes as the relay does, in one call, and waits
	// until the receiver has read them.
	var sent int64
	write := func(n int) {
		t.Helper()
		var r bytes.Reader
		r.Reset(make([]byte, n))
		for r.Len() > 0 {
			if _, terr := ep.Write(&r, tcpip.WriteOptions{}); terr != nil {
				if _, ok := terr.(*tcpip.ErrWouldBlock); !ok {
					t.Fatal(terr)
				}
				writable("write")
			}
		}
		sent += int64(n)
		waitFor(t, fmt.Sprintf("the receiver to read all %d bytes sent", sent), func() bool { return received.Load() >= sent })
	}
	// Slow start grows the congestion window well past one GSO segment.
	for range 64 {
		write(relayBufSize)
	}
	probe := func(n int) []int {
		t.Helper()
		mu.Lock()
		sizes = sizes[:0]
		mu.Unlock()
		counting.Store(true)
		write(n)
		counting.Store(false)
		mu.Lock()
		defer mu.Unlock()
		return append([]int(nil), sizes...)
	}
	// The congestion window is open once a 64 KiB write leaves cut only
	// at the GSO size. A machine that stalls past the retransmission
	// timeout shrinks it, and congestion avoidance then grows it back by
	// a few segments a write (one CI run saw 36,920 bytes grow to 52,540
	// over five tries of two writes each): so the test writes on until
	// the window is open, for up to 10 s, and probes with the relay's
	// read size then.
	var got []int
	deadline := time.Now().Add(10 * time.Second)
	for {
		open := probe(relayBufSize)
		if len(open) > 0 && open[0] == gsoMaxPayload {
			if got = probe(downReadMax); len(got) == 1 && got[0] == downReadMax {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Logf("a write of %d bytes left as segments of %v", relayBufSize, open)
			break
		}
	}
	t.Errorf("a write of the relay's read size, %d bytes, left as segments of %v; want one segment", downReadMax, got)
}
