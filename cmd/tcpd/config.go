package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.yaml.in/yaml/v3"
	"golang.org/x/sys/unix"

	"tcpd/configs"
	"tcpd/policy"
	"tcpd/stack"
)

// The configuration is one table, keys below: one row per key, with its
// dotted path, the field of config it sets, its kind (which decodes and
// validates it and says which values it allows), its default, when a reload
// applies it, and one line of documentation. Decoding, validation, the
// defaults, the reload and the documentation (configs/tcpd.yaml and
// README's key table, which `go generate` writes from this table and a test
// compares) all follow from it.
//
// To add a key: add its row where it belongs in the file's order, and the
// field it sets to the package's Config (for a key that reloads, to
// stack.Tunables, whose SetTunables a reload calls with the whole struct,
// or to policy.Config), with the package's own zero-value default stated on
// the field and applied in its WithDefaults (TestPackageDefaultsAgree holds
// it to the row's), and make the package use the field. A rule across keys
// goes in crossCheck. Then run `go generate ./cmd/tcpd` to rewrite
// configs/tcpd.yaml and README's table.
// Nothing else is written by hand: the allowed keys of each section, the
// error messages, the defaults, the reload diff and the documentation come
// from the row. A key that reloads but is applied by anything other than
// SetTunables, the destination policy, the log level or shutdown_grace also
// needs its applier in daemon.reload (TestLiveKeysAreApplied says so).
//
//go:generate go test -run ^TestConfigDocs$ -update-docs .

// key is one row of the table.
type key struct {
	// path is the key's dotted name in the file: "tcp.time_wait".
	path string
	// spec binds the key's kind to the field it sets and its default.
	spec spec
	// apply says what a reload applies the key to: "new connections",
	// "at once", ...; empty means it takes effect only at restart.
	apply string
	// doc is one line: what the key does, for README's table and as the
	// first sentence of the key's comment in configs/tcpd.yaml.
	doc string
	// more is the rest of the comment in configs/tcpd.yaml, if any.
	more string
}

// When a reload applies a key.
const (
	restart  = ""
	newConns = "new connections"
	atOnce   = "at once"
)

// Limits shared by several keys.
const (
	// minMTU is the smallest link MTU IPv6 allows (RFC 8200, section 5).
	minMTU = 1280
	// maxMTU is the largest IP packet: the IPv4 total length is 16 bits.
	maxMTU = 65535
	// maxConnections bounds limits.max_connections and tcp.time_wait_limit:
	// a million connections is past what one gateway's memory serves.
	maxConnections = 1 << 20
	// maxInFlight bounds limits.max_in_flight.
	maxInFlight = 1 << 16
	// maxKeepaliveCount is Linux's limit on TCP_KEEPCNT (MAX_TCP_KEEPCNT).
	maxKeepaliveCount = 127
	// maxKeepaliveTime bounds tcp.keepalive.idle and .interval: Linux
	// refuses TCP_KEEPIDLE and TCP_KEEPINTVL above 32767 s
	// (MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL), and an upstream socket whose
	// option is refused is not dialled. 9h is the round value under it.
	maxKeepaliveTime = 9 * time.Hour
	// maxUserTimeout bounds what tcpd derives from the keepalive keys for
	// TCP_USER_TIMEOUT (idle + interval × count): Linux takes it as an int
	// of milliseconds.
	maxUserTimeout = math.MaxInt32 * time.Millisecond
	// minMSS and maxMSS bound a fixed tcp.mss_clamp: 536 bytes is the MSS
	// every IPv4 host must accept (RFC 9293 3.7.1); 65495 fills the largest
	// IPv4 packet.
	minMSS = 536
	maxMSS = maxMTU - 40
)

// config is a validated configuration: what each package is handed. The
// table's rows set its fields.
type config struct {
	// stack is the data path's Config, but for Policy and Logger, which
	// stackConfig adds. Its Tunables are what a reload may change.
	stack stack.Config
	// policy holds policy.allow and policy.deny; policyConfig adds the
	// client prefixes.
	policy policy.Config
	// metrics is metrics.listen; "" means no metrics listener.
	metrics string
	// admin is admin.socket; "" means no admin socket.
	admin string
	// level and format are log.level and log.format.
	level  zapcore.Level
	format string
	// grace is shutdown_grace.
	grace time.Duration
	// memory is limits.memory.
	memory memLimit
}

