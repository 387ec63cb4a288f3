package statestore

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func lines(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		out = append(out, m)
	}
	return out
}

func TestSlogZap(t *testing.T) {
	var buf bytes.Buffer
	base := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})).With("component", "etcd")
	lg := SlogZap(base, zapcore.WarnLevel).Named("etcdserver").With(zap.String("member", "m1"))
	lg.Info("ready to serve client requests")
	lg.Debug("noise")
	lg.Warn("slow fdatasync", zap.Duration("took", 1500*time.Millisecond), zap.Int("n", 3), zap.Error(errors.New("disk")))
	lg.Error("db size near quota", zap.Strings("dirs", []string{"a", "b"}), zap.String("request", strings.Repeat("x", 5000)))
	got := lines(t, &buf)
	if len(got) != 2 {
		t.Fatalf("want the warning and the error only, got %v", got)
	}
	w := got[0]
	if w["level"] != "WARN" || w["msg"] != "slow fdatasync" || w["component"] != "etcd" || w["logger"] != "etcdserver" ||
		w["member"] != "m1" || w["took"] != "1.5s" || w["n"] != float64(3) || w["error"] != "disk" {
		t.Errorf("warning: %v", w)
	}
	if e := got[1]; e["level"] != "ERROR" || e["msg"] != "db size near quota" || len(e["dirs"].([]any)) != 2 ||
		e["request"] != strings.Repeat("x", 512)+"... (5000 bytes)" {
		t.Errorf("error: %v", e)
	}
	// The slog handler's own level also applies.
	buf.Reset()
	quiet := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelError}))
	SlogZap(quiet, zapcore.DebugLevel).Warn("dropped")
	if buf.Len() != 0 {
		t.Fatalf("a warning passed an error-level handler: %s", buf.String())
	}
}

// Embedded etcd logs through slog: at info it announces itself.
func TestEmbeddedLogsThroughSlog(t *testing.T) {
	var buf syncBuffer
	lg := SlogZap(slog.New(slog.NewJSONHandler(&buf, nil)), zapcore.InfoLevel)
	e, err := StartEmbedded(EmbedConfig{Dir: t.TempDir(), NoFsync: true, Logger: lg})
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
	if !strings.Contains(buf.String(), `"level":"INFO"`) || !strings.Contains(buf.String(), "serv") {
		t.Fatalf("no etcd info lines through slog:\n%.2000s", buf.String())
	}
}

// syncBuffer is a bytes.Buffer for writers on several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
