//go:build linux

package nspawn

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// namePrefix starts the name of every container and of the cgroups made
// for it, so that Leftovers can find what a crashed run left behind.
const namePrefix = "tcpd-nspawn-"

const (
	// bootTimeout bounds the wait for the container's systemd to finish
	// booting; a boot takes about 2 s here.
	bootTimeout = 30 * time.Second
	// haltTimeout bounds the wait after SIGTERM, which asks nspawn to halt
	// the container in an orderly way (0.3–2 s here); a second SIGTERM then
	// terminates it at once.
	haltTimeout = 15 * time.Second
	// killTimeout bounds each later step of Close: after the second
	// SIGTERM, after SIGKILL, and emptying the cgroups.
	killTimeout = 5 * time.Second
)

// presetAll disables every unit that has no explicit preset of its own, and
// wins over the host's preset files (file names sort before theirs): on its
// first boot the container enables nothing the host's packages ship.
const presetAll = "# Written by tcpd's tests (internal/nspawn): enable nothing on first boot.\ndisable *\n"

// Options describe a container.
type Options struct {
	// NetNS is the path of a network namespace file (such as
	// /run/netns/NAME) for the container to run in; the container gets
	// CAP_NET_ADMIN and a writable /proc/sys/net there. Empty means a
	// private network namespace (--private-network) holding only a
	// loopback device.
	NetNS string
	// Files maps absolute paths in the container to files on the host,
	// which appear there read-only. A file under /usr (the host's own,
	// read-only in the container) is layered onto its directory with a
	// read-only overlay; any other is bind-mounted.
	Files map[string]string
	// Mask names units masked on systemd's command line, besides
	// systemd-firstboot.service (which would leave the system degraded).
	Mask []string
	// WritableUsr layers an empty temporary directory over /usr, so that
	// a package can be installed in the container; what it writes goes
	// away with the container. Files may then name no file under /usr.
	WritableUsr bool
}

// Container is a booted container. Its methods may be called from several
// goroutines.
type Container struct {
	// Name is the machine name (the container's hostname).
	Name string

	cmd     *exec.Cmd
	out     *buffer
	done    chan struct{} // closed when nspawn has been waited for
	waitErr error         // valid after done
	pid1    int           // host pid of the container's systemd
	cgroups []string      // directories created, one per hierarchy
	tmp     string        // overlay layers and the preset file

	closeOnce sync.Once
	closeErr  error
}

// Available reports why a container cannot be booted here ("" if it can):
// it needs root, systemd-nspawn (Debian package systemd-container), nsenter
// and a cgroup hierarchy it can create directories in.
func Available() string {
	if os.Geteuid() != 0 {
		return "not root"
	}
	for _, tool := range []string{"systemd-nspawn", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			return tool + " not found (install the systemd-container and util-linux packages)"
		}
	}
	if _, err := os.Stat("/usr/lib/systemd/systemd"); err != nil {
		return "no /usr/lib/systemd/systemd to boot"
	}
	if len(hierarchies()) == 0 {
		return "no cgroup hierarchy under /sys/fs/cgroup"
	}
	return ""
}

// hierarchies returns the roots of the cgroup hierarchies systemd uses: the
// unified one alone on a pure cgroup v2 host, or the named v1 "systemd"
// hierarchy and the unified one on a hybrid host (as here).
func hierarchies() []string {
	if isCgroup2("/sys/fs/cgroup") {
		return []string{"/sys/fs/cgroup"}
	}
	var roots []string
	if _, err := os.Stat("/sys/fs/cgroup/systemd/cgroup.procs"); err == nil {
		roots = append(roots, "/sys/fs/cgroup/systemd")
	}
	if isCgroup2("/sys/fs/cgroup/unified") {
		roots = append(roots, "/sys/fs/cgroup/unified")
	}
	return roots
}

func isCgroup2(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC
}

// Leftovers lists the cgroups this package created that still exist: those
// of containers still running anywhere on the machine, or left behind by a
// run that crashed.
func Leftovers() ([]string, error) {
	var out []string
	for _, root := range hierarchies() {
		ents, err := os.ReadDir(root)
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			if e.IsDir() && strings.HasPrefix(e.Name(), namePrefix) {
				out = append(out, filepath.Join(root, e.Name()))
			}
		}
	}
	return out, nil
}

