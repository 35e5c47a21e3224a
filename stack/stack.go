// Package stack owns tcpd's data path: the TUN device, the gVisor netstack
// attached to it, the TCP forwarder that terminates each client connection,
// and the relay that carries its bytes to a real host socket dialled to the
// connection's original destination. It reports what it sees into conntrack
// and counts everything else in Stats and NetstackStats, plain numbers that
// the metrics package names and exports; it never imports Prometheus, never
// reads files or flags, and converts every tcpip.Error at its edge.
package stack

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.zx2c4.com/wireguard/tun"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"tcpd/conntrack"
	"tcpd/policy"
)

// Offload selects how the TUN device exchanges packets with the kernel.
type Offload int

const (
	// OffloadAuto uses the virtio-net header with TSO when the kernel offers
	// it and falls back to one packet per read otherwise.
	OffloadAuto Offload = iota
	// OffloadOn requires the virtio-net header path.
	OffloadOn
	// OffloadOff uses one plain IP packet per read and write.
	OffloadOff
)

// TUNConfig describes the TUN device tcpd creates.
type TUNConfig struct {
	// Name of the device. Empty means "tcpd0".
	Name string
	// MTU of the device. Zero means 1500.
	MTU int
	// Addresses given to the device. They must not cover the client prefixes,
	// or replies to clients would be routed back into the TUN.
	Addresses []netip.Prefix
	// Offload selects the virtio-net header path. The zero value is OffloadAuto.
	Offload Offload
	// TxQueueLen is the device's transmit queue length (the queue of packets
	// the kernel hands to tcpd). Zero means 10000, so that a burst of client
	// segments is queued rather than dropped.
	TxQueueLen int
	// Queues is how many queues the device has, each read by a packet loop
	// of its own. Zero means one per CPU the process may use (GOMAXPROCS),
	// at most MaxAutoQueues; where the kernel refuses several, one.
	Queues int
	// RouteTable, if not 0, is the routing table in which the device gets a
	// default route for each family once it is up, the route through which
	// the clients' policy rule sends their TCP into it. The kernel removes
	// it with the device, so each start adds it again.
	RouteTable int
}

// ErrTUNInUse says the TUN device TUNConfig.Name names has queues attached
// by another process.
var ErrTUNInUse = errors.New("the TUN device is in use by another process (another tcpd?)")

// MaxAutoQueues bounds the queues TUNConfig.Queues 0 opens: a packet loop
// per core up to the 64 cores tcpd is planned for (bench/README.md).
const MaxAutoQueues = 64

// MaxQueues is the most queues a TUN may have (MAX_TAP_QUEUES in
// linux/if_tun.h).
const MaxQueues = 256

// PerCPUDescriptors is how many descriptors a Stack started now with TUN
// configuration c holds that grow with the CPUs: one per TUN queue and one
// per relay shard's epoll set (a shard per P).
func PerCPUDescriptors(c TUNConfig) int {
	return c.queueCount() + runtime.GOMAXPROCS(0)
}

// queueCount resolves Queues.
func (c TUNConfig) queueCount() int {
	if c.Queues > 0 {
		return min(c.Queues, MaxQueues)
	}
	return min(runtime.GOMAXPROCS(0), MaxAutoQueues)
}

// Keepalive configures TCP keepalive on both legs of every connection.
type Keepalive struct {
	// Idle time before the first probe. Zero means 120s.
	Idle time.Duration
	// Interval between probes. Zero means 30s.
	Interval time.Duration
	// Count of unanswered probes before the connection is reset. Zero means 4.
	Count int
}

