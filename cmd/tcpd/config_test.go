package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.yaml.in/yaml/v3"
	"golang.org/x/sys/unix"

	"tcpd/configs"
	"tcpd/conntrack"
	"tcpd/policy"
	"tcpd/stack"
)

var updateDocs = flag.Bool("update-docs", false, "rewrite configs/tcpd.yaml and README's key table from the configuration table")

// documentedDefaults spells out, independently of the table, the defaults
// that configs/tcpd.yaml and README document.
func documentedDefaults() *config {
	pfx := netip.MustParsePrefix
	c := &config{
		metrics: "127.0.0.1:9810",
		admin:   "/run/tcpd/tcpd.sock",
		level:   zapcore.InfoLevel,
		format:  "auto",
		grace:   10 * time.Second,
		memory:  memAuto,
	}
	c.stack.TUN = stack.TUNConfig{
		Name:      "tcpd0",
		MTU:       1500,
		Addresses: []netip.Prefix{pfx("100.64.0.1/32"), pfx("fd64::1/128")},
		Offload:   stack.OffloadAuto,
	}
	c.stack.Clients = []netip.Prefix{pfx("100.64.0.0/10"), pfx("fd64::/64")}
	c.stack.MaxInFlight = 4096
	c.stack.Tunables = stack.Tunables{
		DialTimeout:             10 * time.Second,
		Keepalive:               stack.Keepalive{Idle: 2 * time.Minute, Interval: 30 * time.Second, Count: 4},
		HalfCloseTimeout:        time.Minute,
		TimeWait:                30 * time.Second,
		TimeWaitLimit:           new(16384),
		HandshakeTimeout:        10 * time.Second,
		CongestionControl:       "reno",
		MaxConnections:          65536,
		MaxConnectionsPerClient: 4096,
		MaxInFlightPerClient:    256,
	}
	return c
}

func mustParse(t *testing.T, data string) *config {
	t.Helper()
	c, err := parseConfig([]byte(data))
	if err != nil {
		t.Fatalf("parseConfig:\n%s\nerror: %v", data, err)
	}
	return c
}

func TestDefaults(t *testing.T) {
	want := documentedDefaults()
	onDisk, err := os.ReadFile("../../configs/tcpd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(onDisk, configs.Default) {
		t.Error("configs.Default differs from configs/tcpd.yaml")
	}
	for name, data := range map[string]string{
		"embedded":               string(configs.Default),
		"on disk":                string(onDisk),
		"one key at its default": "tun:\nlog: {level: info}\n",
	} {
		if got := mustParse(t, data); !reflect.DeepEqual(got, want) {
			t.Errorf("%s: got %+v\nwant %+v", name, got, want)
		}
	}
	if got := defaultConfig(); !reflect.DeepEqual(got, want) {
		t.Errorf("defaultConfig() = %+v\nwant %+v", got, want)
	}
	c, err := loadConfig("")
	if err != nil || !reflect.DeepEqual(c, want) {
		t.Errorf("loadConfig(\"\") = %+v, %v", c, err)
	}
}

// TestPackageDefaultsAgree: the packages' own zero-value defaults, which
// serve them outside the daemon, are the daemon's defaults.
func TestPackageDefaultsAgree(t *testing.T) {
	def := defaultConfig()
	got := stack.Config{}.WithDefaults()
	want := def.stack
	// What the daemon sets and the stack has no default for, or what
	// the table does not hold.
	got.Clients, got.TUN.Addresses, got.Logger, got.TUN.TxQueueLen = want.Clients, want.TUN.Addresses, nil, 0
	if !reflect.DeepEqual(got, want) {
		t.Errorf("stack defaults:\n%+v\nthe daemon's:\n%+v", got, want)
	}
	ct := conntrack.Config{}.WithDefaults()
	if ct.TimeWait != def.stack.TimeWait || *ct.TimeWaitLimit != *def.stack.TimeWaitLimit {
		t.Errorf("conntrack defaults TIME_WAIT %v, cap %d; the daemon's %v, %d",
			ct.TimeWait, *ct.TimeWaitLimit, def.stack.TimeWait, *def.stack.TimeWaitLimit)
	}
}

