package stack

import (
	"bytes"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestQueueIODoesNotAllocate reads and writes frames on a queue as the read
// loops and WritePackets do, over a socket pair that keeps frame boundaries
// as a TUN queue does, and checks that neither the read nor the write
// allocates: each runs once per packet.
func TestQueueIODoesNotAllocate(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[0]), "queue")
	defer f.Close()
	defer unix.Close(fds[1])
	raw, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	q := &tunQueue{raw: raw}
	q.io.buf = make([]byte, 2048)
	l := &link{}

	frame := []byte("one IP packet")
	out := append(make([]byte, writeHeadroom), frame...)
	peer := make([]byte, 2048)
	allocs := testing.AllocsPerRun(100, func() {
		if err := l.writeQueueRaw(q, out, writeHeadroom); err != nil {
			t.Fatalf("write: %v", err)
		}
		n, err := unix.Read(fds[1], peer)
		if err != nil || !bytes.Equal(peer[:n], frame) {
			t.Fatalf("peer read %q, %v; want %q", peer[:n], err, frame)
		}
		if _, err := unix.Write(fds[1], frame); err != nil {
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