// Config configures a Stack. The zero value works except for Clients, which
// must name at least one prefix. Each default is stated on its field;
// WithDefaults applies them.
type Config struct {
	TUN TUNConfig
	// Clients are the source prefixes tcpd serves. Packets from any other
	// source are dropped before they reach the netstack.
	Clients []netip.Prefix
	// Policy decides which destinations may be dialled. Nil means the
	// built-in secure default for Clients (policy.New with no allow list).
	Policy *policy.Policy

	// FDBudget caps relayed connections and handshakes in progress
	// together at what the open-file limit leaves after tcpd's own
	// descriptors: each holds one, its upstream socket (the client leg
	// lives in the netstack). More are refused with RST and counted
	// DropFDLimit, so that tcpd never runs out of descriptors for its
	// listeners and logs. Zero means no cap.
	FDBudget int
	// MaxInFlight caps handshakes in progress (SYN received, not yet
	// established): the netstack's forwarder is built with it. Zero means
	// 4096.
	MaxInFlight int

	// Tunables are the settings SetTunables may change later.
	Tunables

	// Logger receives the stack's logs. Nil means no logging.
	Logger *zap.Logger

	// dev replaces the real TUN device in tests (one queue).
	dev tun.Device
	// noTrack keeps segments away from conntrack, for the benchmark that
	// prices tracking.
	noTrack bool
	// redirect, in tests, says where to connect instead of the original
	// destination, or fails the connect with its error.
	redirect func(dst netip.AddrPort) (netip.AddrPort, error)
	// routes replaces the kernel's answers about routes back to clients in
	// tests; nil with a test device means no automatic MSS clamping.
	routes pathQuerier
}

const nicID tcpip.NICID = 1

// WithDefaults returns c with each unset field that has a default set to it.
func (c Config) WithDefaults() Config {
	if c.TUN.Name == "" {
		c.TUN.Name = "tcpd0"
	}
	if c.TUN.MTU == 0 {
		c.TUN.MTU = 1500
	}
	if c.TUN.TxQueueLen == 0 {
		c.TUN.TxQueueLen = 10000
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = 4096
	}
	c.Tunables = c.Tunables.WithDefaults()
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return c
}

// Stack is a running data path: TUN, netstack, forwarder and relays.
type Stack struct {
	cfg    Config
	log    *zap.Logger
	dev    device
	link   *link
	ns     *gvstack.Stack
	policy atomic.Pointer[policy.Policy]
	stats  Stats
	// srcSeed keys the hash that picks an upstream source address.
	srcSeed maphash.Seed

	// draining is set once shutdown has begun: new SYNs are refused.
	draining atomic.Bool

	// ctx is cancelled when the stack closes; every dial and relay watches it.
	ctx    context.Context
	cancel context.CancelFunc
	// conns counts the connections in the stack's hands: a handler
	// (until its relay starts), a relay (until it ends).
	conns sync.WaitGroup
	// bg tracks the stack's own background loop (maintain).
	bg sync.WaitGroup

	// shards run the relays and the upstream connects (shard.go);
	// nextShard picks the next one.
	shards    []*shard
	nextShard atomic.Uint32
	// adm holds the connection slots and the relays in progress
	// (admission.go); reg the netstack endpoints (registry.go).
	adm *admission
	reg *registry

	// table is the connection manager every segment and lifecycle event
	// reaches.
	table *conntrack.Table
	// dialWarn rate-limits the warnings of warnDialFailure.
	dialWarn [NumDialFailures]rateLimit
	// tune holds the settings that reload may change; read it, never
	// cfg, for those. tuneMu serialises SetTunables.
	tune   atomic.Pointer[Tunables]
	tuneMu sync.Mutex
	// devEvents is closed when the device has closed its event channel.
	devEvents chan struct{}
	// paths caches the MSS of the routes back to clients; nil when the
	// kernel cannot be asked (tests, other systems).
	paths *paths
	// keptSYNs are the SYNs reuseSYN holds back.
	keptSYNs
	// maint is the maintenance loop's own state (maintain.go).
	maint maintenance

	closeOnce sync.Once
	closeErr  error
}

