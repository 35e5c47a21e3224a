//go:build linux

package netlab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netnsDir is where named network namespaces live, as with `ip netns`.
const netnsDir = "/run/netns"

// NS is one network namespace of a lab, named as `ip netns` names it.
type NS struct {
	// Name is the namespace's name under /run/netns.
	Name string

	mu sync.RWMutex    // guards h against close while Do enters the namespace
	h  netns.NsHandle  // open handle; closed by Lab.Close
	nl *netlink.Handle // netlink sockets inside the namespace
}

// createNS creates the named network namespace, bind-mounted at
// /run/netns/<name> as `ip netns add` does. On failure nothing is left
// behind; if the name is already taken the existing namespace is untouched.
func createNS(name string) (*NS, error) {
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return nil, err
	}
	path := filepath.Join(netnsDir, name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return nil, fmt.Errorf("create namespace %s: %w", name, err)
	}
	f.Close()

	errc := make(chan error, 1)
	go func() {
		// The thread is deliberately never unlocked: when this goroutine
		// returns, the Go runtime terminates it instead of reusing a thread
		// that unshare moved into the new namespace.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		if err := unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind-mount %s: %w", path, err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("create namespace %s: %w", name, err)
	}

	h, err := netns.GetFromPath(path)
	if err != nil {
		deleteNS(name)
		return nil, fmt.Errorf("open namespace %s: %w", name, err)
	}
	nl, err := netlink.NewHandleAt(h, unix.NETLINK_ROUTE)
	if err != nil {
		h.Close()
		deleteNS(name)
		return nil, fmt.Errorf("netlink in namespace %s: %w", name, err)
	}
	return &NS{Name: name, h: h, nl: nl}, nil
}

// deleteNS removes /run/netns/<name>, like `ip netns del`. A missing or
// half-created entry is not an error.
func deleteNS(name string) error {
	path := filepath.Join(netnsDir, name)
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// close releases the handles; the namespace itself stays until deleteNS.
func (n *NS) close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.nl != nil {
		n.nl.Close()
	}
	if n.h.IsOpen() {
		n.h.Close()
	}
}

// enter switches the calling thread into the namespace.
func (n *NS) enter() error {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if !n.h.IsOpen() {
		return errClosed
	}
	return netns.Set(n.h)
}

// Netlink returns a netlink handle whose sockets live inside the namespace,
// valid until the lab is closed.
func (n *NS) Netlink() *netlink.Handle { return n.nl }

// Do runs fn on a separate goroutine whose OS thread is locked and switched
// into the namespace, and returns fn's error. The thread is switched back
// and unlocked afterwards; if switching back fails, the thread stays locked
// so that the Go runtime discards it when the goroutine ends.
//
// Sockets created by fn keep the namespace for their whole life and may be
// used from any goroutine. Goroutines that fn starts do NOT run in the
// namespace. A panic in fn is re-raised in the caller; fn must not call
// t.FailNow (or t.Fatal), since it runs on another goroutine.
func (n *NS) Do(fn func() error) error {
	type result struct {
		err      error
		returned bool
		panicked bool
		value    any
	}
	done := make(chan result, 1)
	go func() {
		var res result
		defer func() { done <- res }()

		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			res.err = fmt.Errorf("netlab: current namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := n.enter(); err != nil {
			// setns failed, so the thread is still where it was.
			runtime.UnlockOSThread()
			res.err = fmt.Errorf("netlab: enter namespace %s: %w", n.Name, err)
			return
		}
		func() {
			defer func() {
				if !res.returned {
					if v := recover(); v != nil {
						res.panicked, res.value = true, v
					} else {
						res.err = fmt.Errorf("netlab: function run in namespace %s called runtime.Goexit (t.FailNow?)", n.Name)
					}
				}
				if err := netns.Set(orig); err != nil {
					res.err = errors.Join(res.err, fmt.Errorf("netlab: leave namespace %s: %w (thread discarded)", n.Name, err))
					return // keep the thread locked
				}
				runtime.UnlockOSThread()
			}()
			res.err = fn()
			res.returned = true
		}()
	}()
	res := <-done
	if res.panicked {
		panic(res.value)
	}
	return res.err
}