// keys is the configuration table, in the file's order.
var keys = []key{
	{path: "tun.name", apply: restart,
		spec: field(func(c *config) *string { return &c.stack.TUN.Name }, "tcpd0", ifName(false)),
		doc:  "Name of the TUN device tcpd creates."},
	{path: "tun.mtu", apply: restart,
		spec: field(func(c *config) *int { return &c.stack.TUN.MTU }, 1500, integer[int](minMTU, maxMTU)),
		doc:  "MTU of the TUN device, in bytes; the MSS tcpd's SYN-ACK offers follows from it."},
	{path: "tun.addresses", apply: restart,
		spec: field(func(c *config) *[]netip.Prefix { return &c.stack.TUN.Addresses },
			[]netip.Prefix{netip.MustParsePrefix("100.64.0.1/32"), netip.MustParsePrefix("fd64::1/128")}, prefixes(true, 1)),
		doc: "Addresses given to the TUN device, as interface addresses (host bits allowed).",
		more: "None may cover a whole client prefix, or replies to the clients would be routed " +
			"back into the TUN; a single address (/32, /128) inside a client prefix is fine."},
	{path: "tun.offload", apply: restart,
		spec: field(func(c *config) *stack.Offload { return &c.stack.TUN.Offload }, stack.OffloadAuto,
			enum(choice[stack.Offload]{"auto", stack.OffloadAuto}, choice[stack.Offload]{"on", stack.OffloadOn}, choice[stack.Offload]{"off", stack.OffloadOff})),
		doc: "How packets cross the TUN: the virtio-net header with segmentation offload, or plain packets.",
		more: "auto uses the offload path when the kernel offers it and plain packets otherwise; " +
			"on requires the offload path; off never uses it."},
	{path: "tun.queues", apply: restart,
		spec: field(func(c *config) *int { return &c.stack.TUN.Queues }, 0, autoOrInt(1, stack.MaxQueues)),
		doc:  "Queues of the TUN device, each read by a packet loop of its own: auto for one per CPU tcpd may use, at most 64.",
		more: "The kernel sends each flow from the clients to one queue and tcpd answers it on the same queue. " +
			"Where the kernel refuses a multi-queue device, tcpd uses one queue and logs it; 1 is a single queue."},
	{path: "tun.route_table", apply: restart,
		spec: field(func(c *config) *int { return &c.stack.TUN.RouteTable }, 0, integer[int](0, 252)),
		doc:  "A routing table in which tcpd gives the TUN a default route for each family at every start; 0 adds none.",
		more: "The route the clients' policy rule sends their TCP into the TUN through (README, \"Running it on a WireGuard gateway\", step 4): " +
			"the kernel removes it with the TUN when tcpd stops, so a restart (systemd's, or a Kubernetes pod's) must add it again, and this does. " +
			"Never a table the host routes by otherwise: tcpd's own upstream connections would be routed into the TUN; 253 to 255 (default, main, local) are not allowed."},
	{path: "clients", apply: restart,
		spec: field(func(c *config) *[]netip.Prefix { return &c.stack.Clients },
			[]netip.Prefix{netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("fd64::/64")}, prefixes(false, 1)),
		doc: "Source prefixes of the VPN clients tcpd serves; packets from any other source are dropped."},

	{path: "policy.allow", apply: newConns,
		spec: field(func(c *config) *[]netip.Prefix { return &c.policy.Allow }, nil, prefixes(false, 0)),
		doc:  "Destination prefixes allowed even though a built-in class denies them."},
	{path: "policy.deny", apply: newConns,
		spec: field(func(c *config) *[]netip.Prefix { return &c.policy.Deny }, nil, prefixes(false, 0)),
		doc:  "Destination prefixes always denied; deny wins over allow."},

	{path: "upstream.dial_timeout", apply: newConns,
		spec: field(func(c *config) *time.Duration { return &c.stack.DialTimeout }, 10*time.Second, duration(100*time.Millisecond, 5*time.Minute, false)),
		doc:  "How long a connect to the destination may take; then the client gets RST."},
	{path: "upstream.interface", apply: newConns,
		spec: field(func(c *config) *string { return &c.stack.Interface }, "", ifName(true)),
		doc:  "Network interface upstream sockets are bound to (SO_BINDTODEVICE); \"\" binds none.",
		more: "It must be an interface of this host, or every upstream connect would fail: tcpd checks at start and at every reload " +
			"(check-config does not, as it may run on another host)."},
	{path: "upstream.mark", apply: newConns,
		spec: field(func(c *config) *uint32 { return &c.stack.Mark }, 0, integer[uint32](0, math.MaxUint32)),
		doc:  "Firewall mark set on upstream sockets (SO_MARK), for policy routing; 0 sets none."},
	{path: "upstream.source_addresses", apply: newConns,
		spec: field(func(c *config) *[]netip.Addr { return &c.stack.SourceAddresses }, nil, addresses()),
		doc: "Local addresses upstream sockets are bound to, one per connection by a hash of its 4-tuple; " +
			"each brings a local port range of its own toward every destination. [] leaves the source to the kernel's routing.",
		more: "Each must be an address of this host. The kernel picks the port at connect " +
			"(IP_BIND_ADDRESS_NO_PORT), so an address's ports are shared by all destinations. " +
			"A family with no address listed keeps the kernel's choice; see README, Upstream source ports."},

	{path: "tcp.keepalive.idle", apply: newConns,
		spec: field(func(c *config) *time.Duration { return &c.stack.Keepalive.Idle }, 120*time.Second, duration(time.Second, maxKeepaliveTime, false)),
		doc:  "Idle time before the first keepalive probe, on both legs."},
	{path: "tcp.keepalive.interval", apply: newConns,
		spec: field(func(c *config) *time.Duration { return &c.stack.Keepalive.Interval }, 30*time.Second, duration(time.Second, maxKeepaliveTime, false)),
		doc:  "Time between unanswered keepalive probes.",
		more: "idle + interval × count is the time keepalive takes to give up; under tcp.user_timeout: keepalive (the default) it is also each leg's TCP user timeout, " +
			"and then at most 596h31m23s, Linux's limit for TCP_USER_TIMEOUT."},
	{path: "tcp.keepalive.count", apply: newConns,
		spec: field(func(c *config) *int { return &c.stack.Keepalive.Count }, 4, integer[int](1, maxKeepaliveCount)),
		doc:  "Unanswered keepalive probes before the connection is reset."},
	{path: "tcp.user_timeout", apply: newConns,
		spec: field(func(c *config) *time.Duration { return &c.stack.UserTimeout }, 0, userTimeout(time.Second, maxUserTimeout.Truncate(time.Second))),
		doc: "How long a leg's sent data may go unacknowledged, or its peer's window stay closed, before the connection is reset (TCP_USER_TIMEOUT, on both legs): " +
			"keepalive for as long as keepalive takes to give up (idle + interval × count, 4 minutes by default), 0s for none.",
		more: "A peer that vanishes with data in flight is noticed after it, where keepalive, which probes only an idle connection, would not notice it; " +
			"a reader that keeps its window closed for longer (a paused download) is reset after it too, even though its TCP answers every window probe. " +
			"0s is what a Linux socket has by default: a dead peer is given up after the TCP's retransmissions (tcp_retries2, about 15 minutes; the netstack's 15), " +
			"and a paused reader is kept for as long as it answers."},
	{path: "tcp.half_close_timeout", apply: atOnce,
		spec: field(func(c *config) *time.Duration { return &c.stack.HalfCloseTimeout }, 60*time.Second, duration(time.Second, day, false)),
		doc:  "A half-closed connection that moves no byte in its open direction for this long after its half-close, and holds none waiting for a closed window, is reset."},
	{path: "tcp.idle_timeout", apply: atOnce,
		spec: field(func(c *config) *time.Duration { return &c.stack.IdleTimeout }, 0, duration(time.Second, 7*day, true)),
		doc:  "A connection that moves no byte in either direction for this long, and holds none waiting for a closed window, is reset (RST both ways); 0s never."},
	{path: "tcp.time_wait", apply: "connections entering TIME_WAIT",
		spec: field(func(c *config) *time.Duration { return &c.stack.TimeWait }, 30*time.Second, duration(time.Second, 5*time.Minute, false)),
		doc:  "How long a closed client connection is held in TIME_WAIT.",
		more: "tcpd holds it itself, in a record of under 512 bytes, not in a netstack endpoint: it acknowledges a retransmitted FIN or an old duplicate, ignores an RST (RFC 1337), lets a SYN with a newer sequence number or timestamp reopen the 4-tuple at once (RFC 6191) and answers any other SYN with a challenge ACK (RFC 5961), at most one such ACK per connection each half second, as Linux."},
	{path: "tcp.time_wait_limit", apply: "connections entering TIME_WAIT",
		spec: field(func(c *config) **int { return &c.stack.TimeWaitLimit }, new(16384), optionalInt(0, maxConnections)),
		doc:  "Most connections held in TIME_WAIT at once, like Linux's tcp_max_tw_buckets; 0 keeps none.",
		more: "One more is cut short and counted in tcpd_tcp_time_wait_overflow_total."},
	{path: "tcp.handshake_timeout", apply: newConns,
		spec: field(func(c *config) *time.Duration { return &c.stack.HandshakeTimeout }, 10*time.Second, duration(time.Second, 5*time.Minute, false)),
		doc:  "How long a client may take to ACK tcpd's SYN-ACK; then its half-open connection is dropped and its slot freed. While SYNs find limits.max_in_flight handshakes in progress, 1s."},
	{path: "tcp.congestion_control", apply: newConns,
		spec: field(func(c *config) *string { return &c.stack.CongestionControl }, "reno", names(stack.CongestionControls...)),
		doc:  "Congestion control of tcpd's netstack towards the clients.",
		more: "reno measured better on lossy mobile-like paths (see README)."},
	{path: "tcp.loss_detection", apply: newConns,
		spec: field(func(c *config) *bool { return &c.stack.NoRACK }, false, enum(choice[bool]{"rack", false}, choice[bool]{"dupack", true})),
		doc:  "Loss detection towards the clients: rack (RACK-TLP, RFC 8985) or dupack (three duplicate ACKs only).",
		more: "rack probes for a lost tail after two round trips (plus 200ms if one segment is in flight), dupack only resends it " +
			"at the retransmission timeout (at least 200ms); the netstack's probe has no floor under its two round trips, " +
			"so clients less than a millisecond away see needless probes " +
			"(about a tenth of tcpd's CPU per connection in the benchmark's lab, see bench/README.md)."},
	{path: "tcp.mss_clamp", apply: newConns,
		spec: field(func(c *config) *int { return &c.stack.MSSClamp }, stack.MSSClampAuto, mssClamp(minMSS, maxMSS)),
		doc: "Largest MSS tcpd accepts from a client's SYN: auto clamps it to the MTU of the kernel's route back to that client, " +
			"off leaves it, a number is a fixed MSS for IPv4 and IPv6.",
		more: "auto takes the route's MTU (the VPN interface's, or the route's own mtu) less 40 (IPv4) or 60 (IPv6) bytes, " +
			"as iptables' TCPMSS --clamp-mss-to-pmtu does on a router: tcpd answers from the destinations' addresses, " +
			"so an ICMP \"fragmentation needed\" never reaches it, and a segment too big for the VPN interface would stall " +
			"the connection. Clamped SYNs are counted in tcpd_tcp_mss_clamped_total."},

	{path: "limits.max_connections", apply: newConns,
		spec: field(func(c *config) *int { return &c.stack.MaxConnections }, 65536, integer[int](1, maxConnections)),
		doc:  "Connections relayed or in their handshake, all clients together.",
		more: "Each holds one descriptor, its upstream socket: the open-file limit must leave room for them (README, Descriptors)."},
	{path: "limits.max_connections_per_client", apply: newConns,
		spec: field(func(c *config) *int { return &c.stack.MaxConnectionsPerClient }, 4096, integer[int](1, maxConnections)),
		doc:  "Connections relayed or in their handshake of one client address; at most limits.max_connections."},
	{path: "limits.max_in_flight", apply: restart,
		spec: field(func(c *config) *int { return &c.stack.MaxInFlight }, 4096, integer[int](1, maxInFlight)),
		doc:  "Handshakes in progress (SYN received, not yet established), all clients together. A SYN that finds them all taken is dropped (its client retransmits) and has the half-open connections that have waited 1s for the client's ACK aborted, as Linux prunes a full SYN queue.",
		more: "The netstack's forwarder is built with it."},
	{path: "limits.max_in_flight_per_client", apply: newConns,
		spec: field(func(c *config) *int { return &c.stack.MaxInFlightPerClient }, 256, integer[int](1, maxInFlight)),
		doc:  "Handshakes in progress of one client address; at most limits.max_in_flight."},
	{path: "limits.memory", apply: atOnce,
		spec: field(func(c *config) *memLimit { return &c.memory }, memAuto, memorySize(memMin, memMax)),
		doc:  "The Go runtime's memory limit, as GOMEMLIMIT sets it: auto follows the connection cap; off sets none.",
		more: "auto is 64MiB and 64KiB for each connection tcpd can hold (limits.max_connections, or fewer if the open-file limit holds fewer), at most 3/4 of the memory tcpd may have (its cgroup's limit, else the machine's); it leaves a GOMEMLIMIT from the environment alone. Near the limit the runtime collects garbage harder instead of growing. The netstack's TCP buffers follow it, as Linux's follow tcp_mem: once the live heap passes 40% of the limit, new connections get 64KiB buffers and the open ones shrink to it (16KiB past 60%), until it is back under 30% (tcpd_tcp_buffer_pressure); with off, buffers are never shrunk. go_gc_gomemlimit_bytes shows the limit in force."},

	{path: "metrics.listen", apply: restart,
		spec: field(func(c *config) *string { return &c.metrics }, "127.0.0.1:9810", listenAddr()),
		doc:  "Listen address of the Prometheus endpoint (/metrics) and the health probes (/healthz, /readyz); \"\" turns them off.",
		more: "A host name other than localhost is refused: check-config could not tell whether it resolves where tcpd starts."},
	{path: "admin.socket", apply: restart,
		spec: field(func(c *config) *string { return &c.admin }, "/run/tcpd/tcpd.sock", socketPath()),
		doc:  "Unix socket of the admin API that tcpd conns uses (mode 0660); \"\" turns it off."},

	{path: "log.level", apply: atOnce,
		spec: field(func(c *config) *zapcore.Level { return &c.level }, zapcore.InfoLevel, enum(
			choice[zapcore.Level]{"debug", zapcore.DebugLevel}, choice[zapcore.Level]{"info", zapcore.InfoLevel},
			choice[zapcore.Level]{"warn", zapcore.WarnLevel}, choice[zapcore.Level]{"error", zapcore.ErrorLevel})),
		doc: "Least severe level logged; debug adds one line per connection."},
	{path: "log.format", apply: restart,
		spec: field(func(c *config) *string { return &c.format }, "auto", names("auto", "json", "console")),
		doc:  "Log encoding: json, console (human-readable), or auto: console on a terminal, json otherwise (under systemd or in a pipe)."},

	{path: "shutdown_grace", apply: atOnce,
		spec: field(func(c *config) *time.Duration { return &c.grace }, 10*time.Second, duration(0, 10*time.Minute, false)),
		doc:  "On SIGTERM or SIGINT, how long live connections may drain before the rest are reset; 0s resets them at once."},
}

