package main

import (
	"bytes"
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"
)

func TestParseSpec(t *testing.T) {
	for in, want := range map[string]string{"memory+none": "memory+none", "userspace+embedded": "userspace+embedded", "xfrm+embedded": "xfrm+embedded", "strongswan": "strongswan"} {
		s, err := parseSpec(in)
		if err != nil || s.String() != want {
			t.Errorf("parseSpec(%q) = %v, %v; want %s", in, s, err, want)
		}
	}
	for _, in := range []string{"memory", "kernel+none", "memory+external", "strongswan+none"} {
		if _, err := parseSpec(in); err == nil {
			t.Errorf("parseSpec(%q): no error", in)
		}
	}
}

// Without charon the strongSwan row is skipped, saying why, and the run
// goes on.
func TestStrongSwanRowSkippedWithoutCharon(t *testing.T) {
	o := options{charon: t.TempDir() + "/no-charon"}
	var skip errSkipped
	if err := o.charonReady(); !errors.As(err, &skip) || !strings.Contains(skip.why, "no-charon") {
		t.Fatalf("charonReady = %v, want a skip naming the missing binary", err)
	}
	var out bytes.Buffer
	err := run(context.Background(), []string{"--rows", "strongswan", "--burst", "0", "--pin=false",
		"--charon", o.charon, "--engine-cpu", "100us", "--concentratord", "/dev/null"}, &out)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "strongswan           skipped: no ") {
		t.Fatalf("no skipped row in:\n%s", out.String())
	}
}

// With --check a row that could not run fails the run, naming it; without
// it the run reports the skip and succeeds.
func TestCheckFailsOnASkippedRow(t *testing.T) {
	args := []string{"--rows", "strongswan", "--burst", "0", "--pin=false",
		"--charon", t.TempDir() + "/no-charon", "--engine-cpu", "100us", "--concentratord", "/dev/null"}
	if err := run(context.Background(), args, &bytes.Buffer{}); err != nil {
		t.Fatalf("without --check: %v", err)
	}
	err := run(context.Background(), append(args, "--check"), &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "strongswan: skipped") {
		t.Fatalf("with --check: %v, want an error naming the skipped row", err)
	}
}

// --rates prints the rows' table once per rate, each saying its rate; a
// bad list is refused before anything runs.
func TestRatesTables(t *testing.T) {
	var out bytes.Buffer
	err := run(context.Background(), []string{"--rows", "strongswan", "--rates", "1000, 400", "--burst", "0", "--pin=false",
		"--charon", t.TempDir() + "/no-charon", "--engine-cpu", "100us", "--concentratord", "/dev/null"}, &out)
	if err != nil {
		t.Fatal(err)
	}
	s := out.String()
	i, j := strings.Index(s, "rows: 2000 gateways at 1000/s"), strings.Index(s, "rows: 2000 gateways at 400/s")
	if i < 0 || j < i || strings.Count(s, "strongswan           skipped: no ") != 2 {
		t.Fatalf("want a table at 1000/s, then one at 400/s, each with its row:\n%s", s)
	}
	for _, bad := range []string{"1000,", "0", "-5", "fast", "1000,+Inf", "NaN"} {
		err := run(context.Background(), []string{"--rows", "strongswan", "--rates", bad, "--concentratord", "/dev/null"}, &out)
		if err == nil || !strings.Contains(err.Error(), "--rates") {
			t.Errorf("--rates %q: %v, want an error naming --rates", bad, err)
		}
	}
	err = run(context.Background(), []string{"--rates", "1000,400", "--against", "/dev/null", "--concentratord", "/dev/null"}, &out)
	if err == nil || !strings.Contains(err.Error(), "--against") {
		t.Errorf("--rates with --against: %v, want a refusal", err)
	}
}

func TestRateTagInProfileNames(t *testing.T) {
	o := options{cpuprofile: "/tmp/p"}
	if got := o.profileFor("userspace+embedded"); got != "/tmp/p.userspace-embedded" {
		t.Errorf("one rate: %q", got)
	}
	o.rateTag = ".400"
	if got := o.profileFor("userspace+embedded"); got != "/tmp/p.userspace-embedded.400" {
		t.Errorf("several rates: %q", got)
	}
}

func TestSampleOf(t *testing.T) {
	const (
		drops = `ikefleet_queue_drops_total{listen="127.0.0.1",queue="other",shard="0",socket="ike"} 7`
		bare  = `ikefleet_statestore_txns_total 12`
	)
	for _, c := range []struct {
		line, name string
		want       float64
		ok         bool
	}{
		{drops, "ikefleet_queue_drops_total", 7, true},
		{drops, `ikefleet_queue_drops_total{queue="other"}`, 7, true},
		{drops, `ikefleet_queue_drops_total{socket="ike",queue="other"}`, 7, true},
		{drops, `ikefleet_queue_drops_total{queue="new"}`, 0, false},
		{drops, `ikefleet_queue_drops_total{queue="other",socket="natt"}`, 0, false},
		{drops, "ikefleet_queue_drops", 0, false}, // a prefix of the family's name
		{bare, "ikefleet_statestore_txns_total", 12, true},
		{bare, `ikefleet_statestore_txns_total{queue="other"}`, 0, false},
		{"# TYPE ikefleet_statestore_txns_total counter", "ikefleet_statestore_txns_total", 0, false},
	} {
		v, ok := sampleOf(c.line, c.name)
		if v != c.want || ok != c.ok {
			t.Errorf("sampleOf(%q, %q) = %v, %v; want %v, %v", c.line, c.name, v, ok, c.want, c.ok)
		}
	}
}

