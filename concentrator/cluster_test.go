package concentrator

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/clock"
	"github.com/ikefleet/ikefleet/concentrator/dataplane/memory"
	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/concentrator/transport"
	"github.com/ikefleet/ikefleet/statestore"
)

// testCluster is N nodes behind one anycast address on an in-memory
// network, with one embedded etcd, real gRPC between the nodes on
// loopback, and a route that plays ECMP.
type testCluster struct {
	t        *testing.T
	etcd     *statestore.Embedded
	keyFile  string
	netw     *transport.Network
	clk      *clock.Fake
	log      *slog.Logger
	vip      netip.Addr
	gws      int                      // PSKs configured for gateways 1..gws
	ikeExtra string                   // appended to the nodes' ike: section
	leaseTTL string                   // statestore.lease_ttl; default 3s
	edit     func(string) string      // edits the nodes' configuration text
	nodeClk  clock.Clock              // the nodes' clock; default clk
	adjust   func(id string, n *Node) // called before a node runs

	mu    sync.Mutex
	nodes map[string]*clusterNode
	// route: which node each flow (by source address) goes to; flows not
	// in it go to hash(source) over the live nodes.
	pinned map[netip.Addr]string
	alive  []string
}

type clusterNode struct {
	id   string
	n    *Node
	dp   *memory.DataPlane
	stop context.CancelFunc
	done chan error
}

func newTestCluster(t *testing.T, gateways int) *testCluster {
	etcd, err := statestore.StartEmbedded(statestore.EmbedConfig{Dir: t.TempDir(), NoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close)
	keyDir := t.TempDir()
	if _, err := statestore.LoadKeyFile(filepath.Join(keyDir, "cluster.key"), true); err != nil { // generates the shared key
		t.Fatal(err)
	}
	c := &testCluster{t: t, etcd: etcd, keyFile: filepath.Join(keyDir, "cluster.key"), netw: transport.NewNetwork(),
		clk: clock.NewFake(time.Now().Truncate(time.Millisecond)), vip: netip.MustParseAddr("10.0.0.100"), gws: gateways,
		log:   slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: testLogLevel()})),
		nodes: map[string]*clusterNode{}, pinned: map[netip.Addr]string{}}
	c.netw.SetRoute(c.route)
	return c
}

// testLogLevel: CLUSTER_TEST_LOG=debug|info|warn shows the nodes' logs.
func testLogLevel() slog.Level {
	var l slog.Level
	if err := l.UnmarshalText([]byte(os.Getenv("CLUSTER_TEST_LOG"))); err != nil {
		return slog.LevelError
	}
	return l
}

// route is ECMP: a flow goes to the node it is pinned to, else to a hash
// of its source over the nodes in the route (sorted), so that a node
// joining or leaving re-hashes flows.
func (c *testCluster) route(from, to netip.AddrPort, hosts []string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if h, ok := c.pinned[from.Addr()]; ok {
		return h
	}
	if len(c.alive) == 0 {
		return ""
	}
	b := from.Addr().As16()
	var h uint32 = 2166136261
	for _, x := range b {
		h = (h ^ uint32(x)) * 16777619
	}
	return c.alive[h%uint32(len(c.alive))]
}

func (c *testCluster) pin(gw netip.Addr, node string) {
	c.mu.Lock()
	c.pinned[gw] = node
	c.mu.Unlock()
}

// setRoute sets the nodes flows are hashed over (ECMP next hops).
func (c *testCluster) setRoute(nodes ...string) {
	c.mu.Lock()
	c.alive = append([]string(nil), nodes...)
	c.mu.Unlock()
}

