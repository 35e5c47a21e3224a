package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// TestJournalPriorities: with the journal as the output, every line starts
// with its level's syslog priority, in both formats and on the lost-lines
// report's own logger (a Clone); without, no line does.
func TestJournalPriorities(t *testing.T) {
	for _, format := range []string{"json", "console"} {
		for _, journal := range []bool{true, false} {
			var w bytes.Buffer
			log, out, err := newLoggerTo(&w, format, zapcore.DebugLevel, journal)
			if err != nil {
				t.Fatal(err)
			}
			log.Debug("d")
			log.Info("i")
			log.Warn("w")
			log.Error("e")
			log.With(zap.String("k", "v")).Error("e2")
			out.Close()
			lines := strings.Split(strings.TrimSuffix(w.String(), "\n"), "\n")
			want := []string{"<7>", "<6>", "<4>", "<3>", "<3>"}
			if len(lines) != len(want) {
				t.Fatalf("%s, journal %v: %d lines, want %d:\n%s", format, journal, len(lines), len(want), w.String())
			}
			for i, l := range lines {
				if got := strings.HasPrefix(l, want[i]); got != journal || (journal && strings.HasPrefix(l[3:], "<")) {
					t.Errorf("%s, journal %v: line %q, want the prefix %s %v", format, journal, l, want[i], journal)
				}
			}
		}
	}
	if got := syslogPriority(zapcore.FatalLevel); got != '2' {
		t.Errorf("fatal: priority %c, want 2 (crit)", got)
	}
}

// TestJournalError: the last line of a failed command, continuation lines
// too, is filed at priority err.
func TestJournalError(t *testing.T) {
	got := journalError("tcpd run: two errors:\n  line 3: x\n  line 4: y\n")
	want := "<3>tcpd run: two errors:\n<3>  line 3: x\n<3>  line 4: y\n"
	if got != want {
		t.Errorf("journalError = %q, want %q", got, want)
	}
}

// TestIsJournal: stderr is the journal only when JOURNAL_STREAM names its
// own device and inode.
func TestIsJournal(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the journal is systemd's")
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "stream"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	for _, tc := range []struct {
		env  string
		want bool
	}{
		{fmt.Sprintf("%d:%d", st.Dev, st.Ino), true},
		{fmt.Sprintf("%d:%d", st.Dev, st.Ino+1), false},
		{fmt.Sprintf("%d", st.Ino), false},
		{"", false},
	} {
		t.Setenv("JOURNAL_STREAM", tc.env)
		if got := isJournal(f); got != tc.want {
			t.Errorf("JOURNAL_STREAM=%q: isJournal %v, want %v", tc.env, got, tc.want)
		}
	}
}
