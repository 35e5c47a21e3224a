package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.yaml.in/yaml/v3"

	"tcpd/configs"
	"tcpd/policy"
	"tcpd/stack"
)

// Limits of the configuration values.
const (
	// maxIfNameLen is IFNAMSIZ (16) minus the terminating NUL.
	maxIfNameLen = 15
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
	// maxSocketPath is the size of sockaddr_un.sun_path (108) minus its NUL.
	maxSocketPath = 107
	// day is the largest unit the limits below need; Go durations have none.
	day = 24 * time.Hour
)

// The allowed values of the enumerated keys.
var (
	offloadValues   = []string{"auto", "on", "off"}
	logLevelValues  = []string{"debug", "info", "warn", "error"}
	logFormatValues = []string{"auto", "json", "console"}
	ccValues        = []string{"reno", "cubic"}
	lossValues      = []string{"rack", "dupack"}
)

// config is a validated tcpd configuration, built by parseConfig.
type config struct {
	tun      tunConfig
	clients  []netip.Prefix
	allow    []netip.Prefix // policy.allow
	deny     []netip.Prefix // policy.deny
	upstream upstreamConfig
	tcp      tcpConfig
	limits   limitsConfig
	metrics  string // metrics.listen
	admin    string // admin.socket
	log      logConfig
	grace    time.Duration // shutdown_grace
}

type tunConfig struct {
	name      string
	mtu       int
	addresses []netip.Prefix
	offload   string // one of offloadValues
}

type upstreamConfig struct {
	dialTimeout time.Duration
	iface       string
	mark        uint32
}

type tcpConfig struct {
	keepalive        stack.Keepalive
	halfCloseTimeout time.Duration
	idleTimeout      time.Duration
	timeWait         time.Duration
	timeWaitLimit    int
	handshakeTimeout time.Duration
	congestion       string // one of ccValues
	lossDetection    string // one of lossValues
}

type limitsConfig struct {
	maxConnections          int
	maxConnectionsPerClient int
	maxInFlight             int
	maxInFlightPerClient    int
}

type logConfig struct {
	level  string // one of logLevelValues
	format string // one of logFormatValues
}

// defaultConfig returns the values a key takes when it is absent. They are
// the values configs/tcpd.yaml spells out; the tests hold the two together.
func defaultConfig() *config {
	return &config{
		tun: tunConfig{
			name:      "tcpd0",
			mtu:       1500,
			addresses: []netip.Prefix{netip.MustParsePrefix("100.64.0.1/32"), netip.MustParsePrefix("fd64::1/128")},
			offload:   "auto",
		},
		clients: []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("fd64::/64")},
		upstream: upstreamConfig{
			dialTimeout: 10 * time.Second,
		},
		tcp: tcpConfig{
			keepalive:        stack.Keepalive{Idle: 120 * time.Second, Interval: 30 * time.Second, Count: 4},
			halfCloseTimeout: 60 * time.Second,
			timeWait:         30 * time.Second,
			timeWaitLimit:    16384,
			handshakeTimeout: 10 * time.Second,
			congestion:       "reno",
			lossDetection:    "rack",
		},
		limits: limitsConfig{
			maxConnections:          65536,
			maxConnectionsPerClient: 4096,
			maxInFlight:             4096,
			maxInFlightPerClient:    256,
		},
		metrics: "127.0.0.1:9810",
		admin:   "/run/tcpd/tcpd.sock",
		log:     logConfig{level: "info", format: "auto"},
		grace:   10 * time.Second,
	}
}

