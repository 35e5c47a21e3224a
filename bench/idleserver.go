package bench

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
)

// The idle test's server runs in a process of its own, started in the
// server namespace, so that the client's end and the server's end of each
// idle connection take a descriptor from two processes' open-file limits,
// not two from this one's: the test then reaches the largest count the
// limit allows tcpd itself (one upstream socket per connection).

// IdleServerArg is the first argument that makes tcpdbench run
// RunIdleServer instead of a benchmark.
const IdleServerArg = "idle-server"

// RunIdleServer listens on addr, accepts and holds connections, and obeys
// one command per line from in, answering on out:
//
//	(at start)  listening <host:port>
//	count       accepted <n>
//	close       closed <n>   (closes every connection held; accepts no more)
//
// It returns once in ends, with every connection closed.
func RunIdleServer(addr string, in io.Reader, out io.Writer) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	var (
		mu       sync.Mutex
		conns    []net.Conn
		accepted int
		closing  bool
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					continue
				}
				return
			}
			mu.Lock()
			if closing {
				c.Close()
			} else {
				conns = append(conns, c)
				accepted++
			}
			mu.Unlock()
		}
	}()
	closeAll := func() int {
		mu.Lock()
		defer mu.Unlock()
		closing = true
		n := len(conns)
		for _, c := range conns {
			c.Close()
		}
		conns = nil
		return n
	}
	defer func() {
		ln.Close()
		<-done
		closeAll()
	}()
	if _, err := fmt.Fprintf(out, "listening %s\n", ln.Addr()); err != nil {
		return err
	}
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		switch sc.Text() {
		case "count":
			mu.Lock()
			n := accepted
			mu.Unlock()
			fmt.Fprintf(out, "accepted %d\n", n)
		case "close":
			fmt.Fprintf(out, "closed %d\n", closeAll())
		default:
			fmt.Fprintf(out, "error unknown command %q\n", sc.Text())
		}
	}
	return sc.Err()
}
