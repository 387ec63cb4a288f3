package concentrator

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/statestore"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Exclusive selectors hold cluster-wide: a gateway on one node holds its
// LAN; another identity proposing part of it to another node gets
// TS_UNACCEPTABLE there; once the first gateway's SA is gone, the range is
// free on every node.
func TestClusterSelectorsExclusive(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := newTestCluster(t, 3)
	c.edit = func(text string) string {
		return text + "policies:\n  - {id: '*@iot.example', remote_ts: [10.20.0.0/16]}\n"
	}
	a, b := c.start(ctx, "a"), c.start(ctx, "b")
	g1 := startMemGateway(t, ctx, c.netw, c.clk, netip.MustParseAddr("192.0.2.11"))
	g2 := startMemGateway(t, ctx, c.netw, c.clk, netip.MustParseAddr("192.0.2.12"))
	g3 := startMemGateway(t, ctx, c.netw, c.clk, netip.MustParseAddr("192.0.2.13"))
	c.pin(g1.ike.LocalAddr().Addr(), "a")
	c.pin(g2.ike.LocalAddr().Addr(), "b")
	c.pin(g3.ike.LocalAddr().Addr(), "b")
	if !connectLAN(t, ctx, c, g1, 1, "10.20.1.0/24") {
		t.Fatal("gateway 1's CHILD SA refused")
	}
	waitFor(t, ctx, "b knows gateway 1's selectors held on a", func() bool { return b.n.ecfg.Selectors.Remote() > 0 })
	if connectLAN(t, ctx, c, g2, 2, "10.20.1.128/25") {
		t.Fatal("gateway 2 on b took part of gateway 1's LAN held on a")
	}
	st, err := b.n.Stats(ctx)
	if err != nil || st.SelectorsRefused != 1 {
		t.Fatalf("b: %d selectors refused (%v), want 1", st.SelectorsRefused, err)
	}
	// Its own LAN is its own.
	if !connectLAN(t, ctx, c, g3, 3, "10.20.3.0/24") {
		t.Fatal("gateway 3's own LAN refused")
	}
	// Gateway 1's SA goes (a deletes it): the range is free on b too.
	sas, err := a.n.SAs(ctx)
	if err != nil || len(sas) != 1 {
		t.Fatalf("a holds %d SAs (%v)", len(sas), err)
	}
	if err := a.n.Terminate(ctx, sas[0].SPIr); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "b forgets gateway 1's selectors", func() bool { return b.n.ecfg.Selectors.Remote() == 1 }) // gateway 3's own
	g4 := startMemGateway(t, ctx, c.netw, c.clk, netip.MustParseAddr("192.0.2.14"))
	c.pin(g4.ike.LocalAddr().Addr(), "b")
	if !connectLAN(t, ctx, c, g4, 2, "10.20.1.128/25") {
		t.Fatal("gateway 2's identity refused after gateway 1 left")
	}
}

