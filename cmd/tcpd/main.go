// Command tcpd is the userspace TCP terminator of a VPN gateway: it attaches
// a TUN device to a gVisor netstack, terminates every client TCP connection
// there, and relays its bytes to the original destination from the host's
// own sockets, tracking each connection's TCP state on both ends.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"time"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}

const usage = `tcpd terminates VPN clients' TCP connections from a TUN device in a
userspace netstack and relays them to their destinations, tracking every
connection's TCP state on both ends.

Usage:
  tcpd run [--config FILE] [--log-level LEVEL] [--log-format FORMAT]
        run the daemon (with no --config: the embedded default configuration)
  tcpd check-config FILE
        validate a configuration file; exit 0 if it is valid, 1 with every
        problem listed if not
  tcpd conns [FILTER] [-o json] [-i] [-s]
        list the running daemon's connections with both ends' states, like
        ss -tan; "tcpd conns kill ID" resets one, "kill FILTER" all it selects
  tcpd reload [--socket PATH | --config FILE] [--pid PID]
        reload the running daemon's configuration and wait for the outcome;
        exit 1 with the reasons if the file was rejected
  tcpd version
        print the version

Run "tcpd COMMAND --help" for a command's flags.
`

// errUsage marks an error whose message is a usage problem (exit status 2).
var errUsage = errors.New("usage")

// exitConfig is the exit status of a daemon that refused to start for its
// configuration: EX_CONFIG of sysexits.h, which the unit's
// RestartPreventExitStatus= names, so that systemd does not restart into
// the same error and `systemctl status` shows it.
const exitConfig = 78

// refusedConfig marks a start refused for the configuration itself (exit
// status exitConfig), as against one that a restart may get past.
type refusedConfig struct{ error }

func (e refusedConfig) Unwrap() error { return e.error }

func main() {
	os.Exit(runMain(os.Args[1:], os.Stdout, os.Stderr))
}

// runMain dispatches the subcommand and returns the exit status.
func runMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "run":
		err = cmdRun(args[1:], stdout, stderr)
	case "check-config":
		err = cmdCheckConfig(args[1:], stdout, stderr)
	case "conns":
		err = cmdConns(args[1:], stdout, stderr)
	case "reload":
		err = cmdReload(args[1:], stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "tcpd %s\n", buildVersion())
	case "help", "-h", "-help", "--help":
		// "tcpd help conns" is "tcpd conns --help".
		if len(args) == 2 && args[0] == "help" && slices.Contains([]string{"run", "check-config", "conns", "reload"}, args[1]) {
			return runMain([]string{args[1], "--help"}, stdout, stderr)
		}
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "tcpd: unknown command %q\nRun \"tcpd help\" for usage.\n", args[0])
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	default:
		line := fmt.Sprintf("tcpd %s: %s\n", args[0], strings.ReplaceAll(err.Error(), "\n", "\n  "))
		if f, ok := stderr.(*os.File); ok && isJournal(f) {
			line = journalError(line)
		}
		writeLast(stderr, line)
		if errors.As(err, new(refusedConfig)) {
			return exitConfig
		}
		return 1
	}
}

// lastLineWait bounds writeLast.
const lastLineWait = 2 * time.Second

// writeLast writes the last line of a failed command, and gives up after
// lastLineWait: stderr may be a pipe nobody reads (a stuck journal), and a
// daemon that failed must still exit, so that systemd restarts it. The
// log has said why already; nothing else waits for the log either.
func writeLast(w io.Writer, line string) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.WriteString(w, line)
	}()
	select {
	case <-done:
	case <-time.After(lastLineWait):
	}
}

// newFlagSet is a subcommand's flags. Help asked for (-h, --help) goes to
// stdout, so that "tcpd conns --help | less" shows it; help that follows
// a usage error goes to stderr with it.
func newFlagSet(name, synopsis string, args []string, stdout, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("tcpd "+name, flag.ContinueOnError)
	// A parse error is reported by flagError in two lines, as every other
	// usage error is, not followed by the whole usage.
	fs.SetOutput(io.Discard)
	if helpAsked(args) {
		fs.SetOutput(stdout)
	}
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "%s\n", synopsis)
		var flags int
		fs.VisitAll(func(*flag.Flag) { flags++ })
		if flags > 0 {
			fmt.Fprint(fs.Output(), "\nFlags:\n")
			fs.PrintDefaults()
		}
	}
	return fs
}

// usageError writes a usage problem of subcommand cmd to stderr, with where
// to find the usage, and returns errUsage (exit status 2).
func usageError(stderr io.Writer, cmd, format string, a ...any) error {
	fmt.Fprintf(stderr, "tcpd %s: %s\nRun \"tcpd %s --help\" for usage.\n", cmd, fmt.Sprintf(format, a...), cmd)
	return errUsage
}

// flagError is what a subcommand returns when its flags do not parse: the
// help asked for as it is, anything else a usage error naming the flag.
func flagError(stderr io.Writer, cmd string, err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return err
	}
	return usageError(stderr, cmd, "%s", err)
}

// helpAsked reports whether args ask for help before any "--".
func helpAsked(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "-h", "-help", "--help":
			return true
		}
	}
	return false
}

func cmdCheckConfig(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("check-config", "Usage: tcpd check-config FILE\n\nValidates FILE as a tcpd configuration: unknown keys, types, ranges, and\nthe connection caps against the open-file limits: a cap no limit on this\nhost can meet is an error; one above this process's own limit, a warning.\nExit status 0 when valid; 1 with every problem listed when not.", args, stdout, stderr)
	if err := fs.Parse(args); err != nil {
		return flagError(stderr, "check-config", err)
	}
	if fs.NArg() != 1 || fs.Arg(0) == "" {
		// loadConfig reads "" as the embedded default, which is not what
		// an empty $VAR on the command line meant.
		return usageError(stderr, "check-config", "give one configuration file")
	}
	c, err := loadConfig(fs.Arg(0))
	if err != nil {
		return err
	}
	warning, err := checkFDCaps(c, hostOpenFileMax(), openFileLimit())
	if err != nil {
		return fmt.Errorf("%s: %w", fs.Arg(0), err)
	}
	if warning != "" {
		fmt.Fprintf(stderr, "%s: %s\n", fs.Arg(0), warning)
	}
	fmt.Fprintf(stdout, "%s: valid\n", fs.Arg(0))
	return nil
}
