// Package netlab builds throwaway network-namespace topologies for tcpd's
// root tests, benchmarks and demo; it always removes what it made.
//
// A lab is three network namespaces joined by two veth pairs:
//
//	client ns                 gateway ns                              server ns
//	100.64.1.2/24  <--veth--> 100.64.1.1/24   198.18.1.1/24  <--veth--> 198.18.1.2/24
//	fd64::2/64                fd64::fffe/64   2001:db8:1::1/64          2001:db8:1::2/64
//
// The client and the server route everything through the gateway. The
// gateway forwards (IPv4 and IPv6), has reverse-path filtering off and has
// no default route at all: nothing in a lab can reach past the machine.
// Without further setup the gateway kernel simply forwards client<->server
// traffic, which is the "kernel baseline" benchmarks compare tcpd against.
// [Lab.RouteIntoTUN] (called by [Lab.StartTCPD]) adds the policy routing a
// VPN gateway running tcpd would have, so that everything arriving from
// clients, even for the gateway's own addresses, goes into tcpd's TUN.
//
// With [Options].WireGuard the clients are WireGuard peers instead: several
// client namespaces, each joined to the gateway by an underlay veth and a
// real WireGuard tunnel over it (wgpeer processes built from the
// golang.zx2c4.com/wireguard module; no kernel module, no wg binary), with
// the gateway set up as README's "Running it on a WireGuard gateway" says.
// See [WireGuard].
//
// [Lab.ImpairClientLink] emulates a lossy, slow client link in userspace
// (delay, jitter, loss, duplication, reordering, like netem, which the
// kernels tcpd is tested on lack): packets crossing the client link are
// routed through a TUN on the sending side, held by the test process and
// then put on the veth with an AF_PACKET socket.
//
// Namespace names start with "tcpd-" followed by random hex, so labs of
// concurrently running test binaries never collide, and [Leftovers] can find
// what a crashed run left behind. Everything needs root (CAP_NET_ADMIN and
// CAP_SYS_ADMIN); [NewT] skips the test otherwise.
package netlab
