package main

import (
	"fmt"
	"math"
	"math/big"
	"net"
	"net/netip"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"

	"tcpd/stack"
)

// This file holds the machinery behind the configuration table in
// config.go: the kinds of value a key can hold (each decodes, validates and
// formats its values and says which it allows), the key type that binds a
// kind to the field it sets, and the decoder that walks a YAML document
// against the table, collecting every problem with its line.

// spec is what a key's row knows about its value: how to decode it into
// the field it sets, its default, and how to compare, copy and show it. A
// row gets one from field.
type spec interface {
	// decode decodes n into the key's field of c, reporting problems to d;
	// it reports whether it set the field.
	decode(d *decoder, n *yaml.Node, key string, c *config) bool
	// setDefault sets the key's field of c to its default.
	setDefault(c *config)
	// equal reports whether the key's field holds the same value in a and b.
	equal(a, b *config) bool
	// copy sets the key's field of dst to its value in src.
	copy(dst, src *config)
	// format shows the key's value in c as YAML.
	format(c *config) string
	// allowed says which values the key takes ("1280..65535").
	allowed() string
	// fieldAddr is the address of the key's field in c, for the test that
	// holds live keys to the fields a reload applies.
	fieldAddr(c *config) uintptr
}

// kind is one kind of value: how to decode, show and describe it.
type kind[T any] struct {
	// decode decodes n (which is not nil) into a value, reporting problems
	// to d under key.
	decode func(d *decoder, n *yaml.Node, key string) (T, bool)
	// format shows a value as YAML.
	format func(T) string
	// allowed says which values it takes, as the error messages say.
	allowed string
}

// field binds a kind to the field of config it sets (get returns a pointer
// to it) and the field's default.
func field[T any](get func(*config) *T, def T, k kind[T]) spec {
	return &fieldSpec[T]{get: get, def: def, kind: k}
}

type fieldSpec[T any] struct {
	get  func(*config) *T
	def  T
	kind kind[T]
}

func (f *fieldSpec[T]) decode(d *decoder, n *yaml.Node, key string, c *config) bool {
	v, ok := f.kind.decode(d, n, key)
	if ok {
		*f.get(c) = v
	}
	return ok
}

func (f *fieldSpec[T]) setDefault(c *config)        { *f.get(c) = f.def }
func (f *fieldSpec[T]) equal(a, b *config) bool     { return reflect.DeepEqual(*f.get(a), *f.get(b)) }
func (f *fieldSpec[T]) copy(dst, src *config)       { *f.get(dst) = *f.get(src) }
func (f *fieldSpec[T]) format(c *config) string     { return f.kind.format(*f.get(c)) }
func (f *fieldSpec[T]) allowed() string             { return f.kind.allowed }
func (f *fieldSpec[T]) fieldAddr(c *config) uintptr { return reflect.ValueOf(f.get(c)).Pointer() }

// Limits of the configuration values.
const (
	// maxIfNameLen is IFNAMSIZ (16) minus the terminating NUL.
	maxIfNameLen = 15
	// maxSocketPath is the size of sockaddr_un.sun_path (108) minus its NUL.
	maxSocketPath = 107
	// day is the largest unit the limits need; Go durations have none.
	day = 24 * time.Hour
)

// integer is an integer in lo..hi.
func integer[T ~int | ~uint32](lo, hi int64) kind[T] {
	allowed := fmt.Sprintf("%d..%d", lo, hi)
	return kind[T]{
		allowed: allowed,
		format:  func(v T) string { return strconv.FormatInt(int64(v), 10) },
		decode: func(d *decoder, n *yaml.Node, key string) (T, bool) {
			x, ok := d.integer(n, key, lo, hi, "allowed "+allowed)
			return T(x), ok
		},
	}
}

// optionalInt is integer for a field where nil means the package's default;
// the configuration always sets it.
func optionalInt(lo, hi int64) kind[*int] {
	k := integer[int](lo, hi)
	return kind[*int]{
		allowed: k.allowed,
		format:  func(v *int) string { return k.format(*v) },
		decode: func(d *decoder, n *yaml.Node, key string) (*int, bool) {
			x, ok := k.decode(d, n, key)
			return &x, ok
		},
	}
}