// sections are the comments of the mappings that group keys, for
// configs/tcpd.yaml.
var sections = map[string]string{
	"policy": "Destination policy. tcpd refuses to dial loopback, link-local, unspecified, multicast, " +
		"broadcast, reserved, private (RFC 1918), CGNAT and unique-local addresses, the client " +
		"prefixes and the host's own addresses.",
	"upstream": "Sockets tcpd opens to the real destinations.",
	"tcp":      "TCP behaviour, on both the client and the upstream leg.",
	"limits": "Caps. A connection over a connection cap is answered with RST; a SYN over a " +
		"handshake cap is ignored, so the client retransmits it later.",
}

// schema is the table as a tree: the child names of each mapping in the
// file's order, and the row of each key.
var schema = newSchema(keys)

type tableSchema struct {
	children map[string][]string
	keys     map[string]*key
}

func newSchema(rows []key) tableSchema {
	s := tableSchema{children: map[string][]string{}, keys: map[string]*key{}}
	for i := range rows {
		k := &rows[i]
		if _, dup := s.keys[k.path]; dup {
			panic("config table: " + k.path + " twice")
		}
		s.keys[k.path] = k
		parent := ""
		for _, name := range strings.Split(k.path, ".") {
			if !slices.Contains(s.children[parent], name) {
				s.children[parent] = append(s.children[parent], name)
			}
			parent = join(parent, name)
		}
	}
	return s
}

