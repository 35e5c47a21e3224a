//go:build !linux

package main

// openFileLimit is not read off Linux: no budget is applied.
func openFileLimit() int { return 0 }

// hostOpenFileMax is not read off Linux.
func hostOpenFileMax() int { return 0 }