// start runs node id; it joins the route only when told (setRoute).
func (c *testCluster) start(ctx context.Context, id string) *clusterNode {
	t := c.t
	text := nodeConfig(c.gws, c.ikeExtra, fmt.Sprintf("statestore:\n  mode: external\n  endpoints: [%s]\n  cluster_key_file: %s\n  data_dir: %s\n  lease_ttl: %s\ncluster:\n  peer_listen: 127.0.0.1:0\n",
		c.etcd.Endpoints()[0], c.keyFile, filepath.Join(filepath.Dir(c.keyFile), "node-"+id), cmp.Or(c.leaseTTL, "3s")))
	text = replaceOnce(t, text, "node: {id: test}", "node: {id: "+id+"}")
	text = replaceOnce(t, text, "listen: [127.0.0.1]\n  port: 0\n  natt_port: 0", "listen: ["+c.vip.String()+"]\n  port: 500\n  natt_port: 4500")
	if c.edit != nil {
		text = c.edit(text)
	}
	cfg, err := ParseConfig([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	dp := memory.New()
	var nclk clock.Clock = c.clk
	if c.nodeClk != nil {
		nclk = c.nodeClk
	}
	n, err := New(cfg, c.log.With("node", id), dp, WithTransport(c.netw.Host(id)), WithClock(nclk))
	if err != nil {
		t.Fatal(err)
	}
	if c.adjust != nil {
		c.adjust(id, n)
	}
	rctx, stop := context.WithCancel(ctx)
	cn := &clusterNode{id: id, n: n, dp: dp, stop: stop, done: make(chan error, 1)}
	go func() { cn.done <- n.Run(rctx) }()
	t.Cleanup(func() { c.stop(id) })
	select {
	case <-n.Ready():
	case err := <-cn.done:
		t.Fatalf("node %s did not start: %v", id, err)
	}
	c.mu.Lock()
	c.nodes[id] = cn
	c.mu.Unlock()
	return cn
}

// stop ends node id gracefully (its lease is revoked: its SAs can be
// taken over at once).
func (c *testCluster) stop(id string) {
	c.mu.Lock()
	cn := c.nodes[id]
	delete(c.nodes, id)
	c.mu.Unlock()
	if cn == nil {
		return
	}
	cn.stop()
	if err := <-cn.done; err != nil {
		c.t.Errorf("node %s: %v", id, err)
	}
}

// kill ends node id as a crash would: its lease stays until it expires.
func (c *testCluster) kill(id string) {
	c.mu.Lock()
	cn := c.nodes[id]
	c.mu.Unlock()
	if cn == nil {
		return
	}
	cn.n.persist.store.(*statestore.Store).Abandon()
	// The node is dead from here (it sends nothing once fenced); its
	// goroutines wind down meanwhile, and the test goes on at once.
	c.mu.Lock()
	delete(c.nodes, id)
	c.mu.Unlock()
	cn.stop()
	c.t.Cleanup(func() {
		if err := <-cn.done; err != nil {
			c.t.Errorf("node %s: %v", id, err)
		}
	})
}

// etcdRevision is etcd's current revision (one per write transaction).
func (c *testCluster) etcdRevision(ctx context.Context) (int64, error) {
	cli, err := statestore.Dial(c.etcd.Client())
	if err != nil {
		return 0, err
	}
	defer cli.Close()
	r, err := cli.Get(ctx, "revision-probe")
	if err != nil {
		return 0, err
	}
	return r.Header.Revision, nil
}

func (c *testCluster) node(id string) *clusterNode {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[id]
}

// holders lists the nodes whose engines hold an established SA with our
// SPI spi.
func (c *testCluster) holders(ctx context.Context, spi uint64) []string {
	c.mu.Lock()
	nodes := make([]*clusterNode, 0, len(c.nodes))
	for _, cn := range c.nodes {
		nodes = append(nodes, cn)
	}
	c.mu.Unlock()
	var ids []string
	for _, cn := range nodes {
		s := cn.n.shardOfSPI(spi)
		held := false
		cn.n.do(ctx, s, func() {
			sa := s.eng.SA(spi)
			held = sa != nil && sa.Established()
		})
		if held {
			ids = append(ids, cn.id)
		}
	}
	return ids
}

// gatewaySA is the gateway's IKE SA (its only one): SPIs and a CHILD SA.
func gatewaySA(g *memGateway) (spii, spir uint64, inSPI uint32) {
	done := make(chan struct{})
	g.calls <- func() {
		g.eng.Each(func(sa *ike.IKESA) bool {
			if sa.Established() {
				spii, spir = sa.SPIi, sa.SPIr
				if ch := sa.Children(); len(ch) > 0 {
					inSPI = ch[0].InSPI
				}
			}
			return true
		})
		close(done)
	}
	<-done
	return
}

// rekeyChild has the gateway rekey its CHILD SA and waits until it has
// (the rekey is the gateway's request: it reaches whichever node the
// route picks). It fails the test on a new IKE SA. The gateway starts no
// rekey while an exchange is under way (a Delete a killed node never
// answered): it asks again every second until one completes.
func rekeyChild(t *testing.T, ctx context.Context, g *memGateway, n int) {
	t.Helper()
	_, spir, _ := gatewaySA(g)
	if spir == 0 {
		t.Fatalf("gateway %d has no IKE SA", n)
	}
	ask := func() {
		spii, got, in := gatewaySA(g)
		if got != spir {
			t.Fatalf("gateway %d: IKE SA %016x replaced by %016x", n, spir, got)
		}
		g.calls <- func() {
			var rd ike.Ready
			g.eng.RekeyChild(g.clk.Now(), spii, in, &rd)
			g.perform(&rd)
		}
	}
	ask()
	// The fake clock runs at four times real time meanwhile: the gateway
	// retransmits what a killed node never answered.
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for i := 1; ; i++ {
		select {
		case <-tick.C:
			g.clk.Advance(200 * time.Millisecond)
			if i%20 == 0 {
				ask()
			}
		case ev := <-g.events:
			switch ev.Kind {
			case ike.EventChildRekeyed:
				if ev.SPIr != spir {
					t.Fatalf("gateway %d: rekeyed under IKE SA %016x, not %016x", n, ev.SPIr, spir)
				}
				return
			case ike.EventIKEEstablished, ike.EventIKEFailed, ike.EventIKEDeleted, ike.EventChildFailed:
				t.Fatalf("gateway %d: %v %v %s", n, ev.Kind, ev.Notify, ev.Reason)
			}
		case <-ctx.Done():
			d, dr := g.netwStats()
			t.Fatalf("gateway %d: CHILD SA %016x not rekeyed (network: %d delivered, %d dropped)", n, spir, d, dr)
		}
	}
}

// SAs move between two nodes behind one anycast address: a gateway whose
// flow moves to the other node rekeys its CHILD SA there (the node claims
// the SA from its live owner over the peer API), and after the first
// node is killed, the SAs it still owned are taken over once its lease
// expires. Every gateway keeps its IKE SA; no SA is ever held by two
// nodes.
func TestHandOffAndTakeOver(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := newTestCluster(t, 4)
	c.start(ctx, "a")
	c.start(ctx, "b")
	c.setRoute("a")
	var gws []*memGateway
	var spis []uint64
	for i := 1; i <= 4; i++ {
		g := startMemGateway(t, ctx, c.netw, c.clk, netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)}))
		g.connect(ctx, c.vip, i)
		_, spir, _ := gatewaySA(g)
		gws = append(gws, g)
		spis = append(spis, spir)
		if h := c.holders(ctx, spir); len(h) != 1 || h[0] != "a" {
			t.Fatalf("gateway %d's SA held by %v", i, h)
		}
	}

	// Live hand-off: gateways 1 and 2 move to b.
	for i := 0; i < 2; i++ {
		c.pin(gws[i].ike.LocalAddr().Addr(), "b")
		rekeyChild(t, ctx, gws[i], i+1)
		if h := c.holders(ctx, spis[i]); len(h) != 1 || h[0] != "b" {
			t.Fatalf("gateway %d's SA held by %v after the move", i+1, h)
		}
		o, _, err := c.node("b").n.persist.store.Owner(ctx, spis[i])
		if err != nil || o.Node != "b" {
			t.Fatalf("owner of %016x: %v %v", spis[i], o, err)
		}
		if c.node("a").dp.Len() != 4-(i+1) {
			t.Fatalf("a's data plane holds %d CHILD SAs", c.node("a").dp.Len())
		}
	}
	if s := c.node("b").n.ClusterStats(); s.HandOffs != 2 || s.TakeOvers != 0 {
		t.Fatalf("b: %+v", s)
	}
	if s := c.node("a").n.ClusterStats(); s.HandedOff != 2 {
		t.Fatalf("a: %+v", s)
	}
	// And back: gateway 1 returns to a.
	c.pin(gws[0].ike.LocalAddr().Addr(), "a")
	rekeyChild(t, ctx, gws[0], 1)
	if h := c.holders(ctx, spis[0]); len(h) != 1 || h[0] != "a" {
		t.Fatalf("gateway 1's SA held by %v after moving back", h)
	}

	// ESP for a CHILD SA b does not hold (user-space data planes report
	// it) makes b claim its IKE SA: gateway 4's, by its inbound ESP SPI.
	sas, err := c.node("a").n.SAs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var espIn uint32
	for _, sa := range sas {
		if sa.SPIr == spis[3] && len(sa.Children) > 0 {
			espIn = sa.Children[0].InSPI
		}
	}
	if espIn == 0 {
		t.Fatalf("a does not list gateway 4's CHILD SA: %+v", sas)
	}
	// Its flow (IKE and ESP alike) now goes to b.
	c.pin(gws[3].ike.LocalAddr().Addr(), "b")
	c.node("b").n.unknownESP(0x0badc0de) // nobody's: one lookup, then the negative cache
	ectx, ecancel := context.WithTimeout(ctx, 10*time.Second)
	defer ecancel()
	go func() {
		<-ectx.Done()
		if ctx.Err() == nil && !errors.Is(ectx.Err(), context.Canceled) {
			ike, err := c.node("b").n.persist.store.LookupESP(ctx, espIn)
			t.Logf("ESP %08x -> IKE %016x (%v), want %016x; b: %+v", espIn, ike, err, spis[3], c.node("b").n.ClusterStats())
		}
	}()
	waitFor(t, ctx, "b claims gateway 4's SA for its ESP", func() bool {
		c.node("b").n.unknownESP(espIn) // a stream of ESP: one lookup at a time
		h := c.holders(ctx, spis[3])
		return len(h) == 1 && h[0] == "b"
	})
	rekeyChild(t, ctx, gws[3], 4)
	waitFor(t, ctx, "the unknown ESP SPI in the negative cache", func() bool {
		c.node("b").n.unknownESP(0x0badc0de)
		return c.node("b").n.ClusterStats().NegativeHits > 0
	})

	// Kill a: gateways 1 and 3 move to b, which takes their SAs over
	// once a's lease has expired (4 is b's already).
	c.kill("a")
	c.setRoute("b")
	defer func() {
		if t.Failed() {
			t.Logf("b: %+v", c.node("b").n.ClusterStats())
		}
	}()
	for _, i := range []int{0, 2, 3} {
		c.pin(gws[i].ike.LocalAddr().Addr(), "b")
		rekeyChild(t, ctx, gws[i], i+1)
		if h := c.holders(ctx, spis[i]); len(h) != 1 || h[0] != "b" {
			t.Fatalf("gateway %d's SA held by %v after the kill", i+1, h)
		}
	}
	if s := c.node("b").n.ClusterStats(); s.TakeOvers != 2 {
		t.Fatalf("b after the kill: %+v", s)
	}
	// The counters are what /metrics shows.
	if m, err := c.node("b").n.metricsSnapshot(ctx); err != nil || m.Events.Takeovers != 2 {
		t.Fatalf("b's ikefleet_takeovers_total: %d (%v), want 2", m.Events.Takeovers, err)
	}
	// The gateways delete their old CHILD SAs after their rekeys.
	waitFor(t, ctx, "b's data plane holds the 4 gateways' CHILD SAs", func() bool { return c.node("b").dp.Len() == 4 })
	if sas, err := c.node("b").n.SAs(ctx); err != nil || len(sas) != 4 {
		t.Fatalf("b holds %d IKE SAs (%v)", len(sas), err)
	}

	// The gateways leave: after hand-offs both ways, a claim by ESP and a
	// takeover from a dead node, nothing of their SAs stays in the store
	// (a's index entries and reservations included).
	for i, g := range gws {
		deleteIKE(t, ctx, g, i+1)
	}
	waitFor(t, ctx, "b to hold no SA", func() bool {
		sas, err := c.node("b").n.SAs(ctx)
		return err == nil && len(sas) == 0
	})
	if err := c.node("b").n.persist.store.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	cli, err := statestore.Dial(c.etcd.Client())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	kept, leased := storeKeys(t, ctx, cli)
	noSAKeys(t, kept)
	if t.Failed() {
		t.Fatalf("left in the store: %s; on a lease: %s", formatCounts(kept), formatCounts(leased))
	}
}