// BootT boots a container for a test and closes it in t.Cleanup. It skips
// the test when Available says a container cannot be booted here, and fails
// it if booting fails. If the test failed, the cleanup logs nspawn's output
// (the container's console).
func BootT(t testing.TB, opts Options) *Container {
	t.Helper()
	if why := Available(); why != "" {
		t.Skipf("tier D: needs systemd-nspawn as root: %s", why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout+10*time.Second)
	defer cancel()
	c, err := Boot(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("nspawn: console of %s:\n%s", c.Name, c.Output())
		}
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	return c
}

// Boot starts a container and waits until its systemd has finished booting
// (state running or degraded). On any error it removes whatever it created.
func Boot(ctx context.Context, opts Options) (_ *Container, err error) {
	if why := Available(); why != "" {
		return nil, fmt.Errorf("nspawn: cannot boot a container here: %s", why)
	}
	id := make([]byte, 4)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	c := &Container{
		Name: namePrefix + hex.EncodeToString(id),
		out:  &buffer{},
		done: make(chan struct{}),
	}
	defer func() {
		if err != nil {
			if cerr := c.Close(); cerr != nil {
				err = errors.Join(err, cerr)
			}
			err = fmt.Errorf("nspawn: boot %s: %w\n--- console ---\n%s", c.Name, err, c.Output())
		}
	}()
	c.tmp, err = os.MkdirTemp("", "nspawn-"+c.Name+"-")
	if err != nil {
		return nil, err
	}
	args, err := c.args(opts)
	if err != nil {
		return nil, err
	}
	var procs []string
	for _, root := range hierarchies() {
		dir := filepath.Join(root, c.Name)
		if err := os.Mkdir(dir, 0o755); err != nil {
			return nil, fmt.Errorf("create cgroup: %w", err)
		}
		c.cgroups = append(c.cgroups, dir)
		procs = append(procs, filepath.Join(dir, "cgroup.procs"))
	}

	// The shell moves itself into the container's own cgroups, then execs
	// nspawn, so that nspawn's "payload" and "supervisor" cgroups are
	// created there and never collide with another run's.
	cmd := exec.Command("sh", append([]string{"-c",
		`for f in $NSPAWN_CGROUP_PROCS; do echo $$ > "$f" || exit 1; done; exec "$@"`,
		"sh", "systemd-nspawn"}, args...)...)
	// Without NOTIFY_SOCKET: nspawn would report the container's readiness
	// to whatever service manager runs the tests.
	cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "NOTIFY_SOCKET=") })
	cmd.Env = append(cmd.Env,
		"NSPAWN_CGROUP_PROCS="+strings.Join(procs, " "),
		"SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1")
	if opts.NetNS != "" {
		// Without --private-network nspawn mounts /proc/sys read-only;
		// tcpd writes /proc/sys/net/ipv4/conf/<tun>/rp_filter.
		cmd.Env = append(cmd.Env, "SYSTEMD_NSPAWN_API_VFS_WRITABLE=network")
	}
	cmd.Stdout, cmd.Stderr = c.out, c.out
	// If the test binary dies, nspawn halts the container.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	c.cmd = cmd
	if err := startLocked(cmd, c.done, &c.waitErr); err != nil {
		c.cmd = nil
		close(c.done)
		return nil, fmt.Errorf("start systemd-nspawn: %w", err)
	}

	bctx, cancel := context.WithTimeout(ctx, bootTimeout)
	defer cancel()
	if c.pid1, err = c.findSystemd(bctx); err != nil {
		return nil, err
	}
	if err := c.waitBooted(bctx); err != nil {
		return nil, err
	}
	return c, nil
}

// startLocked starts cmd from a goroutine whose OS thread stays locked until
// the process has been waited for: Pdeathsig fires when the thread that
// forked the child exits, and the Go runtime ends threads that a goroutine
// left locked (as network namespace code does), which would otherwise kill
// the container at a random moment.
func startLocked(cmd *exec.Cmd, done chan<- struct{}, waitErr *error) error {
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		*waitErr = cmd.Wait()
		close(done)
	}()
	return <-started
}

