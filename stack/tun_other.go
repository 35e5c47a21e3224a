//go:build !linux

package stack

import (
	"errors"
	"net/netip"

	"go.uber.org/zap"
	"golang.zx2c4.com/wireguard/tun"
)

func createTUN(TUNConfig, *zap.Logger) (tun.Device, error) { return nil, errors.ErrUnsupported }

// ForwardingWarnings has nothing to say off Linux.
func ForwardingWarnings(string, []netip.Prefix) []string { return nil }

// rpFilterMode: no reverse-path filter to speak of.
func rpFilterMode(string) string { return "" }
