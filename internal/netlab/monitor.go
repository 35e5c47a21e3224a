//go:build linux

package netlab

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// monitorNet is the monitoring network's address block (TEST-NET-2, RFC
// 5737), cut into a /30 per gateway: .4i+1 on the gateway, .4i+2 on the
// monitor.
var monitorNet = netip.MustParsePrefix("198.51.100.0/24")

// maxMonitored is how many gateways fit in monitorNet's /30s.
const maxMonitored = 64

// Monitor is a namespace with a link to the gateway of each of several
// labs, as a monitoring network reaches a fleet of gateways: a Prometheus
// started in NS scrapes gateway i at GatewayAddrs[i]. The gateways keep
// their own addressing and routes; only the /30 of each link is shared.
type Monitor struct {
	// NS is the monitor's namespace, named "tcpd-<id>-m".
	NS *NS
	// GatewayAddrs[i] is the address of labs[i]'s gateway on its link to
	// the monitor.
	GatewayAddrs []netip.Addr
	// ID is the random hex in the monitor's namespace and link names.
	ID string

	links []string // the monitor's ends of the veths
	once  sync.Once
	err   error
}

// NewMonitor creates the monitor namespace and links it to the gateway of
// each lab. On error it removes whatever it created.
func NewMonitor(labs ...*Lab) (_ *Monitor, err error) {
	if len(labs) == 0 || len(labs) > maxMonitored {
		return nil, fmt.Errorf("netlab: monitor: %d labs (1..%d)", len(labs), maxMonitored)
	}
	sweepStale()
	id, err := randomID()
	if err != nil {
		return nil, fmt.Errorf("netlab: random id: %w", err)
	}
	if err := claim(id); err != nil {
		return nil, fmt.Errorf("netlab: record monitor owner: %w", err)
	}
	m := &Monitor{ID: id}
	defer func() {
		if err != nil {
			if cerr := m.Close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("cleanup: %w", cerr))
			}
			err = fmt.Errorf("netlab: monitor %s: %w", id, err)
		}
	}()
	ns, err := createNS(nsPrefix + id + "-m")
	if err != nil {
		return nil, err
	}
	m.NS = ns
	lo, err := ns.nl.LinkByName("lo")
	if err == nil {
		err = ns.nl.LinkSetUp(lo)
	}
	if err != nil {
		return nil, fmt.Errorf("lo up in %s: %w", ns.Name, err)
	}
	base := monitorNet.Addr().As4()
	deadline := time.Now().Add(settleTimeout)
	for i, l := range labs {
		if l.Gateway == nil {
			return nil, fmt.Errorf("lab %d has no gateway", i)
		}
		mName, gName := fmt.Sprintf("tc%sm%d", id, i), fmt.Sprintf("tc%sn%d", id, i)
		if err := addVeth(ns, mName, l.Gateway, gName, 1500); err != nil {
			return nil, err
		}
		m.links = append(m.links, mName)
		gw, mon := base, base
		gw[3], mon[3] = byte(4*i+1), byte(4*i+2)
		for _, e := range []struct {
			ns   *NS
			name string
			addr netip.Addr
		}{{l.Gateway, gName, netip.AddrFrom4(gw)}, {ns, mName, netip.AddrFrom4(mon)}} {
			link, err := e.ns.nl.LinkByName(e.name)
			if err != nil {
				return nil, fmt.Errorf("find %s in %s: %w", e.name, e.ns.Name, err)
			}
			if err := e.ns.nl.LinkSetUp(link); err != nil {
				return nil, fmt.Errorf("set %s up in %s: %w", e.name, e.ns.Name, err)
			}
			a := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(e.addr, 30))}
			if err := e.ns.nl.AddrReplace(link, a); err != nil {
				return nil, fmt.Errorf("address %s on %s in %s: %w", e.addr, e.name, e.ns.Name, err)
			}
		}
		for _, e := range []struct {
			ns   *NS
			name string
		}{{l.Gateway, gName}, {ns, mName}} {
			if err := waitSettled(e.ns, e.name, deadline); err != nil {
				return nil, err
			}
		}
		m.GatewayAddrs = append(m.GatewayAddrs, netip.AddrFrom4(gw))
	}
	return m, nil
}

// NewMonitorT is NewMonitor for a test: it fails the test on error and
// closes the monitor in t.Cleanup (before the labs, if they were created
// first).
func NewMonitorT(t testing.TB, labs ...*Lab) *Monitor {
	t.Helper()
	m, err := NewMonitor(labs...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	})
	return m
}

// Close deletes the links and the namespace. It is idempotent. Processes
// started in NS must have been stopped first.
func (m *Monitor) Close() error {
	m.once.Do(func() { m.err = m.close() })
	return m.err
}

func (m *Monitor) close() error {
	var errs []error
	if m.NS != nil {
		for _, name := range m.links {
			link, err := m.NS.nl.LinkByName(name)
			if err != nil {
				continue // gone with its gateway's namespace
			}
			if err := m.NS.nl.LinkDel(link); err != nil && !errors.Is(err, unix.ENODEV) {
				errs = append(errs, fmt.Errorf("delete %s in %s: %w", name, m.NS.Name, err))
			}
		}
		m.NS.close()
		if err := deleteNS(m.NS.Name); err != nil {
			errs = append(errs, fmt.Errorf("delete namespace %s: %w", m.NS.Name, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("netlab: close monitor %s: %w", m.ID, err)
	}
	release(m.ID)
	return nil
}
