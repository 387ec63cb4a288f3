// Package ratelog bounds the log lines of per-packet events: each event
// kind gets a token bucket (at most Rate lines a second, Burst at once);
// lines over it are counted, and the next line of that kind reports how
// many were suppressed; Flush reports them for kinds that have gone quiet.
// A flood of one kind then costs the log Rate lines a second instead of
// one line a packet.
package ratelog

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Logger wraps a slog.Logger with one token bucket per event kind. It is
// safe for concurrent use.
type Logger struct {
	L     *slog.Logger
	rate  float64
	burst float64
	now   func() time.Time

	mu    sync.Mutex
	kinds map[string]*bucket
}

type bucket struct {
	tokens     float64
	last       time.Time
	seen       time.Time // the kind's last event, written or not
	suppressed uint64
	level      slog.Level
	msg        string
}

// New returns a Logger allowing rate lines a second per kind with bursts of
// burst (at least 1). rate <= 0 disables limiting.
func New(l *slog.Logger, rate, burst int) *Logger {
	if burst < 1 {
		burst = 1
	}
	return &Logger{L: l, rate: float64(rate), burst: float64(burst), now: time.Now, kinds: map[string]*bucket{}}
}

// SetClock replaces time.Now (tests).
func (l *Logger) SetClock(now func() time.Time) { l.now = now }

// Log writes msg at level unless kind is over its rate; the first line
// after suppressed ones carries suppressed=K.
func (l *Logger) Log(ctx context.Context, level slog.Level, kind, msg string, args ...any) {
	if !l.L.Enabled(ctx, level) {
		return // a disabled level costs no tokens
	}
	if l.rate <= 0 {
		l.L.Log(ctx, level, msg, args...)
		return
	}
	ok, k := l.allow(kind, level, msg)
	if !ok {
		return
	}
	if k > 0 {
		args = append(args, "suppressed", k)
	}
	l.L.Log(ctx, level, msg, args...)
}

// LogLazy is Log with the attributes made by attrs only for a line that
// is written: a suppressed event costs no formatting.
func (l *Logger) LogLazy(ctx context.Context, level slog.Level, kind, msg string, attrs func() []slog.Attr) {
	if !l.L.Enabled(ctx, level) {
		return
	}
	if l.rate <= 0 {
		l.L.LogAttrs(ctx, level, msg, attrs()...)
		return
	}
	ok, k := l.allow(kind, level, msg)
	if !ok {
		return
	}
	a := attrs()
	if k > 0 {
		a = append(a, slog.Uint64("suppressed", k))
	}
	l.L.LogAttrs(ctx, level, msg, a...)
}

func (l *Logger) allow(kind string, level slog.Level, msg string) (bool, uint64) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.kinds[kind]
	if b == nil {
		b = &bucket{tokens: l.burst, last: now}
		l.kinds[kind] = b
	}
	if d := now.Sub(b.last); d > 0 {
		b.tokens = min(l.burst, b.tokens+d.Seconds()*l.rate)
		b.last = now
	}
	b.seen = now
	if b.tokens < 1 {
		b.suppressed++
		b.level, b.msg = level, msg
		return false, 0
	}
	b.tokens--
	k := b.suppressed
	b.suppressed = 0
	return true, k
}

// Quiet is how long a kind goes without events before Flush reports its
// suppressed lines: while events keep coming, the kind's next line does,
// so a flood costs no summary lines on top of its own.
const Quiet = time.Second

// Flush writes one summary line per kind quiet for Quiet with suppressed
// lines pending ("<msg> (suppressed)", kind, suppressed=K). Call it now
// and then (once a second) so that a flood that stops is reported.
func (l *Logger) Flush(ctx context.Context) { l.flush(ctx, false) }

// FlushAll is Flush for every kind, quiet or not (at the end).
func (l *Logger) FlushAll(ctx context.Context) { l.flush(ctx, true) }

func (l *Logger) flush(ctx context.Context, all bool) {
	type line struct {
		kind, msg string
		level     slog.Level
		k         uint64
	}
	var out []line
	now := l.now()
	l.mu.Lock()
	for kind, b := range l.kinds {
		switch {
		case b.suppressed > 0 && (all || now.Sub(b.seen) >= Quiet):
			out = append(out, line{kind, b.msg, b.level, b.suppressed})
			b.suppressed = 0
		case b.suppressed == 0 && b.tokens >= l.burst && now.Sub(b.seen) >= Quiet:
			delete(l.kinds, kind) // idle: forget it
		}
	}
	l.mu.Unlock()
	for _, x := range out {
		l.L.Log(ctx, x.level, x.msg+" (suppressed)", "kind", x.kind, "suppressed", x.k)
	}
}

// Suppressed returns the lines suppressed so far and not yet reported.
func (l *Logger) Suppressed() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var n uint64
	for _, b := range l.kinds {
		n += b.suppressed
	}
	return n
}