// defaultConfig returns every key's default.
func defaultConfig() *config {
	c := &config{}
	for _, k := range keys {
		k.spec.setDefault(c)
	}
	return c
}

// loadConfig reads and validates the configuration file at path; "" means
// the embedded default. Each error is prefixed with the file's path.
func loadConfig(path string) (*config, error) {
	data, name := configs.Default, "embedded default configuration"
	if path != "" {
		var err error
		if data, err = readConfigFile(path); err != nil {
			return nil, err
		}
		name = path
	}
	c, err := parseConfig(data)
	if err != nil {
		return nil, prefixErrors(name, err)
	}
	return c, nil
}

// maxConfigSize bounds what tcpd reads of a configuration file: the
// documented file, every key with its comment, is about 10 KiB, so 1 MiB is
// far beyond any real configuration.
const maxConfigSize = 1 << 20

// readConfigFile reads the configuration file at path, which must be a
// regular file, or a symlink to one, of at most maxConfigSize bytes. A
// reload reads it on the loop that also takes SIGTERM: a FIFO would block
// that loop, and with it shutdown, until something wrote to it, and a
// device such as /dev/zero would be read until memory ran out.
func readConfigFile(path string) ([]byte, error) {
	// Stat first, so that nothing but a regular file is ever opened
	// (opening some devices does something).
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if err := regularFile(path, fi); err != nil {
		return nil, err
	}
	// O_NONBLOCK because the path may have become a FIFO since the Stat,
	// and opening a FIFO without it waits for a writer; it changes nothing
	// for a regular file.
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err = f.Stat(); err != nil {
		return nil, err
	}
	if err := regularFile(path, fi); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, maxConfigSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxConfigSize {
		return nil, fmt.Errorf("%s: larger than %s, the most tcpd reads of a configuration file "+
			"(the documented one, with every key, is about 10KiB)", path, fmtBytes(maxConfigSize))
	}
	return data, nil
}

