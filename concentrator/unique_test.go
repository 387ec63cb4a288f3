package concentrator

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/statestore"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// gatewayDeleted reports whether gateway g has no established IKE SA.
func gatewayDeleted(g *memGateway) bool {
	_, spir, _ := gatewaySA(g)
	return spir == 0
}

// storedSA reports whether the state store holds a record of spi.
func storedSA(t *testing.T, ctx context.Context, n *Node, spi uint64) bool {
	t.Helper()
	_, _, err := n.persist.store.Load(ctx, spi)
	if errors.Is(err, statestore.ErrNotFound) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true
}

// saVIP is the virtual IP of the SA spi held by node cn.
func saVIP(ctx context.Context, cn *clusterNode, spi uint64) netip.Addr {
	var a netip.Addr
	s := cn.n.shardOfSPI(spi)
	cn.n.do(ctx, s, func() {
		if sa := s.eng.SA(spi); sa != nil {
			if st, err := sa.Snapshot(); err == nil {
				a = st.VirtualIP
			}
		}
	})
	return a
}

// A gateway reboots and reconnects (INITIAL_CONTACT) through another
// node: its old IKE SA on the first node is deleted there (the node is
// asked over the peer API), the old gateway hears a Delete, and the new
// SA keeps the identity's virtual IP. Reconnecting once more through the
// same node replaces the SA on that node.
func TestUniqueIDsReplaceAcrossNodes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := newTestCluster(t, 2)
	c.start(ctx, "a")
	b := c.start(ctx, "b")
	old := netip.MustParseAddr("192.0.2.11")
	c.pin(old, "a")
	g1 := startMemGateway(t, ctx, c.netw, c.clk, old)
	g1.connect(ctx, c.vip, 1)
	_, spi1, _ := gatewaySA(g1)
	if h := c.holders(ctx, spi1); len(h) != 1 || h[0] != "a" {
		t.Fatalf("first SA held by %v", h)
	}
	vip := saVIP(ctx, c.node("a"), spi1)

	// The rebooted gateway comes back from another address, through b.
	rebooted := netip.MustParseAddr("192.0.2.51")
	c.pin(rebooted, "b")
	g2 := startMemGateway(t, ctx, c.netw, c.clk, rebooted)
	g2.connect(ctx, c.vip, 1)
	_, spi2, _ := gatewaySA(g2)
	waitFor(t, ctx, "the old SA gone from node a", func() bool { return len(c.holders(ctx, spi1)) == 0 })
	waitFor(t, ctx, "the old gateway told of the delete", func() bool { return gatewayDeleted(g1) })
	if h := c.holders(ctx, spi2); len(h) != 1 || h[0] != "b" {
		t.Fatalf("new SA held by %v", h)
	}
	if storedSA(t, ctx, b.n, spi1) {
		t.Fatal("the old SA's record is still in the state store")
	}
	if !storedSA(t, ctx, b.n, spi2) {
		t.Fatal("the new SA's record is not in the state store")
	}
	if got := saVIP(ctx, b, spi2); got != vip || !vip.IsValid() {
		t.Fatalf("new SA's virtual IP %v, want the identity's %v", got, vip)
	}
	if a, ok, err := b.n.persist.store.(*statestore.Store).AddressOf(ctx, "gw1@iot.example"); err != nil || !ok || a != vip {
		t.Fatalf("identity's lease after the replacement: %v %v %v, want %v", a, ok, err, vip)
	}
	// The counters are added to after the replacement returns, which
	// may be after the SA is gone from the engine.
	waitFor(t, ctx, "node b counting one remote replacement", func() bool {
		s := b.n.UniqueStats()
		return s.Remote == 1 && s.Local == 0 && s.Failed == 0
	})
	// The new SA serves: its CHILD SA rekeys through b.
	rekeyChild(t, ctx, g2, 1)

	// Once more through b: replaced on b itself.
	third := netip.MustParseAddr("192.0.2.52")
	c.pin(third, "b")
	g3 := startMemGateway(t, ctx, c.netw, c.clk, third)
	g3.connect(ctx, c.vip, 1)
	_, spi3, _ := gatewaySA(g3)
	waitFor(t, ctx, "the second SA replaced on b", func() bool { return len(c.holders(ctx, spi2)) == 0 })
	waitFor(t, ctx, "node b counting one local replacement", func() bool {
		s := b.n.UniqueStats()
		return s.Local == 1 && s.Remote == 1
	})
	if h := c.holders(ctx, spi3); len(h) != 1 || h[0] != "b" {
		t.Fatalf("third SA held by %v", h)
	}
	// Another identity is left alone.
	other := netip.MustParseAddr("192.0.2.12")
	c.pin(other, "a")
	g4 := startMemGateway(t, ctx, c.netw, c.clk, other)
	g4.connect(ctx, c.vip, 2)
	_, spi4, _ := gatewaySA(g4)
	if h := c.holders(ctx, spi3); len(h) != 1 {
		t.Fatalf("gw1's SA held by %v after gw2 connected", h)
	}
	if h := c.holders(ctx, spi4); len(h) != 1 || h[0] != "a" {
		t.Fatalf("gw2's SA held by %v", h)
	}
}

