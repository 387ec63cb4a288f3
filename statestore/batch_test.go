package statestore

import (
	"sync"
	"testing"
	"time"
)

// Group commit: a burst leaves in full batches, up to Inflight
// transactions at once, and the changes of each SA stay in order across
// them.
func TestGroupCommit(t *testing.T) {
	e := startEtcd(t, false)
	cli := dial(t, e.Endpoints())
	cfg := testConfig(t, "a")
	cfg.Batch.MaxBatch, cfg.Batch.Inflight = 8, 3
	cfg.Batch.MaxDelay = 200 * time.Millisecond // only full batches leave early
	s := open(t, cli, cfg)
	ctx := tctx(t, 30*time.Second)
	const sas, updates = 40, 5
	var wg sync.WaitGroup
	errs := make(chan error, sas*(updates+1))
	done := func(err error) {
		if err != nil {
			errs <- err
		}
		wg.Done()
	}
	submit := func(c Change) {
		wg.Add(1)
		if err := s.Submit(c, done); err != nil {
			t.Fatal(err)
		}
	}
	h0 := s.Health()
	for u := 0; u <= updates; u++ {
		for i := range sas {
			r := sampleRecord(uint64(1000 + i))
			r.NextIn = uint32(2 + u)
			if u == 0 {
				submit(Change{Kind: Established, Record: r})
			} else {
				submit(Change{Kind: Updated, Record: r})
			}
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for i := range sas {
		r, _, err := s.Load(ctx, uint64(1000+i))
		if err != nil || r.NextIn != 2+updates {
			t.Fatalf("SA %d after its %d updates: %+v, %v", 1000+i, updates, r, err)
		}
	}
	h := s.Health()
	txns, changes := int(h.Batches-h0.Batches), sas*(updates+1)
	if int(h.Changes-h0.Changes) != changes {
		t.Fatalf("%d changes committed, want %d", h.Changes-h0.Changes, changes)
	}
	peak := s.b.peak.Load()
	t.Logf("group commit: %d changes in %d transactions, at most %d under way at once", changes, txns, peak)
	if txns > 2*changes/cfg.Batch.MaxBatch || peak < 2 || peak > int64(cfg.Batch.Inflight) {
		t.Fatalf("%d changes in %d transactions (batches of %d), at most %d under way (inflight %d)",
			changes, txns, cfg.Batch.MaxBatch, peak, cfg.Batch.Inflight)
	}
}

// The linger follows the changes' rate: none for a change that comes
// alone, MaxDelay once they come at one or more per MaxDelay.
func TestGroupLingerFollowsRate(t *testing.T) {
	const d = 2 * time.Millisecond
	t0 := time.Unix(1_000_000, 0)
	steady := func(g *group, from time.Time, rate float64, n int) time.Time {
		gap := time.Duration(float64(time.Second) / rate)
		at := from
		for range n {
			g.arrived(at, d)
			at = at.Add(gap)
		}
		return at.Add(-gap)
	}
	var g group
	if l := g.linger(t0, d); l != 0 {
		t.Fatalf("nothing arrived yet: linger %v", l)
	}
	g.arrived(t0, d)
	if l := g.linger(t0, d); l != 0 {
		t.Fatalf("one change alone: linger %v, want 0", l)
	}
	for range lingerRuns - 1 {
		g.arrived(t0, d)
	}
	if l := g.linger(t0, d); l != d {
		t.Fatalf("%d changes at once: linger %v, want %v", lingerRuns, l, d)
	}
	if l := g.linger(t0.Add(20*lingerTau(d)), d); l != 0 {
		t.Fatalf("long after the burst: linger %v, want 0", l)
	}
	for _, c := range []struct {
		rate float64
		want time.Duration
	}{{100, 0}, {300, 0}, {450, 0}, {550, d}, {1000, d}, {5000, d}} {
		var g group
		last := steady(&g, t0, c.rate, 2000)
		if l := g.linger(last, d); l != c.want {
			t.Errorf("%v changes/s: linger %v, want %v", c.rate, l, c.want)
		}
	}
	var z group
	for range 100 {
		z.arrived(t0, 0)
	}
	if l := z.linger(t0, 0); l != 0 {
		t.Fatalf("MaxDelay 0: linger %v", l)
	}
}

// Over a real etcd: a change that comes alone is committed without
// waiting MaxDelay; once changes come fast, the next one waits for
// company.
func TestCommitLingersOnlyAtRate(t *testing.T) {
	e := startEtcd(t, false)
	cli := dial(t, e.Endpoints())
	cfg := testConfig(t, "a")
	const maxDelay = 3 * time.Second
	cfg.Batch.MaxDelay = maxDelay
	s := open(t, cli, cfg)
	commit := func(spi uint64) <-chan time.Duration {
		took := make(chan time.Duration, 1)
		start := time.Now()
		if err := s.Submit(Change{Kind: Established, Record: sampleRecord(spi)}, func(err error) {
			if err != nil {
				t.Errorf("SA %x: %v", spi, err)
			}
			took <- time.Since(start)
		}); err != nil {
			t.Fatal(err)
		}
		return took
	}
	// Alone: the build before waited maxDelay.
	select {
	case d := <-commit(1):
		t.Logf("a change alone committed in %v (MaxDelay %v)", d, maxDelay)
	case <-time.After(maxDelay - 500*time.Millisecond):
		t.Fatalf("a change alone waited for company (MaxDelay %v)", maxDelay)
	}
	// A burst: its rate turns the linger on.
	var burst []<-chan time.Duration
	for i := range 2 * lingerRuns {
		burst = append(burst, commit(uint64(100+i)))
	}
	for _, c := range burst {
		<-c
	}
	if d := <-commit(2); d < maxDelay {
		t.Fatalf("a change right after a burst committed in %v: want it to wait MaxDelay (%v) for company", d, maxDelay)
	} else {
		t.Logf("a change right after a burst of %d committed in %v (MaxDelay %v)", 2*lingerRuns, d, maxDelay)
	}
}
