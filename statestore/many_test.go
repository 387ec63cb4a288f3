package statestore

import (
	"errors"
	"testing"
	"time"
)

// SAs of a dead node taken over in batches, handed to another node in
// batches, and read back: one transaction per batch, and the index of
// owned SAs follows; a second takeover of the same SAs names the new
// owner; a live owner's SAs are refused.
func TestManyMoves(t *testing.T) {
	e := startEtcd(t, false)
	cli := dial(t, e.Endpoints())
	cfg := testConfig(t, "b")
	cfg.Batch.MaxBatch = 50
	b := open(t, cli, cfg)
	ccfg := testConfig(t, "c")
	c := open(t, dial(t, e.Endpoints()), ccfg)
	const n = 130
	base := uint64(1 << 41)
	putDeadOwned(t, cli, cfg, base, n)
	ctx := tctx(t, 30*time.Second)
	spis := make([]uint64, n)
	for i := range spis {
		spis[i] = base + uint64(i)
	}
	os, err := b.Owners(ctx, append(spis, 1))
	if err != nil {
		t.Fatal(err)
	}
	for i, o := range os[:n] {
		if !o.Found || o.Live || o.Owner.Node != "dead" {
			t.Fatalf("owner of %x: %+v", spis[i], o)
		}
	}
	if os[n].Found {
		t.Fatalf("owner of an unknown SA: %+v", os[n])
	}
	dead := Owner{Node: "dead", Epoch: 1}
	txns0 := b.Health().Txns
	moved, err := b.TakeOverMany(ctx, dead, spis)
	if err != nil {
		t.Fatal(err)
	}
	if got := b.Health().Txns - txns0; got != 3 {
		t.Fatalf("%d transactions for %d SAs in batches of 50", got, n)
	}
	for i, m := range moved {
		if m.Err != nil || m.SPI != spis[i] || m.Record == nil || m.Record.LocalSPI() != spis[i] {
			t.Fatalf("takeover %d: %+v", i, m)
		}
	}
	me, _ := b.Registration()
	// Again: the SAs are b's now.
	again, err := c.TakeOverMany(ctx, dead, spis[:3])
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range again {
		var oe *OwnerError
		if !errors.As(m.Err, &oe) || oe.Owner != me {
			t.Fatalf("second takeover: %+v", m)
		}
	}
	// b is live: c cannot take its SAs over.
	if live, err := c.TakeOverMany(ctx, me, spis[:2]); err != nil || len(live) != 2 || live[0].Err == nil {
		t.Fatalf("takeover from a live owner: %+v %v", live, err)
	}
	// Hand 100 of them to c.
	to, _ := c.Registration()
	finals := make([]*SARecord, 100)
	for i := range finals {
		finals[i] = moved[i].Record
		finals[i].NextIn = 42
	}
	txns0 = b.Health().Txns
	hand, err := b.HandOffMany(ctx, finals, to)
	if err != nil {
		t.Fatal(err)
	}
	if got := b.Health().Txns - txns0; got != 2 {
		t.Fatalf("%d transactions for 100 hand-offs in batches of 50", got)
	}
	for i, m := range hand {
		if m.Err != nil || m.SPI != spis[i] {
			t.Fatalf("hand-off %d: %+v", i, m)
		}
	}
	recs, owners, err := c.LoadMany(ctx, spis)
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range recs {
		want := me
		if i < 100 {
			want = to
		}
		if m.Err != nil || owners[i] != want || (i < 100 && m.Record.NextIn != 42) {
			t.Fatalf("load %d: %+v owner %v", i, m, owners[i])
		}
	}
	// b no longer owns the 100: a second hand-off of them is refused per SA.
	hand, err = b.HandOffMany(ctx, finals[:2], to)
	if err != nil || len(hand) != 2 {
		t.Fatal(hand, err)
	}
	for _, m := range hand {
		var oe *OwnerError
		if !errors.As(m.Err, &oe) || oe.Owner != to {
			t.Fatalf("hand-off of an SA owned elsewhere: %+v", m)
		}
	}
	counts, err := b.OwnedCounts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]int64{"b": 30, "c": 100, "dead": 0} {
		if counts[id] != want {
			t.Fatalf("%s owns %d SAs, want %d (%v)", id, counts[id], want, counts)
		}
	}
}

// A registration that ends is reported by WatchNodes.
func TestWatchNodes(t *testing.T) {
	e := startEtcd(t, false)
	cli := dial(t, e.Endpoints())
	b := open(t, cli, testConfig(t, "b"))
	c := open(t, dial(t, e.Endpoints()), testConfig(t, "c"))
	ctx := tctx(t, 30*time.Second)
	evs := make(chan NodeEvent, 16)
	go b.WatchNodes(ctx, func(ev NodeEvent) { evs <- ev })
	oc, _ := c.Registration()
	seen := false
	for !seen {
		select {
		case ev := <-evs:
			seen = !ev.Gone && ev.Owner == oc
		case <-ctx.Done():
			t.Fatal("c's registration not reported")
		}
	}
	c.Close() // revokes its lease
	for {
		select {
		case ev := <-evs:
			if ev.Gone && ev.Owner == oc {
				return
			}
		case <-ctx.Done():
			t.Fatal("c's end not reported")
		}
	}
}