// autoOrInt is an integer in lo..hi or auto, which sets 0: the package's
// own choice.
func autoOrInt(lo, hi int64) kind[int] {
	return intOrWords(lo, hi, fmt.Sprintf("auto or %d..%d", lo, hi), "auto or an integer", word{"auto", 0})
}

// word is a keyword an integer setting takes besides its range, and the
// value it stands for (outside the range).
type word struct {
	name  string
	value int
}

// intOrWords is an integer in lo..hi or one of words. allowed and want
// describe both in error messages.
func intOrWords(lo, hi int64, allowed, want string, words ...word) kind[int] {
	return kind[int]{
		allowed: allowed,
		format: func(v int) string {
			for _, w := range words {
				if w.value == v {
					return w.name
				}
			}
			return strconv.Itoa(v)
		},
		decode: func(d *decoder, n *yaml.Node, key string) (int, bool) {
			v, ok := d.scalar(n, key, want, "allowed: "+allowed)
			if !ok {
				return 0, false
			}
			if v.ShortTag() == "!!int" {
				x, ok := d.integer(n, key, lo, hi, "allowed: "+allowed)
				return int(x), ok
			}
			for _, w := range words {
				if v.Value == w.name {
					return w.value, true
				}
			}
			if quotedNumber(v) {
				d.errorf(n, key, "%s is in quotes, which makes it a string (write the number without them; allowed: %s)", shown(v.Value), allowed)
				return 0, false
			}
			d.errorf(n, key, "%s is not allowed (allowed: %s)", shown(v.Value), allowed)
			return 0, false
		},
	}
}

// quotedNumber reports whether v is an integer in quotes: a string to
// YAML, a number to whoever wrote it.
func quotedNumber(v *yaml.Node) bool {
	if v.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) == 0 {
		return false
	}
	_, err := strconv.ParseInt(strings.TrimSpace(v.Value), 0, 64)
	return err == nil
}

// duration is a Go duration string in lo..hi, or also 0 (off) when zeroOK.
func duration(lo, hi time.Duration, zeroOK bool) kind[time.Duration] {
	allowed := fmtDuration(lo) + ".." + fmtDuration(hi)
	if zeroOK && lo > 0 {
		allowed = "0s (off) or " + allowed
	}
	return durationIn(lo, hi, zeroOK, allowed)
}

// userTimeout is tcp.user_timeout: keepalive (0: as long as keepalive
// takes to give up), 0s (stack.UserTimeoutOff: none) or a duration in
// lo..hi.
func userTimeout(lo, hi time.Duration) kind[time.Duration] {
	allowed := "keepalive, 0s (none) or " + fmtDuration(lo) + ".." + fmtDuration(hi)
	k := durationIn(lo, hi, true, allowed)
	return kind[time.Duration]{
		allowed: allowed,
		format: func(x time.Duration) string {
			switch {
			case x == 0:
				return "keepalive"
			case x < 0:
				return "0s"
			}
			return fmtDefaultDuration(x)
		},
		decode: func(d *decoder, n *yaml.Node, key string) (time.Duration, bool) {
			if v := deref(n); v.Kind == yaml.ScalarNode && v.Value == "keepalive" {
				return 0, true
			}
			x, ok := k.decode(d, n, key)
			if ok && x == 0 {
				x = stack.UserTimeoutOff
			}
			return x, ok
		},
	}
}