// regularFile says what path is when fi, its mode after symlinks, is not
// a regular file.
func regularFile(path string, fi os.FileInfo) error {
	m := fi.Mode()
	if m.IsRegular() {
		return nil
	}
	what := "not a regular file"
	switch {
	case m.IsDir():
		what = "a directory"
	case m&os.ModeNamedPipe != 0:
		what = "a named pipe (FIFO)"
	case m&os.ModeSocket != 0:
		what = "a socket"
	case m&os.ModeCharDevice != 0:
		what = "a character device"
	case m&os.ModeDevice != 0:
		what = "a block device"
	}
	return fmt.Errorf("%s: is %s; a configuration file must be a regular file (or a symlink to one)", path, what)
}

// prefixErrors prefixes each error that errors.Join combined in err.
func prefixErrors(prefix string, err error) error {
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	out := make([]error, len(errs))
	for i, e := range errs {
		out[i] = fmt.Errorf("%s: %w", prefix, e)
	}
	return errors.Join(out...)
}

// yamlError is the YAML parser's error, with a hint where a tab indents a
// line: YAML forbids tabs there, and the parser's words ("found character
// that cannot start any token") do not say so.
func yamlError(err error, data []byte) error {
	for _, line := range bytes.Split(data, []byte("\n")) {
		if t := bytes.TrimLeft(line, " "); len(t) > 0 && t[0] == '\t' {
			return fmt.Errorf("%w (a line is indented with a tab; YAML allows only spaces)", err)
		}
	}
	return err
}

