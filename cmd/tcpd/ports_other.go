//go:build !linux

package main

import "errors"

// readPortSysctls has nothing to read off Linux.
func readPortSysctls() (portSysctls, error) { return portSysctls{}, errors.ErrUnsupported }
