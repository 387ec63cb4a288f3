package main

import (
	"bytes"
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
	}))
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

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
