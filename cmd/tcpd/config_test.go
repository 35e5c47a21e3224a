package main

import (
	"bytes"
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

	"tcpd/configs"
	"tcpd/policy"
	"tcpd/stack"
)

// documentedDefaults spells out, independently of defaultConfig, the
// defaults that configs/tcpd.yaml documents.
func documentedDefaults() *config {
	pfx := netip.MustParsePrefix
	return &config{
		tun: tunConfig{
			name:      "tcpd0",
			mtu:       1500,
			addresses: []netip.Prefix{pfx("100.64.0.1/32"), pfx("fd64::1/128")},
			offload:   "auto",
		},
		clients:  []netip.Prefix{pfx("100.64.0.0/10"), pfx("fd64::/64")},
		upstream: upstreamConfig{dialTimeout: 10 * time.Second},
		tcp: tcpConfig{
			keepalive:        stack.Keepalive{Idle: 2 * time.Minute, Interval: 30 * time.Second, Count: 4},
			halfCloseTimeout: time.Minute,
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
		"embedded":      string(configs.Default),
		"on disk":       string(onDisk),
		"empty":         "",
		"comments only": "# nothing here\n\n# at all\n",
		"null document": "~\n",
		"empty section": "tun:\nlog: {}\n",
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
limits:
  max_connections: 1_000
  max_connections_per_client: 1000
  max_in_flight: 100
  max_in_flight_per_client: 1
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
	want := &config{
		tun: tunConfig{
			name:      "vpn-tcp.1",
			mtu:       9000,
			addresses: []netip.Prefix{pfx("100.64.0.1/24"), pfx("fd64::1/120")},
			offload:   "off",
		},
		clients:  []netip.Prefix{pfx("100.64.0.0/10"), pfx("fd64::/64")},
		allow:    []netip.Prefix{pfx("10.1.0.0/16")},
		deny:     []netip.Prefix{pfx("203.0.113.0/24"), pfx("2001:db8::/32")},
		upstream: upstreamConfig{dialTimeout: 90 * time.Second, iface: "eth1", mark: 255},
		tcp: tcpConfig{
			keepalive:        stack.Keepalive{Idle: time.Hour, Interval: time.Second, Count: 127},
			halfCloseTimeout: 24 * time.Hour,
			idleTimeout:      7 * 24 * time.Hour,
			timeWait:         5 * time.Minute,
			timeWaitLimit:    0,
			handshakeTimeout: time.Second,
			congestion:       "cubic",
			lossDetection:    "dupack",
		},
		limits:  limitsConfig{maxConnections: 1000, maxConnectionsPerClient: 1000, maxInFlight: 100, maxInFlightPerClient: 1},
		metrics: "",
		admin:   "",
		log:     logConfig{level: "debug", format: "json"},
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("got  %+v\nwant %+v", c, want)
	}
	if c.timeWaitLimit() != 0 || c.handshakeTimeout() != time.Second || c.metricsListen() != "" ||
		c.adminSocket() != "" || c.shutdownGrace() != 0 || c.tunMTU() != 9000 ||
		c.logLevel() != zapcore.DebugLevel || c.logFormat() != "json" ||
		!slices.Equal(c.tunAddresses(), want.tun.addresses) || !slices.Equal(c.clientPrefixes(), want.clients) {
		t.Errorf("accessors disagree with the parsed values: %+v", c)
	}
	pc := c.policyConfig()
	if !slices.Equal(pc.Allow, want.allow) || !slices.Equal(pc.Deny, want.deny) || !slices.Equal(pc.Clients, want.clients) || pc.HostAddrs != nil {
		t.Errorf("policyConfig() = %+v", pc)
	}
}

func TestParseConfigErrors(t *testing.T) {
	topKeys := "tun, clients, policy, upstream, tcp, limits, metrics, admin, log, shutdown_grace"
	tests := []struct {
		name, yaml string
		want       []string
	}{
		{"unknown top-level key", "tun:\n  mtu: 1500\ntunn: {}\n",
			[]string{"line 3: tunn: unknown key (allowed: " + topKeys + ")"}},
		{"unknown nested key", "tun:\n  name: tcpd0\n  offlaod: on\n",
			[]string{"line 3: tun.offlaod: unknown key (allowed: name, mtu, addresses, offload)"}},
		{"unknown key two levels down", "tcp:\n  keepalive:\n    idel: 1s\n",
			[]string{"line 3: tcp.keepalive.idel: unknown key (allowed: idle, interval, count)"}},
		{"duplicate key", "log:\n  level: info\n  level: debug\n",
			[]string{"line 3: log.level: duplicate key (first set on line 2)"}},
		{"duplicate section", "tun:\n  mtu: 1500\nlog: {}\ntun:\n  mtu: 9000\n",
			[]string{"line 4: tun: duplicate key (first set on line 1)"}},
		{"document is a list", "- tun\n",
			[]string{"line 1: expected a mapping, got a list (allowed keys: " + topKeys + ")"}},
		{"section is a scalar", "tun: tcpd0\n",
			[]string{`line 1: tun: expected a mapping, got "tcpd0" (allowed keys: name, mtu, addresses, offload)`}},
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
		{"not an integer", "tun:\n  mtu: \"1500\"\n",
			[]string{`line 2: tun.mtu: "1500" is not an integer (allowed 1280..65535)`}},
		{"integer beyond 64 bits", "upstream:\n  mark: 99999999999999999999\n",
			[]string{"line 2: upstream.mark: 99999999999999999999 is out of range (allowed 0..4294967295)"}},
		{"negative mark", "upstream:\n  mark: -1\n",
			[]string{"line 2: upstream.mark: -1 is out of range (allowed 0..4294967295)"}},
		{"keepalive count", "tcp:\n  keepalive: {count: 128}\n",
			[]string{"line 2: tcp.keepalive.count: 128 is out of range (allowed 1..127)"}},
		{"duration out of range", "upstream:\n  dial_timeout: 10m\n",
			[]string{"line 2: upstream.dial_timeout: 10m is out of range (allowed 100ms..5m)"}},
		{"duration below range", "tcp:\n  keepalive:\n    interval: 500ms\n",
			[]string{"line 3: tcp.keepalive.interval: 500ms is out of range (allowed 1s..24h)"}},
		{"duration off or range", "tcp:\n  idle_timeout: 500ms\n",
			[]string{"line 2: tcp.idle_timeout: 500ms is out of range (allowed 0s (off) or 1s..168h)"}},
		{"duration without unit", "upstream:\n  dial_timeout: 10\n",
			[]string{`line 2: upstream.dial_timeout: "10" is not a duration (e.g. 10s, 1m30s)`}},
		{"duration in days", "tcp:\n  idle_timeout: 7d\n",
			[]string{`line 2: tcp.idle_timeout: "7d" is not a duration (e.g. 10s, 1m30s)`}},
		{"negative duration", "shutdown_grace: -1s\n",
			[]string{"line 1: shutdown_grace: -1s is out of range (allowed 0s..10m)"}},
		{"bad congestion control", "tcp:\n  congestion_control: bbr\n",
			[]string{`line 2: tcp.congestion_control: "bbr" is not allowed (allowed: reno, cubic)`}},
		{"bad log format", "log:\n  format: text\n",
			[]string{`line 2: log.format: "text" is not allowed (allowed: auto, json, console)`}},
		{"bad log level", "log:\n  level: INFO\n",
			[]string{`line 2: log.level: "INFO" is not allowed (allowed: debug, info, warn, error)`}},
		{"bad offload", "tun:\n  offload: yes\n",
			[]string{`line 2: tun.offload: "yes" is not allowed (allowed: auto, on, off)`}},
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
			[]string{`line 2: metrics.listen: "9810" is not host:port (allowed: host:port, e.g. 127.0.0.1:9810 or [::1]:9810, or "" to disable)`}},
		{"metrics listen bad port", "metrics:\n  listen: \"localhost:0\"\n",
			[]string{`line 2: metrics.listen: "localhost:0" has port "0" (allowed: 1..65535)`}},
		{"admin socket relative", "admin:\n  socket: tcpd.sock\n",
			[]string{`line 2: admin.socket: "tcpd.sock" is not an absolute path (allowed: an absolute path of at most 107 bytes, or "" to disable)`}},
		{"second document", "log:\n  level: info\n---\nlog:\n  level: debug\n",
			[]string{"line 3: a second YAML document is not allowed (one per file)"}},
		{"yaml syntax error", "tun:\n\tmtu: 1500\n",
			[]string{"yaml: line 2: found character that cannot start any token"}},
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
			"line 6: tun.bogus: unknown key (allowed: name, mtu, addresses, offload)",
			`line 7: clients[1]: "10.0.0.1/8" has host bits set (did you mean 10.0.0.0/8?)`,
			"line 10: limits.max_in_flight_per_client: 20 is out of range (allowed 1..10, at most limits.max_in_flight)",
			`line 11: shutdown_grace: "forever" is not a duration (e.g. 10s, 1m30s)`,
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
		bad + ": line 3: tun.nmae: unknown key (allowed: name, mtu, addresses, offload)\n"
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
		if err := c.setLogLevel(s); err != nil || c.logLevel() != want {
			t.Errorf("setLogLevel(%q) = %v; level %v, want %v", s, err, c.logLevel(), want)
		}
	}
	for _, s := range logFormatValues {
		if err := c.setLogFormat(s); err != nil || c.logFormat() != s {
			t.Errorf("setLogFormat(%q) = %v; format %q", s, err, c.logFormat())
		}
	}
	c = defaultConfig()
	if err := c.setLogLevel("verbose"); err == nil || err.Error() != `log.level: "verbose" is not allowed (allowed: debug, info, warn, error)` {
		t.Errorf("setLogLevel(verbose) = %v", err)
	}
	if err := c.setLogFormat("text"); err == nil || err.Error() != `log.format: "text" is not allowed (allowed: auto, json, console)` {
		t.Errorf("setLogFormat(text) = %v", err)
	}
	if c.logLevel() != zapcore.InfoLevel || c.logFormat() != "auto" {
		t.Errorf("a rejected override changed the config: %+v", c.log)
	}
}

func TestRestartOnlyChanges(t *testing.T) {
	base := defaultConfig()
	tests := []struct {
		name, yaml string
		want       []string
	}{
		{"same", "", nil},
		{"live settings only", "log:\n  level: debug\npolicy:\n  deny: [192.0.2.0/24]\nshutdown_grace: 1m\n", nil},
		{"mtu", "tun:\n  mtu: 9000\n", []string{"tun.mtu"}},
		{"clients", "clients: [100.64.0.0/16, fd64::/64]\n", []string{"clients"}},
		{"everything", `
tun: {name: t1, mtu: 1400, addresses: [100.64.0.2/32], offload: "off"}
clients: [100.64.0.0/11]
upstream: {interface: eth0, mark: 7}
metrics: {listen: ":9000"}
admin: {socket: /tmp/a.sock}
log: {format: json, level: error}
`, []string{"tun.name", "tun.mtu", "tun.addresses", "tun.offload", "clients", "upstream.interface", "upstream.mark", "metrics.listen", "admin.socket", "log.format"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := base.restartOnlyChanges(mustParse(t, tt.yaml)); !slices.Equal(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
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
		Clients:                 []netip.Prefix{pfx("100.64.0.0/12"), pfx("fd64::/64")},
		Policy:                  pol,
		DialTimeout:             3 * time.Second,
		Interface:               "eth2",
		Mark:                    4294967295,
		Keepalive:               stack.Keepalive{Idle: 61 * time.Second, Interval: 7 * time.Second, Count: 9},
		HalfCloseTimeout:        45 * time.Second,
		IdleTimeout:             time.Hour,
		TimeWait:                15 * time.Second,
		TimeWaitLimit:           16384,
		HandshakeTimeout:        10 * time.Second,
		CongestionControl:       "reno",
		MaxConnections:          1000,
		MaxConnectionsPerClient: 10,
		MaxInFlight:             500,
		MaxInFlightPerClient:    5,
		Logger:                  log,
	}
	got := c.stackConfig(pol, log)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("stackConfig:\ngot  %+v\nwant %+v", got, want)
	}
	for s, want := range map[string]stack.Offload{"auto": stack.OffloadAuto, "on": stack.OffloadOn, "off": stack.OffloadOff} {
		c.tun.offload = s
		if got := c.stackConfig(pol, log).TUN.Offload; got != want {
			t.Errorf("tun.offload %s: got %v, want %v", s, got, want)
		}
	}
}

func TestTimeWaitLimitZeroKeepsNone(t *testing.T) {
	c, err := parseConfig([]byte("tcp:\n  time_wait_limit: 0\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.stackConfig(nil, nil).TimeWaitLimit; got != -1 {
		t.Fatalf("time_wait_limit 0 maps to stack TimeWaitLimit %d, want -1 (none kept)", got)
	}
}
