//go:build linux

package e2e_test

import (
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"tcpd/internal/netlab"
)

const mib = 1 << 20

func TestBulk64MiBEachWay(t *testing.T) {
	for _, offload := range []string{"auto", "off"} {
		t.Run("offload="+offload, func(t *testing.T) {
			g := startGateway(t, netlab.Options{}, gwConfig{Offload: offload, Metrics: true})
			assertBulk(t, g, g.ServerAddr4.String(), 64*mib)
			// On the offload path the kernel's TSO super-packets come in
			// whole and the netstack's GSO segments go out whole: the
			// average packet is far above the 1500-byte MTU each way.
			// On the plain path no packet exceeds the MTU.
			m := scrape(t, g)
			for _, dir := range []string{"in", "out"} {
				bytes := m[`tcpd_tun_bytes_total{direction="`+dir+`"}`]
				pkts := m[`tcpd_tun_packets_total{direction="`+dir+`"}`]
				avg := bytes / pkts
				t.Logf("%s: %.0f packets, %.0f bytes on average", dir, pkts, avg)
				if offload == "auto" && avg < 3000 {
					t.Errorf("offload path: %s packets average %.0f bytes; super-packets are not passing whole", dir, avg)
				}
				if offload == "off" && avg > 1500 {
					t.Errorf("plain path: %s packets average %.0f bytes, above the MTU", dir, avg)
				}
			}
		})
	}
}

func TestIPv6EndToEnd(t *testing.T) {
	g := startGateway(t, netlab.Options{}, gwConfig{})
	assertBulk(t, g, g.ServerAddr6.String(), 16*mib)

	// A closed port answers with RST over IPv6 too.
	ln, err := g.Server.Listen("tcp", "[::]:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	_, err = g.Client.DialTimeout("tcp", net.JoinHostPort(g.ServerAddr6.String(), fmt.Sprint(port)), 5*time.Second)
	if !isRefused(err) {
		t.Fatalf("dial closed IPv6 port: %v, want connection refused", err)
	}
}

func TestMTU(t *testing.T) {
	for _, mtu := range []int{1280, 9000} {
		t.Run(fmt.Sprint(mtu), func(t *testing.T) {
			// The veths carry the same MTU, as a VPN interface would match
			// the TUN it feeds.
			g := startGateway(t, netlab.Options{MTU: mtu}, gwConfig{MTU: mtu})
			assertBulk(t, g, g.ServerAddr4.String(), 16*mib)
			assertBulk(t, g, g.ServerAddr6.String(), 4*mib)
		})
	}
}

func TestConcurrentConnections(t *testing.T) {
	const conns = 200
	const size = 256 << 10
	g := startGateway(t, netlab.Options{}, gwConfig{})
	sums := make(chan [32]byte, conns)
	port := serve(t, g.Server, bulkServer(7, size, sums))
	addr := net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port))

	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := g.Client.DialTimeout("tcp", addr, 10*time.Second)
			if err != nil {
				errs <- fmt.Errorf("conn %d: dial: %w", i, err)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(2 * time.Minute))
			sum, n, err := exchange(c, 8, size)
			if err != nil || n != size || sum != streamSum(7, size) {
				errs <- fmt.Errorf("conn %d: received %d bytes, sum ok %v, err %v", i, n, sum == streamSum(7, size), err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	want := streamSum(8, size)
	for i := range conns {
		select {
		case s := <-sums:
			if s != want {
				t.Fatalf("server connection %d received wrong bytes", i)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("only %d of %d server connections finished", i, conns)
		}
	}
}

// TestHalfClose checks that EOF from one side becomes a FIN on the other
// while the opposite direction keeps flowing, in both directions.
func TestHalfClose(t *testing.T) {
	g := startGateway(t, netlab.Options{}, gwConfig{})
	const after = 4 * mib

	t.Run("client closes first", func(t *testing.T) {
		// The server reads the client's request to EOF, then keeps sending.
		port := serve(t, g.Server, func(c net.Conn) {
			req, err := io.ReadAll(c)
			if err != nil || string(req) != "request" {
				return
			}
			time.Sleep(200 * time.Millisecond)
			io.Copy(c, stream(3, after))
		})
		c, err := g.Client.DialTimeout("tcp", net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port)), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Minute))
		io.WriteString(c, "request")
		c.(*net.TCPConn).CloseWrite()
		sum, n, err := hashAll(c)
		if err != nil || n != after || sum != streamSum(3, after) {
			t.Fatalf("after half-close the client received %d bytes (want %d), sum ok %v, err %v", n, after, sum == streamSum(3, after), err)
		}
	})

	t.Run("server closes first", func(t *testing.T) {
		// The server sends a greeting and half-closes; the client then
		// uploads and the server must still receive all of it.
		got := make(chan [32]byte, 1)
		port := serve(t, g.Server, func(c net.Conn) {
			io.WriteString(c, "hello")
			c.(*net.TCPConn).CloseWrite()
			sum, n, err := hashAll(c)
			if err == nil && n == after {
				got <- sum
			}
		})
		c, err := g.Client.DialTimeout("tcp", net.JoinHostPort(g.ServerAddr4.String(), fmt.Sprint(port)), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Minute))
		hello, err := io.ReadAll(c)
		if err != nil || string(hello) != "hello" {
			t.Fatalf("client read %q, %v; want the greeting then EOF", hello, err)
		}
		if _, err := io.Copy(c, stream(4, after)); err != nil {
			t.Fatalf("upload after the server's FIN: %v", err)
		}
		c.(*net.TCPConn).CloseWrite()
		select {
		case s := <-got:
			if s != streamSum(4, after) {
				t.Fatal("server received wrong bytes after its own half-close")
			}
		case <-time.After(30 * time.Second):
			t.Fatal("server never received the upload after its own half-close")
		}
		// Both directions closed: the client sees EOF, not a reset.
		if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
			t.Fatalf("final read: %q, %v", b, err)
		}
	})
}

func hashAll(c net.Conn) ([32]byte, int64, error) {
	h := newHash()
	n, err := io.Copy(h, c)
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s, n, err
}