// deleteIKE has gateway n delete its IKE SA and waits until it has,
// advancing the fake clock so that what a dead node never answered is
// retransmitted and given up.
func deleteIKE(t *testing.T, ctx context.Context, g *memGateway, n int) {
	t.Helper()
	spii, _, _ := gatewaySA(g)
	if spii == 0 {
		t.Fatalf("gateway %d has no IKE SA", n)
	}
	g.calls <- func() {
		var rd ike.Ready
		g.eng.Delete(g.clk.Now(), spii, &rd)
		g.perform(&rd)
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			g.clk.Advance(200 * time.Millisecond)
		case ev := <-g.events:
			if ev.Kind == ike.EventIKEDeleted && ev.SPIi == spii {
				return
			}
		case <-ctx.Done():
			t.Fatalf("gateway %d: IKE SA not deleted", n)
		}
	}
}

// handOffWithHook runs two nodes, a with its hand-off writes done by
// hook; a gateway (192.0.2.host) connects through a, its flow then moves
// to b, and it rekeys its CHILD SA there. The SA must end up held by b
// alone (checked); the cluster, the gateway and its IKE SPI are returned.
func handOffWithHook(t *testing.T, ctx context.Context, host byte,
	hook func(context.Context, batchStore, []*statestore.SARecord, statestore.Owner) ([]statestore.Moved, error)) (*testCluster, *memGateway, uint64) {
	t.Helper()
	c := newTestCluster(t, 2)
	c.adjust = func(id string, n *Node) {
		if id == "a" {
			n.handOffHook = hook
		}
	}
	c.start(ctx, "a")
	c.start(ctx, "b")
	c.setRoute("a")
	g := startMemGateway(t, ctx, c.netw, c.clk, netip.AddrFrom4([4]byte{192, 0, 2, host}))
	g.connect(ctx, c.vip, 1)
	_, spir, _ := gatewaySA(g)
	c.pin(g.ike.LocalAddr().Addr(), "b")
	rekeyChild(t, ctx, g, 1)
	if h := c.holders(ctx, spir); len(h) != 1 || h[0] != "b" {
		t.Fatalf("SA held by %v after its hand-off, want b alone", h)
	}
	return c, g, spir
}