// New creates the TUN device (or uses the test device), builds the netstack
// over it and starts reading packets. The stack serves until Close.
func New(cfg Config) (*Stack, error) {
	cfg = cfg.WithDefaults()
	if len(cfg.Clients) == 0 {
		return nil, errors.New("stack: no client prefixes configured")
	}
	if err := cfg.Tunables.check(); err != nil {
		return nil, fmt.Errorf("stack: %w", err)
	}
	s := &Stack{
		cfg:     cfg,
		log:     cfg.Logger,
		reg:     newRegistry(),
		table:   conntrack.New(cfg.Tunables.conntrackConfig()),
		srcSeed: maphash.MakeSeed(),
	}
	s.adm = newAdmission(s)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	tune := cfg.Tunables
	s.tune.Store(&tune)
	pol := cfg.Policy
	if pol == nil {
		var err error
		pol, err = policy.New(policy.Config{Clients: cfg.Clients})
		if err != nil {
			return nil, fmt.Errorf("stack: default policy: %w", err)
		}
	}
	s.policy.Store(pol)

	shards, err := newShards(s, runtime.GOMAXPROCS(0))
	if err != nil {
		return nil, fmt.Errorf("stack: relay shards: %w", err)
	}
	s.shards = shards
	closeShards := func() {
		for _, sh := range shards {
			sh.close()
		}
	}

	var dev device = cfg.dev
	if cfg.dev == nil {
		q, err := createTUN(cfg.TUN, cfg.Logger)
		if err != nil {
			closeShards()
			return nil, err
		}
		dev = q
	}
	s.dev = dev
	s.devEvents = drainEvents(dev)

	if err := s.buildNetstack(); err != nil {
		dev.Close()
		closeShards()
		return nil, err
	}
	s.startPaths()
	s.link.start()
	s.maint.lastTick.Store(time.Now().UnixNano())
	s.bg.Add(1)
	go s.maintain()
	return s, nil
}

// drainEvents reads the device's events (up, down, MTU) until the device
// closes their channel at Close, and closes the returned channel then.
// Nothing in tcpd acts on them, but they must be read: wireguard's TUN
// sends them from its netlink listener into a channel of five, and a
// listener blocked on a full one never sees Close and outlives the stack.
// Every link change tcpd makes while configuring the TUN (MTU, queue
// length, rp_filter, multicast, up) is one or two events.
func drainEvents(dev device) chan struct{} {
	done := make(chan struct{})
	events := dev.Events()
	if events == nil {
		close(done)
		return done
	}
	go func() {
		defer close(done)
		for range events {
		}
	}()
	return done
}

// Offload reports whether the TUN exchanges batches with the virtio-net
// header (TSO/GRO) rather than one plain packet per call.
func (s *Stack) Offload() bool { return s.link.offload() }

// Queues returns how many queues the TUN has, each with its packet loop.
func (s *Stack) Queues() int { return len(s.link.queues) }

// device is what the stack needs of its TUN besides the link's reads and
// writes: a *queueTUN, or wireguard's tun.Device in tests.
type device interface {
	Name() (string, error)
	MTU() (int, error)
	Events() <-chan tun.Event
	Close() error
}

// buildNetstack creates the gVisor stack with one NIC over the TUN link,
// promiscuous and spoofing so that it terminates connections to any
// destination, and the TCP forwarder.
func (s *Stack) buildNetstack() error {
	mtu, err := s.dev.MTU()
	if err != nil {
		return fmt.Errorf("read TUN MTU: %w", err)
	}
	if s.link, err = newLink(s.dev, uint32(mtu), s.cfg.Clients, &s.stats, s.table); err != nil {
		return err
	}
	s.link.noTrack = s.cfg.noTrack
	s.link.reuse = s.reuseSYN
	s.link.clampSYN = s.clampSYN
	s.ns = gvstack.New(gvstack.Options{
		NetworkProtocols:   []gvstack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol},
		TransportProtocols: []gvstack.TransportProtocolFactory{tcp.NewProtocol},
	})
	if err := s.setTCPOptions(); err != nil {
		return err
	}
	if err := s.setTunableTCPOptions(&s.cfg.Tunables); err != nil {
		return err
	}
	if terr := s.ns.CreateNICWithOptions(nicID, s.link, gvstack.NICOptions{Name: s.cfg.TUN.Name}); terr != nil {
		return fmt.Errorf("create NIC: %s", terr)
	}
	if terr := s.ns.SetPromiscuousMode(nicID, true); terr != nil {
		return fmt.Errorf("promiscuous mode: %s", terr)
	}
	if terr := s.ns.SetSpoofing(nicID, true); terr != nil {
		return fmt.Errorf("spoofing: %s", terr)
	}
	s.ns.SetRouteTable([]tcpip.Route{
		{Destination: header.IPv4EmptySubnet, NIC: nicID},
		{Destination: header.IPv6EmptySubnet, NIC: nicID},
	})
	// The receive window of a half-open connection is the default receive
	// buffer; zero asks the forwarder for exactly that.
	fwd := tcp.NewForwarder(s.ns, 0, s.cfg.MaxInFlight, s.handle)
	s.adm.syns = newSynFlight(s.cfg.MaxInFlight)
	s.ns.SetTransportProtocolHandler(tcp.ProtocolNumber, s.forwardSYN(fwd))
	return nil
}

