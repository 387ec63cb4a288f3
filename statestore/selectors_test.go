package statestore

import (
	"context"

	clientv3 "go.etcd.io/etcd/client/v3"
	"net/netip"
	"testing"
	"time"
)

// An SA's exclusive selector claim is written with its record, follows
// its IKE rekey and goes with it; a change without one leaves it alone;
// WatchSelectors reports the claims there are, then every change.
func TestSelectorClaims(t *testing.T) {
	e := startEtcd(t, false)
	cli := dial(t, e.Endpoints())
	a := open(t, cli, testConfig(t, "a"))
	ctx := tctx(t, 30*time.Second)
	rng := func(s, e string) SelectorRange {
		return SelectorRange{Start: netip.MustParseAddr(s), End: netip.MustParseAddr(e)}
	}
	claim := func(rs ...SelectorRange) *SelectorClaim {
		return &SelectorClaim{Identity: "gwb@iot.example", Ranges: rs}
	}
	// One claim before the watch starts: listed.
	r0 := sampleRecord(0x500)
	if err := a.Persist(ctx, Change{Kind: Established, Record: r0, Selectors: claim(rng("10.9.0.0", "10.9.0.255"))}); err != nil {
		t.Fatal(err)
	}
	events := make(chan SelectorEvent, 32)
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	go a.WatchSelectors(wctx, func(ev SelectorEvent) { events <- ev })
	var synced int64 // the last Synced event's revision
	next := func(what string) SelectorEvent {
		t.Helper()
		for {
			select {
			case ev := <-events:
				if ev.Synced {
					if ev.At < synced {
						t.Fatalf("synced back to %d from %d", ev.At, synced)
					}
					synced = ev.At
					continue
				}
				return ev
			case <-time.After(10 * time.Second):
				t.Fatalf("no selector event: %s", what)
			}
		}
	}
	if ev := next("listed"); ev.SPI != 0x500 || ev.Claim == nil || ev.Claim.Ranges[0] != rng("10.9.0.0", "10.9.0.255") || !ev.Listed {
		t.Fatalf("listed: %+v", ev)
	}

	r := sampleRecord(0x600)
	var rev int64
	if err := a.Persist(ctx, Change{Kind: Established, Record: r, Selectors: claim(rng("10.2.0.0", "10.2.0.255")), Revision: &rev}); err != nil {
		t.Fatal(err)
	}
	if ev := next("established"); ev.SPI != 0x600 || ev.Claim == nil || ev.Claim.Identity != "gwb@iot.example" || len(ev.Claim.Ranges) != 1 ||
		rev == 0 || ev.At != rev || ev.Revision != rev || synced >= rev {
		t.Fatalf("established at %d (synced to %d): %+v", rev, synced, ev)
	}
	// A later write carries on when each range was first claimed.
	kept := rng("10.2.0.0", "10.2.0.255")
	kept.Since = rev
	if err := a.Persist(ctx, Change{Kind: ChildCreated, Record: r, Selectors: claim(kept, rng("10.3.0.0", "10.3.0.255"))}); err != nil {
		t.Fatal(err)
	}
	if ev := next("child created"); ev.SPI != 0x600 || ev.Claim == nil || len(ev.Claim.Ranges) != 2 || ev.At <= rev || ev.Revision != rev || synced < rev ||
		ev.Claim.Ranges[0].Since != rev || ev.Claim.Ranges[1].Since != 0 || ev.Listed {
		t.Fatalf("child created (established at %d, synced to %d): %+v", rev, synced, ev)
	}
	if err := a.Persist(ctx, Change{Kind: Updated, Record: r}); err != nil { // no claim: untouched
		t.Fatal(err)
	}
	r2 := *r
	r2.SPIr = 0x601
	if err := a.Persist(ctx, Change{Kind: IKERekeyed, Record: &r2, OldSPI: 0x600, Selectors: claim(rng("10.2.0.0", "10.2.0.255"), rng("10.3.0.0", "10.3.0.255"))}); err != nil {
		t.Fatal(err)
	}
	got := map[uint64]bool{}
	for range 2 {
		ev := next("IKE rekey")
		got[ev.SPI] = ev.Claim != nil
	}
	if len(got) != 2 || got[0x600] || !got[0x601] {
		t.Fatalf("IKE rekey: %v (want 600 gone, 601 claimed)", got)
	}
	if err := a.Persist(ctx, Change{Kind: Deleted, SPI: 0x601, Selectors: &SelectorClaim{Identity: "gwb@iot.example"}}); err != nil {
		t.Fatal(err)
	}
	if ev := next("deleted"); ev.SPI != 0x601 || ev.Claim != nil {
		t.Fatalf("deleted: %+v", ev)
	}
	for quiet := time.After(300 * time.Millisecond); ; {
		select {
		case ev := <-events:
			if !ev.Synced {
				t.Fatalf("unexpected event %+v", ev)
			}
			continue
		case <-quiet:
		}
		break
	}
	resp, err := cli.Get(ctx, a.k.sels(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 1 {
		t.Fatalf("claims left: %d (%v), want 1 (0x500's)", resp.Count, err)
	}
}