// A hand-off whose etcd transaction commits but whose answer is lost (a
// timeout after the commit): the giving node must not serve the SA again
// once etcd names the requester its owner, or both would send with its
// keys. The requester serves it; the giver holds nothing.
func TestHandOffCommitAnswerLost(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var lost atomic.Int32
	c, g, spir := handOffWithHook(t, ctx, 11, func(ctx context.Context, st batchStore, f []*statestore.SARecord, to statestore.Owner) ([]statestore.Moved, error) {
		moved, err := st.HandOffMany(ctx, f, to)
		if err != nil || len(moved) == 0 || moved[0].Err != nil {
			return moved, err
		}
		lost.Add(1)
		return nil, fmt.Errorf("%w: context deadline exceeded", statestore.ErrUnavailable)
	})
	if lost.Load() == 0 {
		t.Fatal("the hand-off was never written")
	}
	if o, _, err := c.node("b").n.persist.store.Owner(ctx, spir); err != nil || o.Node != "b" {
		t.Fatalf("owner %v (%v), want b", o, err)
	}
	if s := c.node("a").n.ClusterStats(); s.HandedOff != 1 {
		t.Fatalf("a: %+v, want one hand-off counted", s)
	}
	if c.node("a").dp.Len() != 0 {
		t.Fatalf("a's data plane still holds %d CHILD SAs", c.node("a").dp.Len())
	}
	// And it stays so: the gateway's traffic keeps going to b only.
	rekeyChild(t, ctx, g, 1)
	if h := c.holders(ctx, spir); len(h) != 1 || h[0] != "b" {
		t.Fatalf("SA held by %v after a second rekey", h)
	}
}

