package stack

import (
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	gvstack "gvisor.dev/gvisor/pkg/tcpip/stack"
)

func synID(port uint16) gvstack.TransportEndpointID {
	return gvstack.TransportEndpointID{
		LocalAddress: tcpip.AddrFrom4([4]byte{198, 18, 1, 2}), LocalPort: 80,
		RemoteAddress: tcpip.AddrFrom4([4]byte{100, 64, 1, 2}), RemotePort: port,
	}
}

// TestSynFlight: a 4-tuple's in-flight SYN keeps its sequence number
// whatever other SYNs of the 4-tuple come meanwhile (they are refused),
// the set holds no more than its cap, and a 4-tuple removed takes its next
// SYN's number.
func TestSynFlight(t *testing.T) {
	f := newSynFlight(2)
	a, b, c := synID(40000), synID(40001), synID(40002)
	steps := []struct {
		id   gvstack.TransportEndpointID
		seq  uint32
		want synAdd
	}{
		{a, 7, synAdded},
		{a, 9, synBusy},
		{b, 5, synAdded},
		{c, 3, synFull},
	}
	for _, s := range steps {
		if got := f.add(s.id, s.seq); got != s.want {
			t.Fatalf("add(port %d, seq %d) = %d, want %d", s.id.RemotePort, s.seq, got, s.want)
		}
	}
	if seq, ok := f.seq(a); !ok || seq != 7 {
		t.Fatalf("seq of the first SYN = %d, %v; want 7, true", seq, ok)
	}
	if _, ok := f.seq(c); ok {
		t.Fatal("a SYN refused at the cap has a sequence number")
	}
	f.remove(a)
	f.remove(a) // a second remove of the same 4-tuple changes nothing
	if got := f.add(c, 3); got != synAdded {
		t.Fatalf("add once below the cap again = %d, want synAdded", got)
	}
	if got := f.add(a, 9); got != synFull {
		t.Fatalf("add at the cap = %d, want synFull", got)
	}
	f.remove(b)
	if got := f.add(a, 9); got != synAdded {
		t.Fatalf("add after removal = %d, want synAdded", got)
	}
	if seq, _ := f.seq(a); seq != 9 {
		t.Fatalf("seq of the 4-tuple's next SYN = %d, want 9", seq)
	}
	if n := f.n.Load(); n != 2 {
		t.Fatalf("%d in flight, want 2", n)
	}
}

// TestSynFlightAllocs: once its maps have grown, a SYN's add, seq and
// remove allocate nothing, even when every SYN is a new 4-tuple.
func TestSynFlightAllocs(t *testing.T) {
	if raceDetector {
		t.Skip("allocation counts under the race detector are not the code's")
	}
	const inFlight = 64
	f := newSynFlight(inFlight)
	port := uint16(0)
	churn := func() {
		for range inFlight {
			port++
			id := synID(port)
			f.add(id, uint32(port))
			f.seq(id)
		}
		for i := range uint16(inFlight) {
			f.remove(synID(port - i))
		}
	}
	for range 100 {
		churn()
	}
	if allocs := testing.AllocsPerRun(100, churn); allocs != 0 {
		t.Fatalf("%v allocations per %d SYNs, want 0", allocs, inFlight)
	}
}
