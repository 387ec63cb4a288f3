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