// A hand-off call the requester gives up on (its deadline passes while
// the owner writes, as under load) must not leave the SA with no one:
// the owner has frozen it, so it finishes the hand-off (or serves the SA
// again) whatever the caller does, and the requester's next call finds
// the SA its own.
func TestHandOffOutlivesCallerDeadline(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var slow atomic.Int32
	c, _, _ := handOffWithHook(t, ctx, 12, func(ctx context.Context, st batchStore, f []*statestore.SARecord, to statestore.Owner) ([]statestore.Moved, error) {
		if slow.Add(1) == 1 { // the first write outlasts the requester's call
			select {
			case <-time.After(peerCallTimeout + 500*time.Millisecond):
			case <-ctx.Done():
				return nil, fmt.Errorf("%w: %v", statestore.ErrUnavailable, ctx.Err())
			}
		}
		return st.HandOffMany(ctx, f, to)
	})
	if slow.Load() == 0 {
		t.Fatal("the hand-off was never written")
	}
	if s := c.node("b").n.ClusterStats(); s.ClaimFailures != 0 {
		t.Fatalf("b: %+v", s)
	}
	if s := c.node("a").n.ClusterStats(); s.HandedOff != 1 {
		t.Fatalf("a: %+v, want one hand-off counted", s)
	}
}

