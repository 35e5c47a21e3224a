// Command faketcpd stands in for tcpd in netlab's own tests, so that the lab
// plumbing (StartTCPD, RouteIntoTUN, Stop) can be tested without tcpd: it
// accepts `run [--config FILE] --log-format json`, creates a TUN, logs a
// JSON "ready" line naming it, logs a "syn" line for every TCP SYN that
// arrives in the TUN, and exits 0 on SIGTERM. With --fail it exits 1 before
// getting ready.
package main

import (
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

var logMu sync.Mutex

func logJSON(level, msg string, kv ...any) {
	m := map[string]any{"level": level, "msg": msg}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i].(string)] = kv[i+1]
	}
	b, _ := json.Marshal(m)
	logMu.Lock()
	defer logMu.Unlock()
	os.Stderr.Write(append(b, '\n'))
}

func main() {
	if len(os.Args) < 2 || os.Args[1] != "run" {
		fmt.Fprintln(os.Stderr, "usage: faketcpd run [--config FILE] --log-format json [--fail] [--tun NAME]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	config := fs.String("config", "", "configuration file")
	format := fs.String("log-format", "", "must be json")
	fail := fs.Bool("fail", false, "exit 1 before getting ready")
	name := fs.String("tun", "tcpd0", "TUN name")
	fs.Parse(os.Args[2:])
	if *format != "json" {
		fmt.Fprintln(os.Stderr, "faketcpd: only --log-format json")
		os.Exit(2)
	}
	source := "embedded default"
	if *config != "" {
		if _, err := os.ReadFile(*config); err != nil {
			logJSON("error", "start failed", "error", err.Error())
			os.Exit(1)
		}
		source = *config
	}
	if *fail {
		logJSON("error", "start failed", "error", "told to fail")
		os.Exit(1)
	}

	tun, err := openTUN(*name)
	if err != nil {
		logJSON("error", "start failed", "error", err.Error())
		os.Exit(1)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	logJSON("info", "ready", "tun", *name, "config", source)

	go func() {
		buf := make([]byte, 65536)
		for {
			n, err := tun.Read(buf)
			if err != nil {
				return
			}
			if src, dst, ok := tcpSYN(buf[:n]); ok {
				logJSON("info", "syn", "src", src.String(), "dst", dst.String())
			}
		}
	}()
	<-sigs
	tun.Close()
	logJSON("info", "stopped")
}

func openTUN(name string) (*os.File, error) {
	// Attach the TUN before handing the descriptor to the Go poller: the
	// poller registers it once, and a TUN file polled before TUNSETIFF
	// never reports readiness.
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("TUNSETIFF %s: %w", name, err)
	}
	f := os.NewFile(uintptr(fd), "/dev/net/tun")
	link, err := netlink.LinkByName(name)
	if err == nil {
		err = netlink.LinkSetUp(link)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("set %s up: %w", name, err)
	}
	return f, nil
}

// tcpSYN reports the addresses of a TCP SYN (without ACK) in an IP packet.
func tcpSYN(p []byte) (src, dst netip.AddrPort, ok bool) {
	if len(p) < 1 {
		return
	}
	var sa, da netip.Addr
	var tcp []byte
	switch p[0] >> 4 {
	case 4:
		if len(p) < 20 || p[9] != unix.IPPROTO_TCP {
			return
		}
		ihl := int(p[0]&0x0f) * 4
		if len(p) < ihl+20 {
			return
		}
		sa, da = netip.AddrFrom4([4]byte(p[12:16])), netip.AddrFrom4([4]byte(p[16:20]))
		tcp = p[ihl:]
	case 6:
		if len(p) < 60 || p[6] != unix.IPPROTO_TCP {
			return
		}
		sa, da = netip.AddrFrom16([16]byte(p[8:24])), netip.AddrFrom16([16]byte(p[24:40]))
		tcp = p[40:]
	default:
		return
	}
	if flags := tcp[13]; flags&0x02 == 0 || flags&0x10 != 0 {
		return
	}
	return netip.AddrPortFrom(sa, binary.BigEndian.Uint16(tcp[0:2])),
		netip.AddrPortFrom(da, binary.BigEndian.Uint16(tcp[2:4])), true
}
