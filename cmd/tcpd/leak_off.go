//go:build !leakcheck

package main

// checkLeaks exists only in leakcheck builds; see leak_on.go.
func checkLeaks() error { return nil }
