package stack

import (
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestResponseBeforeResetDuringUpload: a destination answers an upload it
// will not read to its end (an HTTP 413) and closes, which Linux sends as
// the answer and then a RST. The relay's write to the destination meets
// the reset first; the answer, still in the socket, must reach the client
// before the reset, as it would on a direct connection.
func TestResponseBeforeResetDuringUpload(t *testing.T) {
	h := newHarness(t, Config{}, clientAddr)
	const resp = "HTTP/1.1 413 Payload Too Large\r\n\r\n"
	h.listen(t, func(c net.Conn) {
		io.ReadFull(c, make([]byte, 1))
		time.Sleep(100 * time.Millisecond) // the upload fills the buffers
		c.Write([]byte(resp))
		// Closed with the upload unread: RST after the answer.
	})
	const runs = 20
	lost := 0
	for i := range runs {
		c, err := h.dial(t, 80)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			buf := make([]byte, 64<<10)
			for {
				if _, err := c.Write(buf); err != nil {
					return
				}
			}
		}()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(c)
		if !strings.HasPrefix(string(got), resp) {
			lost++
			t.Logf("run %d: the client read %q then %v", i, got, err)
		}
		c.Close()
	}
	if lost > 0 {
		t.Errorf("%d of %d runs lost the answer that came before the destination's reset", lost, runs)
	}
}

// TestResetAfterMoreThanTheNetstackHolds: a destination sends more than
// the netstack's send buffer holds, waits until tcpd's kernel has
// acknowledged it all, and resets. What is still in tcpd's upstream socket
// was acknowledged too, and must reach the client before the reset.
func TestResetAfterMoreThanTheNetstackHolds(t *testing.T) {
	h := newHarness(t, Config{}, clientAddr)
	const size = 8 << 20
	acked := make(chan int, 1)
	h.listen(t, func(c net.Conn) {
		c.SetWriteDeadline(time.Now().Add(time.Second))
		n, _ := c.Write(make([]byte, size))
		rc, _ := c.(*net.TCPConn).SyscallConn()
		outq := func() (q int) {
			rc.Control(func(fd uintptr) { q, _ = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) })
			return q
		}
		// What tcpd's kernel will take, once the client's window and
		// every buffer on the way are full: SIOCOUTQ, sent and not yet
		// acknowledged, stops falling.
		for q, since := outq(), time.Now(); q > 0 && time.Since(since) < 300*time.Millisecond; {
			time.Sleep(5 * time.Millisecond)
			if now := outq(); now != q {
				q, since = now, time.Now()
			}
		}
		acked <- n - outq()
		c.(*net.TCPConn).SetLinger(0)
	})
	c, err := h.dial(t, 80)
	if err != nil {
		t.Fatal(err)
	}
	a := <-acked
	// Less than the half second a flush waits for a client that takes
	// nothing.
	time.Sleep(150 * time.Millisecond)
	c.SetDeadline(time.Now().Add(10 * time.Second))
	n, err := io.Copy(io.Discard, c)
	if int(n) != a {
		t.Errorf("the client read %d of the %d bytes tcpd acknowledged to the destination, then %v", n, a, err)
	}
}

// TestStalledInTheNetstackIsNotIdle: a download that fits in the
// netstack's send buffer, half-closed by the destination, with a client
// that pauses for longer than tcp.half_close_timeout: the bytes wait in
// the netstack, not in the relay, and the transfer is stalled all the
// same, not idle.
func TestStalledInTheNetstackIsNotIdle(t *testing.T) {
	for _, size := range []int{1 << 20, 3 << 19} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			h := newHarness(t, Config{Tunables: Tunables{HalfCloseTimeout: time.Second}}, clientAddr)
			h.listen(t, func(c net.Conn) {
				io.ReadFull(c, make([]byte, 3))
				c.SetDeadline(time.Now().Add(20 * time.Second))
				c.Write(make([]byte, size))
				c.(*net.TCPConn).CloseWrite()
				io.Copy(io.Discard, c)
			})
			c, err := h.dial(t, 80)
			if err != nil {
				t.Fatal(err)
			}
			io.WriteString(c, "get")
			time.Sleep(3 * time.Second)
			c.SetDeadline(time.Now().Add(10 * time.Second))
			n, err := io.Copy(io.Discard, c)
			if n != int64(size) || err != nil {
				t.Errorf("after a pause of 3s the client read %d of %d bytes, then %v; ended by timeout: %d",
					n, size, err, h.s.Stats().Ended[EndTimeout].Load())
			}
		})
	}
}
