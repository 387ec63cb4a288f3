package main

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// logFlushInterval bounds how long a log line may wait in the buffer: the
// most a crash (SIGKILL) can lose.
const logFlushInterval = 50 * time.Millisecond

const (
	// logFlushAt: buffered bytes that wake the flusher before its tick.
	logFlushAt = 64 << 10
	// logMaxPending bounds the lines waiting for a slow reader of the log
	// (about 15,000 lines): beyond it lines are dropped and counted.
	logMaxPending = 4 << 20
	// logKeepBuffer: the largest buffer kept for reuse (two are, at most).
	logKeepBuffer = 1 << 20
)

// bufferedLog collects log lines and writes them out in one write(2) per
// logFlushInterval or per logFlushAt bytes, instead of one per line: a
// node logs several lines per SA, and a system call per line is a
// measurable share of the CPU an SA costs.
//
// A logging goroutine never waits for the log's reader. A shard logs on
// the goroutine that serves its SAs, and stderr is usually a pipe (to
// journald, to the container runtime) whose reader can stall: a write to
// a full pipe would stop the shard's IKE and ESP with it, long enough for
// its gateways' liveness checks to fail. The lines are written by the
// flusher goroutine instead; while it is stuck they gather up to
// logMaxPending bytes, then are dropped, and the next write says how many
// (a warning line, "log lines dropped"). Close writes what is left, or
// gives up after logCloseTimeout.
type bufferedLog struct {
	w      io.Writer
	notice func(dropped int64) []byte // the warning line for dropped lines

	mu      sync.Mutex
	pending []byte        // whole lines, in the order they were written
	spare   []byte        // the buffer the last write used, for the next swap
	dropped int64         // lines dropped since the last write
	max     int           // bound of pending
	total   atomic.Uint64 // lines dropped since the start (a metric)

	wmu  sync.Mutex // one write to w at a time
	kick chan struct{}
	stop chan struct{}
	done chan struct{}
}

// newBufferedLog buffers the lines for w; format (json or text) is the
// log's, for the line that reports dropped lines.
func newBufferedLog(w io.Writer, format string) *bufferedLog {
	b := &bufferedLog{w: w, max: logMaxPending, kick: make(chan struct{}, 1),
		stop: make(chan struct{}), done: make(chan struct{})}
	b.notice = func(n int64) []byte {
		var out bytes.Buffer
		var h slog.Handler = slog.NewJSONHandler(&out, nil)
		if format == "text" {
			h = slog.NewTextHandler(&out, nil)
		}
		slog.New(h).Warn("log lines dropped", "dropped", n, "reason", "the log's reader did not keep up")
		return out.Bytes()
	}
	go b.flusher()
	return b
}

// Write takes one log record (slog writes each in one call) whole. It
// never blocks on the output: a record that does not fit is dropped.
func (b *bufferedLog) Write(p []byte) (int, error) {
	b.mu.Lock()
	if len(b.pending)+len(p) > b.max {
		b.dropped++
		b.mu.Unlock()
		b.total.Add(1)
		return len(p), nil
	}
	b.pending = append(b.pending, p...)
	full := len(b.pending) >= logFlushAt
	b.mu.Unlock()
	if full {
		select {
		case b.kick <- struct{}{}:
		default:
		}
	}
	return len(p), nil
}

// Dropped returns how many lines were dropped since the start
// (ikefleet_log_lines_dropped_total).
func (b *bufferedLog) Dropped() uint64 { return b.total.Load() }

// Flush writes the buffered lines out now (on the caller's goroutine).
func (b *bufferedLog) Flush() error {
	b.wmu.Lock()
	defer b.wmu.Unlock()
	b.mu.Lock()
	out, dropped := b.pending, b.dropped
	b.pending, b.spare, b.dropped = b.spare[:0], nil, 0
	b.mu.Unlock()
	var err error
	if dropped > 0 {
		_, err = b.w.Write(b.notice(dropped))
	}
	if len(out) > 0 {
		if _, werr := b.w.Write(out); err == nil {
			err = werr
		}
	}
	// Keep the buffer for the next swap unless a stuck reader grew it
	// large. A busy node's flusher runs late (it shares the node's
	// core), so the lines of one flush often pass logFlushAt several
	// times over: a buffer dropped for that made every byte logged a
	// byte allocated, 2.6 KB of garbage per SA at 1,000 new SAs/s.
	if cap(out) <= logKeepBuffer {
		b.mu.Lock()
		if b.spare == nil {
			b.spare = out[:0]
		}
		b.mu.Unlock()
	}
	return err
}

func (b *bufferedLog) flusher() {
	defer close(b.done)
	t := time.NewTicker(logFlushInterval)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
		case <-b.kick:
		}
		b.Flush()
	}
}

// logCloseTimeout bounds how long Close waits for a stuck reader of the
// log: the node's exit must not hang on it.
const logCloseTimeout = 2 * time.Second

// errLogStuck: Close gave up on the log's reader; what was left is lost.
var errLogStuck = errors.New("log: the reader of the log did not take the last lines")

// Close stops the periodic flush and writes what is left, unless the
// reader of the log takes nothing for logCloseTimeout.
func (b *bufferedLog) Close() error {
	select {
	case <-b.stop:
	default:
		close(b.stop)
	}
	flushed := make(chan error, 1)
	go func() {
		<-b.done
		flushed <- b.Flush()
	}()
	select {
	case err := <-flushed:
		return err
	case <-time.After(logCloseTimeout):
		return errLogStuck
	}
}
