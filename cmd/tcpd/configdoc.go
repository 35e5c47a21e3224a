package main

import (
	"fmt"
	"strings"
)

// The documentation of the configuration, written from the table:
// configs/tcpd.yaml, the commented default configuration, and the key
// table in README. TestConfigDocs holds both files to what these render,
// and `go generate ./cmd/tcpd` rewrites them.

// yamlHeader opens configs/tcpd.yaml.
const yamlHeader = `# tcpd configuration.
#
# This file is also tcpd's built-in default: "tcpd run" without --config uses
# exactly these values. Every key is optional; a key left out keeps the value
# shown here. Unknown keys are errors. Check a file with
# "tcpd check-config FILE".
#
# Durations are Go duration strings: 500ms, 10s, 1m30s, 2h (units ns, us, ms,
# s, m, h; there is no day unit). Prefixes are address/length, e.g.
# 100.64.0.0/10 or fd64::/64, and must have no host bits set, except in
# tun.addresses.
#
# On SIGHUP (systemctl reload tcpd) tcpd re-reads this file. A key whose
# comment says "Reload: applies ..." takes its new value then, for what the
# comment names; live connections are not touched otherwise. A key that
# "needs a restart" keeps its running value, and every reload names it in a
# warning until tcpd restarts. A file with errors changes nothing.
`

// renderYAML writes configs/tcpd.yaml: every key with its default and a
// comment made of its doc, what it allows and when a reload applies it.
func renderYAML() []byte {
	var b strings.Builder
	b.WriteString(yamlHeader)
	def := defaultConfig()
	var walk func(prefix string, depth int)
	walk = func(prefix string, depth int) {
		indent := strings.Repeat("  ", depth)
		for _, name := range schema.children[prefix] {
			path := join(prefix, name)
			if depth == 0 {
				b.WriteString("\n")
			}
			if k, leaf := schema.keys[path]; leaf {
				writeComment(&b, indent, k.comment())
				fmt.Fprintf(&b, "%s%s: %s\n", indent, name, k.spec.format(def))
				continue
			}
			if c := sections[path]; c != "" {
				writeComment(&b, indent, c)
			}
			fmt.Fprintf(&b, "%s%s:\n", indent, name)
			walk(path, depth+1)
		}
	}
	walk("", 0)
	return []byte(b.String())
}

// comment is the key's comment in configs/tcpd.yaml.
func (k *key) comment() string {
	parts := []string{k.doc}
	if k.more != "" {
		parts = append(parts, k.more)
	}
	parts = append(parts, "Allowed: "+k.spec.allowed()+".", "Reload: "+k.reloadSentence()+".")
	return strings.Join(parts, " ")
}

// reloadSentence says what a reload does with the key.
func (k *key) reloadSentence() string {
	switch k.apply {
	case restart:
		return "needs a restart"
	case atOnce:
		return "applies at once"
	}
	return "applies to " + k.apply
}

// writeComment writes text as YAML comment lines of at most 78 columns.
func writeComment(b *strings.Builder, indent, text string) {
	const width = 78
	line := indent + "#"
	for _, w := range strings.Fields(text) {
		if len(line)+1+len(w) > width && line != indent+"#" {
			b.WriteString(line + "\n")
			line = indent + "#"
		}
		line += " " + w
	}
	b.WriteString(line + "\n")
}

// The key table in README sits between these markers.
const (
	readmeTableBegin = "<!-- The key table is generated from cmd/tcpd/config.go: go generate ./cmd/tcpd -->\n"
	readmeTableEnd   = "<!-- end of the generated key table -->\n"
)

// renderREADMETable writes README's key table, markers included.
func renderREADMETable() string {
	var b strings.Builder
	b.WriteString(readmeTableBegin)
	b.WriteString("| key | default | allowed | on reload | meaning |\n|---|---|---|---|---|\n")
	def := defaultConfig()
	for i := range keys {
		k := &keys[i]
		reload := "restart"
		if k.apply != restart {
			reload = k.apply
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s | %s |\n", k.path, readmeValue(k.spec.format(def)),
			markdownEscape(k.spec.allowed()), reload, markdownEscape(k.doc))
	}
	b.WriteString(readmeTableEnd)
	return b.String()
}

// readmeValue shows a default in README: each list item in its own code
// span, "none" for an empty list.
func readmeValue(v string) string {
	if !strings.HasPrefix(v, "[") {
		return "`" + v + "`"
	}
	items := strings.Split(strings.Trim(v, "[]"), ", ")
	if items[0] == "" {
		return "none"
	}
	for i, it := range items {
		items[i] = "`" + strings.Trim(it, `"`) + "`"
	}
	return strings.Join(items, ", ")
}

// markdownEscape keeps a table cell one cell.
func markdownEscape(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
