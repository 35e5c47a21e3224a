package stack

import (
	"net/netip"
	"testing"

	"tcpd/conntrack"
)

// TestKeptSYNs: a SYN kept twice (it opened an entry twice) is kept until
// both copies have gone, and nothing is kept after.
func TestKeptSYNs(t *testing.T) {
	var k keptSYNs
	tu := conntrack.Tuple{Client: netip.MustParseAddrPort("100.64.1.2:41000"), Dst: netip.MustParseAddrPort("198.18.1.2:80")}
	k.keep(tu, 7)
	k.keep(tu, 7)
	k.keep(tu, 9)
	k.unkeep(tu, 7)
	if !k.keeping(tu, 7) {
		t.Fatal("one of two copies gone: not keeping, want keeping")
	}
	k.unkeep(tu, 7)
	if k.keeping(tu, 7) {
		t.Fatal("both copies gone: keeping, want not")
	}
	if !k.keeping(tu, 9) {
		t.Fatal("another SYN of the 4-tuple: not keeping, want keeping")
	}
	k.unkeep(tu, 9)
	if n := k.kept.Load(); n != 0 || k.keptBy != nil {
		t.Fatalf("all gone: kept %d, map %v; want 0 and nil", n, k.keptBy)
	}
}