// errNoSettings is a file that sets no key. An empty file, one of only
// comments, or "~" is what a write cut short (a full disk) leaves of any
// configuration; taken as the defaults, it would drop the file's settings
// (its deny list, say) at the next reload without a word. No --config is
// how to run on the defaults.
var errNoSettings = errors.New("no settings: the file sets no key (is it empty, only comments, or cut short?); " +
	"to run on the defaults, start tcpd without --config")

// parseConfig decodes and validates a YAML configuration, which must set at
// least one key (errNoSettings). All problems are reported together, in
// line order, each naming its line and dotted key.
func parseConfig(data []byte) (*config, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil && err != io.EOF {
		return nil, yamlError(err, data)
	}
	d := newDecoder()
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == io.EOF:
	case err != nil:
		return nil, yamlError(err, data)
	default:
		d.errs = append(d.errs, &configError{line: extra.Line, msg: "a second YAML document is not allowed (one per file)"})
	}
	var root *yaml.Node
	if doc.Kind == yaml.DocumentNode && len(doc.Content) > 0 {
		root = doc.Content[0]
	}
	c := defaultConfig()
	values := map[string]*yaml.Node{}
	d.walk(root, "", values)
	if len(values) == 0 && len(d.errs) == 0 {
		return nil, errNoSettings
	}
	for _, k := range keys {
		if n := values[k.path]; n != nil {
			k.spec.decode(d, n, k.path, c)
		}
	}
	d.crossCheck(c)
	if len(d.errs) > 0 {
		slices.SortStableFunc(d.errs, func(a, b *configError) int { return a.line - b.line })
		errs := make([]error, len(d.errs))
		for i, e := range d.errs {
			errs[i] = e
		}
		return nil, errors.Join(errs...)
	}
	return c, nil
}

