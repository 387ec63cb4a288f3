package evlog

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"testing"
)

// The line is the one slog.Logger.LogAttrs writes, but for the source
// position, which it leaves out even where the handler asks for it.
func TestAttrsWritesWhatLogAttrsWrites(t *testing.T) {
	for _, addSource := range []bool{false, true} {
		var a, b bytes.Buffer
		opts := &slog.HandlerOptions{AddSource: addSource, ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}}
		la := slog.New(slog.NewJSONHandler(&a, opts)).With("dataplane", "userspace")
		lb := slog.New(slog.NewJSONHandler(&b, opts)).With("dataplane", "userspace")
		attrs := []slog.Attr{slog.String("spi_in", "5549a6d3"), slog.Uint64("in_bytes", 7), slog.Bool("encap", true)}
		ctx := context.Background()
		Attrs(ctx, la, slog.LevelInfo, "userspace SA removed", attrs...)
		lb.LogAttrs(ctx, slog.LevelInfo, "userspace SA removed", attrs...)
		var got, want map[string]any
		if err := json.Unmarshal(a.Bytes(), &got); err != nil {
			t.Fatalf("AddSource %v: %v: %q", addSource, err, a.String())
		}
		if err := json.Unmarshal(b.Bytes(), &want); err != nil {
			t.Fatal(err)
		}
		if _, ok := got[slog.SourceKey]; ok {
			t.Errorf("AddSource %v: a source position in %q", addSource, a.String())
		}
		delete(want, slog.SourceKey)
		if !bytes.Equal(mustJSON(t, got), mustJSON(t, want)) {
			t.Errorf("AddSource %v: wrote %q, slog.Logger %q", addSource, a.String(), b.String())
		}
	}
}

func TestAttrsKeepsToTheLevel(t *testing.T) {
	var a bytes.Buffer
	l := slog.New(slog.NewJSONHandler(&a, &slog.HandlerOptions{Level: slog.LevelWarn}))
	Attrs(context.Background(), l, slog.LevelInfo, "IKE_SA established")
	if a.Len() != 0 {
		t.Fatalf("an Info line under level Warn: %q", a.String())
	}
	Attrs(context.Background(), l, slog.LevelWarn, "IKE_SA failed")
	if a.Len() == 0 {
		t.Fatal("no Warn line under level Warn")
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
