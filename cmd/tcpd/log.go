package main

import (
	"fmt"
	"os"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newLogger builds the daemon's one logger. format is auto, json or console:
// auto picks JSON when stderr is not a terminal (under systemd, whose
// journal announces itself with JOURNAL_STREAM, or in a pipe) and console
// on a terminal. The level is atomic so that reload and the admin socket can
// change it.
func newLogger(format string, level zap.AtomicLevel) (*zap.Logger, error) {
	if format == "auto" || format == "" {
		format = "console"
		if os.Getenv("JOURNAL_STREAM") != "" || !isTerminal(os.Stderr) {
			format = "json"
		}
	}
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
		return nil, fmt.Errorf("log format %q: want auto, json or console", format)
	}
	core := zapcore.NewCore(enc, zapcore.Lock(os.Stderr), level)
	return zap.New(core, zap.ErrorOutput(zapcore.Lock(os.Stderr))), nil
}
