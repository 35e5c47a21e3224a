package stack

import "testing"

// TestRegistryOnePlace: a connection is in the connecting map until its
// endpoint is registered, and not after: a kill that unregistered the
// endpoint while the handler had not returned yet (its deferred
// connectEnded not run) must not find it again as connecting (the
// failure TestConntrackRefusedAndKilled once met on a clean checkout).
func TestRegistryOnePlace(t *testing.T) {
	g := newRegistry()
	r := &relay{}
	g.connectStarted(7, r)
	if g.connectingRelay(7) != r {
		t.Fatal("not connecting after connectStarted")
	}
	g.register(7, nil, r)
	if g.connectingRelay(7) != nil || g.lookup(7) == nil {
		t.Fatal("registered, yet still connecting or not found")
	}
	g.unregister(7)
	if g.connectingRelay(7) != nil || g.lookup(7) != nil {
		t.Fatal("found after unregister")
	}
	g.connectEnded(7)
}
