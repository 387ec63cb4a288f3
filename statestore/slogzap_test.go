package statestore

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/ikefleet/ikefleet/internal/syncbuf"
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
	var buf syncbuf.Buffer
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

// A member's start and clean stop log no warning or error at the node's
// default etcd level: not the unsigned-token warning at start, not the
// "setting up serving ... failed" errors of its listeners closing. Both
// kinds of member: TCP ports and the stand-alone node's socket.
func TestEmbeddedStartAndStopQuiet(t *testing.T) {
	for _, socket := range []bool{false, true} {
		var buf syncbuf.Buffer
		lg := SlogZap(slog.New(slog.NewJSONHandler(&buf, nil)), zapcore.WarnLevel)
		var e *Embedded
		var err error
		if socket {
			e, err = OpenEmbedded(filepath.Join(t.TempDir(), "d"), EmbedConfig{NoFsync: true, Logger: lg})
		} else {
			dir := filepath.Join(t.TempDir(), "d")
			if err := os.Mkdir(dir, 0o700); err != nil { // etcd warns of a wider one
				t.Fatal(err)
			}
			e, err = StartEmbedded(EmbedConfig{Dir: dir, NoFsync: true, Logger: lg})
		}
		if err != nil {
			t.Fatal(err)
		}
		cli := dial(t, e.Endpoints())
		if _, err := cli.Put(tctx(t, 5e9), "k", "v"); err != nil {
			t.Fatal(err)
		}
		cli.Close()
		e.Stop()
		if buf.String() != "" {
			t.Fatalf("socket %v: start and stop logged:\n%.3000s", socket, buf.String())
		}
		if err := e.Start(); err != nil {
			t.Fatal(err)
		}
		if e.stopping.Load() {
			t.Fatal("started again, its warnings still held back")
		}
		e.Close()
	}
}

// While a member stops, its warnings and errors become debug entries;
// before, they pass as they are, and so do its info entries.
func TestStoppingCore(t *testing.T) {
	var buf syncbuf.Buffer
	var stopping atomic.Bool
	lg := zap.New(&stoppingCore{SlogZap(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), zapcore.DebugLevel).Core(), &stopping})
	lg = lg.With(zap.String("member", "m"))
	lg.Warn("before")
	lg.Warn("Running http and grpc server on single port. This is not recommended for production.")
	stopping.Store(true)
	lg.Error("during", zap.Error(errors.New("use of closed network connection")))
	lg.Info("info")
	for _, want := range []string{`"level":"WARN","msg":"before","member":"m"`, `"level":"DEBUG","msg":"during","member":"m"`, `"level":"INFO","msg":"info"`, `"level":"DEBUG","msg":"Running http`} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("no %s in:\n%s", want, buf.String())
		}
	}
}
