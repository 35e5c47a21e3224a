package stack

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if any goroutine outlives them: Close
// promises to wait for every goroutine it started.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