// loadConfig reads and validates the configuration file at path; "" means
// the embedded default. Each error is prefixed with the file's path.
func loadConfig(path string) (*config, error) {
	data, name := configs.Default, "embedded default configuration"
	if path != "" {
		var err error
		if data, err = os.ReadFile(path); err != nil {
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

// parseConfig decodes and validates a YAML configuration. An empty document
// means every default. All problems are reported together, in line order,
// each naming its line and dotted key.
func parseConfig(data []byte) (*config, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil && err != io.EOF {
		return nil, err
	}
	d := &decoder{lines: map[string]int{}, bad: map[string]bool{}}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == io.EOF:
	case err != nil:
		return nil, err
	default:
		d.errs = append(d.errs, &configError{line: extra.Line, msg: "a second YAML document is not allowed (one per file)"})
	}
	var root *yaml.Node
	if doc.Kind == yaml.DocumentNode && len(doc.Content) > 0 {
		root = doc.Content[0]
	}
	c := d.decode(root)
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

// configError is one problem in a configuration file.
type configError struct {
	line int
	msg  string
}

func (e *configError) Error() string { return fmt.Sprintf("line %d: %s", e.line, e.msg) }

// decoder walks a YAML node tree against the configuration schema,
// collecting every problem instead of stopping at the first.
type decoder struct {
	errs []*configError
	// lines holds the line of each key's value, for checks across keys.
	lines map[string]int
	// bad holds the keys whose value was rejected, so that checks across
	// keys do not pile onto them.
	bad map[string]bool
}

func (d *decoder) errorf(n *yaml.Node, key, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if key != "" {
		msg = key + ": " + msg
		d.bad[key] = true
	}
	d.errs = append(d.errs, &configError{line: n.Line, msg: msg})
}

func (d *decoder) decode(root *yaml.Node) *config {
	c := defaultConfig()
	top := d.mapping(root, "", "tun", "clients", "policy", "upstream", "tcp", "limits", "metrics", "admin", "log", "shutdown_grace")

	tun := d.mapping(top["tun"], "tun", "name", "mtu", "addresses", "offload")
	d.ifName(tun["name"], "tun.name", false, &c.tun.name)
	d.integer(tun["mtu"], "tun.mtu", minMTU, maxMTU, &c.tun.mtu)
	d.prefixes(tun["addresses"], "tun.addresses", true, 1, &c.tun.addresses)
	d.enum(tun["offload"], "tun.offload", offloadValues, &c.tun.offload)

	d.prefixes(top["clients"], "clients", false, 1, &c.clients)

	pol := d.mapping(top["policy"], "policy", "allow", "deny")
	d.prefixes(pol["allow"], "policy.allow", false, 0, &c.allow)
	d.prefixes(pol["deny"], "policy.deny", false, 0, &c.deny)

	up := d.mapping(top["upstream"], "upstream", "dial_timeout", "interface", "mark")
	d.duration(up["dial_timeout"], "upstream.dial_timeout", false, 100*time.Millisecond, 5*time.Minute, &c.upstream.dialTimeout)
	d.ifName(up["interface"], "upstream.interface", true, &c.upstream.iface)
	var mark int
	if d.integer(up["mark"], "upstream.mark", 0, math.MaxUint32, &mark) {
		c.upstream.mark = uint32(mark)
	}

	tcp := d.mapping(top["tcp"], "tcp", "keepalive", "half_close_timeout", "idle_timeout", "time_wait", "time_wait_limit", "handshake_timeout",
		"congestion_control", "loss_detection")
	ka := d.mapping(tcp["keepalive"], "tcp.keepalive", "idle", "interval", "count")
	d.duration(ka["idle"], "tcp.keepalive.idle", false, time.Second, day, &c.tcp.keepalive.Idle)
	d.duration(ka["interval"], "tcp.keepalive.interval", false, time.Second, day, &c.tcp.keepalive.Interval)
	d.integer(ka["count"], "tcp.keepalive.count", 1, maxKeepaliveCount, &c.tcp.keepalive.Count)
	d.duration(tcp["half_close_timeout"], "tcp.half_close_timeout", false, time.Second, day, &c.tcp.halfCloseTimeout)
	d.duration(tcp["idle_timeout"], "tcp.idle_timeout", true, time.Second, 7*day, &c.tcp.idleTimeout)
	d.duration(tcp["time_wait"], "tcp.time_wait", false, time.Second, 5*time.Minute, &c.tcp.timeWait)
	d.integer(tcp["time_wait_limit"], "tcp.time_wait_limit", 0, maxConnections, &c.tcp.timeWaitLimit)
	d.duration(tcp["handshake_timeout"], "tcp.handshake_timeout", false, time.Second, 5*time.Minute, &c.tcp.handshakeTimeout)
	d.enum(tcp["congestion_control"], "tcp.congestion_control", ccValues, &c.tcp.congestion)
	d.enum(tcp["loss_detection"], "tcp.loss_detection", lossValues, &c.tcp.lossDetection)

	lim := d.mapping(top["limits"], "limits", "max_connections", "max_connections_per_client", "max_in_flight", "max_in_flight_per_client")
	d.integer(lim["max_connections"], "limits.max_connections", 1, maxConnections, &c.limits.maxConnections)
	d.integer(lim["max_connections_per_client"], "limits.max_connections_per_client", 1, maxConnections, &c.limits.maxConnectionsPerClient)
	d.integer(lim["max_in_flight"], "limits.max_in_flight", 1, maxInFlight, &c.limits.maxInFlight)
	d.integer(lim["max_in_flight_per_client"], "limits.max_in_flight_per_client", 1, maxInFlight, &c.limits.maxInFlightPerClient)

	met := d.mapping(top["metrics"], "metrics", "listen")
	d.listenAddr(met["listen"], "metrics.listen", &c.metrics)
	adm := d.mapping(top["admin"], "admin", "socket")
	d.socketPath(adm["socket"], "admin.socket", &c.admin)

	lg := d.mapping(top["log"], "log", "level", "format")
	d.enum(lg["level"], "log.level", logLevelValues, &c.log.level)
	d.enum(lg["format"], "log.format", logFormatValues, &c.log.format)

	d.duration(top["shutdown_grace"], "shutdown_grace", true, 0, 10*time.Minute, &c.grace)

	d.crossCheck(c)
	return c
}

// crossCheck validates the keys whose allowed values depend on other keys.
func (d *decoder) crossCheck(c *config) {
	d.atMost("limits.max_connections_per_client", c.limits.maxConnectionsPerClient, "limits.max_connections", c.limits.maxConnections, maxConnections)
	d.atMost("limits.max_in_flight_per_client", c.limits.maxInFlightPerClient, "limits.max_in_flight", c.limits.maxInFlight, maxInFlight)

	if !d.bad["tun.addresses"] && !d.bad["clients"] {
		for i, a := range c.tun.addresses {
			for j, p := range c.clients {
				if a.Masked().Overlaps(p) && a.Bits() <= p.Bits() {
					key := fmt.Sprintf("tun.addresses[%d]", i)
					d.errs = append(d.errs, &configError{line: d.lines[key], msg: fmt.Sprintf(
						"%s: %q covers clients[%d] %s, so replies to clients would be routed into the TUN (allowed: a prefix longer than /%d here, e.g. %s)",
						key, a, j, p, p.Bits(), netip.PrefixFrom(a.Addr(), a.Addr().BitLen()))})
				}
			}
		}
	}

	if up := c.upstream.iface; up != "" && up == c.tun.name && !d.bad["upstream.interface"] && !d.bad["tun.name"] {
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

// deref follows YAML aliases to the node they name.
func deref(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" }

// describe names what a node is, for "expected X, got Y" messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	default:
		return strconv.Quote(n.Value)
	}
}

func join(parent, key string) string {
	if parent == "" {
		return key
	}
	return parent + "." + key
}

// mapping checks that n is a mapping of the given keys only and returns the
// value node of each key present. A nil node (the key is absent) and a null
// one (the key has no value) both mean an empty mapping: all defaults.
func (d *decoder) mapping(n *yaml.Node, key string, keys ...string) map[string]*yaml.Node {
	if n == nil {
		return nil
	}
	orig, n := n, deref(n)
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		d.errorf(orig, key, "expected a mapping, got %s (allowed keys: %s)", describe(n), strings.Join(keys, ", "))
		return nil
	}
	out := make(map[string]*yaml.Node, len(keys))
	keyLines := make(map[string]int, len(keys))
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.errorf(n.Content[i], key, "a key is %s (allowed: %s)", describe(k), strings.Join(keys, ", "))
			continue
		}
		path := join(key, k.Value)
		if !slices.Contains(keys, k.Value) {
			d.errorf(n.Content[i], path, "unknown key (allowed: %s)", strings.Join(keys, ", "))
			continue
		}
		if first, dup := keyLines[k.Value]; dup {
			d.errorf(n.Content[i], path, "duplicate key (first set on line %d)", first)
			continue
		}
		out[k.Value] = v
		keyLines[k.Value] = n.Content[i].Line
		d.lines[path] = v.Line
	}
	return out
}

// scalar returns the scalar node n holds, reporting a null or another kind.
// want says what the key expects, allowed what values it takes.
func (d *decoder) scalar(n *yaml.Node, key, want, allowed string) (*yaml.Node, bool) {
	v := deref(n)
	switch {
	case isNull(v):
		d.errorf(n, key, "no value (%s)", allowed)
		return nil, false
	case v.Kind != yaml.ScalarNode:
		d.errorf(n, key, "expected %s, got %s", want, describe(v))
		return nil, false
	}
	return v, true
}

// integer decodes an integer in lo..hi into dst and reports whether it did.
func (d *decoder) integer(n *yaml.Node, key string, lo, hi int64, dst *int) bool {
	if n == nil {
		return false
	}
	allowed := fmt.Sprintf("allowed %d..%d", lo, hi)
	v, ok := d.scalar(n, key, "an integer", allowed)
	if !ok {
		return false
	}
	var x int64
	switch v.ShortTag() {
	case "!!int":
		if err := v.Decode(&x); err != nil {
			d.errorf(n, key, "%s is out of range (%s)", v.Value, allowed)
			return false
		}
	case "!!float":
		// YAML resolves an integer too long for 64 bits as a float.
		if _, ok := new(big.Int).SetString(strings.ReplaceAll(v.Value, "_", ""), 0); ok {
			d.errorf(n, key, "%s is out of range (%s)", v.Value, allowed)
			return false
		}
		fallthrough
	default:
		d.errorf(n, key, "%q is not an integer (%s)", v.Value, allowed)
		return false
	}
	if x < lo || x > hi {
		d.errorf(n, key, "%s is out of range (%s)", v.Value, allowed)
		return false
	}
	*dst = int(x)
	return true
}

// duration decodes a Go duration string in lo..hi, or 0 when zeroOK, into
// dst.
func (d *decoder) duration(n *yaml.Node, key string, zeroOK bool, lo, hi time.Duration, dst *time.Duration) {
	if n == nil {
		return
	}
	allowed := "allowed " + fmtDuration(lo) + ".." + fmtDuration(hi)
	if zeroOK && lo > 0 {
		allowed = "allowed 0s (off) or " + fmtDuration(lo) + ".." + fmtDuration(hi)
	}
	v, ok := d.scalar(n, key, "a duration", allowed)
	if !ok {
		return
	}
	x, err := time.ParseDuration(v.Value)
	if err != nil {
		d.errorf(n, key, "%q is not a duration (e.g. 10s, 1m30s)", v.Value)
		return
	}
	if (x < lo || x > hi) && !(zeroOK && x == 0) {
		d.errorf(n, key, "%s is out of range (%s)", v.Value, allowed)
		return
	}
	*dst = x
}

// fmtDuration formats a limit the way a person writes it: 24h, not 24h0m0s.
func fmtDuration(x time.Duration) string {
	s := x.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// enum decodes one of allowed into dst.
func (d *decoder) enum(n *yaml.Node, key string, allowed []string, dst *string) {
	if n == nil {
		return
	}
	v, ok := d.scalar(n, key, "a string", "allowed: "+strings.Join(allowed, ", "))
	if !ok {
		return
	}
	if msg := enumError(v.Value, allowed); msg != "" {
		d.errorf(n, key, "%s", msg)
		return
	}
	*dst = v.Value
}

// enumError describes why s is not one of allowed, or returns "".
func enumError(s string, allowed []string) string {
	if slices.Contains(allowed, s) {
		return ""
	}
	return fmt.Sprintf("%q is not allowed (allowed: %s)", s, strings.Join(allowed, ", "))
}

// str decodes any scalar as a string.
func (d *decoder) str(n *yaml.Node, key, allowed string) (string, bool) {
	v, ok := d.scalar(n, key, "a string", allowed)
	if !ok {
		return "", false
	}
	return v.Value, true
}

// ifName decodes a network interface name into dst; emptyOK allows "".
func (d *decoder) ifName(n *yaml.Node, key string, emptyOK bool, dst *string) {
	if n == nil {
		return
	}
	allowed := fmt.Sprintf("allowed: 1..%d characters, no '/', ':' or whitespace", maxIfNameLen)
	if emptyOK {
		allowed += `, or "" for none`
	}
	s, ok := d.str(n, key, allowed)
	if !ok {
		return
	}
	var why string
	switch {
	case s == "" && emptyOK:
	case s == "":
		why = "is empty"
	case len(s) > maxIfNameLen:
		why = fmt.Sprintf("is %d characters long", len(s))
	case s == "." || s == "..":
		why = "is not a name"
	default:
		for _, r := range s {
			// The kernel refuses '/', ':' and white space; like systemd,
			// refuse control and non-ASCII characters as well.
			if r == '/' || r == ':' || r <= ' ' || r >= 0x7f {
				why = fmt.Sprintf("contains %q", r)
				break
			}
		}
	}
	if why != "" {
		d.errorf(n, key, "%q %s (%s)", s, why, allowed)
		return
	}
	*dst = s
}

// listenAddr decodes a host:port listen address, or "", into dst.
func (d *decoder) listenAddr(n *yaml.Node, key string, dst *string) {
	if n == nil {
		return
	}
	const allowed = `allowed: host:port, e.g. 127.0.0.1:9810 or [::1]:9810, or "" to disable`
	s, ok := d.str(n, key, allowed)
	if !ok {
		return
	}
	if s != "" {
		_, port, err := net.SplitHostPort(s)
		if err != nil {
			d.errorf(n, key, "%q is not host:port (%s)", s, allowed)
			return
		}
		if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
			d.errorf(n, key, "%q has port %q (allowed: 1..65535)", s, port)
			return
		}
	}
	*dst = s
}

// socketPath decodes an absolute Unix socket path, or "", into dst.
func (d *decoder) socketPath(n *yaml.Node, key string, dst *string) {
	if n == nil {
		return
	}
	allowed := fmt.Sprintf(`allowed: an absolute path of at most %d bytes, or "" to disable`, maxSocketPath)
	s, ok := d.str(n, key, allowed)
	if !ok {
		return
	}
	var why string
	switch {
	case s == "":
	case !filepath.IsAbs(s):
		why = "is not an absolute path"
	case strings.HasSuffix(s, "/"):
		why = "names a directory"
	case len(s) > maxSocketPath:
		why = fmt.Sprintf("is %d bytes long", len(s))
	}
	if why != "" {
		d.errorf(n, key, "%q %s (%s)", s, why, allowed)
		return
	}
	*dst = s
}

// prefixes decodes a list of at least atLeast prefixes into dst. Unless
// hostBits, each must be canonical (no bits set past its length). An empty
// list is stored as nil.
func (d *decoder) prefixes(n *yaml.Node, key string, hostBits bool, atLeast int, dst *[]netip.Prefix) {
	if n == nil {
		return
	}
	example := "100.64.0.0/10"
	if hostBits {
		example = "100.64.0.1/32"
	}
	allowed := "allowed: a list of prefixes, e.g. [" + example + "]"
	v := deref(n)
	switch {
	case isNull(v):
		d.errorf(n, key, "no value (%s)", allowed)
		return
	case v.Kind != yaml.SequenceNode:
		d.errorf(n, key, "expected a list of prefixes, got %s (%s)", describe(v), allowed)
		return
	case len(v.Content) < atLeast:
		d.errorf(n, key, "no prefixes (allowed: a list of at least %d, e.g. [%s])", atLeast, example)
		return
	}
	var out []netip.Prefix
	ok := true
	for i, item := range v.Content {
		ikey := fmt.Sprintf("%s[%d]", key, i)
		d.lines[ikey] = item.Line
		iv := deref(item)
		if iv.Kind != yaml.ScalarNode || isNull(iv) {
			d.errorf(item, ikey, "expected a prefix, got %s (e.g. %s)", describe(iv), example)
			ok = false
			continue
		}
		p, err := netip.ParsePrefix(iv.Value)
		switch {
		case err != nil:
			d.errorf(item, ikey, "%q is not a prefix (want address/length, e.g. %s)", iv.Value, example)
		case !hostBits && p != p.Masked():
			d.errorf(item, ikey, "%q has host bits set (did you mean %s?)", iv.Value, p.Masked())
		default:
			if j := slices.Index(out, p); j >= 0 {
				d.errorf(item, ikey, "%q is listed twice (also %s[%d])", iv.Value, key, j)
			} else {
				out = append(out, p)
				continue
			}
		}
		ok = false
	}
	if !ok {
		d.bad[key] = true
		return
	}
	*dst = out
}

// setLogLevel overrides log.level (for --log-level).
func (c *config) setLogLevel(s string) error {
	if msg := enumError(s, logLevelValues); msg != "" {
		return errors.New("log.level: " + msg)
	}
	c.log.level = s
	return nil
}

// setLogFormat overrides log.format (for --log-format).
func (c *config) setLogFormat(s string) error {
	if msg := enumError(s, logFormatValues); msg != "" {
		return errors.New("log.format: " + msg)
	}
	c.log.format = s
	return nil
}

// logLevel returns log.level.
func (c *config) logLevel() zapcore.Level {
	switch c.log.level {
	case "debug":
		return zapcore.DebugLevel
	case "warn":
		return zapcore.WarnLevel
	case "error":
		return zapcore.ErrorLevel
	}
	return zapcore.InfoLevel
}

// logFormat returns log.format: auto, json or console.
func (c *config) logFormat() string { return c.log.format }

// policyConfig returns the destination policy's configuration; the policy
// reads the host's addresses itself.
func (c *config) policyConfig() policy.Config {
	return policy.Config{
		Allow:   slices.Clone(c.allow),
		Deny:    slices.Clone(c.deny),
		Clients: slices.Clone(c.clients),
	}
}

// stackConfig returns the data path's configuration.
func (c *config) stackConfig(pol *policy.Policy, log *zap.Logger) stack.Config {
	offload := map[string]stack.Offload{"auto": stack.OffloadAuto, "on": stack.OffloadOn, "off": stack.OffloadOff}
	return stack.Config{
		TUN: stack.TUNConfig{
			Name:      c.tun.name,
			MTU:       c.tun.mtu,
			Addresses: slices.Clone(c.tun.addresses),
			Offload:   offload[c.tun.offload],
		},
		Clients:                 slices.Clone(c.clients),
		Policy:                  pol,
		DialTimeout:             c.upstream.dialTimeout,
		Interface:               c.upstream.iface,
		Mark:                    c.upstream.mark,
		Keepalive:               c.tcp.keepalive,
		HalfCloseTimeout:        c.tcp.halfCloseTimeout,
		IdleTimeout:             c.tcp.idleTimeout,
		TimeWait:                c.tcp.timeWait,
		TimeWaitLimit:           stackTimeWaitLimit(c.tcp.timeWaitLimit),
		HandshakeTimeout:        c.tcp.handshakeTimeout,
		CongestionControl:       c.tcp.congestion,
		NoRACK:                  c.tcp.lossDetection == "dupack",
		MaxConnections:          c.limits.maxConnections,
		MaxConnectionsPerClient: c.limits.maxConnectionsPerClient,
		MaxInFlight:             c.limits.maxInFlight,
		MaxInFlightPerClient:    c.limits.maxInFlightPerClient,
		Logger:                  log,
	}
}

// tunables returns the settings a reload applies to the running stack.
func (c *config) tunables() stack.Tunables {
	sc := c.stackConfig(nil, nil)
	return stack.Tunables{
		DialTimeout:             sc.DialTimeout,
		Keepalive:               sc.Keepalive,
		HalfCloseTimeout:        sc.HalfCloseTimeout,
		IdleTimeout:             sc.IdleTimeout,
		TimeWait:                sc.TimeWait,
		TimeWaitLimit:           sc.TimeWaitLimit,
		MaxConnections:          sc.MaxConnections,
		MaxConnectionsPerClient: sc.MaxConnectionsPerClient,
		MaxInFlightPerClient:    sc.MaxInFlightPerClient,
	}
}

// stackTimeWaitLimit maps tcp.time_wait_limit, where 0 keeps no connection
// in TIME_WAIT (as Linux's tcp_max_tw_buckets=0 does), to stack.Config,
// where zero means the default.
func stackTimeWaitLimit(n int) int {
	if n == 0 {
		return -1
	}
	return n
}

// tunMTU returns tun.mtu.
func (c *config) tunMTU() int { return c.tun.mtu }

// tunAddresses returns tun.addresses.
func (c *config) tunAddresses() []netip.Prefix { return slices.Clone(c.tun.addresses) }

// clientPrefixes returns clients.
func (c *config) clientPrefixes() []netip.Prefix { return slices.Clone(c.clients) }

// shutdownGrace returns shutdown_grace.
func (c *config) shutdownGrace() time.Duration { return c.grace }

// timeWaitLimit returns tcp.time_wait_limit.
func (c *config) timeWaitLimit() int { return c.tcp.timeWaitLimit }

// handshakeTimeout returns tcp.handshake_timeout.
func (c *config) handshakeTimeout() time.Duration { return c.tcp.handshakeTimeout }

// metricsListen returns metrics.listen; "" means no metrics listener.
func (c *config) metricsListen() string { return c.metrics }

// adminSocket returns admin.socket; "" means no admin socket.
func (c *config) adminSocket() string { return c.admin }

// restartOnlyChanges lists the dotted keys whose value differs in other and
// that take effect only when tcpd restarts.
func (c *config) restartOnlyChanges(other *config) []string {
	var keys []string
	diff := func(key string, changed bool) {
		if changed {
			keys = append(keys, key)
		}
	}
	diff("tun.name", c.tun.name != other.tun.name)
	diff("tun.mtu", c.tun.mtu != other.tun.mtu)
	diff("tun.addresses", !slices.Equal(c.tun.addresses, other.tun.addresses))
	diff("tun.offload", c.tun.offload != other.tun.offload)
	diff("clients", !slices.Equal(c.clients, other.clients))
	diff("upstream.interface", c.upstream.iface != other.upstream.iface)
	diff("upstream.mark", c.upstream.mark != other.upstream.mark)
	diff("metrics.listen", c.metrics != other.metrics)
	diff("admin.socket", c.admin != other.admin)
	diff("log.format", c.log.format != other.log.format)
	// The forwarder's in-flight bound and the handshake timeout are fixed
	// when the netstack is built.
	diff("tcp.handshake_timeout", c.tcp.handshakeTimeout != other.tcp.handshakeTimeout)
	diff("tcp.congestion_control", c.tcp.congestion != other.tcp.congestion)
	diff("tcp.loss_detection", c.tcp.lossDetection != other.tcp.lossDetection)
	diff("limits.max_in_flight", c.limits.maxInFlight != other.limits.maxInFlight)
	return keys
}
