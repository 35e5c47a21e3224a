//go:build !wedgetest

package main

// wedgeOnSignal exists only in wedgetest builds; see wedge_on.go.
func (*daemon) wedgeOnSignal() {}

// holdStartForTest exists only in wedgetest builds; see wedge_on.go.
func (*daemon) holdStartForTest() {}
