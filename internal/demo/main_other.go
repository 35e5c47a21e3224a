//go:build !linux

// Command demo needs Linux network namespaces and TUN devices.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "demo: needs Linux (network namespaces and a TUN device)")
	os.Exit(2)
}
