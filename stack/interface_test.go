package stack

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"
)

// missingInterface is a name no interface of this host has: tcpdnx and
// random hex, within IFNAMSIZ.
func missingInterface() string { return fmt.Sprintf("tcpdnx%08x", rand.Uint32()) }

func TestCheckInterface(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("upstream interfaces need Linux")
	}
	for _, name := range []string{"", "lo"} {
		if err := checkInterface(name); err != nil {
			t.Errorf("%q: %v", name, err)
		}
	}
	name := missingInterface()
	err := checkInterface(name)
	var ie *InterfaceError
	if !errors.As(err, &ie) || !ie.NotFound || ie.Name != name {
		t.Fatalf("%s: error %#v, want an InterfaceError, not found", name, err)
	}
	if want := fmt.Sprintf("upstream interface %q: no such interface on this host", name); err.Error() != want {
		t.Errorf("error %q, want %q", err, want)
	}
}

// TestSetTunablesRejectsMissingInterface: a reload naming an interface the
// host does not have, on which every upstream connect would fail, is
// refused and changes nothing.
func TestSetTunablesRejectsMissingInterface(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("upstream interfaces need Linux")
	}
	h := newHarness(t, Config{}, clientAddr)
	tune := h.s.Tunables()
	tune.Interface = missingInterface()
	tune.DialTimeout = 3 * time.Second
	err := h.s.SetTunables(tune)
	var ie *InterfaceError
	if !errors.As(err, &ie) || ie.Name != tune.Interface {
		t.Fatalf("SetTunables with interface %s: %v, want an InterfaceError", tune.Interface, err)
	}
	if got := h.s.Tunables(); got.Interface != "" || got.DialTimeout == 3*time.Second {
		t.Fatalf("a refused SetTunables changed the settings: %+v", got)
	}
	tune.Interface = "lo"
	if err := h.s.SetTunables(tune); err != nil {
		t.Fatalf("SetTunables with interface lo: %v", err)
	}
	if got := h.s.Tunables(); got.Interface != "lo" {
		t.Fatalf("interface in force %q after SetTunables set lo", got.Interface)
	}
}