// connectLAN starts gateway n (no virtual IP, its LAN prefix as its
// selector) and waits for its IKE SA; it reports whether a CHILD SA came
// with it.
func connectLAN(t *testing.T, ctx context.Context, c *testCluster, g *memGateway, n int, prefix string) (child bool) {
	t.Helper()
	ini := gatewayInitiation(g, c.vip, n)
	ini.RequestVIP = false
	ini.TSi = []ike.TrafficSelector{ike.SelectorFromPrefix(netip.MustParsePrefix(prefix))}
	g.initiate(ini)
	established := false
	for {
		select {
		case ev := <-g.events:
			switch ev.Kind {
			case ike.EventIKEEstablished:
				established = true
			case ike.EventChildInstalled:
				return true
			case ike.EventChildFailed:
				return false
			case ike.EventIKEFailed:
				t.Fatalf("gateway %d: %v %s", n, ev.Notify, ev.Reason)
			}
		case <-time.After(5 * time.Second):
			if established {
				return false
			}
			t.Fatalf("gateway %d: no IKE SA", n)
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
	}
}

// Two overlapping claims admitted on two nodes at once (here: b reads the
// others' claims late) are judged in etcd's order: the later claim's SA
// is discarded by the node that holds it before anything of it goes out
// (no IKE_AUTH answer, no CHILD SA installed); the earlier one stays.
//
// "rekeyed": before b reads the claims, a rekeys the earlier claim's IKE
// SA, so that b's listing finds that claim last written (under a new SPI)
// after the later one. b must still date its range by when it was first
// claimed, which the claim carries (statestore.SelectorRange.Since):
// dated by its last write, the earlier claim would lose on b and the
// later one hold there, while a judged the other way.
func TestClusterSelectorClaimsAtOnce(t *testing.T) {
	t.Run("plain", func(t *testing.T) { testClaimsAtOnce(t, false) })
	t.Run("rekeyed", func(t *testing.T) { testClaimsAtOnce(t, true) })
}

func testClaimsAtOnce(t *testing.T, rekey bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := newTestCluster(t, 2)
	c.edit = func(text string) string {
		return text + "policies:\n  - {id: '*@iot.example', remote_ts: [10.20.0.0/16]}\n"
	}
	gate := make(chan struct{})
	c.adjust = func(id string, n *Node) {
		if id == "b" {
			n.selectorWatchGate = gate
		}
	}
	a, b := c.start(ctx, "a"), c.start(ctx, "b")
	g1 := startMemGateway(t, ctx, c.netw, c.clk, netip.MustParseAddr("192.0.2.11"))
	g2 := startMemGateway(t, ctx, c.netw, c.clk, netip.MustParseAddr("192.0.2.12"))
	c.pin(g1.ike.LocalAddr().Addr(), "a")
	c.pin(g2.ike.LocalAddr().Addr(), "b")
	if !connectLAN(t, ctx, c, g1, 1, "10.20.1.0/24") {
		t.Fatal("gateway 1's CHILD SA refused")
	}
	cli, err := statestore.Dial(c.etcd.Client())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	claims := func() int64 {
		r, err := cli.Get(ctx, statestore.DefaultPrefix+"sel/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		return r.Count
	}
	// b has not read gateway 1's claim: gateway 2's overlapping one passes
	// b's registry and is stored, and waits for b to read the claims.
	ini := gatewayInitiation(g2, c.vip, 2)
	ini.RequestVIP = false
	ini.TSi = []ike.TrafficSelector{ike.SelectorFromPrefix(netip.MustParsePrefix("10.20.1.0/25"))}
	g2.initiate(ini)
	waitFor(t, ctx, "gateway 2's claim stored", func() bool { return claims() == 2 })
	waitFor(t, ctx, "a judges gateway 2's claim lost", func() bool { return a.n.ClusterStats().SelectorConflicts > 0 })
	if rekey {
		sas, err := a.n.SAs(ctx)
		if err != nil || len(sas) != 1 {
			t.Fatalf("a holds %d SAs (%v)", len(sas), err)
		}
		first := claimOf(t, ctx, cli, sas[0].SPIr)
		if err := a.n.RekeyIKE(ctx, sas[0].SPIr); err != nil {
			t.Fatal(err)
		}
		var moved *clientv3.GetResponse
		waitFor(t, ctx, "gateway 1's claim moved to its rekeyed IKE SA", func() bool {
			r, err := cli.Get(ctx, statestore.DefaultPrefix+"sel/", clientv3.WithPrefix())
			if err != nil {
				t.Fatal(err)
			}
			moved = r
			return len(r.Kvs) == 2 && !strings.HasSuffix(string(r.Kvs[0].Key), fmt.Sprintf("%016x", sas[0].SPIr)) &&
				!strings.HasSuffix(string(r.Kvs[1].Key), fmt.Sprintf("%016x", sas[0].SPIr))
		})
		for _, kv := range moved.Kvs {
			var cl statestore.SelectorClaim
			if err := json.Unmarshal(kv.Value, &cl); err != nil {
				t.Fatal(err)
			}
			if cl.Identity == "gw1@iot.example" && (len(cl.Ranges) != 1 || cl.Ranges[0].Since != first.ModRevision) {
				t.Fatalf("the rekeyed claim %s names %+v, want first claimed at %d", kv.Value, cl.Ranges, first.ModRevision)
			}
		}
	}
	time.Sleep(200 * time.Millisecond) // b would have answered by now without the rule
	quiet := func(what string) {
		t.Helper()
		for {
			select {
			case ev := <-g2.events:
				if ev.Kind == ike.EventIKEEstablished || ev.Kind == ike.EventChildInstalled {
					t.Fatalf("%s: gateway 2 got %v", what, ev.Kind)
				}
				continue
			default:
			}
			return
		}
	}
	quiet("while b's watch lags")
	if n := b.dp.Len(); n != 0 {
		t.Fatalf("b installed %d CHILD SAs for a claim not judged", n)
	}
	close(gate)
	waitFor(t, ctx, "b discards the later claim's SA", func() bool {
		sas, err := b.n.SAs(ctx)
		return err == nil && len(sas) == 0 && claims() == 1
	})
	time.Sleep(200 * time.Millisecond)
	quiet("after b read the claims")
	if n := b.dp.Len(); n != 0 {
		t.Fatalf("b holds %d CHILD SAs", n)
	}
	if m, err := b.n.metricsSnapshot(ctx); err != nil || m.StateStore == nil || m.StateStore.SelectorConflicts == 0 ||
		m.StateStore.SelectorHolds == 0 || m.StateStore.SelectorHoldTimeouts != 0 {
		t.Fatalf("b's counters (ikefleet_selector_conflicts_total, _claim_holds_total, _claim_hold_timeouts_total): %+v %v", m.StateStore, err)
	}
	holds := uint64(1) // gateway 1's establishment, and its IKE rekey
	if rekey {
		holds = 2
	}
	if cs := a.n.ClusterStats(); cs.SelectorHolds != holds || cs.SelectorHoldTimeouts != 0 {
		t.Fatalf("a: %d writes held for a verdict (want %d: gateway 1's), %d given up", cs.SelectorHolds, holds, cs.SelectorHoldTimeouts)
	}
	waitFor(t, ctx, "a holds gateway 1's SA alone", func() bool {
		sas, err := a.n.SAs(ctx)
		return err == nil && len(sas) == 1
	})
	if c := claims(); c != 1 {
		t.Fatalf("%d claims stored, want gateway 1's", c)
	}
}

// claimOf reads SA spi's selector claim from etcd.
func claimOf(t *testing.T, ctx context.Context, cli *clientv3.Client, spi uint64) *mvccpb.KeyValue {
	t.Helper()
	r, err := cli.Get(ctx, fmt.Sprintf("%ssel/%016x", statestore.DefaultPrefix, spi))
	if err != nil || len(r.Kvs) != 1 {
		t.Fatalf("SA %016x's claim: %d keys (%v)", spi, len(r.Kvs), err)
	}
	return r.Kvs[0]
}

// A node whose claims watch does not reach a held write within the bound
// gives the write up as lost: the SA is discarded unjudged, never
// admitted, and the give-up is counted apart from conflicts.
func TestClusterSelectorHoldGivenUp(t *testing.T) {
	old := claimVerdictTimeout
	t.Cleanup(func() { claimVerdictTimeout = old }) // after the node's cleanup
	claimVerdictTimeout = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := newTestCluster(t, 1)
	c.edit = func(text string) string {
		return text + "policies:\n  - {id: '*@iot.example', remote_ts: [10.20.0.0/16]}\n"
	}
	gate := make(chan struct{}) // never opened: the watch never reads
	c.adjust = func(id string, n *Node) { n.selectorWatchGate = gate }
	a := c.start(ctx, "a")
	g := startMemGateway(t, ctx, c.netw, c.clk, netip.MustParseAddr("192.0.2.11"))
	c.pin(g.ike.LocalAddr().Addr(), "a")
	ini := gatewayInitiation(g, c.vip, 1)
	ini.RequestVIP = false
	ini.TSi = []ike.TrafficSelector{ike.SelectorFromPrefix(netip.MustParsePrefix("10.20.1.0/24"))}
	g.initiate(ini)
	waitFor(t, ctx, "the held write given up", func() bool { return a.n.ClusterStats().SelectorHoldTimeouts == 1 })
	waitFor(t, ctx, "its SA discarded", func() bool {
		sas, err := a.n.SAs(ctx)
		return err == nil && len(sas) == 0
	})
	for {
		select {
		case ev := <-g.events:
			if ev.Kind == ike.EventIKEEstablished || ev.Kind == ike.EventChildInstalled {
				t.Fatalf("the gateway got %v from a write never judged", ev.Kind)
			}
			continue
		default:
		}
		break
	}
	if cs := a.n.ClusterStats(); cs.SelectorConflicts != 0 || a.dp.Len() != 0 {
		t.Fatalf("%d conflicts counted, %d CHILD SAs installed", cs.SelectorConflicts, a.dp.Len())
	}
}
