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
	next := func(what string) SelectorEvent {
		t.Helper()
		select {
		case ev := <-events:
			return ev
		case <-time.After(10 * time.Second):
			t.Fatalf("no selector event: %s", what)
		}
		return SelectorEvent{}
	}
	if ev := next("listed"); ev.SPI != 0x500 || ev.Claim == nil || ev.Claim.Ranges[0] != rng("10.9.0.0", "10.9.0.255") {
		t.Fatalf("listed: %+v", ev)
	}

	r := sampleRecord(0x600)
	if err := a.Persist(ctx, Change{Kind: Established, Record: r, Selectors: claim(rng("10.2.0.0", "10.2.0.255"))}); err != nil {
		t.Fatal(err)
	}
	if ev := next("established"); ev.SPI != 0x600 || ev.Claim == nil || ev.Claim.Identity != "gwb@iot.example" || len(ev.Claim.Ranges) != 1 {
		t.Fatalf("established: %+v", ev)
	}
	if err := a.Persist(ctx, Change{Kind: ChildCreated, Record: r, Selectors: claim(rng("10.2.0.0", "10.2.0.255"), rng("10.3.0.0", "10.3.0.255"))}); err != nil {
		t.Fatal(err)
	}
	if ev := next("child created"); ev.SPI != 0x600 || ev.Claim == nil || len(ev.Claim.Ranges) != 2 {
		t.Fatalf("child created: %+v", ev)
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
	select {
	case ev := <-events:
		t.Fatalf("unexpected event %+v", ev)
	case <-time.After(300 * time.Millisecond):
	}
	resp, err := cli.Get(ctx, a.k.sels(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count != 1 {
		t.Fatalf("claims left: %d (%v), want 1 (0x500's)", resp.Count, err)
	}
}
