package statestore

import (
	"context"
	"net/netip"
	"net/url"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// pairMember is one member of a two-member etcd cluster made for a test.
type pairMember struct {
	name, dir    string
	client, peer url.URL
	e            *embed.Etcd
	cluster      string
}

func (m *pairMember) start(t *testing.T, state string) {
	t.Helper()
	c := embed.NewConfig()
	c.Name, c.Dir, c.UnsafeNoFsync = m.name, m.dir, true
	c.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zapNop())
	c.ListenClientUrls, c.AdvertiseClientUrls = []url.URL{m.client}, []url.URL{m.client}
	c.ListenPeerUrls, c.AdvertisePeerUrls = []url.URL{m.peer}, []url.URL{m.peer}
	c.InitialCluster, c.ClusterState, c.InitialClusterToken = m.cluster, state, "watch-test"
	c.TickMs, c.ElectionMs = 10, 100
	e, err := embed.StartEtcd(c)
	if err != nil {
		t.Fatalf("etcd member %s: %v", m.name, err)
	}
	m.e = e
}

// startPair starts a two-member etcd cluster on loopback: losing either
// member leaves the other without a leader.
func startPair(t *testing.T) (a, b *pairMember) {
	t.Helper()
	ms := [2]*pairMember{{name: "a"}, {name: "b"}}
	for _, m := range ms {
		m.dir = t.TempDir()
		ca, err1 := freeAddr("")
		pa, err2 := freeAddr("")
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		m.client, m.peer = url.URL{Scheme: "http", Host: ca}, url.URL{Scheme: "http", Host: pa}
	}
	cluster := "a=" + ms[0].peer.String() + ",b=" + ms[1].peer.String()
	for _, m := range ms {
		m.cluster = cluster
		m.start(t, "new")
		t.Cleanup(func() {
			if m.e != nil {
				m.e.Close()
			}
		})
	}
	for _, m := range ms {
		select {
		case <-m.e.Server.ReadyNotify():
		case <-time.After(30 * time.Second): // a bound, not a measure
			t.Fatalf("etcd member %s not ready", m.name)
		}
	}
	return ms[0], ms[1]
}

// A watch of the cluster's keys that breaks (here: its member lost its
// leader) goes on from the last revision it reported: the claims it had
// are not reported again and the claims written after it are reported
// once; it lists again only when that history is gone.
func TestWatchResumesAfterLeaderLoss(t *testing.T) {
	a, b := startPair(t)
	cli := dial(t, []string{a.client.String()}) // member a only
	cfg := testConfig(t, "a")
	cfg.KeepAliveInterval = 200 * time.Millisecond
	s := open(t, cli, cfg)
	ctx := tctx(t, 90*time.Second)
	claim := &SelectorClaim{Identity: "gw@iot.example", Ranges: []SelectorRange{
		{Start: netip.MustParseAddr("10.9.0.0"), End: netip.MustParseAddr("10.9.0.255")}}}
	persist := func(spi uint64) {
		t.Helper()
		if err := s.Persist(ctx, Change{Kind: Established, Record: sampleRecord(spi), Selectors: claim}); err != nil {
			t.Fatal(err)
		}
	}
	persist(0x601)

	events := make(chan SelectorEvent, 64)
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	go s.WatchSelectors(wctx, func(ev SelectorEvent) { events <- ev })
	// expect reads the events up to the next Synced one and returns the
	// claims they reported.
	expect := func(what string) []uint64 {
		t.Helper()
		var spis []uint64
		for {
			select {
			case ev := <-events:
				if ev.Synced {
					if len(spis) > 0 {
						return spis
					}
					continue // a progress notification
				}
				spis = append(spis, ev.SPI)
			case <-ctx.Done():
				t.Fatalf("%s: no events (got %x)", what, spis)
			}
		}
	}
	if got := expect("listing"); len(got) != 1 || got[0] != 0x601 {
		t.Fatalf("listing: %x", got)
	}
	persist(0x602)
	if got := expect("a claim"); len(got) != 1 || got[0] != 0x602 {
		t.Fatalf("a claim: %x", got)
	}

	// Member b goes: a has no leader, and its watches requiring one end.
	b.e.Close()
	b.e = nil
	for s.Health().WatchResumes == 0 {
		select {
		case <-ctx.Done():
			t.Fatal("the watch did not break")
		case <-time.After(50 * time.Millisecond):
		}
	}
	b.start(t, "existing")
	select {
	case <-b.e.Server.ReadyNotify():
	case <-ctx.Done():
		t.Fatal("member b not ready again")
	}
	persist(0x603)
	if got := expect("the claim after the break"); len(got) != 1 || got[0] != 0x603 {
		t.Fatalf("after the break: %x (the listed claims reported again: the watch listed anew)", got)
	}
	// One break counted, not each attempt to watch again while a had no
	// leader.
	if h := s.Health(); h.WatchRelists != 0 || h.WatchResumes != 1 {
		t.Fatalf("watch listed again %d times, resumed %d (want 0, 1)", h.WatchRelists, h.WatchResumes)
	}
	select {
	case ev := <-events:
		if !ev.Synced {
			t.Fatalf("unexpected event %+v", ev)
		}
	default:
	}
}