// durationIn is duration with allowed, the values it takes as its errors
// name them.
func durationIn(lo, hi time.Duration, zeroOK bool, allowed string) kind[time.Duration] {
	return kind[time.Duration]{
		allowed: allowed,
		format:  fmtDefaultDuration,
		decode: func(d *decoder, n *yaml.Node, key string) (time.Duration, bool) {
			v, ok := d.scalar(n, key, "a duration", "allowed "+allowed)
			if !ok {
				return 0, false
			}
			x, err := time.ParseDuration(v.Value)
			if err != nil {
				d.errorf(n, key, "%s is not a duration (allowed %s, with a unit: e.g. 10s, 1m30s)", shown(v.Value), allowed)
				return 0, false
			}
			if (x < lo || x > hi) && !(zeroOK && x == 0) {
				d.errorf(n, key, "%s is out of range (allowed %s)", v.Value, allowed)
				return 0, false
			}
			return x, true
		},
	}
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

// fmtDefaultDuration formats a value in whole seconds below an hour (120s,
// as Linux's sysctls count), else as fmtDuration.
func fmtDefaultDuration(x time.Duration) string {
	if x < time.Hour && x%time.Second == 0 {
		return fmt.Sprintf("%ds", x/time.Second)
	}
	return fmtDuration(x)
}

// choice is one value of an enum: its name in the file and the value of
// the field it sets.
type choice[T comparable] struct {
	name  string
	value T
}

// enum is one of a fixed set of names.
func enum[T comparable](choices ...choice[T]) kind[T] {
	names := make([]string, len(choices))
	for i, c := range choices {
		names[i] = c.name
	}
	allowed := strings.Join(names, ", ")
	return kind[T]{
		allowed: "one of " + allowed,
		format: func(v T) string {
			for _, c := range choices {
				if c.value == v {
					return yamlString(c.name)
				}
			}
			return fmt.Sprint(v)
		},
		decode: func(d *decoder, n *yaml.Node, key string) (T, bool) {
			var zero T
			v, ok := d.scalar(n, key, "a string", "allowed: "+allowed)
			if !ok {
				return zero, false
			}
			for _, c := range choices {
				if c.name == v.Value {
					return c.value, true
				}
			}
			d.errorf(n, key, "%s is not allowed (allowed: %s)", shown(v.Value), allowed)
			return zero, false
		},
	}
}

// names is enum for a string field that holds the name itself.
func names(values ...string) kind[string] {
	cs := make([]choice[string], len(values))
	for i, v := range values {
		cs[i] = choice[string]{v, v}
	}
	return enum(cs...)
}

// ifName is a network interface name; emptyOK allows "" (none).
func ifName(emptyOK bool) kind[string] {
	allowed := fmt.Sprintf("1..%d characters, no '/', ':' or whitespace", maxIfNameLen)
	if emptyOK {
		allowed += `, or "" for none`
	}
	return kind[string]{
		allowed: allowed,
		format:  yamlString,
		decode: func(d *decoder, n *yaml.Node, key string) (string, bool) {
			s, ok := d.str(n, key, "allowed: "+allowed)
			if !ok {
				return "", false
			}
			var why string
			switch {
			case s == "" && emptyOK:
			case s == "":
				why = "is empty"
			case len(s) > maxIfNameLen:
				why = fmt.Sprintf("is %d characters long", len(s))
				if utf8.RuneCountInString(s) != len(s) {
					why = fmt.Sprintf("is %d bytes long", len(s)) // the kernel's limit is in bytes
				}
			case s == "." || s == "..":
				why = "is not a name"
			default:
				for _, r := range s {
					// The kernel refuses '/', ':' and white space; like
					// systemd, refuse control and non-ASCII characters
					// as well.
					if r == '/' || r == ':' || r <= ' ' || r >= 0x7f {
						why = fmt.Sprintf("contains %q", r)
						break
					}
				}
			}
			if why != "" {
				d.errorf(n, key, "%s %s (allowed: %s)", shown(s), why, allowed)
				return "", false
			}
			return s, true
		},
	}
}

// listenAddr is a listen address, or "" (off): an IP address (IPv6 in
// brackets), localhost, or nothing, for every address, then a port. Any
// other host name is refused here rather than resolved at start, where it
// would fail only then, or listen wherever the resolver of the day pointed;
// localhost, which configurations written before this check use, is the
// loopback everywhere.
func listenAddr() kind[string] {
	const allowed = `address:port, e.g. 127.0.0.1:9810, [::1]:9810, localhost:9810 or :9810 (every address), or "" to disable`
	return kind[string]{
		allowed: allowed,
		format:  yamlString,
		decode: func(d *decoder, n *yaml.Node, key string) (string, bool) {
			s, ok := d.str(n, key, "allowed: "+allowed)
			if !ok {
				return "", false
			}
			if s != "" {
				host, port, err := net.SplitHostPort(s)
				if err != nil {
					d.errorf(n, key, "%s is not address:port (allowed: %s)", shown(s), allowed)
					return "", false
				}
				if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
					d.errorf(n, key, "%s has port %s (allowed: 1..65535)", shown(s), shown(port))
					return "", false
				}
				if _, err := netip.ParseAddr(host); host != "" && host != "localhost" && err != nil {
					d.errorf(n, key, "%s has host %s, not an IP address (allowed: %s)", shown(s), shown(host), allowed)
					return "", false
				}
			}
			return s, true
		},
	}
}