// The node holding a gateway's old SA crashes; the gateway reconnects
// through another node: once the dead node's lease has expired, its SA
// is deleted from the state store (fencing rules), not restored anywhere.
func TestUniqueIDsDeadOwner(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := newTestCluster(t, 2)
	c.start(ctx, "a")
	b := c.start(ctx, "b")
	old := netip.MustParseAddr("192.0.2.11")
	c.pin(old, "a")
	g1 := startMemGateway(t, ctx, c.netw, c.clk, old)
	g1.connect(ctx, c.vip, 1)
	_, spi1, _ := gatewaySA(g1)
	c.kill("a")

	rebooted := netip.MustParseAddr("192.0.2.51")
	c.pin(rebooted, "b")
	g2 := startMemGateway(t, ctx, c.netw, c.clk, rebooted)
	g2.connect(ctx, c.vip, 1)
	_, spi2, _ := gatewaySA(g2)
	waitFor(t, ctx, "the dead node's SA deleted", func() bool { return b.n.UniqueStats().Dead == 1 })
	if storedSA(t, ctx, b.n, spi1) {
		t.Fatal("the dead node's SA is still in the state store")
	}
	if h := c.holders(ctx, spi1); len(h) != 0 {
		t.Fatalf("old SA held by %v", h)
	}
	if h := c.holders(ctx, spi2); len(h) != 1 || h[0] != "b" {
		t.Fatalf("new SA held by %v", h)
	}
	ids, err := b.n.persist.store.(*statestore.Store).Identity(ctx, "gw1@iot.example")
	if err != nil || len(ids) != 1 || ids[0].SPI != spi2 {
		t.Fatalf("identity index: %+v %v, want only %016x", ids, err, spi2)
	}
	if s := b.n.UniqueStats(); s.Remote != 0 || s.Local != 0 {
		t.Fatalf("node b's counters: %+v", s)
	}
}