// TestConfigDocs holds configs/tcpd.yaml and README's key table to what
// the table renders. go generate ./cmd/tcpd (-update-docs) rewrites them.
func TestConfigDocs(t *testing.T) {
	const yamlPath, readmePath = "../../configs/tcpd.yaml", "../../README.md"
	yamlWant := renderYAML()
	readme, err := os.ReadFile(readmePath)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(readme, []byte(readmeTableBegin))
	j := bytes.Index(readme, []byte(readmeTableEnd))
	if i < 0 || j < i {
		t.Fatalf("README lacks the markers of the key table:\n%s%s", readmeTableBegin, readmeTableEnd)
	}
	readmeWant := slices.Concat(readme[:i], []byte(renderREADMETable()), readme[j+len(readmeTableEnd):])
	if *updateDocs {
		if err := os.WriteFile(yamlPath, yamlWant, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(readmePath, readmeWant, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if got, err := os.ReadFile(yamlPath); err != nil || !bytes.Equal(got, yamlWant) {
		t.Errorf("configs/tcpd.yaml is not what the table renders (%v); run go generate ./cmd/tcpd", err)
	}
	if !bytes.Equal(readme, readmeWant) {
		t.Error("README's key table is not what the table renders; run go generate ./cmd/tcpd")
	}
	// The rendered default parses back to the defaults (TestDefaults
	// checks the embedded file; this checks the renderer).
	if got := mustParse(t, string(yamlWant)); !reflect.DeepEqual(got, defaultConfig()) {
		t.Errorf("the rendered configuration parses to %+v", got)
	}
}

// TestTableRows checks each row: a path of lower-case words, a doc line,
// and a kind that takes its own default.
func TestTableRows(t *testing.T) {
	def := defaultConfig()
	for _, k := range keys {
		for _, part := range strings.Split(k.path, ".") {
			if part == "" || strings.Trim(part, "abcdefghijklmnopqrstuvwxyz_") != "" {
				t.Errorf("%s: not a dotted path of lower-case words", k.path)
			}
		}
		if k.doc == "" || strings.Contains(k.doc, "\n") || !strings.HasSuffix(k.doc, ".") {
			t.Errorf("%s: doc %q is not one sentence-ended line", k.path, k.doc)
		}
		if k.spec.allowed() == "" {
			t.Errorf("%s: says nothing about the values it allows", k.path)
		}
		// The default, written as the file would hold it, decodes to
		// itself.
		c := &config{}
		text := "x: " + k.spec.format(def)
		n := mustNode(t, text)
		d := newDecoder()
		if !k.spec.decode(d, n, k.path, c) || !k.spec.equal(c, def) {
			t.Errorf("%s: its default %s does not decode to itself: %v", k.path, k.spec.format(def), d.errs)
		}
	}
}

// TestLiveKeysAreApplied: every key a reload applies sets a field that the
// reload hands on (the stack's Tunables, the policy's lists, the log level,
// shutdown_grace); a key that needs a restart sets none of them.
func TestLiveKeysAreApplied(t *testing.T) {
	c := &config{}
	within := func(addr uintptr, start any, size uintptr) bool {
		s := reflect.ValueOf(start).Pointer()
		return addr >= s && addr < s+size
	}
	for _, k := range keys {
		a := k.spec.fieldAddr(c)
		applied := within(a, &c.stack.Tunables, reflect.TypeFor[stack.Tunables]().Size()) ||
			within(a, &c.policy.Allow, reflect.TypeFor[[]netip.Prefix]().Size()) ||
			within(a, &c.policy.Deny, reflect.TypeFor[[]netip.Prefix]().Size()) ||
			a == reflect.ValueOf(&c.level).Pointer() || a == reflect.ValueOf(&c.grace).Pointer() ||
			a == reflect.ValueOf(&c.memory).Pointer() // applyMemoryLimit
		switch {
		case k.apply != restart && !applied:
			t.Errorf("%s reloads (%s), but its field is not one a reload applies: give daemon.reload an applier for it", k.path, k.apply)
		case k.apply == restart && applied:
			t.Errorf("%s needs a restart, but a reload would apply its field: mark it live", k.path)
		}
	}
}

func TestParseConfigValid(t *testing.T) {
	c := mustParse(t, `
tun:
  name: vpn-tcp.1
  mtu: 9000
  addresses: ["100.64.0.1/24", "fd64::1/120"]   # host bits, inside the clients
  offload: "off"
clients: ["100.64.0.0/10", "fd64::/64"]
policy:
  allow: [10.1.0.0/16]
  deny: [203.0.113.0/24, "2001:db8::/32"]
upstream:
  dial_timeout: 1m30s
  interface: eth1
  mark: 0xff
tcp:
  keepalive: {idle: 1h, interval: 1s, count: 127}
  half_close_timeout: 24h
  idle_timeout: 168h
  time_wait: 5m
  time_wait_limit: 0
  handshake_timeout: 1s
  congestion_control: cubic
  loss_detection: dupack
  mss_clamp: off
limits:
  max_connections: 1_000
  max_connections_per_client: 1000
  max_in_flight: 100
  max_in_flight_per_client: 1
  memory: 1536MiB
metrics:
  listen: ""
admin:
  socket: ""
log:
  level: debug
  format: json
shutdown_grace: 0s
`)
	pfx := netip.MustParsePrefix
	want := &config{level: zapcore.DebugLevel, format: "json", memory: 1536 << 20}
	want.stack.TUN = stack.TUNConfig{
		Name:      "vpn-tcp.1",
		MTU:       9000,
		Addresses: []netip.Prefix{pfx("100.64.0.1/24"), pfx("fd64::1/120")},
		Offload:   stack.OffloadOff,
	}
	want.stack.Clients = []netip.Prefix{pfx("100.64.0.0/10"), pfx("fd64::/64")}
	want.policy = policy.Config{Allow: []netip.Prefix{pfx("10.1.0.0/16")}, Deny: []netip.Prefix{pfx("203.0.113.0/24"), pfx("2001:db8::/32")}}
	want.stack.MaxInFlight = 100
	want.stack.Tunables = stack.Tunables{
		DialTimeout:             90 * time.Second,
		Keepalive:               stack.Keepalive{Idle: time.Hour, Interval: time.Second, Count: 127},
		HalfCloseTimeout:        24 * time.Hour,
		IdleTimeout:             7 * 24 * time.Hour,
		TimeWait:                5 * time.Minute,
		TimeWaitLimit:           new(0),
		HandshakeTimeout:        time.Second,
		CongestionControl:       "cubic",
		NoRACK:                  true,
		MaxConnections:          1000,
		MaxConnectionsPerClient: 1000,
		MaxInFlightPerClient:    1,
		MSSClamp:                stack.MSSClampOff,
	}
	want.stack.Interface, want.stack.Mark = "eth1", 255
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got  %+v\nwant %+v", c, want)
	}
	if c.shutdownGrace() != 0 || c.tunMTU() != 9000 || c.metricsListen() != "" || c.adminSocket() != "" ||
		c.logLevel() != zapcore.DebugLevel || c.logFormat() != "json" ||
		!slices.Equal(c.tunAddresses(), want.stack.TUN.Addresses) || !slices.Equal(c.clientPrefixes(), want.stack.Clients) {
		t.Errorf("accessors disagree with the parsed values: %+v", c)
	}
	pc := c.policyConfig()
	if !slices.Equal(pc.Allow, want.policy.Allow) || !slices.Equal(pc.Deny, want.policy.Deny) || !slices.Equal(pc.Clients, want.stack.Clients) || pc.HostAddrs != nil {
		t.Errorf("policyConfig() = %+v", pc)
	}
}

func TestMSSClampKey(t *testing.T) {
	for _, tc := range []struct {
		yaml string
		want int
		text string
	}{
		{"log:\n  level: info\n", stack.MSSClampAuto, "auto"}, // the default
		{"tcp:\n  mss_clamp: auto\n", stack.MSSClampAuto, "auto"},
		{"tcp:\n  mss_clamp: off\n", stack.MSSClampOff, "off"},
		{"tcp:\n  mss_clamp: \"off\"\n", stack.MSSClampOff, "off"},
		{"tcp:\n  mss_clamp: 1380\n", 1380, "1380"},
		{"tcp:\n  mss_clamp: 536\n", 536, "536"},
	} {
		c := mustParse(t, tc.yaml)
		if got := c.stackConfig(nil, nil).MSSClamp; got != tc.want || c.mssClampString() != tc.text {
			t.Errorf("%q: MSSClamp %d, shown %q; want %d, %q", tc.yaml, got, c.mssClampString(), tc.want, tc.text)
		}
	}
}

func TestQueuesKey(t *testing.T) {
	for _, tc := range []struct {
		yaml string
		want int
	}{
		{"log:\n  level: info\n", 0}, // the default
		{"tun:\n  queues: auto\n", 0},
		{"tun:\n  queues: 1\n", 1},
		{"tun:\n  queues: 8\n", 8},
		{"tun:\n  queues: 256\n", 256},
	} {
		if got := mustParse(t, tc.yaml).stackConfig(nil, nil).TUN.Queues; got != tc.want {
			t.Errorf("%q: Queues %d, want %d", tc.yaml, got, tc.want)
		}
	}
}

func TestMetricsListenKey(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:9810", ":9810", "0.0.0.0:1", "[::1]:9810", "[::]:65535", "[fe80::1%eth0]:9810", ""} {
		if got := mustParse(t, fmt.Sprintf("metrics:\n  listen: %q\n", addr)).metricsListen(); got != addr {
			t.Errorf("%q: metrics.listen %q", addr, got)
		}
	}
}

func TestParseConfigErrors(t *testing.T) {
	topKeys := "tun, clients, policy, upstream, tcp, limits, metrics, admin, log, shutdown_grace"
	tests := []struct {
		name, yaml string
		want       []string
	}{
		// A value from the file is quoted up to 64 bytes: a stray megabyte
		// does not become a megabyte of error.
		{"long value", "tun:\n  name: " + strings.Repeat("é", 40) + "\n",
			[]string{`line 2: tun.name: "` + strings.Repeat("é", 24) + `"… (80 bytes) is 80 bytes long (allowed: 1..15 characters, no '/', ':' or whitespace)`}},
		{"long unknown key", "log:\n  " + strings.Repeat("k", 100) + ": 1\n",
			[]string{`line 2: "log.` + strings.Repeat("k", 44) + `"… (104 bytes): unknown key (allowed: level, format)`}},
		{"long scalar for a section", "tun: " + strings.Repeat("t", 65) + "\n",
			[]string{`line 1: tun: expected a mapping, got "` + strings.Repeat("t", 48) + `"… (65 bytes) (allowed keys: name, mtu, addresses, offload, queues, route_table)`}},
		{"value of 64 bytes is whole", "tun:\n  name: " + strings.Repeat("n", 64) + "\n",
			[]string{`line 2: tun.name: "` + strings.Repeat("n", 64) + `" is 64 characters long (allowed: 1..15 characters, no '/', ':' or whitespace)`}},
		{"unknown top-level key", "tun:\n  mtu: 1500\ntunn: {}\n",
			[]string{"line 3: tunn: unknown key (allowed: " + topKeys + ")"}},
		{"unknown nested key", "tun:\n  name: tcpd0\n  offlaod: on\n",
			[]string{"line 3: tun.offlaod: unknown key (allowed: name, mtu, addresses, offload, queues, route_table)"}},
		{"unknown key two levels down", "tcp:\n  keepalive:\n    idel: 1s\n",
			[]string{"line 3: tcp.keepalive.idel: unknown key (allowed: idle, interval, count)"}},
		{"duplicate key", "log:\n  level: info\n  level: debug\n",
			[]string{"line 3: log.level: duplicate key (first set on line 2)"}},
		{"duplicate section", "tun:\n  mtu: 1500\nlog: {}\ntun:\n  mtu: 9000\n",
			[]string{"line 4: tun: duplicate key (first set on line 1)"}},
		{"document is a list", "- tun\n",
			[]string{"line 1: expected a mapping, got a list (allowed keys: " + topKeys + ")"}},
		{"section is a scalar", "tun: tcpd0\n",
			[]string{`line 1: tun: expected a mapping, got "tcpd0" (allowed keys: name, mtu, addresses, offload, queues, route_table)`}},
		{"integer is a list", "tun:\n  mtu: [1500]\n",
			[]string{"line 2: tun.mtu: expected an integer, got a list"}},
		{"list is a scalar", "clients: 100.64.0.0/10\n",
			[]string{`line 1: clients: expected a list of prefixes, got "100.64.0.0/10" (allowed: a list of prefixes, e.g. [100.64.0.0/10])`}},
		{"list item is a mapping", "clients:\n  - 100.64.0.0/10\n  - {a: 1}\n",
			[]string{"line 3: clients[1]: expected a prefix, got a mapping (e.g. 100.64.0.0/10)"}},
		{"no value", "tun:\n  mtu:\n",
			[]string{"line 2: tun.mtu: no value (allowed 1280..65535)"}},
		{"mtu out of range", "tun:\n  mtu: 70000\n",
			[]string{"line 2: tun.mtu: 70000 is out of range (allowed 1280..65535)"}},
		{"not an integer", "tun:\n  mtu: 1500k\n",
			[]string{`line 2: tun.mtu: "1500k" is not an integer (allowed 1280..65535)`}},
		{"integer in quotes", "tun:\n  mtu: \"1500\"\n",
			[]string{`line 2: tun.mtu: "1500" is in quotes, which makes it a string (write the number without them; allowed 1280..65535)`}},
		{"long integer out of range", "tun:\n  mtu: " + strings.Repeat("9", 70) + "\n",
			[]string{`line 2: tun.mtu: "` + strings.Repeat("9", 48) + `"… (70 bytes) is out of range (allowed 1280..65535)`}},
		{"integer beyond 64 bits", "upstream:\n  mark: 99999999999999999999\n",
			[]string{"line 2: upstream.mark: 99999999999999999999 is out of range (allowed 0..4294967295)"}},
		{"negative mark", "upstream:\n  mark: -1\n",
			[]string{"line 2: upstream.mark: -1 is out of range (allowed 0..4294967295)"}},
		{"source address not an address", "upstream:\n  source_addresses: [198.51.100.7, 10.0.0.0/8]\n",
			[]string{`line 2: upstream.source_addresses[1]: "10.0.0.0/8" is not an IP address (e.g. 198.51.100.7)`}},
		{"source address twice", "upstream:\n  source_addresses:\n    - 198.51.100.7\n    - 198.51.100.7\n",
			[]string{`line 4: upstream.source_addresses[1]: "198.51.100.7" is listed twice (also upstream.source_addresses[0])`}},
		{"source address unspecified", "upstream:\n  source_addresses: [\"::\"]\n",
			[]string{`line 2: upstream.source_addresses[0]: "::" cannot be a source address (allowed: a unicast address of this host)`}},
		{"source addresses a scalar", "upstream:\n  source_addresses: 198.51.100.7\n",
			[]string{`line 2: upstream.source_addresses: expected a list of addresses, got "198.51.100.7" (allowed: e.g. [198.51.100.7])`}},
		{"keepalive count", "tcp:\n  keepalive: {count: 128}\n",
			[]string{"line 2: tcp.keepalive.count: 128 is out of range (allowed 1..127)"}},
		{"duration out of range", "upstream:\n  dial_timeout: 10m\n",
			[]string{"line 2: upstream.dial_timeout: 10m is out of range (allowed 100ms..5m)"}},
		{"duration below range", "tcp:\n  keepalive:\n    interval: 500ms\n",
			[]string{"line 3: tcp.keepalive.interval: 500ms is out of range (allowed 1s..9h)"}},
		{"keepalive idle past Linux's TCP_KEEPIDLE", "tcp:\n  keepalive: {idle: 32768s}\n",
			[]string{"line 2: tcp.keepalive.idle: 32768s is out of range (allowed 1s..9h)"}},
		{"keepalive interval past Linux's TCP_KEEPINTVL", "tcp:\n  keepalive:\n    interval: 10h\n",
			[]string{"line 3: tcp.keepalive.interval: 10h is out of range (allowed 1s..9h)"}},
		{"keepalive past Linux's TCP_USER_TIMEOUT", "tcp:\n  keepalive:\n    idle: 9h\n    interval: 9h\n    count: 127\n",
			[]string{"line 4: tcp.keepalive.interval: idle 9h + interval 9h × count 127 is 1152h, more than the user timeout Linux allows " +
				"(TCP_USER_TIMEOUT, at most 596h31m23s), which tcpd sets to the time keepalive takes to give up under tcp.user_timeout: keepalive (allowed: values whose sum is at most that, or a tcp.user_timeout of its own)"}},
		{"duration off or range", "tcp:\n  idle_timeout: 500ms\n",
			[]string{"line 2: tcp.idle_timeout: 500ms is out of range (allowed 0s (off) or 1s..168h)"}},
		{"duration without unit", "upstream:\n  dial_timeout: 10\n",
			[]string{`line 2: upstream.dial_timeout: "10" is not a duration (allowed 100ms..5m, with a unit: e.g. 10s, 1m30s)`}},
		{"duration in days", "tcp:\n  idle_timeout: 7d\n",
			[]string{`line 2: tcp.idle_timeout: "7d" is not a duration (allowed 0s (off) or 1s..168h, with a unit: e.g. 10s, 1m30s)`}},
		{"negative duration", "shutdown_grace: -1s\n",
			[]string{"line 1: shutdown_grace: -1s is out of range (allowed 0s..10m)"}},
		{"bad congestion control", "tcp:\n  congestion_control: bbr\n",
			[]string{`line 2: tcp.congestion_control: "bbr" is not allowed (allowed: reno, cubic)`}},
		{"mss_clamp below range", "tcp:\n  mss_clamp: 100\n",
			[]string{"line 2: tcp.mss_clamp: 100 is out of range (allowed: auto, off, or an MSS in 536..65495)"}},
		{"mss_clamp above range", "tcp:\n  mss_clamp: 65496\n",
			[]string{"line 2: tcp.mss_clamp: 65496 is out of range (allowed: auto, off, or an MSS in 536..65495)"}},
		{"mss_clamp word", "tcp:\n  mss_clamp: pmtu\n",
			[]string{`line 2: tcp.mss_clamp: "pmtu" is not allowed (allowed: auto, off, or an MSS in 536..65495)`}},
		{"mss_clamp quoted number", "tcp:\n  mss_clamp: \"1380\"\n",
			[]string{`line 2: tcp.mss_clamp: "1380" is in quotes, which makes it a string (write the number without them; allowed: auto, off, or an MSS in 536..65495)`}},
		{"mss_clamp list", "tcp:\n  mss_clamp: [1380]\n",
			[]string{"line 2: tcp.mss_clamp: expected auto, off or an integer, got a list"}},
		{"bad log format", "log:\n  format: text\n",
			[]string{`line 2: log.format: "text" is not allowed (allowed: auto, json, console)`}},
		{"bad log level", "log:\n  level: INFO\n",
			[]string{`line 2: log.level: "INFO" is not allowed (allowed: debug, info, warn, error)`}},
		{"bad offload", "tun:\n  offload: yes\n",
			[]string{`line 2: tun.offload: "yes" is not allowed (allowed: auto, on, off)`}},
		{"queues a word", "tun:\n  queues: many\n",
			[]string{`line 2: tun.queues: "many" is not allowed (allowed: auto or 1..256)`}},
		{"queues zero", "tun:\n  queues: 0\n",
			[]string{`line 2: tun.queues: 0 is out of range (allowed: auto or 1..256)`}},
		{"queues beyond the kernel's", "tun:\n  queues: 257\n",
			[]string{`line 2: tun.queues: 257 is out of range (allowed: auto or 1..256)`}},
		{"queues a list", "tun:\n  queues: [2]\n",
			[]string{"line 2: tun.queues: expected auto or an integer, got a list"}},
		{"memory limit without a number", "limits:\n  memory: lots\n",
			[]string{`line 2: limits.memory: "lots" is not a size (allowed: auto, off, or a size in 32MiB..1TiB (e.g. 512MiB, 2GiB))`}},
		{"memory limit in decimal units", "limits:\n  memory: 2GB\n",
			[]string{`line 2: limits.memory: "2GB" is not a size (allowed: auto, off, or a size in 32MiB..1TiB (e.g. 512MiB, 2GiB))`}},
		{"memory limit too small", "limits:\n  memory: 1MiB\n",
			[]string{"line 2: limits.memory: 1MiB is out of range (allowed: auto, off, or a size in 32MiB..1TiB (e.g. 512MiB, 2GiB))"}},
		{"not a prefix", "clients: [100.64.0.0]\n",
			[]string{`line 1: clients[0]: "100.64.0.0" is not a prefix (want address/length, e.g. 100.64.0.0/10)`}},
		{"host bits set", "clients:\n  - fd64::/64\n  - 100.64.0.1/10\n",
			[]string{`line 3: clients[1]: "100.64.0.1/10" has host bits set (did you mean 100.64.0.0/10?)`}},
		{"host bits in policy", "policy:\n  deny: [192.0.2.1/24]\n",
			[]string{`line 2: policy.deny[0]: "192.0.2.1/24" has host bits set (did you mean 192.0.2.0/24?)`}},
		{"prefix twice", "policy:\n  allow: [10.0.0.0/8, 10.0.0.0/8]\n",
			[]string{`line 2: policy.allow[1]: "10.0.0.0/8" is listed twice (also policy.allow[0])`}},
		{"empty clients", "clients: []\n",
			[]string{"line 1: clients: no prefixes (allowed: a list of at least 1, e.g. [100.64.0.0/10])"}},
		{"empty tun addresses", "tun:\n  addresses: []\n",
			[]string{"line 2: tun.addresses: no prefixes (allowed: a list of at least 1, e.g. [100.64.0.1/32])"}},
		{"tun address swallows clients", "tun:\n  addresses: [100.64.0.1/32, 100.64.0.1/8]\n",
			[]string{`line 2: tun.addresses[1]: "100.64.0.1/8" covers clients[0] 100.64.0.0/10, so replies to clients would be routed into the TUN (allowed: a prefix longer than /10 here, e.g. 100.64.0.1/32)`}},
		{"tun address equals clients", "clients: [fd64::/64]\ntun:\n  addresses:\n    - fd64::1/64\n",
			[]string{`line 4: tun.addresses[0]: "fd64::1/64" covers clients[0] fd64::/64, so replies to clients would be routed into the TUN (allowed: a prefix longer than /64 here, e.g. fd64::1/128)`}},
		{"per-client limit above global", "limits:\n  max_connections: 100\n  max_connections_per_client: 200\n",
			[]string{"line 3: limits.max_connections_per_client: 200 is out of range (allowed 1..100, at most limits.max_connections)"}},
		{"global limit below default per-client", "limits:\n  max_in_flight: 100\n",
			[]string{"line 2: limits.max_in_flight: 100 is out of range (allowed 256..65536, at least limits.max_in_flight_per_client, which defaults to 256)"}},
		{"name too long", "tun:\n  name: tcpd-interface-0\n",
			[]string{`line 2: tun.name: "tcpd-interface-0" is 16 characters long (allowed: 1..15 characters, no '/', ':' or whitespace)`}},
		{"name with slash", "tun:\n  name: tcpd/0\n",
			[]string{`line 2: tun.name: "tcpd/0" contains '/' (allowed: 1..15 characters, no '/', ':' or whitespace)`}},
		{"empty name", "tun:\n  name: \"\"\n",
			[]string{`line 2: tun.name: "" is empty (allowed: 1..15 characters, no '/', ':' or whitespace)`}},
		{"upstream interface is the TUN", "upstream:\n  interface: tcpd0\n",
			[]string{`line 2: upstream.interface: "tcpd0" is tun.name; upstream sockets would loop back into tcpd (allowed: another interface, or "" for none)`}},
		{"metrics listen without host", "metrics:\n  listen: 9810\n",
			[]string{`line 2: metrics.listen: "9810" is not address:port (allowed: address:port, e.g. 127.0.0.1:9810, [::1]:9810, localhost:9810 or :9810 (every address), or "" to disable)`}},
		{"metrics listen host not an address", "metrics:\n  listen: 300.1.1.1:9810\n",
			[]string{`line 2: metrics.listen: "300.1.1.1:9810" has host "300.1.1.1", not an IP address (allowed: address:port, e.g. 127.0.0.1:9810, [::1]:9810, localhost:9810 or :9810 (every address), or "" to disable)`}},
		{"metrics listen host name", "log:\n  level: info\nmetrics: {listen: \"gateway.example:9810\"}\n",
			[]string{`line 3: metrics.listen: "gateway.example:9810" has host "gateway.example", not an IP address (allowed: address:port, e.g. 127.0.0.1:9810, [::1]:9810, localhost:9810 or :9810 (every address), or "" to disable)`}},
		{"metrics listen IPv6 without brackets", "metrics:\n  listen: \"::1:9810\"\n",
			[]string{`line 2: metrics.listen: "::1:9810" is not address:port (allowed: address:port, e.g. 127.0.0.1:9810, [::1]:9810, localhost:9810 or :9810 (every address), or "" to disable)`}},
		{"metrics listen bad port", "metrics:\n  listen: \"localhost:0\"\n",
			[]string{`line 2: metrics.listen: "localhost:0" has port "0" (allowed: 1..65535)`}},
		{"admin socket relative", "admin:\n  socket: tcpd.sock\n",
			[]string{`line 2: admin.socket: "tcpd.sock" is not an absolute path (allowed: an absolute path of at most 107 bytes, or "" to disable)`}},
		{"second document", "log:\n  level: info\n---\nlog:\n  level: debug\n",
			[]string{"line 3: a second YAML document is not allowed (one per file)"}},
		{"yaml syntax error: a tab indents a line", "tun:\n\tmtu: 1500\n",
			[]string{"yaml: line 2: found character that cannot start any token (a line is indented with a tab; YAML allows only spaces)"}},
		{"several errors, in line order", `log:
  format: text
tun:
  mtu: 100
  addresses: [100.64.0.1/8]
  bogus: 1
clients: [100.64.0.0/10, 10.0.0.1/8]
limits:
  max_in_flight: 10
  max_in_flight_per_client: 20
shutdown_grace: forever
`, []string{
			`line 2: log.format: "text" is not allowed (allowed: auto, json, console)`,
			"line 4: tun.mtu: 100 is out of range (allowed 1280..65535)",
			"line 6: tun.bogus: unknown key (allowed: name, mtu, addresses, offload, queues, route_table)",
			`line 7: clients[1]: "10.0.0.1/8" has host bits set (did you mean 10.0.0.0/8?)`,
			"line 10: limits.max_in_flight_per_client: 20 is out of range (allowed 1..10, at most limits.max_in_flight)",
			`line 11: shutdown_grace: "forever" is not a duration (allowed 0s..10m, with a unit: e.g. 10s, 1m30s)`,
		}},
	}
	if len(tests) < 20 {
		t.Fatalf("only %d cases", len(tests))
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseConfig([]byte(tt.yaml))
			if err == nil {
				t.Fatalf("parsed into %+v; want errors %q", c, tt.want)
			}
			if got, want := err.Error(), strings.Join(tt.want, "\n"); got != want {
				t.Errorf("error:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("tun:\n  mtu: 70000\nlog:\n  level: loud\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := loadConfig(bad)
	want := bad + ": line 2: tun.mtu: 70000 is out of range (allowed 1280..65535)\n" +
		bad + `: line 4: log.level: "loud" is not allowed (allowed: debug, info, warn, error)`
	if err == nil || err.Error() != want {
		t.Errorf("loadConfig error:\n%v\nwant:\n%s", err, want)
	}
	if _, err := loadConfig(filepath.Join(dir, "missing.yaml")); !os.IsNotExist(err) {
		t.Errorf("missing file: got %v, want a not-exist error", err)
	}
}

// TestNoSettingsIsAnError: a file that sets no key (empty, only comments,
// "~", or only empty sections) is what a write cut short leaves, not a
// request for the defaults: tcpd refuses it at start, at reload (keeping
// the running configuration) and in check-config. Only no --config means
// the defaults.
func TestNoSettingsIsAnError(t *testing.T) {
	const want = "no settings: the file sets no key (is it empty, only comments, or cut short?); " +
		"to run on the defaults, start tcpd without --config"
	files := map[string]string{
		"empty":          "",
		"comments only":  "# nothing here\n\n# at all\n",
		"null document":  "~\n",
		"empty mapping":  "{}\n",
		"empty sections": "tun:\nlog: {}\npolicy:\n  # deny: [192.0.2.0/24]\n",
		"empty document": "---\n# cut short\n",
	}
	dir := t.TempDir()
	for name, data := range files {
		if c, err := parseConfig([]byte(data)); err == nil || err.Error() != want {
			t.Errorf("%s: parseConfig = %+v, %v; want %q", name, c, err, want)
		}
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".yaml")
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		var stdout, stderr bytes.Buffer
		code := runMain([]string{"check-config", path}, &stdout, &stderr)
		if wantErr := "tcpd check-config: " + path + ": " + want + "\n"; code != 1 || stderr.String() != wantErr {
			t.Errorf("%s: check-config exit %d, stdout %q, stderr:\n%s\nwant:\n%s", name, code, stdout.String(), stderr.String(), wantErr)
		}
	}
	// An unknown key is reported as such, not as no settings.
	if _, err := parseConfig([]byte("tunn: {}\n")); err == nil || !strings.Contains(err.Error(), "tunn: unknown key") {
		t.Errorf("unknown key only: %v", err)
	}

	// A reload that finds the file cut short keeps the deny list in force.
	running := mustParse(t, "policy:\n  deny: [192.0.2.0/24]\n")
	path := filepath.Join(dir, "tcpd.yaml")
	if err := os.WriteFile(path, []byte("# Destination policy.\npolicy:\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := &daemon{path: path, cfg: running, log: zap.NewNop(), reloadOK: true}
	res := d.reload()
	if res.OK || !strings.Contains(res.Error, path+": "+want) {
		t.Errorf("reload of a file cut short: %+v; want it rejected with %q", res, want)
	}
	if ok, _ := d.LastReload(); ok {
		t.Error("last_reload_successful stays 1 after the rejected reload")
	}
	if d.cfg != running || !slices.Equal(d.cfg.policy.Deny, []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}) {
		t.Errorf("the rejected reload changed the configuration in force: deny %v", d.cfg.policy.Deny)
	}
}

// loadWithin is loadConfig(path), failing the test if it takes longer
// than a few seconds; unblock is called then, to free what it waits on.
func loadWithin(t *testing.T, path string, unblock func()) (*config, error) {
	t.Helper()
	type result struct {
		c   *config
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := loadConfig(path)
		done <- result{c, err}
	}()
	select {
	case r := <-done:
		return r.c, r.err
	case <-time.After(5 * time.Second):
		unblock()
		<-done
		t.Fatalf("loadConfig(%s) still waiting after 5s", path)
		return nil, nil
	}
}

// TestConfigFileKind: a reload reads the file on the loop that also takes
// SIGTERM, so anything but a regular file of bounded size is refused at
// once: a FIFO would block reload and shutdown until written to, and
// /dev/zero would be read until memory ran out.
func TestConfigFileKind(t *testing.T) {
	dir := t.TempDir()
	const valid = "log:\n  level: info\n"
	pad := func(n int) string { return valid + "#" + strings.Repeat("x", n-len(valid)-2) + "\n" }

	t.Run("fifo", func(t *testing.T) {
		fifo := filepath.Join(dir, "fifo.yaml")
		if err := unix.Mkfifo(fifo, 0o600); err != nil {
			t.Fatal(err)
		}
		link := filepath.Join(dir, "fifo-link.yaml")
		if err := os.Symlink(fifo, link); err != nil {
			t.Fatal(err)
		}
		// What the old code blocked in (open, then read) ends once a
		// writer comes and goes.
		unblock := func() {
			if fd, err := unix.Open(fifo, unix.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
				unix.Close(fd)
			}
		}
		for _, path := range []string{fifo, link} {
			_, err := loadWithin(t, path, unblock)
			want := path + ": is a named pipe (FIFO); a configuration file must be a regular file (or a symlink to one)"
			if err == nil || err.Error() != want {
				t.Errorf("error %v, want %q", err, want)
			}
		}
		var stdout, stderr bytes.Buffer
		if code := runMain([]string{"check-config", fifo}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "named pipe") {
			t.Errorf("check-config of a FIFO: exit %d, stderr %q", code, stderr.String())
		}
	})
	t.Run("size", func(t *testing.T) {
		atBound := filepath.Join(dir, "1MiB.yaml")
		if err := os.WriteFile(atBound, []byte(pad(maxConfigSize)), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := loadWithin(t, atBound, func() {}); err != nil {
			t.Errorf("a file of exactly 1MiB: %v", err)
		}
		over := filepath.Join(dir, "over.yaml")
		if err := os.WriteFile(over, []byte(pad(maxConfigSize+1)), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := loadWithin(t, over, func() {})
		want := over + ": larger than 1MiB, the most tcpd reads of a configuration file (the documented one, with every key, is about 10KiB)"
		if err == nil || err.Error() != want {
			t.Errorf("error %v, want %q", err, want)
		}
	})
	t.Run("device and directory", func(t *testing.T) {
		zero := filepath.Join(dir, "zero.yaml")
		if err := os.Symlink("/dev/zero", zero); err != nil {
			t.Fatal(err)
		}
		if _, err := loadWithin(t, zero, func() {}); err == nil || !strings.HasSuffix(err.Error(), ": is a character device; a configuration file must be a regular file (or a symlink to one)") {
			t.Errorf("a symlink to /dev/zero: %v", err)
		}
		if _, err := loadWithin(t, dir, func() {}); err == nil || !strings.Contains(err.Error(), ": is a directory;") {
			t.Errorf("a directory: %v", err)
		}
	})
}

func TestCheckConfigCommand(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(good, []byte("tun:\n  mtu: 9000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("tun:\n  mtu: 1\n  nmae: x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := runMain([]string{"check-config", good}, &stdout, &stderr); code != 0 || stdout.String() != good+": valid\n" {
		t.Errorf("good file: exit %d, stdout %q, stderr %q", code, stdout.String(), stderr.String())
	}
	stdout.Reset()
	stderr.Reset()
	code := runMain([]string{"check-config", bad}, &stdout, &stderr)
	want := "tcpd check-config: " + bad + ": line 2: tun.mtu: 1 is out of range (allowed 1280..65535)\n  " +
		bad + ": line 3: tun.nmae: unknown key (allowed: name, mtu, addresses, offload, queues, route_table)\n"
	if code != 1 || stderr.String() != want {
		t.Errorf("bad file: exit %d, stderr:\n%s\nwant:\n%s", code, stderr.String(), want)
	}
	if code := runMain([]string{"check-config", "../../configs/tcpd.yaml"}, &stdout, &stderr); code != 0 {
		t.Errorf("configs/tcpd.yaml: exit %d, stderr %q", code, stderr.String())
	}
}

func TestSetLogLevelAndFormat(t *testing.T) {
	c := defaultConfig()
	for s, want := range map[string]zapcore.Level{"debug": zapcore.DebugLevel, "info": zapcore.InfoLevel, "warn": zapcore.WarnLevel, "error": zapcore.ErrorLevel} {
		if err := c.set("log.level", s); err != nil || c.logLevel() != want {
			t.Errorf("set log.level %q = %v; level %v, want %v", s, err, c.logLevel(), want)
		}
	}
	for _, s := range []string{"auto", "json", "console"} {
		if err := c.set("log.format", s); err != nil || c.logFormat() != s {
			t.Errorf("set log.format %q = %v; format %q", s, err, c.logFormat())
		}
	}
	c = defaultConfig()
	if err := c.set("log.level", "verbose"); err == nil || err.Error() != `log.level: "verbose" is not allowed (allowed: debug, info, warn, error)` {
		t.Errorf("set log.level verbose = %v", err)
	}
	if err := c.set("log.format", "text"); err == nil || err.Error() != `log.format: "text" is not allowed (allowed: auto, json, console)` {
		t.Errorf("set log.format text = %v", err)
	}
	if c.logLevel() != zapcore.InfoLevel || c.logFormat() != "auto" {
		t.Errorf("a rejected override changed the config: %v %q", c.level, c.format)
	}
}

func TestReloaded(t *testing.T) {
	base := defaultConfig()
	tests := []struct {
		name, yaml string
		changed    []string
	}{
		{"same", "log:\n  level: info\n", nil},
		{"live settings only", "log:\n  level: debug\npolicy:\n  deny: [192.0.2.0/24]\nshutdown_grace: 1m\n" +
			"tcp:\n  congestion_control: cubic\n  loss_detection: dupack\n  handshake_timeout: 3s\n", nil},
		{"mtu", "tun:\n  mtu: 9000\n", []string{"tun.mtu: 1500 → 9000"}},
		{"clients", "clients: [100.64.0.0/16, fd64::/64]\n", []string{`clients: ["100.64.0.0/10", "fd64::/64"] → ["100.64.0.0/16", "fd64::/64"]`}},
		{"everything", `
tun: {name: t1, mtu: 1400, addresses: [100.64.0.2/32], offload: "off"}
clients: [100.64.0.0/11]
upstream: {interface: eth0, mark: 7}
limits: {max_in_flight: 300}
metrics: {listen: ":9000"}
admin: {socket: /tmp/a.sock}
log: {format: json, level: error}
`, []string{"tun.name: tcpd0 → t1", "tun.mtu: 1500 → 1400", `tun.addresses: ["100.64.0.1/32", "fd64::1/128"] → ["100.64.0.2/32"]`,
			`tun.offload: auto → "off"`, `clients: ["100.64.0.0/10", "fd64::/64"] → ["100.64.0.0/11"]`,
			"limits.max_in_flight: 4096 → 300",
			`metrics.listen: 127.0.0.1:9810 → :9000`, "admin.socket: /run/tcpd/tcpd.sock → /tmp/a.sock", "log.format: auto → json"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			file := mustParse(t, tt.yaml)
			next, changed, err := reloaded(base, file)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(changed, tt.changed) {
				t.Errorf("changed %q, want %q", changed, tt.changed)
			}
			for _, k := range keys {
				from := file
				if k.apply == restart {
					from = base
				}
				if !k.spec.equal(next, from) {
					t.Errorf("%s in force after the reload: %s, want %s", k.path, k.spec.format(next), k.spec.format(from))
				}
			}
		})
	}
}

// TestReloadWarnsUntilRestart is the bug where a reload stored the whole
// file as the running configuration: after one SIGHUP that changed tun.mtu,
// the next no longer warned that the running MTU differs from the file.
func TestReloadWarnsUntilRestart(t *testing.T) {
	running := defaultConfig()
	file := mustParse(t, "tun:\n  mtu: 9000\nlog:\n  level: debug\n")
	for i := range 3 {
		next, changed, err := reloaded(running, file)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(changed, []string{"tun.mtu: 1500 → 9000"}) {
			t.Fatalf("reload %d: changed %q, want tun.mtu still pending", i+1, changed)
		}
		if next.tunMTU() != 1500 || next.logLevel() != zapcore.DebugLevel {
			t.Fatalf("reload %d: in force mtu %d, level %v; want the running 1500 and the file's debug", i+1, next.tunMTU(), next.logLevel())
		}
		running = next
	}
	// Putting the file back as it was clears the warning.
	if _, changed, err := reloaded(running, defaultConfig()); changed != nil || err != nil {
		t.Fatalf("file back to the running values: changed %q", changed)
	}
}

// TestReloadedChecksWhatWillBeInForce: a file that is valid by itself but
// breaks a rule across keys once the keys that need a restart keep their
// running values is rejected, naming the key it changes.
func TestReloadedChecksWhatWillBeInForce(t *testing.T) {
	running := defaultConfig()
	for _, tt := range []struct{ yaml, want string }{
		{"tun:\n  name: tcpd1\nupstream:\n  interface: tcpd0\n",
			`upstream.interface: "tcpd0" is tun.name; upstream sockets would loop back into tcpd`},
		{"limits:\n  max_in_flight: 8192\n  max_in_flight_per_client: 5000\n",
			"limits.max_in_flight_per_client: 5000 is out of range (allowed 1..4096, at most limits.max_in_flight)"},
	} {
		next, _, err := reloaded(running, mustParse(t, tt.yaml))
		if err == nil || !strings.Contains(err.Error(), tt.want) || next != nil {
			t.Errorf("%q: error %v, want one containing %q", tt.yaml, err, tt.want)
		}
	}
}

func TestStackConfig(t *testing.T) {
	c := mustParse(t, `
tun: {name: t9, mtu: 1400, addresses: [100.64.0.1/32, "fd64::1/128"], offload: "on"}
clients: [100.64.0.0/12, fd64::/64]
upstream: {dial_timeout: 3s, interface: eth2, mark: 4294967295}
tcp:
  keepalive: {idle: 61s, interval: 7s, count: 9}
  half_close_timeout: 45s
  idle_timeout: 1h
  time_wait: 15s
limits:
  max_connections: 1000
  max_connections_per_client: 10
  max_in_flight: 500
  max_in_flight_per_client: 5
`)
	pol, err := policy.New(policy.Config{HostAddrs: func() ([]netip.Addr, error) { return nil, nil }})
	if err != nil {
		t.Fatal(err)
	}
	log := zap.NewNop()
	pfx := netip.MustParsePrefix
	want := stack.Config{
		TUN: stack.TUNConfig{
			Name:      "t9",
			MTU:       1400,
			Addresses: []netip.Prefix{pfx("100.64.0.1/32"), pfx("fd64::1/128")},
			Offload:   stack.OffloadOn,
		},
		Clients:     []netip.Prefix{pfx("100.64.0.0/12"), pfx("fd64::/64")},
		Policy:      pol,
		MaxInFlight: 500,
		Tunables: stack.Tunables{
			DialTimeout:             3 * time.Second,
			Interface:               "eth2",
			Mark:                    4294967295,
			Keepalive:               stack.Keepalive{Idle: 61 * time.Second, Interval: 7 * time.Second, Count: 9},
			HalfCloseTimeout:        45 * time.Second,
			IdleTimeout:             time.Hour,
			TimeWait:                15 * time.Second,
			TimeWaitLimit:           new(16384),
			HandshakeTimeout:        10 * time.Second,
			CongestionControl:       "reno",
			MaxConnections:          1000,
			MaxConnectionsPerClient: 10,
			MaxInFlightPerClient:    5,
		},
		Logger: log,
	}
	got := c.stackConfig(pol, log)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("stackConfig:\ngot  %+v\nwant %+v", got, want)
	}
	got.Clients[0] = pfx("10.0.0.0/8")
	if c.stack.Clients[0] != pfx("100.64.0.0/12") {
		t.Error("stackConfig shares its client list with the configuration")
	}
}

// TestTimeWaitLimitZeroKeepsNone: 0 means none kept at every layer, with no
// value standing in for it on the way.
func TestTimeWaitLimitZeroKeepsNone(t *testing.T) {
	c := mustParse(t, "tcp:\n  time_wait_limit: 0\n")
	sc := c.stackConfig(nil, nil)
	if sc.TimeWaitLimit == nil || *sc.TimeWaitLimit != 0 {
		t.Fatalf("time_wait_limit 0 reaches the stack as %v, want 0", sc.TimeWaitLimit)
	}
	tab := conntrack.New(conntrack.Config{TimeWaitLimit: sc.TimeWaitLimit})
	if got := tab.Snapshot().TimeWaitLimit; got != 0 {
		t.Fatalf("conntrack's cap %d, want 0", got)
	}
}

// TestKeepaliveBoundsAreTheKernels: the largest keepalive the
// configuration accepts is one this kernel takes on an upstream socket,
// as every dial sets it, and just past each bound it refuses them (before
// the bounds were Linux's, 24h passed the check and every dial failed).
func TestKeepaliveBoundsAreTheKernels(t *testing.T) {
	largest := mustParse(t, "tcp:\n  keepalive: {idle: 9h, interval: 9h, count: 65}\n")
	if err := stack.CheckKeepalive(largest.stack.Keepalive, largest.stack.UserTimeout); err != nil {
		t.Errorf("the largest keepalive accepted (%+v): %v", largest.stack.Keepalive, err)
	}
	if _, err := parseConfig([]byte("tcp:\n  keepalive: {idle: 9h, interval: 9h, count: 66}\n")); err == nil {
		t.Error("idle 9h + interval 9h × count 66 accepted, past TCP_USER_TIMEOUT's int of milliseconds")
	}
	const (
		linuxMaxKeepTime = 32767 * time.Second // MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL
		hour             = time.Hour
	)
	for _, ka := range []stack.Keepalive{
		{Idle: linuxMaxKeepTime + time.Second, Interval: hour, Count: 1},
		{Idle: hour, Interval: linuxMaxKeepTime + time.Second, Count: 1},
		{Idle: 9 * hour, Interval: 9 * hour, Count: 127},
	} {
		if err := stack.CheckKeepalive(ka, 0); !errors.Is(err, unix.EINVAL) {
			t.Errorf("keepalive %+v: %v, want EINVAL", ka, err)
		}
	}
	// A user timeout of its own frees keepalive from TCP_USER_TIMEOUT's
	// bound; the largest user timeout accepted is one the kernel takes.
	own := mustParse(t, "tcp:\n  keepalive: {idle: 9h, interval: 9h, count: 127}\n  user_timeout: 596h31m23s\n")
	if err := stack.CheckKeepalive(own.stack.Keepalive, own.stack.UserTimeout); err != nil {
		t.Errorf("the largest keepalive and user timeout accepted (%+v, %v): %v", own.stack.Keepalive, own.stack.UserTimeout, err)
	}
	if _, err := parseConfig([]byte("tcp:\n  user_timeout: 596h31m24s\n")); err == nil {
		t.Error("tcp.user_timeout 596h31m24s accepted, past TCP_USER_TIMEOUT's int of milliseconds")
	}
	if maxKeepaliveTime > linuxMaxKeepTime {
		t.Errorf("tcp.keepalive allows up to %v, past Linux's %v", maxKeepaliveTime, linuxMaxKeepTime)
	}
}

// TestTableHoldsTheLargestCaps: conntrack's table has room for every
// connection the largest caps admit at once (relays, TIME_WAIT and
// handshakes), so no SYN is refused as untracked before a cap is reached.
func TestTableHoldsTheLargestCaps(t *testing.T) {
	c := mustParse(t, fmt.Sprintf("limits:\n  max_connections: %d\n  max_in_flight: %d\ntcp:\n  time_wait_limit: %d\n",
		maxConnections, maxInFlight, maxConnections))
	sc := c.stackConfig(nil, nil)
	need := sc.MaxConnections + sc.MaxInFlight + *sc.TimeWaitLimit
	if got := (conntrack.Config{}).WithDefaults().MaxEntries; got < need {
		t.Errorf("conntrack holds %d entries, fewer than the %d the largest caps admit", got, need)
	}
}

// mustNode returns the value node of the one key of a YAML mapping.
func mustNode(t *testing.T, text string) *yaml.Node {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(text), &doc); err != nil {
		t.Fatalf("%s: %v", text, err)
	}
	return doc.Content[0].Content[1]
}

// TestMetricsListenLocalhost: localhost, which configurations written
// before host names were refused use, still loads.
func TestMetricsListenLocalhost(t *testing.T) {
	c, err := parseConfig([]byte("metrics:\n  listen: localhost:9810\n"))
	if err != nil {
		t.Fatalf("metrics.listen localhost:9810: %v", err)
	}
	if got := c.metricsListen(); got != "localhost:9810" {
		t.Errorf("metrics.listen = %q, want localhost:9810", got)
	}
}