// oneGatewayCluster is a cluster of one node, "a", with gateway 1
// (from 192.0.2.host) connected to it.
func oneGatewayCluster(t *testing.T, ctx context.Context, host byte) (*testCluster, *clusterNode, *memGateway) {
	c := newTestCluster(t, 1)
	a := c.start(ctx, "a")
	c.setRoute("a")
	g := startMemGateway(t, ctx, c.netw, c.clk, netip.AddrFrom4([4]byte{192, 0, 2, host}))
	g.connect(ctx, c.vip, 1)
	return c, a, g
}

// An SA whose owner record is gone from etcd (deleted cluster-wide: a
// newer SA of its identity on another node replaced it) is forgotten at
// the first write the store refuses, not retried at every tick for as
// long as it lingers, and nothing more is sent for it.
func TestDisownedSAForgotten(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, a, g := oneGatewayCluster(t, ctx, 13)
	spii, spir, in := gatewaySA(g)
	cli, err := statestore.Dial(c.etcd.Client())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if r, err := cli.Delete(ctx, fmt.Sprintf("%sowner/%016x", statestore.DefaultPrefix, spir)); err != nil || r.Deleted != 1 {
		t.Fatalf("owner record not deleted: %v %v", r, err)
	}
	// The gateway rekeys its CHILD SA: the node's write of the new one is
	// refused (no owner), and the node forgets the SA.
	g.calls <- func() {
		var rd ike.Ready
		g.eng.RekeyChild(g.clk.Now(), spii, in, &rd)
		g.perform(&rd)
	}
	waitFor(t, ctx, "a forgets the SA", func() bool { return len(c.holders(ctx, spir)) == 0 })
	if a.dp.Len() != 0 {
		t.Fatalf("a's data plane still holds %d CHILD SAs", a.dp.Len())
	}
	failures := a.n.persistFailures.Load()
	for range 20 { // ticks: nothing is retried for it
		c.clk.Advance(time.Second)
		time.Sleep(10 * time.Millisecond)
	}
	if f := a.n.persistFailures.Load(); f != failures || f == 0 {
		t.Fatalf("persist failures %d, then %d after 20 s: want one failure and no retries", failures, f)
	}
}