// keep: a second IKE SA of an identity without INITIAL_CONTACT is
// refused while the first lives, and its reserved SPIs handed back;
// never: both stay.
func TestUniqueIDsKeepAndNever(t *testing.T) {
	for _, mode := range []string{"keep", "never"} {
		t.Run(mode, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			c := newTestCluster(t, 2)
			c.edit = func(s string) string {
				return replaceOnce(t, s, "auth:\n", "auth:\n  unique_ids: "+mode+"\n")
			}
			c.start(ctx, "a")
			b := c.start(ctx, "b")
			first := netip.MustParseAddr("192.0.2.11")
			c.pin(first, "a")
			g1 := startMemGateway(t, ctx, c.netw, c.clk, first)
			g1.connect(ctx, c.vip, 1)
			_, spi1, _ := gatewaySA(g1)

			second := netip.MustParseAddr("192.0.2.51")
			c.pin(second, "b")
			g2 := startMemGateway(t, ctx, c.netw, c.clk, second)
			if mode == "never" {
				g2.connect(ctx, c.vip, 1) // with INITIAL_CONTACT, ignored
				_, spi2, _ := gatewaySA(g2)
				if h := c.holders(ctx, spi1); len(h) != 1 || h[0] != "a" {
					t.Fatalf("first SA held by %v", h)
				}
				if h := c.holders(ctx, spi2); len(h) != 1 || h[0] != "b" {
					t.Fatalf("second SA held by %v", h)
				}
				return
			}
			g2.connectNoIC(ctx, c.vip, 1)
			waitFor(t, ctx, "the second SA refused", func() bool { return b.n.UniqueStats().Refused >= 1 })
			// Refused unwritten: its reserved IKE and ESP SPIs go back to
			// node b's pools instead of staying reserved in etcd.
			waitFor(t, ctx, "the refused SA's SPIs handed back", func() bool {
				st, err := b.n.Stats(ctx)
				return err == nil && st.ReturnedSPIs >= 2
			})
			// The refused SA held its identity's address (leased on a's
			// behalf): none of node b's reservations is left marked in
			// etcd without being in its pool (vippool_test.go covers a
			// failed SA that took a reservation).
			pool := clusterPools(&b.n.ecfg)[0]
			cli, err := statestore.Dial(c.etcd.Client())
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			var marks, reserved int
			waitFor(t, ctx, "the refused SA's address reservation given back", func() bool {
				r, err := cli.Get(ctx, statestore.DefaultPrefix+"pool/addr/", clientv3.WithPrefix())
				if err != nil {
					return false
				}
				marks = 0
				for _, kv := range r.Kvs {
					if string(kv.Value) == "\x00reserved:b" {
						marks++
					}
				}
				pool.mu.Lock()
				reserved = len(pool.reserved)
				pool.mu.Unlock()
				return marks == reserved
			})
			if !gatewayDeleted(g2) {
				t.Fatal("the refused gateway has an IKE SA")
			}
			if h := c.holders(ctx, spi1); len(h) != 1 || h[0] != "a" {
				t.Fatalf("first SA held by %v", h)
			}
		})
	}
}

// connectNoIC starts an IKE SA as gateway n without INITIAL_CONTACT and
// does not wait for it.
func (g *memGateway) connectNoIC(ctx context.Context, server netip.Addr, n int) {
	g.t.Helper()
	ini := gatewayInitiation(g, server, n)
	ini.NoInitialContact = true
	g.initiate(ini)
}

// takenOverStore: the owners read first name a dead node, and the SA is
// taken over by the time it is deleted (a claim won the race); read
// again, the owners name the node that took it over.
type takenOverStore struct {
	statestore.Interface
	me, dead, taker statestore.Owner
	mu              sync.Mutex
	reads, deletes  int
}

func (s *takenOverStore) Registration() (statestore.Owner, int) { return s.me, 0 }

func (s *takenOverStore) Owners(_ context.Context, spis []uint64) ([]statestore.OwnerState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reads++
	o := statestore.OwnerState{Owner: s.dead, Found: true}
	if s.reads > 1 {
		o = statestore.OwnerState{Owner: s.taker, Found: true, Live: true}
	}
	return slices.Repeat([]statestore.OwnerState{o}, len(spis)), nil
}

func (s *takenOverStore) DeleteOrphan(_ context.Context, spi uint64, _ statestore.Owner, _ string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deletes++
	return &statestore.OwnerError{SPI: spi, Owner: s.taker}
}

func (s *takenOverStore) DropStaleIdentity(context.Context, string, []uint64) error { return nil }