// crossCheck validates the keys whose allowed values depend on other keys.
func (d *decoder) crossCheck(c *config) {
	d.atMost("limits.max_connections_per_client", c.stack.MaxConnectionsPerClient, "limits.max_connections", c.stack.MaxConnections, maxConnections)
	d.atMost("limits.max_in_flight_per_client", c.stack.MaxInFlightPerClient, "limits.max_in_flight", c.stack.MaxInFlight, maxInFlight)

	if !d.bad["tun.addresses"] && !d.bad["clients"] {
		for i, a := range c.stack.TUN.Addresses {
			for j, p := range c.stack.Clients {
				if a.Masked().Overlaps(p) && a.Bits() <= p.Bits() {
					key := fmt.Sprintf("tun.addresses[%d]", i)
					d.errs = append(d.errs, &configError{line: d.lines[key], msg: fmt.Sprintf(
						"%s: %q covers clients[%d] %s, so replies to clients would be routed into the TUN (allowed: a prefix longer than /%d here, e.g. %s)",
						key, a, j, p, p.Bits(), netip.PrefixFrom(a.Addr(), a.Addr().BitLen()))})
				}
			}
		}
	}

	if ka := c.stack.Keepalive; !d.bad["tcp.keepalive.idle"] && !d.bad["tcp.keepalive.interval"] && !d.bad["tcp.keepalive.count"] && !d.bad["tcp.user_timeout"] {
		// Reported at the first of interval, count and idle the file sets.
		key := "tcp.keepalive.idle"
		for _, k := range []string{"tcp.keepalive.count", "tcp.keepalive.interval"} {
			if _, ok := d.lines[k]; ok {
				key = k
			}
		}
		if ut := ka.Idle + ka.Interval*time.Duration(ka.Count); c.stack.UserTimeout == 0 && ut > maxUserTimeout {
			d.errs = append(d.errs, &configError{line: d.lines[key], msg: fmt.Sprintf(
				"%s: idle %s + interval %s × count %d is %s, more than the user timeout Linux allows (TCP_USER_TIMEOUT, at most %s), "+
					"which tcpd sets to the time keepalive takes to give up under tcp.user_timeout: keepalive (allowed: values whose sum is at most that, or a tcp.user_timeout of its own)",
				key, fmtDuration(ka.Idle), fmtDuration(ka.Interval), ka.Count, fmtDuration(ut), fmtDuration(maxUserTimeout.Truncate(time.Second)))})
		} else if err := stack.CheckKeepalive(ka, c.stack.UserTimeout); errors.Is(err, unix.EINVAL) {
			// The ranges are Linux's; a kernel that still refuses them
			// would fail every dial. Other errors (no descriptor left)
			// say nothing of the values.
			d.errs = append(d.errs, &configError{line: d.lines[key], msg: fmt.Sprintf(
				"tcp.keepalive: this kernel refuses idle %s, interval %s, count %d on a socket (%v), so every upstream connect would fail",
				fmtDuration(ka.Idle), fmtDuration(ka.Interval), ka.Count, err)})
		}
	}

	if up := c.stack.Interface; up != "" && up == c.stack.TUN.Name && !d.bad["upstream.interface"] && !d.bad["tun.name"] {
		d.errs = append(d.errs, &configError{line: d.lines["upstream.interface"], msg: fmt.Sprintf(
			"upstream.interface: %q is tun.name; upstream sockets would loop back into tcpd (allowed: another interface, or \"\" for none)", up)})
	}
}

