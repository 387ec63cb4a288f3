package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// Concurrent loggers through the buffer: every line arrives whole and
// none is lost once the log is closed.
func TestBufferedLogKeepsLinesWhole(t *testing.T) {
	var out bytes.Buffer
	var outMu sync.Mutex
	b := newBufferedLog(writerFunc(func(p []byte) (int, error) {
		outMu.Lock()
		defer outMu.Unlock()
		return out.Write(p)
	}), "json")
	b.mu.Lock()
	b.max = 1 << 30 // this test is about whole lines, not the bound
	b.mu.Unlock()
	log := slog.New(slog.NewJSONHandler(b, nil))
	var wg sync.WaitGroup
	const workers, lines = 8, 2000
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < lines; i++ {
				log.Info("IKE_SA established", "worker", w, "n", i, "pad", strings.Repeat("x", i%300))
			}
		}()
	}
	wg.Wait()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	got := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(got) != workers*lines {
		t.Fatalf("%d lines, want %d", len(got), workers*lines)
	}
	seen := map[string]bool{}
	for _, l := range got {
		if !strings.HasPrefix(l, "{") || !strings.HasSuffix(l, "}") || strings.Count(l, `"msg"`) != 1 {
			t.Fatalf("torn line: %.120s", l)
		}
		seen[l[strings.Index(l, `"worker"`):]] = true
	}
	if len(seen) != workers*lines {
		t.Fatalf("%d distinct lines, want %d", len(seen), workers*lines)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// A reader of the log that stops reading (a stuck journald, a full pipe)
// never stops the goroutines that log: their lines gather up to the
// bound, the rest are dropped, and once the reader is back the log says
// how many, in the log's own format, before the lines that were kept.
func TestBufferedLogNeverWaitsForItsReader(t *testing.T) {
	for _, format := range []string{"json", "text"} {
		t.Run(format, func(t *testing.T) {
			release := make(chan struct{})
			var out bytes.Buffer
			var outMu sync.Mutex
			b := newBufferedLog(writerFunc(func(p []byte) (int, error) {
				<-release // stuck until the test lets it go
				outMu.Lock()
				defer outMu.Unlock()
				return out.Write(p)
			}), format)
			b.mu.Lock()
			b.max = 64 << 10
			b.mu.Unlock()
			var h slog.Handler = slog.NewJSONHandler(b, nil)
			if format == "text" {
				h = slog.NewTextHandler(b, nil)
			}
			log := slog.New(h)
			// 2,000 lines of about 150 bytes: 300 KB against a bound of
			// 64 KiB. If Write waited for the reader this loop would
			// never end (the test's own deadline fails it).
			const lines = 2000
			for i := 0; i < lines; i++ {
				log.Info("IKE_SA established", "n", i, "pad", strings.Repeat("x", 80))
			}
			close(release)
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			got := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
			var dropped, kept int
			for _, l := range got {
				switch {
				case strings.Contains(l, "log lines dropped"):
					var n int
					key := `"dropped":`
					if format == "text" {
						key = "dropped="
					}
					if _, err := fmt.Sscanf(l[strings.Index(l, key)+len(key):], "%d", &n); err != nil {
						t.Fatalf("notice without a count: %s", l)
					}
					dropped += n
				case strings.Contains(l, "IKE_SA established") && strings.HasSuffix(l, strings.Repeat("x", 80)+map[string]string{"json": `"}`, "text": ""}[format]):
					kept++
				default:
					t.Fatalf("torn or unexpected line: %.160s", l)
				}
			}
			t.Logf("%s: %d lines kept, %d reported dropped", format, kept, dropped)
			if dropped == 0 || kept == 0 || kept+dropped != lines {
				t.Fatalf("%d kept + %d reported dropped, want %d in all, some of each", kept, dropped, lines)
			}
			if got := b.Dropped(); got != uint64(dropped) {
				t.Fatalf("Dropped (the metric's source) = %d, the log reported %d", got, dropped)
			}
		})
	}
}

// A reader that never takes anything does not keep the node from exiting:
// Close gives up after logCloseTimeout and says so.
func TestBufferedLogCloseGivesUpOnAStuckReader(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	b := newBufferedLog(writerFunc(func(p []byte) (int, error) {
		<-release
		return len(p), nil
	}), "json")
	log := slog.New(slog.NewJSONHandler(b, nil))
	log.Info("one line")
	b.kick <- struct{}{} // the flusher takes it and gets stuck writing it
	log.Info("another line, behind the stuck write")
	if err := b.Close(); !errors.Is(err, errLogStuck) {
		t.Fatalf("Close with a stuck reader: %v, want %v", err, errLogStuck)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// A flusher that runs late finds more than logFlushAt waiting; the buffer
// it swaps out must still be reused, or every byte logged is allocated
// anew.
func TestBufferedLogReusesLateFlushesBuffers(t *testing.T) {
	b := &bufferedLog{w: io.Discard, max: logMaxPending, kick: make(chan struct{}, 1)} // no flusher: flushed below
	line := append(bytes.Repeat([]byte("x"), 499), '\n')
	late := func() { // three flushes' worth of lines, then the flush
		for range 3 * logFlushAt / len(line) {
			b.Write(line)
		}
		b.Flush()
	}
	late()
	late() // both buffers grown
	if n := testing.AllocsPerRun(20, late); n != 0 {
		t.Fatalf("a late flush allocated %.0f times; want its buffers reused", n)
	}
}
