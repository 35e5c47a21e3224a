//go:build linux

package netlab_test

import (
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"tcpd/internal/netlab"
)

// TestMonitor links one monitor namespace to the gateways of two labs: the
// monitor reaches each gateway at its own address, the labs' clients and
// servers stay out of its reach, and Close removes the namespace and links.
func TestMonitor(t *testing.T) {
	a := netlab.NewT(t, netlab.Options{})
	b := netlab.NewT(t, netlab.Options{})
	m, err := netlab.NewMonitor(a, b)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if len(m.GatewayAddrs) != 2 || m.GatewayAddrs[0] == m.GatewayAddrs[1] {
		t.Fatalf("gateway addresses %v", m.GatewayAddrs)
	}
	for i, l := range []*netlab.Lab{a, b} {
		ln, err := l.Gateway.Listen("tcp", net.JoinHostPort(m.GatewayAddrs[i].String(), "0"))
		if err != nil {
			t.Fatalf("lab %d: listen on %s in its gateway: %v", i, m.GatewayAddrs[i], err)
		}
		defer ln.Close()
		go func() {
			if c, err := ln.Accept(); err == nil {
				c.Write([]byte{byte(i)})
				c.Close()
			}
		}()
		c, err := m.NS.DialTimeout("tcp", ln.Addr().String(), 3*time.Second)
		if err != nil {
			t.Fatalf("monitor to gateway %d at %s: %v", i, ln.Addr(), err)
		}
		buf := make([]byte, 1)
		c.SetDeadline(time.Now().Add(3 * time.Second))
		_, err = c.Read(buf)
		c.Close()
		if err != nil || buf[0] != byte(i) {
			t.Errorf("monitor to gateway %d: read %v, %v", i, buf, err)
		}
		// The monitor has no route to the labs' own networks.
		if c, err := m.NS.DialTimeout("tcp", net.JoinHostPort(l.ServerAddr4.String(), "9"), time.Second); err == nil {
			c.Close()
			t.Errorf("the monitor reached lab %d's server", i)
		}
	}
	name := m.NS.Name
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join("/run/netns", name)); !os.IsNotExist(err) {
		t.Errorf("/run/netns/%s after Close: %v", name, err)
	}
	if err := m.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