// args returns systemd-nspawn's arguments, writing the overlay layers and
// the preset file into c.tmp.
func (c *Container) args(opts Options) ([]string, error) {
	preset := filepath.Join(c.tmp, "00-nspawn-test.preset")
	if err := os.WriteFile(preset, []byte(presetAll), 0o644); err != nil {
		return nil, err
	}
	args := []string{
		"--directory=/", "--volatile=yes", "--boot",
		"--register=no", "--keep-unit",
		"--system-call-filter=bpf",
		"--machine=" + c.Name,
		"--console=pipe",
		"--link-journal=no", "--resolv-conf=off", "--timezone=off",
		"--bind-ro=" + preset + ":/etc/systemd/system-preset/00-nspawn-test.preset",
	}
	if opts.NetNS != "" {
		args = append(args, "--network-namespace-path="+opts.NetNS, "--capability=CAP_NET_ADMIN")
	} else {
		args = append(args, "--private-network")
	}

	if opts.WritableUsr {
		upper := filepath.Join(c.tmp, "usr")
		if err := os.Mkdir(upper, 0o755); err != nil {
			return nil, err
		}
		// nspawn puts overlayfs's work directory next to the upper one.
		args = append(args, "--overlay=/usr:"+upper+":/usr")
	}

	// Files under /usr: one read-only overlay per directory, with a layer
	// holding copies of the files on top of the host's directory.
	layers := map[string]string{}
	for _, dst := range slices.Sorted(maps.Keys(opts.Files)) {
		src := opts.Files[dst]
		if !path.IsAbs(dst) || path.Clean(dst) != dst || strings.ContainsAny(dst, ":\\") {
			return nil, fmt.Errorf("container path %q: must be clean and absolute, without ':' or '\\'", dst)
		}
		if strings.ContainsAny(src, ":\\") {
			return nil, fmt.Errorf("host path %q: must not contain ':' or '\\'", src)
		}
		if !strings.HasPrefix(dst, "/usr/") {
			args = append(args, "--bind-ro="+src+":"+dst)
			continue
		}
		if opts.WritableUsr {
			return nil, fmt.Errorf("container path %s: Files under /usr cannot be combined with WritableUsr", dst)
		}
		dir := path.Dir(dst)
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("container path %s: the host has no directory %s to layer it onto", dst, dir)
		}
		layer, ok := layers[dir]
		if !ok {
			layer = filepath.Join(c.tmp, fmt.Sprintf("layer%d", len(layers)))
			if err := os.Mkdir(layer, 0o755); err != nil {
				return nil, err
			}
			layers[dir] = layer
			args = append(args, "--overlay-ro="+dir+":"+layer+":"+dir)
		}
		if err := copyFile(filepath.Join(layer, path.Base(dst)), src); err != nil {
			return nil, err
		}
	}

	// What follows the directory is the container's init's command line.
	args = append(args, "systemd.mask=systemd-firstboot.service")
	for _, u := range opts.Mask {
		args = append(args, "systemd.mask="+u)
	}
	return args, nil
}

// copyFile copies src to dst with src's permission bits.
func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fi.Mode().Perm())
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	return errors.Join(err, out.Close())
}