// Command returns a command that runs name with args inside the namespace
// (`ip netns exec <ns> name args...`, which execs name directly, so the
// command's pid is name's). Processes started this way are not tracked by
// the lab; use [Lab.StartProc] for that. If the test process dies, the next
// lab built on the machine kills what is left inside this lab's namespaces
// (see sweepStale). No parent-death signal is set: it fires when the OS
// thread that forked the child exits, and Go ends threads that namespace
// code left locked, which killed live servers at random.
func (n *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Listen is net.Listen with the socket created inside the namespace. Use IP
// literals (or an empty host): name resolution does not happen in the
// namespace.
func (n *NS) Listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := n.Do(func() (err error) {
		ln, err = net.Listen(network, addr)
		return err
	})
	return ln, err
}

// ListenPacket is net.ListenPacket with the socket created inside the
// namespace.
func (n *NS) ListenPacket(network, addr string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := n.Do(func() (err error) {
		pc, err = net.ListenPacket(network, addr)
		return err
	})
	return pc, err
}

// Dial connects from inside the namespace; the connection then works from
// any goroutine. Use IP literals: name resolution does not happen in the
// namespace. Addresses are tried one after another (no parallel "happy
// eyeballs" racing, whose goroutines would run outside the namespace).
func (n *NS) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) {
		d := net.Dialer{FallbackDelay: -1}
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// DialTimeout is Dial with a timeout.
func (n *NS) DialTimeout(network, addr string, d time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return n.Dial(ctx, network, addr)
}

// sysctlPath maps "net.ipv4.ip_forward" (or "net/ipv4/ip_forward") to its
// file under /proc/sys.
func sysctlPath(key string) (string, error) {
	k := key
	if !strings.Contains(k, "/") {
		k = strings.ReplaceAll(k, ".", "/")
	}
	k = strings.TrimPrefix(k, "/")
	if k == "" || strings.Contains(k, "..") {
		return "", fmt.Errorf("netlab: bad sysctl key %q", key)
	}
	return filepath.Join("/proc/sys", k), nil
}

// Sysctl sets a sysctl inside the namespace, e.g. Sysctl("net.ipv4.ip_forward", "1").
// /proc/sys/net is per network namespace: the file is written from a thread
// inside the namespace. Keys containing '/' are taken as paths, for link
// names with dots.
func (n *NS) Sysctl(key, value string) error {
	return n.sysctls([2]string{key, value})
}

// sysctls sets several sysctls in one trip into the namespace.
func (n *NS) sysctls(kvs ...[2]string) error {
	return n.Do(func() error {
		for _, kv := range kvs {
			p, err := sysctlPath(kv[0])
			if err != nil {
				return err
			}
			if err := os.WriteFile(p, []byte(kv[1]), 0o644); err != nil {
				return fmt.Errorf("netlab: sysctl %s=%s in %s: %w", kv[0], kv[1], n.Name, err)
			}
		}
		return nil
	})
}

// ReadSysctl returns a sysctl's value inside the namespace, without the
// trailing newline.
func (n *NS) ReadSysctl(key string) (string, error) {
	p, err := sysctlPath(key)
	if err != nil {
		return "", err
	}
	var v string
	err = n.Do(func() error {
		b, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("netlab: sysctl %s in %s: %w", key, n.Name, err)
		}
		v = strings.TrimSpace(string(b))
		return nil
	})
	return v, err
}

// Leftovers lists the network namespaces under /run/netns whose names start
// with "tcpd-": those of labs still open anywhere on the machine, or left
// behind by a run that crashed.
func Leftovers() ([]string, error) {
	ents, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), nsPrefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}
