package stack

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
)

// testClient is the tier A client: a gVisor stack of its own (as
// wireguard's netstack builds one: SACK on, everything else the netstack's
// defaults) whose packets the harness carries to and from tcpd's TUN. Its
// TIME_WAIT is a second, so that the connections a test closes leave the
// test process's heap, which some tests weigh.
type testClient struct {
	s  *gvstack.Stack
	ep *channel.Endpoint
}

const clientNIC = 1

// clientTimeWait is the client stack's TIME_WAIT.
const clientTimeWait = time.Second

func newTestClient(src netip.Addr, mtu int) (*testClient, error) {
	s := gvstack.New(gvstack.Options{
		NetworkProtocols:   []gvstack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []gvstack.TransportProtocolFactory{tcp.NewProtocol},
		HandleLocal:        true,
	})
	c := &testClient{s: s, ep: channel.New(1024, uint32(mtu), "")}
	sack := tcpip.TCPSACKEnabled(true)
	tw := tcpip.TCPTimeWaitTimeoutOption(clientTimeWait)
	for _, o := range []tcpip.SettableTransportProtocolOption{&sack, &tw} {
		if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, o); err != nil {
			return nil, fmt.Errorf("client stack option: %s", err)
		}
	}
	if err := s.CreateNIC(clientNIC, c.ep); err != nil {
		return nil, fmt.Errorf("client NIC: %s", err)
	}
	proto := ipv4.ProtocolNumber
	if src.Is6() {
		proto = ipv6.ProtocolNumber
	}
	if err := s.AddProtocolAddress(clientNIC, tcpip.ProtocolAddress{Protocol: proto,
		AddressWithPrefix: tcpip.AddrFromSlice(src.AsSlice()).WithPrefix()}, gvstack.AddressProperties{}); err != nil {
		return nil, fmt.Errorf("client address: %s", err)
	}
	s.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: clientNIC},
		{Destination: header.IPv6EmptySubnet, NIC: clientNIC},
	})
	return c, nil
}

// DialContextTCPAddrPort connects to addr through tcpd.
func (c *testClient) DialContextTCPAddrPort(ctx context.Context, addr netip.AddrPort) (*gonet.TCPConn, error) {
	proto := ipv4.ProtocolNumber
	if addr.Addr().Is6() {
		proto = ipv6.ProtocolNumber
	}
	return gonet.DialContextTCP(ctx, c.s, tcpip.FullAddress{NIC: clientNIC, Addr: tcpip.AddrFromSlice(addr.Addr().AsSlice()), Port: addr.Port()}, proto)
}

// read returns the next packet the client sends, nil once ctx is done.
func (c *testClient) read(ctx context.Context) []byte {
	pkt := c.ep.ReadContext(ctx)
	if pkt == nil {
		return nil
	}
	defer pkt.DecRef()
	b := pkt.ToBuffer()
	defer b.Release()
	return b.Flatten()
}

// write hands the client a packet from tcpd.
func (c *testClient) write(p []byte) {
	proto := ipv4.ProtocolNumber
	if len(p) > 0 && p[0]>>4 == 6 {
		proto = ipv6.ProtocolNumber
	}
	pkt := gvstack.NewPacketBuffer(gvstack.PacketBufferOptions{Payload: buffer.MakeWithData(p)})
	c.ep.InjectInbound(proto, pkt)
	pkt.DecRef()
}

func (c *testClient) close() {
	c.s.Close()
	c.ep.Close()
	c.s.Wait()
}
