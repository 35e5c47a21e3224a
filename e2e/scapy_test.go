//go:build linux

package e2e_test

import (
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// scapyPython is the interpreter of the scripts in testdata that craft
// packets with scapy.
const scapyPython = "/usr/bin/python3"

// needScapy skips t if scapyPython cannot import scapy.
func needScapy(t *testing.T) {
	t.Helper()
	if err := exec.Command(scapyPython, "-c", "import scapy").Run(); err != nil {
		t.Skipf("%s cannot import scapy (%v); Debian's python3-scapy package brings it (.ci/run installs it)", scapyPython, err)
	}
}

// runScapy runs testdata/script in g's client namespace, on the client's
// veth towards the gateway's MAC address (--iface, --dst-mac) and with
// args, for at most d, and decodes the JSON object it prints into report.
func runScapy(t *testing.T, g *gateway, d time.Duration, report any, script string, args ...string) {
	t.Helper()
	path, err := filepath.Abs(filepath.Join("testdata", script))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	args = append([]string{path, "--iface", g.ClientLink, "--dst-mac", gatewayMAC(t, g).String()}, args...)
	out, err := g.Client.Command(ctx, scapyPython, args...).Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("%s: %v\n%s%s", script, err, out, stderr)
	}
	if err := json.Unmarshal(out, report); err != nil {
		t.Fatalf("%s printed %q: %v", script, out, err)
	}
}

// scriptClient returns the address a scapy script plays a client at: one
// the client's kernel does not own, behind a MAC address nobody has. The
// gateway sends tcpd's packets for it onto the client's veth, where the
// script sniffs them and the client's kernel drops them without a word (a
// kernel that took them would answer RST or ICMP host unreachable, and
// tcpd would give up the connection).
func scriptClient(t *testing.T, g *gateway, v6 bool) netip.Addr {
	t.Helper()
	src, family := netip.MustParseAddr("100.64.1.77"), netlink.FAMILY_V4
	if v6 {
		src, family = netip.MustParseAddr("fd64::77"), netlink.FAMILY_V6
	}
	clientMAC := net.HardwareAddr{0x02, 0, 0x5e, 0, 0, 0x77}
	if err := g.Gateway.Do(func() error {
		l, err := netlink.LinkByName(g.GatewayClientLink)
		if err != nil {
			return err
		}
		return netlink.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: family, State: netlink.NUD_PERMANENT,
			IP: src.AsSlice(), HardwareAddr: clientMAC})
	}); err != nil {
		t.Fatal(err)
	}
	return src
}
