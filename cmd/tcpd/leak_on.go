//go:build leakcheck

package main

import (
	"fmt"

	"go.uber.org/goleak"
)

// checkLeaks, in binaries built with -tags leakcheck (the tier B tests
// build tcpd so), fails the run if a goroutine outlives it: run returns
// only after the stack, the listeners and every goroutine they started
// are done, so whatever is left leaked. goleak retries for a while before it
// reports, so a goroutine that is on its way out is not one.
func checkLeaks() error {
	if err := goleak.Find(
		// The wedgetest hook's SIGUSR2 watcher lives as long as the
		// process by design.
		goleak.IgnoreAnyFunction("main.(*daemon).wedgeOnSignal.func1"),
	); err != nil {
		return fmt.Errorf("goroutines leaked: %w", err)
	}
	return nil
}