// setTCPOptions applies the stack-wide TCP settings that never change: no
// TIME_WAIT in the netstack (conntrack keeps it), SACK and the buffer
// ranges with receive moderation.
func (s *Stack) setTCPOptions() error {
	sack := tcpip.TCPSACKEnabled(true)
	moderate := tcpip.TCPModerateReceiveBufferOption(true)
	// The buffer ranges of no pressure (buffers.go): 1 MiB, what a new
	// connection starts with before receive moderation grows it, and 4 MiB
	// at most in each direction.
	tw := netstackTimeWait
	return s.setTransportOptions(append([]transportOption{
		{"TIME_WAIT timeout", &tw},
		{"SACK", &sack},
		{"receive moderation", &moderate},
	}, bufferRangeOptions(bufNormal)...))
}

// transportOption is one stack-wide TCP option, named for errors.
type transportOption struct {
	name string
	opt  tcpip.SettableTransportProtocolOption
}

func (s *Stack) setTransportOptions(opts []transportOption) error {
	for _, o := range opts {
		if terr := s.ns.SetTransportProtocolOption(tcp.ProtocolNumber, o.opt); terr != nil {
			return fmt.Errorf("set TCP %s: %s", o.name, terr)
		}
	}
	return nil
}

// SetPolicy replaces the destination policy for new connections.
func (s *Stack) SetPolicy(p *policy.Policy) { s.policy.Store(p) }

// Policy returns the destination policy in force.
func (s *Stack) Policy() *policy.Policy { return s.policy.Load() }

// Stats returns the stack's counters.
func (s *Stack) Stats() *Stats { return &s.stats }

// Name returns the TUN device's name.
func (s *Stack) Name() string {
	name, err := s.dev.Name()
	if err != nil {
		return s.cfg.TUN.Name
	}
	return name
}

// Shutdown stops accepting new connections and waits until the live ones
// finish or ctx is done; then it resets whatever is left and closes the
// stack. It returns the number of connections that had to be reset.
func (s *Stack) Shutdown(ctx context.Context) (reset int, err error) {
	s.draining.Store(true)
	done := make(chan struct{})
	go func() {
		s.conns.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		reset = s.adm.abortAll()
	}
	return reset, s.Close()
}

// Close resets every connection, stops the netstack and removes the TUN. It
// is idempotent and waits for every goroutine the stack started.
func (s *Stack) Close() error {
	s.closeOnce.Do(func() {
		s.draining.Store(true)
		s.cancel() // ends dials in progress and the maintain loop
		s.bg.Wait()
		// RST to both legs while the TUN is still there: the shards do it.
		s.adm.abortAll()
		// Aborting the netstack's endpoints also ends handshakes that a
		// handler is still waiting for.
		s.ns.Close()
		s.conns.Wait()
		for _, sh := range s.shards {
			sh.close()
		}
		// Closing the device ends the read loop.
		s.link.closing.Store(true)
		s.closeErr = s.dev.Close()
		s.link.wait()
		<-s.devEvents
		s.ns.Wait()
		if s.paths != nil && s.paths.stop != nil {
			s.paths.stop()
		}
	})
	return s.closeErr
}