// socketPath is an absolute Unix socket path, or "" (off).
func socketPath() kind[string] {
	allowed := fmt.Sprintf(`an absolute path of at most %d bytes, or "" to disable`, maxSocketPath)
	return kind[string]{
		allowed: allowed,
		format:  yamlString,
		decode: func(d *decoder, n *yaml.Node, key string) (string, bool) {
			s, ok := d.str(n, key, "allowed: "+allowed)
			if !ok {
				return "", false
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
				d.errorf(n, key, "%s %s (allowed: %s)", shown(s), why, allowed)
				return "", false
			}
			return s, true
		},
	}
}

// mssClamp is tcp.mss_clamp's kind: auto (stack.MSSClampAuto), off
// (stack.MSSClampOff) or a fixed MSS in lo..hi.
func mssClamp(lo, hi int64) kind[int] {
	return intOrWords(lo, hi, fmt.Sprintf("auto, off, or an MSS in %d..%d", lo, hi), "auto, off or an integer",
		word{"auto", stack.MSSClampAuto}, word{"off", stack.MSSClampOff})
}

// prefixes is a list of at least atLeast prefixes. Unless hostBits, each
// must be canonical (no bits set past its length). An empty list is nil.
func prefixes(hostBits bool, atLeast int) kind[[]netip.Prefix] {
	example := "100.64.0.0/10"
	if hostBits {
		example = "100.64.0.1/32"
	}
	allowed := "a list of prefixes"
	switch {
	case atLeast == 1:
		allowed = "a list of one or more prefixes"
	case atLeast > 1:
		allowed = fmt.Sprintf("a list of at least %d prefixes", atLeast)
	}
	if !hostBits {
		allowed += " with no host bits set"
	}
	allowed += ", e.g. [" + example + "]"
	return kind[[]netip.Prefix]{
		allowed: allowed,
		format: func(ps []netip.Prefix) string {
			q := make([]string, len(ps))
			for i, p := range ps {
				q[i] = strconv.Quote(p.String())
			}
			return "[" + strings.Join(q, ", ") + "]"
		},
		decode: func(d *decoder, n *yaml.Node, key string) ([]netip.Prefix, bool) {
			return d.prefixes(n, key, hostBits, atLeast, example)
		},
	}
}

// addresses is a list of unicast addresses without a zone, each at most
// once; an empty list is nil.
func addresses() kind[[]netip.Addr] {
	const example = "198.51.100.7"
	return kind[[]netip.Addr]{
		allowed: "a list of addresses of this host, e.g. [" + example + ", 2001:db8::7]",
		format: func(as []netip.Addr) string {
			q := make([]string, len(as))
			for i, a := range as {
				q[i] = strconv.Quote(a.String())
			}
			return "[" + strings.Join(q, ", ") + "]"
		},
		decode: func(d *decoder, n *yaml.Node, key string) ([]netip.Addr, bool) {
			v := deref(n)
			switch {
			case isNull(v):
				d.errorf(n, key, "no value (allowed: a list of addresses, e.g. [%s], or [] for none)", example)
				return nil, false
			case v.Kind != yaml.SequenceNode:
				d.errorf(n, key, "expected a list of addresses, got %s (allowed: e.g. [%s])", describe(v), example)
				return nil, false
			}
			return listItems(d, v, key, "an address", example, func(s string) (netip.Addr, string) {
				a, err := netip.ParseAddr(s)
				switch {
				case err != nil:
					return a, fmt.Sprintf("%s is not an IP address (e.g. %s)", shown(s), example)
				case a.Zone() != "":
					return a, fmt.Sprintf("%s has a zone (allowed: an address without one)", shown(s))
				case a.Is4In6():
					return a, fmt.Sprintf("%s is an IPv4-mapped IPv6 address (did you mean %s?)", shown(s), a.Unmap())
				case a.IsUnspecified(), a.IsMulticast():
					return a, fmt.Sprintf("%s cannot be a source address (allowed: a unicast address of this host)", shown(s))
				}
				return a, ""
			})
		},
	}
}

// yamlString shows a string as a YAML scalar, quoted only where YAML would
// read it as something else.
func yamlString(s string) string {
	b, err := yaml.Marshal(s)
	if err != nil {
		return strconv.Quote(s)
	}
	return strings.TrimSuffix(string(b), "\n")
}