// atMost checks that the value of key, small, does not exceed that of
// bigKey, big. The error goes to whichever of the two the file sets,
// preferring key.
func (d *decoder) atMost(key string, small int, bigKey string, big, limit int) {
	if small <= big || d.bad[key] || d.bad[bigKey] {
		return
	}
	if line, ok := d.lines[key]; ok {
		d.errs = append(d.errs, &configError{line: line, msg: fmt.Sprintf(
			"%s: %d is out of range (allowed 1..%d, at most %s)", key, small, big, bigKey)})
		return
	}
	d.errs = append(d.errs, &configError{line: d.lines[bigKey], msg: fmt.Sprintf(
		"%s: %d is out of range (allowed %d..%d, at least %s, which defaults to %d)", bigKey, big, small, limit, key, small)})
}

// set overrides one key with a value given as text, as a command-line flag
// does, with the messages of the file's checks.
func (c *config) set(path, value string) error {
	k := schema.keys[path]
	d := newDecoder()
	if !k.spec.decode(d, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: value}, path, c) {
		return errors.New(d.errs[0].msg)
	}
	return nil
}

// reloaded returns the configuration in force after a reload that read
// file: the keys a reload applies take file's values, the others keep
// running's. changed lists the keys that need a restart and whose value in
// file differs from the one in force, as "key: in force → in the file". It
// fails when the result would break a rule across keys that file alone
// keeps: a per-client cap above a global cap that keeps its running value,
// upstream.interface naming the running TUN.
func reloaded(running, file *config) (next *config, changed []string, err error) {
	n := *running
	d := newDecoder()
	for _, k := range keys {
		switch {
		case k.apply != restart:
			k.spec.copy(&n, file)
			// A rule broken in force is reported against the key the
			// file changes.
			d.lines[k.path] = 0
		case !k.spec.equal(running, file):
			changed = append(changed, fmt.Sprintf("%s: %s → %s", k.path, k.spec.format(running), k.spec.format(file)))
		}
	}
	d.crossCheck(&n)
	if len(d.errs) > 0 {
		msgs := make([]string, len(d.errs))
		for i, e := range d.errs {
			msgs[i] = e.msg
		}
		return nil, nil, fmt.Errorf("with the settings that need a restart at their running values: %s", strings.Join(msgs, "; "))
	}
	return &n, changed, nil
}

// logLevel returns log.level.
func (c *config) logLevel() zapcore.Level { return c.level }

// logFormat returns log.format: auto, json or console.
func (c *config) logFormat() string { return c.format }

// policyConfig returns the destination policy's configuration: policy.allow,
// policy.deny and the client prefixes. The policy reads the host's
// addresses itself.
func (c *config) policyConfig() policy.Config {
	return policy.Config{
		Allow:   slices.Clone(c.policy.Allow),
		Deny:    slices.Clone(c.policy.Deny),
		Clients: slices.Clone(c.stack.Clients),
	}
}

// stackConfig returns the data path's configuration.
func (c *config) stackConfig(pol *policy.Policy, log *zap.Logger) stack.Config {
	sc := c.stack
	sc.TUN.Addresses = slices.Clone(sc.TUN.Addresses)
	sc.Clients = slices.Clone(sc.Clients)
	sc.Policy, sc.Logger = pol, log
	return sc
}

// tunMTU returns tun.mtu.
func (c *config) tunMTU() int { return c.stack.TUN.MTU }

// mssClampString returns tcp.mss_clamp as the file spells it.
func (c *config) mssClampString() string { return mssClamp(minMSS, maxMSS).format(c.stack.MSSClamp) }

// tunAddresses returns tun.addresses.
func (c *config) tunAddresses() []netip.Prefix { return slices.Clone(c.stack.TUN.Addresses) }

// clientPrefixes returns clients.
func (c *config) clientPrefixes() []netip.Prefix { return slices.Clone(c.stack.Clients) }

// shutdownGrace returns shutdown_grace.
func (c *config) shutdownGrace() time.Duration { return c.grace }

// metricsListen returns metrics.listen; "" means no metrics listener.
func (c *config) metricsListen() string { return c.metrics }

// adminSocket returns admin.socket; "" means no admin socket.
func (c *config) adminSocket() string { return c.admin }
