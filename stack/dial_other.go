//go:build !linux

package stack

import (
	"context"
	"errors"
	"net"
)

// dialUpstream needs Linux socket options.
func (s *Stack) dialUpstream(context.Context, string, string) (net.Conn, error) {
	return nil, errors.ErrUnsupported
}