// maxShown is how much of a value from the file an error message quotes.
const maxShown = 64

// shown quotes a value from the configuration file for an error message:
// whole up to maxShown bytes, else its start and its length, so that a
// stray megabyte on one line does not become a megabyte of error.
func shown(s string) string {
	if len(s) <= maxShown {
		return strconv.Quote(s)
	}
	cut := maxShown - 16
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s… (%d bytes)", strconv.Quote(s[:cut]), len(s))
}

// shownNumber is shown for a number written in the file, which needs no
// quotes unless it is long.
func shownNumber(s string) string {
	if len(s) <= maxShown {
		return s
	}
	return shown(s)
}

// configError is one problem in a configuration file.
type configError struct {
	line int
	msg  string
}

func (e *configError) Error() string { return fmt.Sprintf("line %d: %s", e.line, e.msg) }

// decoder walks a YAML node tree against the configuration table,
// collecting every problem instead of stopping at the first.
type decoder struct {
	errs []*configError
	// lines holds the line of each key's value, for checks across keys.
	lines map[string]int
	// bad holds the keys whose value was rejected, so that checks across
	// keys do not pile onto them.
	bad map[string]bool
}

func newDecoder() *decoder { return &decoder{lines: map[string]int{}, bad: map[string]bool{}} }

func (d *decoder) errorf(n *yaml.Node, key, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if key != "" {
		if len(key) > maxShown {
			key = shown(key) // an unknown key can be as long as the file
		}
		msg = key + ": " + msg
		d.bad[key] = true
	}
	d.errs = append(d.errs, &configError{line: n.Line, msg: msg})
}

