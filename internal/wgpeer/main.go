// Command wgpeer is one userspace WireGuard endpoint for tcpd's test
// topologies and demo, built from the golang.zx2c4.com/wireguard module
// tcpd already depends on: no wireguard-go or wg binary, no kernel module.
//
//	wgpeer --name IFNAME --mtu N < uapi.conf
//
// It creates the TUN device IFNAME (MTU N) in the network namespace it was
// started in, reads a configuration in WireGuard's cross-platform UAPI
// format (private_key=, listen_port=, public_key=, allowed_ip=, endpoint=,
// one per line, keys in hex) from standard input until EOF, applies it with
// Device.IpcSet, brings the device up and writes one JSON line
// {"msg":"ready","tun":IFNAME,"listen_port":N} to standard output. Addresses
// and routes are the caller's business, as with wireguard-go. SIGTERM or
// SIGINT closes the device, which removes the TUN, and exits 0.
//
// It runs as its own process, started inside the namespace (netlab does it
// with `ip netns exec`), rather than on a locked thread of the test: the
// device creates sockets from its own goroutines (a TUN "up" event rebinds
// the UDP sockets, the route listener opens a netlink socket), and only a
// whole process is sure to create all of them in the right namespace.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

func main() {
	name := flag.String("name", "", "TUN device `name` to create")
	mtu := flag.Int("mtu", 1420, "MTU of the TUN device")
	handshake := flag.Duration("wait-handshake", 0, "say ready only once every peer has completed a handshake, waiting at most this `long`")
	verbose := flag.Bool("v", false, "log the device's debug messages to stderr")
	flag.Parse()
	if *name == "" || flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "usage: wgpeer --name IFNAME [--mtu N] [--wait-handshake D] [-v] < uapi.conf")
		os.Exit(2)
	}
	if err := run(*name, *mtu, *handshake, *verbose); err != nil {
		fmt.Fprintln(os.Stderr, "wgpeer:", err)
		os.Exit(1)
	}
}

func run(name string, mtu int, handshake time.Duration, verbose bool) error {
	uapi, err := io.ReadAll(os.Stdin)
	if err != nil {
		return fmt.Errorf("read the UAPI configuration: %w", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	dev, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return fmt.Errorf("create TUN %s: %w", name, err)
	}
	level := device.LogLevelError
	if verbose {
		level = device.LogLevelVerbose
	}
	wg := device.NewDevice(dev, conn.NewDefaultBind(), device.NewLogger(level, name+": "))
	defer wg.Close() // closes the TUN too
	if err := wg.IpcSet(string(uapi)); err != nil {
		return fmt.Errorf("configure %s: %w", name, err)
	}
	if err := wg.Up(); err != nil {
		return fmt.Errorf("bring %s up: %w", name, err)
	}
	if handshake > 0 {
		if err := waitHandshakes(ctx, wg, handshake); err != nil {
			return err
		}
	}
	port, err := listenPort(wg)
	if err != nil {
		return err
	}
	line, _ := json.Marshal(map[string]any{"msg": "ready", "tun": name, "listen_port": port})
	fmt.Printf("%s\n", line)
	select {
	case <-ctx.Done():
	case <-wg.Wait():
		return fmt.Errorf("%s closed", name)
	}
	return nil
}

// waitHandshakes waits until every configured peer has completed a
// handshake (a peer with persistent_keepalive_interval starts one at once).
func waitHandshakes(ctx context.Context, wg *device.Device, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		conf, err := wg.IpcGet()
		if err != nil {
			return fmt.Errorf("read the configuration back: %w", err)
		}
		peers, done := 0, 0
		for _, l := range strings.Split(conf, "\n") {
			switch {
			case strings.HasPrefix(l, "public_key="):
				peers++
			case strings.HasPrefix(l, "last_handshake_time_sec=") && l != "last_handshake_time_sec=0":
				done++
			}
		}
		if done == peers {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d peers completed no handshake within %v", peers-done, peers, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// listenPort reads back the UDP port the device listens on (the kernel's
// choice when the configuration said listen_port=0 or nothing).
func listenPort(wg *device.Device) (int, error) {
	conf, err := wg.IpcGet()
	if err != nil {
		return 0, fmt.Errorf("read the configuration back: %w", err)
	}
	for _, l := range strings.Split(conf, "\n") {
		if v, ok := strings.CutPrefix(l, "listen_port="); ok {
			return strconv.Atoi(v)
		}
	}
	return 0, nil
}
