//go:build !linux

package bench

import (
	"context"
	"errors"
)

// Run needs Linux network namespaces and TUN devices.
func Run(ctx context.Context, cfg Config) (*Report, error) { return nil, errors.ErrUnsupported }