// walk decodes the mapping n at prefix against the table's tree and
// records the value node of each key present in values.
func (d *decoder) walk(n *yaml.Node, prefix string, values map[string]*yaml.Node) {
	children := schema.children[prefix]
	for name, v := range d.mapping(n, prefix, children...) {
		path := join(prefix, name)
		if _, leaf := schema.keys[path]; leaf {
			values[path] = v
		} else {
			d.walk(v, path, values)
		}
	}
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
		return shown(n.Value)
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

// str decodes any scalar as a string.
func (d *decoder) str(n *yaml.Node, key, allowed string) (string, bool) {
	v, ok := d.scalar(n, key, "a string", allowed)
	if !ok {
		return "", false
	}
	return v.Value, true
}

// integer decodes an integer in lo..hi.
func (d *decoder) integer(n *yaml.Node, key string, lo, hi int64, allowed string) (int64, bool) {
	v, ok := d.scalar(n, key, "an integer", allowed)
	if !ok {
		return 0, false
	}
	var x int64
	switch v.ShortTag() {
	case "!!int":
		if err := v.Decode(&x); err != nil {
			d.errorf(n, key, "%s is out of range (%s)", shownNumber(v.Value), allowed)
			return 0, false
		}
	case "!!float":
		// YAML resolves an integer too long for 64 bits as a float.
		if _, ok := new(big.Int).SetString(strings.ReplaceAll(v.Value, "_", ""), 0); ok {
			d.errorf(n, key, "%s is out of range (%s)", shownNumber(v.Value), allowed)
			return 0, false
		}
		fallthrough
	default:
		if quotedNumber(v) {
			d.errorf(n, key, "%s is in quotes, which makes it a string (write the number without them; %s)", shown(v.Value), allowed)
			return 0, false
		}
		d.errorf(n, key, "%s is not an integer (%s)", shown(v.Value), allowed)
		return 0, false
	}
	if x < lo || x > hi {
		d.errorf(n, key, "%s is out of range (%s)", v.Value, allowed)
		return 0, false
	}
	return x, true
}

// prefixes decodes a list of at least atLeast prefixes.
func (d *decoder) prefixes(n *yaml.Node, key string, hostBits bool, atLeast int, example string) ([]netip.Prefix, bool) {
	allowed := "allowed: a list of prefixes, e.g. [" + example + "]"
	v := deref(n)
	switch {
	case isNull(v):
		d.errorf(n, key, "no value (%s)", allowed)
		return nil, false
	case v.Kind != yaml.SequenceNode:
		d.errorf(n, key, "expected a list of prefixes, got %s (%s)", describe(v), allowed)
		return nil, false
	case len(v.Content) < atLeast:
		d.errorf(n, key, "no prefixes (allowed: a list of at least %d, e.g. [%s])", atLeast, example)
		return nil, false
	}
	return listItems(d, v, key, "a prefix", example, func(s string) (netip.Prefix, string) {
		p, err := netip.ParsePrefix(s)
		switch {
		case err != nil:
			return p, fmt.Sprintf("%s is not a prefix (want address/length, e.g. %s)", shown(s), example)
		case !hostBits && p != p.Masked():
			return p, fmt.Sprintf("%s has host bits set (did you mean %s?)", shown(s), p.Masked())
		}
		return p, ""
	})
}

// listItems decodes the items of the sequence v under key (key[i] each):
// what (with its article) is one item, parse reads one or says in a
// message why it cannot, and an item listed twice is an error. Any bad item
// marks key bad and returns nil, false; an empty list is nil.
func listItems[T comparable](d *decoder, v *yaml.Node, key, what, example string, parse func(string) (T, string)) ([]T, bool) {
	var out []T
	ok := true
	for i, item := range v.Content {
		ikey := fmt.Sprintf("%s[%d]", key, i)
		d.lines[ikey] = item.Line
		iv := deref(item)
		if iv.Kind != yaml.ScalarNode || isNull(iv) {
			d.errorf(item, ikey, "expected %s, got %s (e.g. %s)", what, describe(iv), example)
			ok = false
			continue
		}
		x, msg := parse(iv.Value)
		if j := slices.Index(out, x); msg == "" && j >= 0 {
			msg = fmt.Sprintf("%s is listed twice (also %s[%d])", shown(iv.Value), key, j)
		}
		if msg != "" {
			d.errorf(item, ikey, "%s", msg)
			ok = false
			continue
		}
		out = append(out, x)
	}
	if !ok {
		d.bad[key] = true
		return nil, false
	}
	return out, true
}

// memorySize is limits.memory: "auto", "off", or a size in bytes with an
// optional binary unit (KiB, MiB, GiB, TiB) in lo..hi.
func memorySize(lo, hi int64) kind[memLimit] {
	allowed := fmt.Sprintf("auto, off, or a size in %s..%s (e.g. 512MiB, 2GiB)", fmtBytes(lo), fmtBytes(hi))
	return kind[memLimit]{
		allowed: allowed,
		format: func(v memLimit) string {
			switch v {
			case memAuto:
				return "auto"
			case memOff:
				return "\"off\"" // YAML would read a bare off as false
			}
			return fmtBytes(int64(v))
		},
		decode: func(d *decoder, n *yaml.Node, key string) (memLimit, bool) {
			v, ok := d.scalar(n, key, "a size", "allowed: "+allowed)
			if !ok {
				return 0, false
			}
			switch v.Value {
			case "auto":
				return memAuto, true
			case "off":
				return memOff, true
			}
			x, err := parseBytes(v.Value)
			if err != nil {
				d.errorf(n, key, "%s is not a size (allowed: %s)", shown(v.Value), allowed)
				return 0, false
			}
			if x < lo || x > hi {
				d.errorf(n, key, "%s is out of range (allowed: %s)", v.Value, allowed)
				return 0, false
			}
			return memLimit(x), true
		},
	}
}

// byteUnits are the units parseBytes takes, largest first.
var byteUnits = []struct {
	name string
	size int64
}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}

// parseBytes reads "512MiB", "2GiB", "1048576" or "1048576B".
func parseBytes(s string) (int64, error) {
	unit := int64(1)
	for _, u := range byteUnits {
		if num, ok := strings.CutSuffix(s, u.name); ok {
			s, unit = num, u.size
			break
		}
	}
	x, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || x < 0 || x > math.MaxInt64/unit {
		return 0, fmt.Errorf("not a size")
	}
	return x * unit, nil
}

// fmtBytes shows a size in the largest unit it is a whole multiple of.
func fmtBytes(x int64) string {
	for _, u := range byteUnits {
		if x >= u.size && x%u.size == 0 {
			if u.size == 1 {
				return strconv.FormatInt(x, 10)
			}
			return strconv.FormatInt(x/u.size, 10) + u.name
		}
	}
	return strconv.FormatInt(x, 10)
}