func TestBucketOf(t *testing.T) {
	const f = "ikefleet_statestore_commit_wait_seconds"
	for _, c := range []struct {
		line  string
		le, v float64
		ok    bool
	}{
		{f + `_bucket{change="established",le="0.005"} 17`, 0.005, 17, true},
		{f + `_bucket{change="established",le="+Inf"} 20`, math.Inf(1), 20, true},
		{f + `_bucket{change="deleted",le="0.005"} 17`, 0, 0, false},
		{f + `_count{change="established"} 20`, 0, 0, false},
		{f + `_sum{change="established"} 0.1`, 0, 0, false},
		{"ikefleet_etcd_request_duration_seconds_bucket{method=\"Txn\",le=\"0.005\"} 3", 0, 0, false},
	} {
		le, v, ok := bucketOf(c.line, f, `change="established"`)
		if le != c.le || v != c.v || ok != c.ok {
			t.Errorf("bucketOf(%q) = %v, %v, %v; want %v, %v, %v", c.line, le, v, ok, c.le, c.v, c.ok)
		}
	}
}

// histQuantile reads quantiles of what was observed between two
// readings, interpolating within a bucket as histogram_quantile does.
func TestHistQuantile(t *testing.T) {
	inf := math.Inf(1)
	before := map[float64]float64{0.001: 5, 0.002: 5, 0.004: 5, inf: 5}
	// 100 more: 10 at most 1 ms, 50 in (1, 2] ms, 38 in (2, 4] ms, 2 above.
	after := map[float64]float64{0.001: 15, 0.002: 65, 0.004: 103, inf: 105}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{
		{0.05, 500 * time.Microsecond}, // 5 of the 10 in [0, 1] ms
		{0.50, 1800 * time.Microsecond},
		{0.60, 2 * time.Millisecond},
		{0.99, 4 * time.Millisecond}, // in the unbounded bucket: its lower bound
	} {
		got, ok := histQuantile(before, after, c.q)
		if !ok || (got-c.want).Abs() > time.Microsecond {
			t.Errorf("q %.2f: %v %v, want %v", c.q, got, ok, c.want)
		}
	}
	if _, ok := histQuantile(after, after, 0.5); ok {
		t.Error("a quantile of nothing observed")
	}
	if _, ok := histQuantile(nil, nil, 0.5); ok {
		t.Error("a quantile of no buckets")
	}
}

// The A/B summary is the median of the rounds' ratios, not the ratio of
// the medians: a round where the machine ran slow for both builds counts
// as much as any other.
func TestABSummary(t *testing.T) {
	ms := func(f float64) time.Duration { return time.Duration(f * float64(time.Millisecond)) }
	rounds := []abRound{
		{base: rowResult{CPUPerSA: ms(1.0), P99: ms(10), RSSPerSA: 1000, AllocPerSA: 100e3}, this: rowResult{CPUPerSA: ms(0.9), P99: ms(12), RSSPerSA: 900, AllocPerSA: 80e3}},
		{base: rowResult{CPUPerSA: ms(2.0), P99: ms(20), RSSPerSA: 1000, AllocPerSA: 100e3}, this: rowResult{CPUPerSA: ms(1.9), P99: ms(20), RSSPerSA: 1000, AllocPerSA: 90e3}},
		{base: rowResult{CPUPerSA: ms(0.5), P99: ms(10), RSSPerSA: 1000, AllocPerSA: 100e3}, this: rowResult{CPUPerSA: ms(0.55), P99: ms(8), RSSPerSA: 800, AllocPerSA: 95e3}},
	}
	s := summarize(rounds)
	near := func(a, b float64) bool { return math.Abs(a-b) < 1e-9 }
	if s.rounds != 3 || s.thisFasterIn != 2 || !near(s.cpu, 0.95) || !near(s.cpuLo, 0.9) || !near(s.cpuHi, 1.1) ||
		!near(s.p99, 1.0) || !near(s.rss, 0.9) || !near(s.alloc, 0.9) || s.baseCPU != ms(1.0) || s.thisCPU != ms(0.9) {
		t.Fatalf("summary %+v", s)
	}
	if even := median([]float64{4, 1, 3, 2}); even != 2.5 {
		t.Fatalf("median of an even count %v, want 2.5", even)
	}
	if s := summarize(nil); s.rounds != 0 || s.cpu != 0 {
		t.Fatalf("summary of no rounds %+v", s)
	}
}

func TestABNeedsABaseline(t *testing.T) {
	err := run(context.Background(), []string{"--rows", "memory+none", "--pin=false", "--concentratord", "/dev/null", "--against", t.TempDir() + "/none"}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "--against") {
		t.Fatalf("run with a missing baseline: %v", err)
	}
	err = run(context.Background(), []string{"--rounds", "0", "--concentratord", "/dev/null"}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "--rounds") {
		t.Fatalf("run with no rounds: %v", err)
	}
}

// With --against, the baseline's CPU profiles go to files of their own,
// and the names of this build's stay as without it.
func TestABProfilesApart(t *testing.T) {
	o := &options{cpuprofile: "/tmp/p"}
	o.cpuprofile = abProfile("/tmp/p", false)
	base := o.profileFor("memory+embedded")
	o.cpuprofile = abProfile("/tmp/p", true)
	this := o.profileFor("memory+embedded")
	if base != "/tmp/p.base.memory-embedded" || this != "/tmp/p.memory-embedded" {
		t.Fatalf("profiles: baseline %q, this build %q", base, this)
	}
	if abProfile("", false) != "" {
		t.Fatal("a profile without --cpuprofile")
	}
}
