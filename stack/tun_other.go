//go:build !linux

package stack

import (
	"errors"

	"golang.zx2c4.com/wireguard/tun"
)

func createTUN(TUNConfig) (tun.Device, error) { return nil, errors.ErrUnsupported }

// RPFilterWarning has nothing to say off Linux.
func RPFilterWarning() string { return "" }
