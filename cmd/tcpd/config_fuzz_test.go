package main

import (
	"fmt"
	"strings"
	"testing"

	"tcpd/configs"
)

// FuzzParseConfig feeds arbitrary bytes to the configuration parser. A file
// is an operator's, not the network's, but a bad one must still get an
// error, never a panic, and what the parser accepts must be what tcpd
// writes back: every accepted configuration, rendered key by key with the
// formatting the reload warnings and configs/tcpd.yaml use, parses again to
// the same values, and a reload from the defaults to it succeeds or fails
// with an error.
func FuzzParseConfig(f *testing.F) {
	f.Add(configs.Default)
	f.Add([]byte(""))
	f.Add([]byte("tun:\n  mtu: 1420\n  queues: auto\nlimits:\n  memory: 512MiB\n"))
	f.Add([]byte("tcp:\n  time_wait: 1s\n  time_wait_limit: 0\nlimits:\n  max_connections: 10\n  max_connections_per_client: 11\n"))
	f.Add([]byte("policy:\n  deny: [169.254.169.254/32, fd00::/8]\nupstream:\n  source_addresses: [192.0.2.1]\n"))
	f.Add([]byte("a: &x [*x]\n"))
	f.Add([]byte("tun: {mtu: 99999}\n---\nx: 1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := parseConfig(data)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("an error with no message")
			}
			return
		}
		again, err := parseConfig(renderValues(c))
		if err != nil {
			t.Fatalf("the accepted configuration, written back, does not parse: %v\n%s", err, renderValues(c))
		}
		for _, k := range keys {
			if !k.spec.equal(c, again) {
				t.Fatalf("%s: %s parsed, %s once written back", k.path, k.spec.format(c), k.spec.format(again))
			}
		}
		if _, _, err := reloaded(defaultConfig(), c); err != nil && err.Error() == "" {
			t.Fatal("a reload error with no message")
		}
	})
}

// renderValues writes c as a configuration file: every key, nested as in
// configs/tcpd.yaml, with its value as tcpd formats it.
func renderValues(c *config) []byte {
	var b strings.Builder
	var walk func(prefix string, depth int)
	walk = func(prefix string, depth int) {
		indent := strings.Repeat("  ", depth)
		for _, name := range schema.children[prefix] {
			path := join(prefix, name)
			if k, leaf := schema.keys[path]; leaf {
				fmt.Fprintf(&b, "%s%s: %s\n", indent, name, k.spec.format(c))
				continue
			}
			fmt.Fprintf(&b, "%s%s:\n", indent, name)
			walk(path, depth+1)
		}
	}
	walk("", 0)
	return []byte(b.String())
}