// A flood of IKE messages for SPIs nobody owns costs one claim (one
// owner lookup) per SPI per negative-cache interval, and parking is
// bounded per SPI.
func TestClaimNegativeCache(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := newTestCluster(t, 1)
	cn := c.start(ctx, "a")
	c.setRoute("a")
	from := netip.MustParseAddrPort("192.0.2.99:500")
	flood := func() {
		for round := 0; round < 100; round++ {
			for i := uint64(1); i <= 10; i++ {
				m := ike.Message{SPIi: 0x1111, SPIr: 0xdead0000 + i, Exchange: ike.INFORMATIONAL, Flags: ike.FlagInitiator, MessageID: uint32(round)}
				c.netw.Inject(from, netip.AddrPortFrom(c.vip, 500), m.Encode())
			}
		}
	}
	flood()
	waitFor(t, ctx, "ten SPIs found unowned", func() bool { return cn.n.ClusterStats().Nobody == 10 })
	flood()
	// The second flood is dropped by the cache without a lookup.
	waitFor(t, ctx, "the second flood dropped by the negative cache", func() bool { return cn.n.ClusterStats().NegativeHits >= 1000 })
	if s := cn.n.ClusterStats(); s.Claims != 10 {
		t.Fatalf("after two floods of 10 SPIs: %+v", s)
	}
	c.clk.Advance(claimNegTTL + time.Second) // the cache forgets: one more lookup per SPI
	flood()
	waitFor(t, ctx, "ten SPIs looked up again", func() bool { return cn.n.ClusterStats().Nobody == 20 })
	if s := cn.n.ClusterStats(); s.Claims != 20 {
		t.Fatalf("after the cache expired: %+v", s)
	}
}

// A late message for an SA the node has just deleted (a retransmission,
// a liveness check the peer sent before it saw the Delete) starts no
// claim: until the deletion commits, the claim would find the node's own
// record and restore the SA (then forget it again, with a warning). Its
// SPI and its CHILD SA's inbound SPI go into the negative cache.
func TestDeletedSANotClaimedBack(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, a, g := oneGatewayCluster(t, ctx, 14)
	spii, spir, _ := gatewaySA(g)
	sas, err := a.n.SAs(ctx)
	if err != nil || len(sas) != 1 || len(sas[0].Children) != 1 {
		t.Fatalf("a's SAs %+v (%v), want one with a CHILD SA", sas, err)
	}
	in := sas[0].Children[0].InSPI // ours
	if err := a.n.Terminate(ctx, spir); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "a deletes the SA", func() bool {
		s := a.n.shardOfSPI(spir)
		gone := false
		a.n.do(ctx, s, func() { gone = s.eng.SA(spir) == nil })
		return gone
	})
	before := a.n.ClusterStats()
	late := ike.Message{SPIi: spii, SPIr: spir, Exchange: ike.INFORMATIONAL, Flags: ike.FlagInitiator, MessageID: 7}
	c.netw.Inject(netip.MustParseAddrPort("192.0.2.14:4500"), netip.AddrPortFrom(c.vip, 500), late.Encode())
	a.n.unknownESP(in)
	defer func() {
		if t.Failed() {
			t.Logf("a before %+v, after %+v", before, a.n.ClusterStats())
		}
	}()
	waitFor(t, ctx, "the late message and ESP dropped by the negative cache", func() bool {
		return a.n.ClusterStats().NegativeHits >= before.NegativeHits+2
	})
	if s := a.n.ClusterStats(); s.Claims != before.Claims {
		t.Fatalf("claims %d, then %d after a late message for the SA deleted here", before.Claims, s.Claims)
	}
	if len(c.holders(ctx, spir)) != 0 {
		t.Fatal("the deleted SA is held again")
	}
}

