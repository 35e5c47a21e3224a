//go:build !linux

package stack

import (
	"errors"
	"net/netip"

	"go.uber.org/zap"
)

// queueTUN is a real TUN, which needs Linux.
type queueTUN struct{ device }

func createTUN(TUNConfig, *zap.Logger) (*queueTUN, error) { return nil, errors.ErrUnsupported }

// ForwardingWarnings has nothing to say off Linux.
func ForwardingWarnings(string, []netip.Prefix) []string { return nil }

// rpFilterMode: no reverse-path filter to speak of.
func rpFilterMode(string) string { return "" }
