//go:build !linux

package main

// availableMemory is unknown off Linux: the auto limit follows the
// connection cap alone.
func availableMemory() int64 { return 0 }
