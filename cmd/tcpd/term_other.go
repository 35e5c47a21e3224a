//go:build !linux

package main

import "os"

// isTerminal reports false off Linux, so that logs default to JSON.
func isTerminal(*os.File) bool { return false }