// A node that takes over a dead node's SAs whose CHILD rekeys are all
// overdue does not rekey them at once: the scheduler places them at the
// node's share of cluster.fleet_rekeys_per_second (the fleet's rate over
// the live nodes in the registry), never more in one second.
func TestTakeOverRekeysAtFleetShare(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	const G, fleet = 24, 2 // two live nodes after the kill: 1 rekey a second each
	c := newTestCluster(t, G)
	c.edit = func(s string) string {
		s = replaceOnce(t, s, "  pool: 10.99.0.0/16\n", "  pool: 10.99.0.0/16\n  rekey_after: 50m\n  rekey_window: 1m\n")
		return replaceOnce(t, s, "cluster:\n", fmt.Sprintf("cluster:\n  fleet_rekeys_per_second: %d\n", fleet))
	}
	c.start(ctx, "a")
	b := c.start(ctx, "b")
	c.start(ctx, "c")
	c.setRoute("a")
	gws := make([]*memGateway, G)
	for i := range gws {
		gws[i] = startMemGateway(t, ctx, c.netw, c.clk, netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i)}),
			func(cfg *ike.Config) { cfg.DPDDelay = 30 * time.Second })
		if err := gws[i].dial(ctx, c.vip, i+1); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, ctx, "b's rekey cap at its share of three nodes", func() bool {
		return b.n.ecfg.ChildRekey.(*ike.SmoothScheduler).Cap() == 1
	})
	c.kill("a")
	waitFor(t, ctx, "b's rekey cap at its share of two nodes", func() bool {
		return b.n.ecfg.ChildRekey.(*ike.SmoothScheduler).Cap() == 1
	})
	c.setRoute("b")
	c.clk.Advance(51 * time.Minute) // every CHILD SA is past its rekey time; the gateways check liveness
	since := c.clk.Now()
	rekeys := func() []time.Time {
		var at []time.Time
		for _, s := range b.n.shards {
			b.n.do(ctx, s, func() {
				s.eng.Each(func(sa *ike.IKESA) bool {
					for _, ch := range sa.Children() {
						at = append(at, ch.RekeyAt())
					}
					return true
				})
			})
		}
		return at
	}
	waitFor(t, ctx, "b takes every gateway's SA over", func() bool {
		if b.n.ClusterStats().TakeOvers < G {
			c.clk.Advance(20 * time.Millisecond) // the gateways retransmit
			return false
		}
		c.clk.Advance(time.Millisecond) // restoring: keep the clock all but still
		return len(rekeys()) == G
	})
	// Restored overdue rekeys are due at the restore (at or before
	// restored); the scheduler then places each in a later second.
	restored := c.clk.Now()
	waitFor(t, ctx, "b's overdue rekeys placed", func() bool {
		c.clk.Advance(time.Millisecond)
		at := rekeys()
		if len(at) != G {
			return false
		}
		for _, x := range at {
			if !x.After(restored) {
				return false
			}
		}
		return true
	})
	if s := b.n.ClusterStats(); s.TakeOvers != G {
		t.Fatalf("b: %+v", s)
	}
	per := map[int64]int{}
	for _, x := range rekeys() {
		per[x.Unix()]++
	}
	for sec, k := range per {
		if k > 1 {
			t.Fatalf("%d rekeys placed in the second %d after the takeover (cap 1 a second)", k, sec-since.Unix())
		}
	}
	t.Logf("%d overdue rekeys over %d seconds after the takeover", G, len(per))
}