// findSystemd waits for the container's systemd, the child of the nspawn
// process named "systemd", and returns its host pid.
func (c *Container) findSystemd(ctx context.Context) (int, error) {
	parent := c.cmd.Process.Pid
	for {
		if pid := childNamed(parent, "systemd"); pid != 0 {
			return pid, nil
		}
		select {
		case <-c.done:
			return 0, fmt.Errorf("systemd-nspawn exited before its container started: %v", c.waitErr)
		case <-ctx.Done():
			return 0, fmt.Errorf("no systemd under systemd-nspawn (pid %d): %w", parent, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// childNamed returns the pid of a child of parent whose command name is
// comm, or 0.
func childNamed(parent int, comm string) int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		s := string(b)
		lp, rp := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if lp < 0 || rp < lp {
			continue
		}
		fields := strings.Fields(s[rp+1:])
		if len(fields) < 2 || s[lp+1:rp] != comm {
			continue
		}
		if ppid, _ := strconv.Atoi(fields[1]); ppid == parent {
			return pid
		}
	}
	return 0
}

// waitBooted waits until `systemctl is-system-running` says running or
// degraded. Early on systemctl cannot connect yet; that is retried.
func (c *Container) waitBooted(ctx context.Context) error {
	last := ""
	for {
		out, _ := c.Command(ctx, "systemctl", "is-system-running", "--wait").CombinedOutput()
		last = strings.TrimSpace(string(out))
		switch last {
		case "running", "degraded":
			return nil
		}
		select {
		case <-c.done:
			return fmt.Errorf("systemd-nspawn exited during boot: %v", c.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("container not booted (is-system-running: %q): %w", last, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// PID returns the host pid of the container's systemd.
func (c *Container) PID() int { return c.pid1 }

// Command returns a command that runs name with args inside the container,
// in all its namespaces, as its root:
//
//	nsenter -t <container systemd> -a name args...
func (c *Container) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(c.pid1), "-a", "--", name}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Run runs name with args inside the container and returns its combined
// output; on failure the error includes the output.
func (c *Container) Run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := c.Command(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s in %s: %w\n%s", name, strings.Join(args, " "), c.Name, err, out)
	}
	return string(out), nil
}

// Systemctl runs systemctl with args inside the container.
func (c *Container) Systemctl(ctx context.Context, args ...string) (string, error) {
	return c.Run(ctx, "systemctl", append([]string{"--no-pager"}, args...)...)
}

// Show returns unit properties, as `systemctl show UNIT -p P1,P2,...`.
func (c *Container) Show(ctx context.Context, unit string, props ...string) (map[string]string, error) {
	out, err := c.Systemctl(ctx, "show", unit, "-p", strings.Join(props, ","))
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			m[k] = v
		}
	}
	return m, nil
}

// Journal returns the journal lines of unit (the unit's own output and what
// systemd logged about it), message text only.
func (c *Container) Journal(ctx context.Context, unit string) (string, error) {
	return c.Run(ctx, "journalctl", "--no-pager", "-o", "cat", "-u", unit)
}

// WriteFile writes data to name inside the container, creating the missing
// parent directories, and sets its mode to perm.
func (c *Container) WriteFile(ctx context.Context, name string, data []byte, perm os.FileMode) error {
	cmd := c.Command(ctx, "sh", "-c", `mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"`,
		"sh", name, strconv.FormatUint(uint64(perm.Perm()), 8))
	cmd.Stdin = bytes.NewReader(data)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("write %s in %s: %w\n%s", name, c.Name, err, out)
	}
	return nil
}

// ReadFile returns the contents of name inside the container.
func (c *Container) ReadFile(ctx context.Context, name string) ([]byte, error) {
	var stderr bytes.Buffer
	cmd := c.Command(ctx, "cat", name)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("read %s in %s: %w: %s", name, c.Name, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

// Output returns what nspawn and the container's console have written so
// far.
func (c *Container) Output() string { return c.out.String() }

// Close halts the container (SIGTERM to nspawn, then harder), kills whatever
// is left in its cgroups, removes them and the temporary files. It is
// idempotent, safe after a failed Boot, and every call returns the first
// call's result.
func (c *Container) Close() error {
	c.closeOnce.Do(func() { c.closeErr = c.close() })
	return c.closeErr
}

func (c *Container) close() error {
	var errs []error
	if c.cmd != nil {
		errs = append(errs, c.stop())
	}
	for _, dir := range c.cgroups {
		errs = append(errs, removeCgroup(dir))
	}
	if c.tmp != "" {
		errs = append(errs, os.RemoveAll(c.tmp))
	}
	// nspawn leaves this directory when /run is not a tmpfs ("Attempted to
	// remove disk file system ... and we can't allow that").
	errs = append(errs, os.RemoveAll(filepath.Join("/run/systemd/nspawn/propagate", c.Name)))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("nspawn: close %s: %w", c.Name, err)
	}
	return nil
}

// stop ends nspawn: SIGTERM halts the container, a second SIGTERM
// terminates it at once, SIGKILL is the last resort. Needing more than the
// first is an error, after the process is gone.
func (c *Container) stop() error {
	if c.signalAndWait(syscall.SIGTERM, haltTimeout) {
		return nil
	}
	if c.signalAndWait(syscall.SIGTERM, killTimeout) {
		return fmt.Errorf("systemd-nspawn did not halt the container within %v (a service that ignores SIGTERM holds the halt up for its TimeoutStopSec); a second SIGTERM ended it", haltTimeout)
	}
	if c.signalAndWait(syscall.SIGKILL, killTimeout) {
		return fmt.Errorf("systemd-nspawn ignored SIGTERM twice; SIGKILL ended it")
	}
	return fmt.Errorf("systemd-nspawn (pid %d) still running after SIGKILL", c.cmd.Process.Pid)
}

// signalAndWait sends sig to nspawn unless it has exited, and reports
// whether it has exited within d.
func (c *Container) signalAndWait(sig syscall.Signal, d time.Duration) bool {
	select {
	case <-c.done:
		return true
	default:
	}
	_ = c.cmd.Process.Signal(sig) // fails only if it has just exited
	select {
	case <-c.done:
		return true
	case <-time.After(d):
		return false
	}
}

// removeCgroup kills every process left in the cgroup tree under dir, then
// removes the tree, deepest first.
func removeCgroup(dir string) error {
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	deadline := time.Now().Add(killTimeout)
	for {
		pids := cgroupPids(dir)
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("cgroup %s: processes %v survive SIGKILL", dir, pids)
		}
		// cgroup.kill (cgroup v2, Linux 5.14) kills the whole subtree at
		// once; killing each listed pid covers v1 and older kernels.
		_ = os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
		for _, pid := range pids {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var dirs []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("walk cgroup %s: %w", dir, err)
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		// A cgroup whose last process has just died can stay busy for a
		// moment.
		for {
			err := unix.Rmdir(dirs[i])
			if err == nil || errors.Is(err, unix.ENOENT) {
				break
			}
			if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
				return fmt.Errorf("remove cgroup %s: %w", dirs[i], err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

// cgroupPids lists the processes in the cgroup tree under dir.
func cgroupPids(dir string) []int {
	var pids []int
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		if err != nil {
			return nil
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids
}

// buffer is a bytes.Buffer safe for concurrent writes and reads.
type buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
