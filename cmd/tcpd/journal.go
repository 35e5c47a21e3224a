package main

import (
	"strings"

	"go.uber.org/zap/buffer"
	"go.uber.org/zap/zapcore"
)

// syslogPriority is the syslog priority of a log level, as the journal
// reads it from a "<N>" prefix on a line of a service's output
// (sd-daemon(3); SyslogLevelPrefix= is on by default).
func syslogPriority(l zapcore.Level) byte {
	switch {
	case l <= zapcore.DebugLevel:
		return '7' // debug
	case l == zapcore.InfoLevel:
		return '6' // info
	case l == zapcore.WarnLevel:
		return '4' // warning
	case l == zapcore.ErrorLevel:
		return '3' // err
	}
	return '2' // crit: DPanic, Panic, Fatal
}

// journalEncoder prefixes each line with its level's syslog priority, so
// that the journal files an error as an error: without it, every line of
// a service's output is info (priority 6), and `journalctl -p err`, and
// whatever ships the journal by priority, never sees tcpd's errors.
type journalEncoder struct{ zapcore.Encoder }

func (e journalEncoder) Clone() zapcore.Encoder { return journalEncoder{e.Encoder.Clone()} }

func (e journalEncoder) EncodeEntry(ent zapcore.Entry, fields []zapcore.Field) (*buffer.Buffer, error) {
	line, err := e.Encoder.EncodeEntry(ent, fields)
	if err != nil {
		return nil, err
	}
	out := linePool.Get()
	out.AppendByte('<')
	out.AppendByte(syslogPriority(ent.Level))
	out.AppendByte('>')
	out.Write(line.Bytes())
	line.Free()
	return out, nil
}

var linePool = buffer.NewPool()

// journalError is text for the journal at priority err: every line of it
// prefixed, as the journal files each line of a service's output apart.
func journalError(text string) string {
	lines := strings.SplitAfter(text, "\n")
	var b strings.Builder
	for _, l := range lines {
		if l != "" {
			b.WriteString("<3>")
			b.WriteString(l)
		}
	}
	return b.String()
}
