package statestore

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// SlogZap returns a zap logger that writes to l at min and above: etcd
// logs through zap, the node through slog, so embedded etcd's warnings
// (slow fsync, a large database, an election) land in the node's log.
// Levels map to slog's (DPanic, Panic and Fatal to Error); zap fields
// become attributes; the zap logger's name goes to "logger".
func SlogZap(l *slog.Logger, min zapcore.Level) *zap.Logger {
	return zap.New(&slogCore{h: l.Handler(), min: min})
}

type slogCore struct {
	h     slog.Handler
	min   zapcore.Level
	attrs []slog.Attr // from With
}

func slogLevel(l zapcore.Level) slog.Level {
	switch {
	case l <= zapcore.DebugLevel:
		return slog.LevelDebug
	case l == zapcore.InfoLevel:
		return slog.LevelInfo
	case l == zapcore.WarnLevel:
		return slog.LevelWarn
	default:
		return slog.LevelError
	}
}

func (c *slogCore) Enabled(l zapcore.Level) bool {
	return l >= c.min && c.h.Enabled(context.Background(), slogLevel(l))
}

func (c *slogCore) With(fields []zapcore.Field) zapcore.Core {
	n := *c
	n.attrs = append(append([]slog.Attr(nil), c.attrs...), attrsOf(fields)...)
	return &n
}

func (c *slogCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *slogCore) Write(e zapcore.Entry, fields []zapcore.Field) error {
	t := e.Time
	if t.IsZero() {
		t = time.Now()
	}
	r := slog.NewRecord(t, slogLevel(e.Level), e.Message, 0)
	r.AddAttrs(c.attrs...)
	if e.LoggerName != "" {
		r.AddAttrs(slog.String("logger", e.LoggerName))
	}
	r.AddAttrs(attrsOf(fields)...)
	return c.h.Handle(context.Background(), r)
}

func (c *slogCore) Sync() error { return nil }

// maxAttrLen caps string attributes (etcd logs slow requests whole).
const maxAttrLen = 512

// attrsOf encodes zap fields the way zap's own map encoder does.
func attrsOf(fields []zapcore.Field) []slog.Attr {
	if len(fields) == 0 {
		return nil
	}
	enc := zapcore.NewMapObjectEncoder()
	out := make([]slog.Attr, 0, len(fields))
	for _, f := range fields {
		f.AddTo(enc)
		if v, ok := enc.Fields[f.Key]; ok {
			switch x := v.(type) {
			case time.Duration:
				v = x.String() // as etcd's own logs write them: "1.5s"
			case string:
				if len(x) > maxAttrLen { // etcd quotes whole requests
					v = fmt.Sprintf("%s... (%d bytes)", x[:maxAttrLen], len(x))
				}
			}
			out = append(out, slog.Any(f.Key, v))
			delete(enc.Fields, f.Key)
		}
	}
	return out
}
