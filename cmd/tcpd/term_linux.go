package main

import (
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// isJournal reports whether f is the stream systemd connected to the
// journal: JOURNAL_STREAM names its device and inode (systemd.exec(5)), and
// a process whose stderr was redirected since, or that inherited the
// variable from a service, does not write to the journal through f.
func isJournal(f *os.File) bool {
	dev, ino, ok := strings.Cut(os.Getenv("JOURNAL_STREAM"), ":")
	if !ok {
		return false
	}
	var st unix.Stat_t
	if unix.Fstat(int(f.Fd()), &st) != nil {
		return false
	}
	return dev == strconv.FormatUint(st.Dev, 10) && ino == strconv.FormatUint(st.Ino, 10)
}
