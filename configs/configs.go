// Package configs holds tcpd's example configuration, tcpd.yaml, which is
// also the configuration tcpd runs with when it is given none. The file is
// embedded at build time, so the binary carries its defaults and the example
// shipped to users can never drift from them; cmd/tcpd's tests check that it
// parses to the documented default values.
package configs

import _ "embed"

// Default is the content of tcpd.yaml: the commented example configuration
// and the built-in default.
//
//go:embed tcpd.yaml
var Default []byte
