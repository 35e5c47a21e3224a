package main

import (
	"fmt"
	"io"
	"os"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newLogger builds the daemon's one logger. format is auto, json or console:
// auto picks JSON when stderr is not a terminal (under systemd, whose
// journal announces itself with JOURNAL_STREAM, or in a pipe) and console
// on a terminal. The level is atomic so that reload and the admin socket can
// change it. Lines go to stderr through a logOutput, already started; Close
// it last. When stderr is the journal, each line starts with its level's
// syslog priority, which the journal files it under.
func newLogger(format string, level zap.AtomicLevel) (*zap.Logger, *logOutput, error) {
	if format == "auto" || format == "" {
		format = "console"
		if os.Getenv("JOURNAL_STREAM") != "" || !isTerminal(os.Stderr) {
			format = "json"
		}
	}
	return newLoggerTo(os.Stderr, format, level, isJournal(os.Stderr))
}

// newLoggerTo is newLogger writing to w, in format json or console; with
// journal, each line starts with its syslog priority (w is the journal).
func newLoggerTo(w io.Writer, format string, level zapcore.LevelEnabler, journal bool) (*zap.Logger, *logOutput, error) {
	var enc zapcore.Encoder
	switch format {
	case "json":
		ec := zap.NewProductionEncoderConfig()
		ec.EncodeTime = zapcore.RFC3339NanoTimeEncoder
		enc = zapcore.NewJSONEncoder(ec)
	case "console":
		ec := zap.NewDevelopmentEncoderConfig()
		ec.EncodeTime = zapcore.TimeEncoderOfLayout("15:04:05.000")
		enc = zapcore.NewConsoleEncoder(ec)
	default:
		return nil, nil, fmt.Errorf("log format %q: want auto, json or console", format)
	}
	if journal {
		enc = journalEncoder{enc}
	}
	out := newLogOutput(w)
	log := zap.New(zapcore.NewCore(enc, out, level), zap.ErrorOutput(out))
	// The report of lost lines is written by the writer itself, straight
	// after the line that got through: queued, it would be lost to the
	// same full queue it reports.
	direct := zap.New(zapcore.NewCore(enc.Clone(), zapcore.AddSync(directOutput{out}), level))
	out.report = func(failed, stalled uint64, err error) {
		direct.Warn(logLostMsg, zap.Uint64("lost", failed+stalled),
			zap.Uint64("write_failed", failed), zap.Uint64("output_stalled", stalled), zap.Error(err))
	}
	out.start()
	return log, out, nil
}

// logLostMsg is the message of the line that reports lost log lines.
const logLostMsg = "log lines lost: the log's output refused them (write_failed) or fell behind (output_stalled); " +
	"tcpd_log_lines_lost_total counts them"
