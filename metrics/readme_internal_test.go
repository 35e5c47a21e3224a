package metrics

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// TestREADMEStatesTheCaps: README tells operators what the metrics
// listener refuses, with the numbers this package uses.
func TestREADMEStatesTheCaps(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Join(strings.Fields(string(b)), " ")
	for _, want := range []string{
		fmt.Sprintf("At most %d scrapes run at once; more are answered `503 Service Unavailable`", maxScrapesInFlight),
		fmt.Sprintf("The metrics listener holds at most %d connections", MaxConnections),
		fmt.Sprintf("keep-alive connections idle for %d s (metrics)", int(idleTimeout.Seconds())),
	} {
		if !strings.Contains(text, want) {
			t.Errorf("README does not say %q", want)
		}
	}
}
