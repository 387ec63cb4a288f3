package ratelog

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// suppressedIn sums the suppressed=K counts of the lines in out.
func suppressedIn(out string) int {
	n := 0
	for ln := range strings.Lines(out) {
		if i := strings.Index(ln, "suppressed="); i >= 0 {
			k := 0
			for _, c := range ln[i+len("suppressed="):] {
				if c < '0' || c > '9' {
					break
				}
				k = k*10 + int(c-'0')
			}
			n += k
		}
	}
	return n
}

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
	for _, ln := range lines {
		switch {
		case strings.Contains(ln, "(suppressed)"):
			summary++
		case strings.Contains(ln, "cookie demanded"):
			cookie++
		case strings.Contains(ln, "established"):
			est++
		}
	}
	reported := suppressedIn(buf.String())
	// 5 a second shared by both kinds over 11 s, plus the burst of 5 and
	// at most 5 borrowed.
	if total := cookie + est + summary; total > 5*11+2*5 || cookie < 5*10-10 {
		t.Fatalf("%d lines (%d cookie) for 11 s at 5/s", total, cookie)
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

// A flood of seven kinds at once costs the log the shared rate, not seven
// times it, and no kind is starved: each gets lines, and every event is
// either written or counted.
func TestSharedBudgetAcrossKinds(t *testing.T) {
	var buf bytes.Buffer
	l := New(slog.New(slog.NewTextHandler(&buf, nil)), 1, 1)
	now := time.Unix(1000, 0)
	l.SetClock(func() time.Time { return now })
	ctx := context.Background()
	kinds := []string{"cookie", "init-failed/INVALID_SYNTAX", "init-failed/NO_PROPOSAL_CHOSEN",
		"init-failed/INVALID_KE_PAYLOAD", "half-open-failed", "redirect", "nat_mapping"}
	const seconds, perSecond = 30, 7000
	for s := 0; s < seconds; s++ {
		for i := range perSecond {
			now = now.Add(time.Second / perSecond)
			k := kinds[i%len(kinds)]
			l.Log(ctx, slog.LevelWarn, k, k)
		}
		l.Flush(ctx)
	}
	during := buf.String()
	if n := strings.Count(during, "\n"); n > seconds+2 {
		t.Fatalf("%d lines in %d s of a seven-kind flood at 1 line/s:\n%s", n, seconds, during)
	}
	per := map[string]int{}
	for _, k := range kinds {
		per[k] = strings.Count(during, "msg="+k+" ")
	}
	t.Logf("lines in %d s: %v", seconds, per)
	for _, k := range kinds {
		if per[k] < 2 { // a fair share is about 4
			t.Fatalf("kind %s written %d times in %d s:\n%s", k, per[k], seconds, during)
		}
	}
	now = now.Add(Quiet)
	l.FlushAll(ctx)
	out := buf.String()
	written := strings.Count(out, "\n") - strings.Count(out, "(suppressed)")
	if got := written + suppressedIn(out); got != seconds*perSecond {
		t.Fatalf("written %d + suppressed %d != %d events", written, suppressedIn(out), seconds*perSecond)
	}
}

// A rare kind's line is written when it happens, not only in a summary,
// while another kind floods.
func TestRareKindNotStarved(t *testing.T) {
	var buf bytes.Buffer
	l := New(slog.New(slog.NewTextHandler(&buf, nil)), 1, 1)
	now := time.Unix(1000, 0)
	l.SetClock(func() time.Time { return now })
	ctx := context.Background()
	for i := range 50000 {
		now = now.Add(100 * time.Microsecond)
		l.Log(ctx, slog.LevelInfo, "cookie", "cookie demanded")
		if i == 33333 {
			l.Log(ctx, slog.LevelWarn, "eap", "RADIUS did not answer", "peer", "gw7")
		}
	}
	if !strings.Contains(buf.String(), `msg="RADIUS did not answer" peer=gw7`) {
		t.Fatalf("the rare line was not written:\n%s", buf.String())
	}
}
