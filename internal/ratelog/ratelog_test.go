package ratelog

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestRateAndSummary(t *testing.T) {
	var buf bytes.Buffer
	l := New(slog.New(slog.NewTextHandler(&buf, nil)), 5, 5)
	now := time.Unix(1000, 0)
	l.SetClock(func() time.Time { return now })
	ctx := context.Background()
	// 10 seconds of a 10,000 packets/s flood of one kind, and another kind
	// at one line a second alongside.
	for s := 0; s < 10; s++ {
		for i := 0; i < 10000; i++ {
			now = now.Add(100 * time.Microsecond)
			l.Log(ctx, slog.LevelWarn, "cookie", "cookie demanded", "i", i)
		}
		l.Log(ctx, slog.LevelInfo, "established", "IKE SA established")
		l.Flush(ctx) // once a second: nothing while the flood goes on
	}
	if strings.Contains(buf.String(), "(suppressed)") {
		t.Fatalf("a summary line while the flood goes on:\n%s", buf.String())
	}
	now = now.Add(Quiet)
	l.Flush(ctx) // the flood is over: its last suppressed lines reported
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	cookie, est, summary := 0, 0, 0
	var reported int
	for _, ln := range lines {
		switch {
		case strings.Contains(ln, "(suppressed)"):
			summary++
		case strings.Contains(ln, "cookie demanded"):
			cookie++
		case strings.Contains(ln, "established"):
			est++
		}
		if i := strings.Index(ln, "suppressed="); i >= 0 {
			var k int
			for _, c := range ln[i+len("suppressed="):] {
				if c < '0' || c > '9' {
					break
				}
				k = k*10 + int(c-'0')
			}
			reported += k
		}
	}
	// 5 a second plus the burst of 5.
	if cookie > 5*10+5 || cookie < 5*10 {
		t.Fatalf("%d cookie lines for 10 s at 5/s", cookie)
	}
	if est != 10 {
		t.Fatalf("the quiet kind lost lines: %d of 10", est)
	}
	if reported+cookie != 100000 || summary != 1 {
		t.Fatalf("suppressed reported %d + written %d != 100000 (summaries %d)", reported, cookie, summary)
	}
	if l.Suppressed() != 0 {
		t.Fatal("Flush left suppressed lines")
	}
}

func TestDisabledLevelCostsNoTokens(t *testing.T) {
	var buf bytes.Buffer
	l := New(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})), 1, 1)
	now := time.Unix(0, 0)
	l.SetClock(func() time.Time { return now })
	for i := 0; i < 100; i++ {
		l.Log(context.Background(), slog.LevelDebug, "drop", "message dropped")
	}
	l.Log(context.Background(), slog.LevelInfo, "drop", "message dropped")
	if n := strings.Count(buf.String(), "\n"); n != 1 || strings.Contains(buf.String(), "suppressed") {
		t.Fatalf("output %q", buf.String())
	}
}

func TestUnlimited(t *testing.T) {
	var buf bytes.Buffer
	l := New(slog.New(slog.NewTextHandler(&buf, nil)), 0, 0)
	for i := 0; i < 50; i++ {
		l.Log(context.Background(), slog.LevelInfo, "x", "line")
	}
	if n := strings.Count(buf.String(), "\n"); n != 50 {
		t.Fatalf("%d lines", n)
	}
}

// LogLazy makes the attributes only for the lines it writes, and they carry
// the suppressed count like Log's.
func TestLazyArgsOnlyForWrittenLines(t *testing.T) {
	var buf bytes.Buffer
	l := New(slog.New(slog.NewTextHandler(&buf, nil)), 1, 2)
	now := time.Unix(0, 0)
	l.SetClock(func() time.Time { return now })
	made := 0
	args := func() []slog.Attr { made++; return []slog.Attr{slog.String("peer", "192.0.2.1")} }
	for i := 0; i < 1000; i++ {
		l.LogLazy(context.Background(), slog.LevelInfo, "cookie", "cookie demanded", args)
	}
	now = now.Add(time.Second)
	l.LogLazy(context.Background(), slog.LevelInfo, "cookie", "cookie demanded", args)
	out := buf.String()
	if made != 3 || strings.Count(out, "\n") != 3 || !strings.Contains(out, "peer=192.0.2.1 suppressed=998") {
		t.Fatalf("arguments made %d times (want 3), output %q", made, out)
	}
}
