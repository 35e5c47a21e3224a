//go:build !linux

package stack

import "errors"

// openRoutes: only Linux is asked about its routes.
func openRoutes(string) (pathQuerier, int, func() bool, func(), error) {
	return nil, 0, nil, nil, errors.ErrUnsupported
}
