package stack

import (
	"bytes"
	"net/netip"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"tcpd/conntrack"
)

// socketQueue returns a queue over one end of a socket pair, which keeps
// frame boundaries as a TUN queue does, and the descriptor of the other end.
func socketQueue(t *testing.T) (*tunQueue, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[0]), "queue")
	t.Cleanup(func() {
		f.Close()
		unix.Close(fds[1])
	})
	raw, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return &tunQueue{raw: raw, stats: &QueueStats{}}, fds[1]
}

// TestQueueIODoesNotAllocate reads and writes frames on a queue as the read
// loops and WritePackets do, and checks that neither the read nor the write
// allocates: each runs once per packet.
func TestQueueIODoesNotAllocate(t *testing.T) {
	q, peerFD := socketQueue(t)
	q.io.buf = make([]byte, 2048)
	l := &link{}

	frame := []byte("one IP packet")
	out := append(make([]byte, writeHeadroom), frame...)
	peer := make([]byte, 2048)
	allocs := testing.AllocsPerRun(100, func() {
		if err := l.writeQueueRaw(q, out, writeHeadroom); err != nil {
			t.Fatalf("write: %v", err)
		}
		n, err := unix.Read(peerFD, peer)
		if err != nil || !bytes.Equal(peer[:n], frame) {
			t.Fatalf("peer read %q, %v; want %q", peer[:n], err, frame)
		}
		if _, err := unix.Write(peerFD, frame); err != nil {
			t.Fatalf("peer write: %v", err)
		}
		n, err = readQueue(q)
		if err != nil || !bytes.Equal(q.io.buf[:n], frame) {
			t.Fatalf("read %q, %v; want %q", q.io.buf[:n], err, frame)
		}
	})
	if allocs != 0 {
		t.Errorf("a write and a read on a queue allocate %v times, want 0", allocs)
	}
}

// TestTimeWaitACKDoesNotAllocate checks that the ACK a packet loop sends for
// a connection in TIME_WAIT is built and written without allocating, and
// arrives whole.
func TestTimeWaitACKDoesNotAllocate(t *testing.T) {
	q, peerFD := socketQueue(t)
	l := &link{}
	tu := conntrack.Tuple{Client: netip.MustParseAddrPort("[fd64::2]:40000"), Dst: netip.MustParseAddrPort("[2001:db8::2]:443")}
	r := conntrack.Reply{Seq: 9, Ack: 10, Wnd: 1, TS: true, TSVal: 3, TSEcr: 4}
	want := appendReply(nil, tu, r)
	peer := make([]byte, 2048)
	allocs := testing.AllocsPerRun(100, func() {
		l.writeReply(q, tu, r)
		n, err := unix.Read(peerFD, peer)
		if err != nil || !bytes.Equal(peer[:n], want) {
			t.Fatalf("peer read % x, %v; want % x", peer[:n], err, want)
		}
	})
	if allocs != 0 && !raceDetector {
		t.Errorf("a TIME_WAIT ACK allocates %v times, want 0", allocs)
	}
	if sent := q.stats.Packets[conntrack.ToClient].Load(); sent != 101 {
		t.Errorf("%d ACKs counted, want 101", sent)
	}
}
