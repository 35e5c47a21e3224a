//go:build !linux

package stack

import (
	"context"
	"errors"
	"net"
)

type unsupportedDialer struct{}

func (unsupportedDialer) DialContext(context.Context, string, string) (net.Conn, error) {
	return nil, errors.ErrUnsupported
}

func (s *Stack) newDialer() unsupportedDialer { return unsupportedDialer{} }
