package bench

import (
	"bufio"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func TestIdleServer(t *testing.T) {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	errc := make(chan error, 1)
	go func() { errc <- RunIdleServer("127.0.0.1:0", inR, outW); outW.Close() }()
	out := bufio.NewScanner(outR)
	line := func() string {
		t.Helper()
		if !out.Scan() {
			t.Fatalf("the idle server said nothing more: %v", out.Err())
		}
		return out.Text()
	}
	addr, ok := strings.CutPrefix(line(), "listening ")
	if !ok {
		t.Fatal("no listening line")
	}
	var conns []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		io.WriteString(inW, "count\n")
		if got := line(); got == "accepted 3" {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("count: %q, want accepted 3", got)
		}
	}
	io.WriteString(inW, "close\n")
	if got := line(); got != "closed 3" {
		t.Fatalf("close: %q, want closed 3", got)
	}
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n, err := c.Read(make([]byte, 1)); n != 0 || err != io.EOF {
			t.Fatalf("a held connection after close: %d bytes, %v; want EOF", n, err)
		}
	}
	inW.Close()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}