// An identity's older SA on a dead node, taken over by another live node
// while the newer SA's node deletes it: not an error; that node is asked
// to delete it once it has restored it (the owners read again), so it
// does not serve the identity beside its newer SA. (Taken over by this
// node itself, the second attempt deletes it on this node's shard.)
func TestUniqueIDsOrphanTakenOverMeanwhile(t *testing.T) {
	defer func(d time.Duration) { replaceTakenOverDelay = d }(replaceTakenOverDelay)
	replaceTakenOverDelay = 10 * time.Millisecond
	st := &takenOverStore{me: statestore.Owner{Node: "b", Epoch: 2}, dead: statestore.Owner{Node: "a", Epoch: 1},
		taker: statestore.Owner{Node: "c", Epoch: 3}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := &Node{log: slog.New(slog.DiscardHandler), persist: &persistence{store: st}, runCtx: ctx}
	n.replace("gw1@iot.example", []statestore.IdentitySA{{SPI: 0x1234, Node: "a"}}, false, false)
	if f := n.unique.failed.Load(); f != 0 {
		t.Fatalf("a taken-over SA counted as a failed replacement (%d) before its new owner was asked", f)
	}
	waitFor(t, ctx, "the owners read again", func() bool {
		st.mu.Lock()
		defer st.mu.Unlock()
		return st.reads == 2
	})
	// Asked again where it is: node c cannot be reached here (no peer
	// service), so the second attempt fails and says so; it is not tried a
	// third time.
	waitFor(t, ctx, "the second attempt's outcome", func() bool { return n.unique.failed.Load() == 1 })
	time.Sleep(50 * time.Millisecond)
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.reads != 2 || st.deletes != 1 {
		t.Fatalf("owners read %d times, orphan deletes %d: want 2 and 1", st.reads, st.deletes)
	}
}

// The first attempt to delete an orphan comes from replaceWhenGone (its
// owner died while asked to delete it), and this node took the SA over
// meanwhile: it is deleted here once restored (the owners read again, the
// SA found local), not given up as "not deleted".
func TestUniqueIDsOrphanTakenOverHere(t *testing.T) {
	defer func(d time.Duration) { replaceTakenOverDelay = d }(replaceTakenOverDelay)
	replaceTakenOverDelay = 10 * time.Millisecond
	me := statestore.Owner{Node: "b", Epoch: 2}
	st := &takenOverStore{me: me, dead: statestore.Owner{Node: "a", Epoch: 1}, taker: me}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// One shard, its engine empty: the test sees the shard asked for the
	// SA.
	sh := &shard{calls: make(chan func()), eng: &ike.Engine{}}
	var asked atomic.Int32
	go func() {
		for {
			select {
			case f := <-sh.calls:
				asked.Add(1)
				f()
			case <-ctx.Done():
				return
			}
		}
	}()
	n := &Node{log: slog.New(slog.DiscardHandler), persist: &persistence{store: st}, runCtx: ctx, shards: []*shard{sh}}
	n.replace("gw1@iot.example", []statestore.IdentitySA{{SPI: 0x1234, Node: "a"}}, false, true)
	if f := n.unique.failed.Load(); f != 0 {
		t.Fatalf("an SA taken over by this node counted as a failed replacement (%d) before it was looked for here", f)
	}
	// The owners read again find it this node's: its shard is asked to
	// delete it (it holds none in this test, so that counts as failed,
	// once).
	waitFor(t, ctx, "the shard asked", func() bool { return asked.Load() == 1 })
	waitFor(t, ctx, "the local attempt's outcome", func() bool { return n.unique.failed.Load() == 1 })
	time.Sleep(50 * time.Millisecond)
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.reads != 2 || st.deletes != 1 || asked.Load() != 1 {
		t.Fatalf("owners read %d times, orphan deletes %d, shard asked %d times: want 2, 1 and 1", st.reads, st.deletes, asked.Load())
	}
}
