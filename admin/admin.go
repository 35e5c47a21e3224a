// Package admin is the daemon's local control API: JSON over HTTP on a unix
// socket, for `tcpd conns` and for operators with curl. It lists
// connections with both ends' states, summarises the connection manager,
// resets one connection and reads or sets the log level. It reaches the
// daemon only through Source and never listens on a network port: whoever
// can open the socket file can reset any connection, so the file's mode and
// its directory are the access control.
package admin

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"tcpd/conntrack"
	"tcpd/internal/connlimit"
	"tcpd/stack"
)

// Source is what the API reads and acts on; the daemon's stack implements
// it. Every method must be safe to call from any goroutine.
type Source interface {
	// Conns returns the rows of the live table that keep accepts (nil keeps
	// all), in ID order, joined with the netstack's view.
	Conns(keep func(*conntrack.Conn) bool) []stack.ConnInfo
	// Snapshot returns the connection manager's counts and histograms.
	Snapshot() conntrack.Snapshot
	// Kill resets that connection on both legs; false if the ID is unknown.
	Kill(id conntrack.ID) bool
	// UpstreamTCP reads the kernel's view of that connection's upstream
	// socket; false if tcpd holds none for it.
	UpstreamTCP(id conntrack.ID) (stack.UpstreamTCP, bool)
}

// Config configures a Server.
type Config struct {
	// Path is the socket's path. Its directory is created with mode 0750 if
	// missing; an existing directory is left as it is. Required.
	Path string
	// Mode is the socket file's mode. Zero means 0660.
	Mode os.FileMode
	// Reload, if set, serves POST /v1/reload: it reloads the
	// configuration as SIGHUP does and returns the outcome once the reload
	// is done; an error means it did not run (tcpd stopping, or ctx done).
	Reload func(ctx context.Context) (ReloadResult, error)
	// Source answers the API. Required.
	Source Source
	// Level is the daemon's log level, read and set by /v1/log/level. The
	// zero value means a level of its own, starting at info.
	Level zap.AtomicLevel
	// Logger logs what operators change. Nil means no logging.
	Logger *zap.Logger
	// Now returns the current time, for ages. Nil means time.Now; tests pass
	// a fixed clock.
	Now func() time.Time
	// WriteTimeout bounds the writing of one answer, and for a listing
	// the wait for its reader to take more: a client that stops reading
	// (a script piped into a pager left open) loses its connection, and
	// the listing slot it held, rather than keeping them, while one that
	// reads a table of millions of rows gets all of it; a listing ends ten
	// timeouts after it began at the latest. Zero means
	// DefaultWriteTimeout.
	WriteTimeout time.Duration
}

// DefaultWriteTimeout is Config.WriteTimeout's default: far longer than a
// client that reads ever makes a write wait.
const DefaultWriteTimeout = 30 * time.Second

// Server serves the API on a unix socket until Close.
type Server struct {
	path string
	file os.FileInfo // the socket file as bound, so Close never removes a successor's
	http *http.Server
	log  *zap.Logger
	done chan struct{} // closed when the serve goroutine returns

	closeOnce sync.Once
	closeErr  error
}

// MaxConnections bounds the connections the admin socket holds open at
// once; past it, the one idle longest is closed for a new one (see
// internal/connlimit). `tcpd conns` opens one per command.
const MaxConnections = 8

// dialTimeout bounds the liveness check of an existing socket file. A live
// daemon's kernel accepts the connection from its backlog at once, so this
// only matters for a wedged one.
const dialTimeout = time.Second

// Listen binds the socket and starts serving. An existing socket file is
// replaced only if nothing answers on it: a daemon killed without cleanup
// leaves one behind, but a running one must not lose its socket to a second
// instance.
func Listen(cfg Config) (*Server, error) {
	if cfg.Path == "" {
		return nil, errors.New("admin socket: no path")
	}
	if cfg.Source == nil {
		return nil, errors.New("admin socket: no source")
	}
	if cfg.Mode == 0 {
		cfg.Mode = 0o660
	}
	if cfg.Level == (zap.AtomicLevel{}) {
		cfg.Level = zap.NewAtomicLevel()
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Path), 0o750); err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := removeStale(cfg.Path); err != nil {
		return nil, err
	}
	bound, err := net.Listen("unix", cfg.Path)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	// Close removes the file itself, after checking it is still ours.
	bound.(*net.UnixListener).SetUnlinkOnClose(false)
	ln := connlimit.New(bound, MaxConnections)
	// Between bind and chmod the file has the umask's mode; the directory
	// (0750 when we create it) is what guards that window.
	if err := os.Chmod(cfg.Path, cfg.Mode); err != nil {
		ln.Close()
		os.Remove(cfg.Path)
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	fi, err := os.Stat(cfg.Path)
	if err != nil {
		ln.Close()
		os.Remove(cfg.Path)
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	s := &Server{
		path: cfg.Path,
		file: fi,
		log:  cfg.Logger,
		done: make(chan struct{}),
	}
	s.http = &http.Server{
		Handler:           newAPI(cfg),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       10 * time.Second,
		WriteTimeout:      cmp.Or(cfg.WriteTimeout, DefaultWriteTimeout),
		// The longest valid request line is a few hundred bytes.
		MaxHeaderBytes: 16 << 10,
		ConnState:      ln.ConnState,
		ErrorLog:       zap.NewStdLog(cfg.Logger),
	}
	go s.serve(ln)
	return s, nil
}

// CheckFree returns the error Listen would for path if another tcpd
// answers on it, or it is not a socket, and removes nothing. A daemon asks
// before it takes anything else, such as its TUN device, that a second
// instance started by mistake would take from the first.
func CheckFree(path string) error {
	_, err := stale(path)
	return err
}

// stale reports whether path is a socket nobody answers on, to be removed;
// an error if it must not be.
func stale(path string) (bool, error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("admin socket: %w", err)
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return false, fmt.Errorf("admin socket: %s exists and is not a socket", path)
	}
	c, err := net.DialTimeout("unix", path, dialTimeout)
	if err == nil {
		c.Close()
		return false, fmt.Errorf("another tcpd is running on %s", path)
	}
	// ECONNREFUSED is the kernel's answer for a socket file with no
	// listener behind it; anything else (a permission, a timeout) is not
	// proof that the file is stale.
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return false, fmt.Errorf("admin socket: check existing %s: %w", path, err)
	}
	return true, nil
}

// removeStale removes path if it is a socket nobody answers on.
func removeStale(path string) error {
	if st, err := stale(path); !st {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("admin socket: remove stale %s: %w", path, err)
	}
	return nil
}

// serve runs the HTTP server until Close.
func (s *Server) serve(ln net.Listener) {
	defer close(s.done)
	if err := s.http.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		s.log.Error("admin socket stopped", zap.String("socket", s.path), zap.Error(err))
	}
}

// Close stops accepting, waits for requests in flight until ctx is done
// (then drops them), and removes the socket file if it is still the one
// Listen bound. It is idempotent; later calls return the first one's error.
func (s *Server) Close(ctx context.Context) error {
	s.closeOnce.Do(func() {
		err := s.http.Shutdown(ctx)
		if err != nil {
			s.http.Close()
		}
		<-s.done
		if fi, serr := os.Lstat(s.path); serr == nil && os.SameFile(fi, s.file) {
			if rerr := os.Remove(s.path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
				err = errors.Join(err, fmt.Errorf("admin socket: %w", rerr))
			}
		}
		s.closeErr = err
	})
	return s.closeErr
}
