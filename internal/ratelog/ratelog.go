// Package ratelog bounds the log lines of per-packet events: all event
// kinds share one token bucket (at most Rate lines a second, Burst at once);
// lines over it are counted per kind, and the next line of that kind
// reports how many were suppressed; Flush reports them for kinds that have
// gone quiet. A flood of any mix of kinds then costs the log about Rate
// lines a second instead of one line a packet.
//
// Tokens go to whichever line comes first, so a flooding kind would take
// them all. Two kinds of line may therefore write with the bucket empty,
// borrowing from it (Burst tokens at most), each taking the place of a
// later line of the flood: an event of a kind quiet for Quiet before it
// (a rare event is written when it happens, with its details), and the
// next event of the kind Flush names as owed (of the kinds flooding with
// lines suppressed, the one whose last line is oldest: several kinds
// flooding at once take turns). Over any period T the lines written stay
// within Rate*T + 2*Burst.
package ratelog

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/ikefleet/ikefleet/internal/evlog"
)

// Logger wraps a slog.Logger with one token bucket for all event kinds. It
// is safe for concurrent use.
type Logger struct {
	L     *slog.Logger
	rate  float64
	burst float64
	now   func() time.Time

	mu     sync.Mutex
	tokens float64 // the shared bucket; below 0 while lines are borrowed
	last   time.Time
	kinds  map[string]*kind
	owed   *kind // may borrow for its next line (Flush)
}

type kind struct {
	seen       time.Time // the kind's last event, written or not
	written    time.Time // the kind's last line
	suppressed uint64
	level      slog.Level
	msg        string
}

// New returns a Logger allowing rate lines a second in all with bursts of
// burst (at least 1). rate <= 0 disables limiting.
func New(l *slog.Logger, rate, burst int) *Logger {
	if burst < 1 {
		burst = 1
	}
	return &Logger{L: l, rate: float64(rate), burst: float64(burst), tokens: float64(burst), now: time.Now, kinds: map[string]*kind{}}
}

// SetClock replaces time.Now (tests). Call it before the first line.
func (l *Logger) SetClock(now func() time.Time) { l.now = now }

// Log writes msg at level unless the shared bucket is empty; the first
// line of kind after suppressed ones carries suppressed=K.
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
		evlog.Attrs(ctx, l.L, level, msg, attrs()...)
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
	evlog.Attrs(ctx, l.L, level, msg, a...)
}

// refill adds the tokens earned since the last call; l.mu is held.
func (l *Logger) refill(now time.Time) {
	if l.last.IsZero() {
		l.last = now
	}
	if d := now.Sub(l.last); d > 0 {
		l.tokens = min(l.burst, l.tokens+d.Seconds()*l.rate)
		l.last = now
	}
}

// take spends a token for a line, or borrows one if mayBorrow and the
// debt allows; l.mu is held.
func (l *Logger) take(mayBorrow bool) bool {
	if l.tokens < 1 && !(mayBorrow && l.tokens > 1-l.burst) {
		return false
	}
	l.tokens--
	return true
}

func (l *Logger) allow(name string, level slog.Level, msg string) (bool, uint64) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refill(now)
	k := l.kinds[name]
	if k == nil {
		k = &kind{}
		l.kinds[name] = k
	}
	rare := now.Sub(k.seen) >= Quiet
	k.seen = now
	if !l.take(rare || k == l.owed) {
		k.suppressed++
		k.level, k.msg = level, msg
		return false, 0
	}
	if k == l.owed {
		l.owed = nil
	}
	k.written = now
	n := k.suppressed
	k.suppressed = 0
	return true, n
}

// Quiet is how long a kind goes without events before Flush reports its
// suppressed lines: while events keep coming, the kind's next line does,
// so a flood costs no summary lines on top of its own.
const Quiet = time.Second

// Flush writes one summary line per kind quiet for Quiet with suppressed
// lines pending ("<msg> (suppressed)", kind, suppressed=K), as the shared
// bucket allows (the rest wait for a later Flush). Call it now and then
// (once a second) so that a flood that stops is reported.
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
	l.refill(now)
	l.owed = nil
	for name, k := range l.kinds {
		quiet := now.Sub(k.seen) >= Quiet
		switch {
		case k.suppressed > 0 && (all || quiet && l.take(true)):
			// A summary costs a token like any line. At the end (all) it
			// is written whatever the bucket holds, and still charged.
			if all {
				l.tokens--
			}
			k.written = now
			out = append(out, line{name, k.msg, k.level, k.suppressed})
			k.suppressed = 0
		case k.suppressed > 0 && !quiet:
			if l.owed == nil || k.written.Before(l.owed.written) {
				l.owed = k
			}
		case k.suppressed == 0 && quiet:
			delete(l.kinds, name) // idle: forget it
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
