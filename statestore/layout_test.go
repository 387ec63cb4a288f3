package statestore

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	pb "github.com/ikefleet/ikefleet/api/statestore/v1"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
)

// registerOlder registers node id as a release before the layout key
// registered: nodes/<id> and slots/<slot> on a lease of its own, no
// layouts in the registration. It returns the lease.
func registerOlder(t *testing.T, cli *clientv3.Client, id string, slot int) clientv3.LeaseID {
	t.Helper()
	return registerAs(t, cli, &pb.Node{Id: id, Slot: uint32(slot)})
}

// registerAs writes registration n (its node's slot key with it) on a
// lease of its own, as another process would; it returns the lease.
func registerAs(t *testing.T, cli *clientv3.Client, n *pb.Node) clientv3.LeaseID {
	t.Helper()
	ctx := tctx(t, 10*time.Second)
	l, err := cli.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	n.RegisteredMs, n.Lease = time.Now().UnixMilli(), int64(l.ID)
	v, _ := proto.Marshal(n)
	k := keys{DefaultPrefix}
	r, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k.node(n.Id)), "=", 0)).
		Then(clientv3.OpPut(k.node(n.Id), string(v), clientv3.WithLease(l.ID)), clientv3.OpPut(k.slot(int(n.Slot)), n.Id, clientv3.WithLease(l.ID))).Commit()
	if err != nil || !r.Succeeded {
		t.Fatalf("registering %s: %v", n.Id, err)
	}
	return l.ID
}

// layoutConfig is a store of a release of layouts lo to hi that reads
// the registry and the layout key ten times a second.
func layoutConfig(t *testing.T, id string, lo, hi int) Config {
	c := testConfig(t, id)
	c.KeepAliveInterval = 100 * time.Millisecond
	c.layoutMin, c.layoutMax = lo, hi
	return c
}

// quickLayoutConfig is layoutConfig with requests that time out after a
// second, so that a node names a layout it took on that much later.
func quickLayoutConfig(t *testing.T, id string, lo, hi int) Config {
	c := layoutConfig(t, id, lo, hi)
	c.RequestTimeout = time.Second
	return c
}

// waitLayout waits until s writes store layout want.
func waitLayout(t *testing.T, s *Store, want int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); s.Layout() != want; {
		if time.Now().After(deadline) {
			t.Fatalf("store layout %d, want %d", s.Layout(), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func clusterLayout(t *testing.T, cli *clientv3.Client) string {
	t.Helper()
	r, err := cli.Get(tctx(t, 5*time.Second), keys{DefaultPrefix}.layout())
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kvs) == 0 {
		return "absent"
	}
	return string(r.Kvs[0].Value)
}

// A cluster moves to the newest store layout every live registration
// supports, and only then; a release that does not support the cluster's
// layout does not register, and one that registers without reading it (a
// release before the layout key) is fenced by the others.
func TestLayoutMovesWhenEveryNodeSupportsIt(t *testing.T) {
	e := startEtcd(t, false)
	cli := dial(t, e.Endpoints())
	ctx := tctx(t, 60*time.Second)

	// A release of layouts 2-3 alone moves a fresh cluster to 3 at Open.
	a := open(t, cli, layoutConfig(t, "a", 2, 3))
	if l, v := a.Layout(), clusterLayout(t, cli); l != 3 || v != "3" {
		t.Fatalf("a alone: writes layout %d, the layout key %s; want 3", l, v)
	}

	// A release of layout 2 only does not register into it.
	if _, err := Open(ctx, cli, layoutConfig(t, "old", 2, 2)); !isLayoutError(err, 3) {
		t.Fatalf("Open of a release of layout 2 into a cluster at 3: %v, want a LayoutError", err)
	}

	// A newer release (layouts 3-4) joins; the cluster stays at 3 while a
	// is live, and moves to 4 when a leaves.
	b := open(t, cli, layoutConfig(t, "b", 3, 4))
	time.Sleep(500 * time.Millisecond) // a few of b's reads of the registry
	if l, v := b.Layout(), clusterLayout(t, cli); l != 3 || v != "3" {
		t.Fatalf("with a (2-3) live: b writes layout %d, the layout key %s; want 3", l, v)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	waitLayout(t, b, 4)
	if v := clusterLayout(t, cli); v != "4" {
		t.Fatalf("the layout key %s after a left, want 4", v)
	}
	// a's release cannot come back.
	if _, err := Open(ctx, cli, layoutConfig(t, "a", 2, 3)); !isLayoutError(err, 4) {
		t.Fatalf("Open of a release of layouts 2-3 into a cluster at 4: %v, want a LayoutError", err)
	}

	// A release before the layout key registers without reading it: b
	// deletes its registration (no write of it can commit: they compare
	// it).
	registerOlder(t, cli, "older", 9)
	for deadline := time.Now().Add(10 * time.Second); ; {
		r, err := cli.Get(ctx, b.k.node("older"), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		if r.Count == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the registration of a release before the layout key was not fenced")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if h := b.Health(); h.LayoutFenced != 1 || h.Layout != 4 {
		t.Fatalf("b's health: layout %d, fenced %d; want 4 and 1", h.Layout, h.LayoutFenced)
	}

	// A layout key this release does not know (a newer release moved the
	// cluster on, then was rolled back): b stops sending.
	if _, err := cli.Put(ctx, b.k.layout(), "9"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-b.Fenced():
	case <-time.After(10 * time.Second):
		t.Fatal("b not fenced at a layout it does not support")
	}
	if b.CanSend() {
		t.Fatal("b may send at a layout it does not support")
	}
}

// registered: the layout node id's registration names, -1 without one.
func registered(t *testing.T, s *Store, id string) int {
	t.Helper()
	r, err := s.readRegistry(tctx(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range r.nodes {
		if n.Node == id {
			return n.writes()
		}
	}
	return -1
}

// The cluster moves one layout at a time, and to the next only once every
// registration names the current one: each node names it RequestTimeout
// after it took it on, when every request it built in the one before has
// ended. A layout is read by nodes one behind it, never two. Only a node
// alone in Open, which has written nothing yet, moves several at once.
func TestLayoutMovesOneAtATime(t *testing.T) {
	e := startEtcd(t, false)
	cli := dial(t, e.Endpoints())
	conf := func(id string) Config {
		c := testConfig(t, id)
		c.KeepAliveInterval = 100 * time.Millisecond
		c.RequestTimeout = 2 * time.Second
		c.layoutMin, c.layoutMax = 2, 4
		return c
	}
	// A fresh node alone moves the cluster to its newest layout in Open.
	solo := open(t, dial(t, e.Endpoints()), func() Config { c := conf("solo"); c.Prefix = "/solo/"; return c }())
	if l, w := solo.Layout(), registered(t, solo, "solo"); l != 4 || w != 4 {
		t.Fatalf("a fresh node alone: writes %d, its registration names %d; want 4", l, w)
	}

	// x: a release of layouts 2-4 still writing 2. a moves the cluster
	// to 3 in Open, where it has written nothing in layout 2, and names 3
	// at once; x holds the next move.
	x := &pb.Node{Id: "x", Slot: 5, LayoutMin: 2, LayoutMax: 4, Layout: 2}
	lease := registerAs(t, cli, x)
	a := open(t, cli, conf("a"))
	if l, v, w := a.Layout(), clusterLayout(t, cli), registered(t, a, "a"); l != 3 || v != "3" || w != 3 {
		t.Fatalf("after Open: a writes %d, layout key %s, a's registration names %d; want 3, 3, 3", l, v, w)
	}
	// x names 3: a's next reading moves the cluster to 4; a takes it on
	// at once and names it only RequestTimeout later.
	x.Layout = 3
	v, _ := proto.Marshal(x)
	if _, err := cli.Put(tctx(t, 5*time.Second), a.k.node("x"), string(v), clientv3.WithLease(lease)); err != nil {
		t.Fatal(err)
	}
	waitLayout(t, a, 4)
	took := time.Now()
	if v := clusterLayout(t, cli); v != "4" {
		t.Fatalf("layout key %s, want 4", v)
	}
	if w := registered(t, a, "a"); w != 3 {
		t.Fatalf("a's registration names %d just after the move, want 3", w)
	}
	for registered(t, a, "a") != 4 {
		if time.Since(took) > 10*time.Second {
			t.Fatal("a never named layout 4")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if d := time.Since(took); d < time.Second {
		t.Fatalf("a named layout 4 %v after taking it on, before its requests of layout 3 could have ended", d)
	}
}

// A node that has not named the cluster's layout yet holds the next move.
func TestLayoutMoveWaitsForEveryNode(t *testing.T) {
	e := startEtcd(t, false)
	cli := dial(t, e.Endpoints())
	ctx := tctx(t, 30*time.Second)
	// x: a release of layouts 2-4 still writing 2.
	x := &pb.Node{Id: "x", Slot: 5, LayoutMin: 2, LayoutMax: 4, Layout: 2}
	lease := registerAs(t, cli, x)
	cfg := testConfig(t, "a")
	cfg.KeepAliveInterval = 100 * time.Millisecond
	cfg.layoutMin, cfg.layoutMax = 2, 4
	a := open(t, cli, cfg)
	if l := a.Layout(); l != 3 {
		t.Fatalf("layout %d after Open, want 3 (every node wrote 2)", l)
	}
	time.Sleep(time.Second) // ten of a's readings
	if l, v := a.Layout(), clusterLayout(t, cli); l != 3 || v != "3" {
		t.Fatalf("with x still writing layout 2: a writes %d, layout key %s; want 3", l, v)
	}
	// x names 3: the cluster moves on.
	x.Layout = 3
	v, _ := proto.Marshal(x)
	if _, err := cli.Put(ctx, a.k.node("x"), string(v), clientv3.WithLease(lease)); err != nil {
		t.Fatal(err)
	}
	waitLayout(t, a, 4)
}

func isLayoutError(err error, cluster int) bool {
	var le *LayoutError
	return errors.As(err, &le) && le.Cluster == cluster
}

// A move holds only if the registry is as read: a registration that came
// since (a release that may not support the new layout) fails it.
func TestLayoutMoveComparesTheRegistry(t *testing.T) {
	e := startEtcd(t, false)
	cli := dial(t, e.Endpoints())
	ctx := tctx(t, 30*time.Second)
	older := registerOlder(t, cli, "older", 7)
	cfg := testConfig(t, "a")
	cfg.KeepAliveInterval = 30 * time.Minute // no reads of the registry but the ones below
	cfg.LeaseTTL = time.Hour
	a := open(t, cli, cfg)
	if l := a.Layout(); l != 2 {
		t.Fatalf("layout %d with an older node registered, want 2", l)
	}
	if _, err := cli.Revoke(ctx, older); err != nil {
		t.Fatal(err)
	}
	r, err := a.readRegistry(ctx)
	if err != nil {
		t.Fatal(err)
	}
	registerOlder(t, cli, "older2", 8) // after the read
	a.followLayout(ctx, r)
	if l, v := a.Layout(), clusterLayout(t, cli); l != 2 || v != "absent" {
		t.Fatalf("a move on a registry read before an older node joined: layout %d, key %s", l, v)
	}
	if err := a.listKeyNodes(ctx); err != nil {
		t.Fatal(err)
	}
	if r, _ := cli.Get(ctx, a.k.node("older2"), clientv3.WithCountOnly()); r.Count != 1 {
		t.Fatal("a release before the layout key fenced in a cluster at layout 2")
	}
	if l := a.Layout(); l != 2 {
		t.Fatal(fmt.Sprint("layout ", l, " with an older node registered"))
	}
}

// waitNamed waits until s's registration names store layout want.
func waitNamed(t *testing.T, s *Store, want int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); registered(t, s, s.cfg.NodeID) != want; {
		if time.Now().After(deadline) {
			t.Fatalf("%s's registration names layout %d, want %d", s.cfg.NodeID, registered(t, s, s.cfg.NodeID), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ownedIndex lists the owned/ index entries under the prefix.
func ownedIndex(t *testing.T, cli *clientv3.Client) []string {
	t.Helper()
	r, err := cli.Get(tctx(t, 5*time.Second), DefaultPrefix+"owned/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, kv := range r.Kvs {
		out = append(out, string(kv.Key))
	}
	return out
}

// Store layout 4 drops the owned/ index: while a release of layouts 2-3
// is live the cluster stays at 3 and this release writes the index for
// it; the move to 4 deletes the index, SAs written at 4 make no entry,
// and a restarted node finds its SAs, from either layout, by their owner
// keys. The counts operators see come from the owner keys too.
func TestLayout4DropsTheOwnedIndex(t *testing.T) {
	e := startEtcd(t, false)
	cli := dial(t, e.Endpoints())
	ctx := tctx(t, 60*time.Second)
	conf := func(id string, lo, hi int) Config { return quickLayoutConfig(t, id, lo, hi) }
	establish := func(s *Store, spi uint64) {
		t.Helper()
		if err := s.Persist(ctx, Change{Kind: Established, Record: sampleRecord(spi)}); err != nil {
			t.Fatalf("SA %x: %v", spi, err)
		}
	}
	old := open(t, cli, conf("old", 2, 3))
	bcfg := conf("b", 2, 4)
	b := open(t, cli, bcfg)
	if l := b.Layout(); l != 3 {
		t.Fatalf("b writes layout %d with a release of 2-3 live, want 3", l)
	}
	establish(old, 0x100)
	establish(b, 0x200)
	if got := ownedIndex(t, cli); len(got) != 2 {
		t.Fatalf("owned/ index at layout 3: %v, want an entry for each SA", got)
	}
	// A hand-off at layout 3 moves the index entry for the older release.
	ob, _ := b.Registration()
	oo, _ := old.Registration()
	if err := b.HandOff(ctx, 0x200, sampleRecord(0x200), oo); err != nil {
		t.Fatal(err)
	}
	if got := ownedIndex(t, cli); len(got) != 2 || got[1] != old.k.owned("old", 0x200) {
		t.Fatalf("owned/ index after a hand-off at layout 3: %v", got)
	}
	if err := old.HandOff(ctx, 0x200, sampleRecord(0x200), ob); err != nil {
		t.Fatal(err)
	}

	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	waitLayout(t, b, 4)
	if got := ownedIndex(t, cli); len(got) != 0 {
		t.Fatalf("owned/ index after the move to layout 4: %v", got)
	}
	establish(b, 0x300)
	if got := ownedIndex(t, cli); len(got) != 0 {
		t.Fatalf("an SA established at layout 4 wrote %v", got)
	}
	counts, err := b.OwnedCounts(ctx)
	if err != nil || counts["b"] != 2 || counts["old"] != 1 {
		t.Fatalf("owned counts %v (%v), want b 2 and old 1", counts, err)
	}
	// An entry that a request built at layout 3 wrote after the move
	// goes once every live node names layout 4: here at b's next start.
	waitNamed(t, b, 4)
	if _, err := cli.Put(ctx, b.k.owned("b", 0x200), ""); err != nil {
		t.Fatal(err)
	}

	// b dies and comes back: its SAs of both layouts move to the new
	// epoch by their owner keys, and what was left of the index goes.
	b.Abandon()
	b2 := open(t, dial(t, e.Endpoints()), bcfg)
	recs, err := b2.LoadOwned(ctx)
	if err != nil || len(recs) != 2 {
		t.Fatalf("b restored %d SAs (%v), want 0x200 and 0x300", len(recs), err)
	}
	o2, _ := b2.Registration()
	for _, r := range recs {
		if _, o, err := b2.Load(ctx, r.LocalSPI()); err != nil || o != o2 {
			t.Fatalf("SA %x after the restart: owner %v (%v), want %v", r.LocalSPI(), o, err, o2)
		}
	}
	for deadline := time.Now().Add(10 * time.Second); len(ownedIndex(t, cli)) != 0; {
		if time.Now().After(deadline) {
			t.Fatalf("owned/ index after b's restart at layout 4: %v", ownedIndex(t, cli))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := b2.Persist(ctx, Change{Kind: Deleted, SPI: 0x300}); err != nil {
		t.Fatal(err)
	}
	if counts, err := b2.OwnedCounts(ctx); err != nil || counts["b"] != 1 {
		t.Fatalf("owned counts after a delete %v (%v), want b 1", counts, err)
	}
}

// Store layout 5 keeps an SA's reservations in its record. A node that
// supports it writes layout 4's form (record and seq/) while a release of
// layout 4 alone is live; once that one is gone the cluster moves on, and
// each SA of layout 4 is converted by its next record write: the record
// holds the reservations renewed under seq/, which is deleted in the same
// transaction. An SPI reserved in layout 4 (seq/ created empty with sa/)
// and established in layout 5 leaves no seq/ behind; reservations of
// either form are released whole; a renewal rewrites the record; a hand-off
// converts too.
func TestLayout5KeepsReservationsInTheRecord(t *testing.T) {
	e := startEtcd(t, false)
	cli := dial(t, e.Endpoints())
	ctx := tctx(t, 60*time.Second)
	conf := func(id string, lo, hi int) Config { return quickLayoutConfig(t, id, lo, hi) }
	seqKeys := func() []string {
		t.Helper()
		g, err := cli.Get(ctx, DefaultPrefix+"seq/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			t.Fatal(err)
		}
		var ks []string
		for _, kv := range g.Kvs {
			ks = append(ks, strings.TrimPrefix(string(kv.Key), DefaultPrefix))
		}
		return ks
	}
	has := func(spi uint64) bool { return slices.Contains(seqKeys(), seqName(spi)) }
	persist := func(s *Store, k ChangeKind, r *SARecord) {
		t.Helper()
		if err := s.Persist(ctx, Change{Kind: k, Record: r}); err != nil {
			t.Fatalf("%v of %x: %v", k, r.LocalSPI(), err)
		}
	}
	reserve := func(s *Store, spis ...uint64) {
		t.Helper()
		if ok, err := s.ReserveIKESPIs(ctx, spis); err != nil || slices.Contains(ok, false) {
			t.Fatalf("reserve %x: %v %v", spis, ok, err)
		}
	}
	old := open(t, cli, conf("old", 2, 4))
	b := open(t, cli, conf("b", 2, seqGone))
	waitLayout(t, b, 4)

	// Layout 4: b writes seq/ keys; an SA renewed, SPIs reserved ahead.
	reserve(b, 0xc001, 0xc002, 0xc003, 0xc004)
	renewed := sampleRecord(0xc001)
	persist(b, Established, renewed)
	renewed.Children[0].OutSeqReserved, renewed.NextOutReserved = 5<<20, 40
	persist(b, Reserved, renewed)
	handed := sampleRecord(0xc004)
	persist(b, Established, handed)
	if !has(0xc001) || !has(0xc002) || !has(0xc004) {
		t.Fatalf("layout 4: reservation keys %v", seqKeys())
	}

	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	waitLayout(t, b, seqGone)
	if got := clusterLayout(t, cli); got != "5" {
		t.Fatalf("cluster layout %q after the layout-4 release left, want 5", got)
	}

	// The renewed SA's next record write converts it: the record holds
	// the renewal, seq/ goes.
	persist(b, Updated, renewed)
	if has(0xc001) {
		t.Fatalf("seq/ of a converted SA left: %v", seqKeys())
	}
	check := func(spi uint64, out uint64, msg uint32) {
		t.Helper()
		got, _, err := b.Load(ctx, spi)
		if err != nil || got.Children[0].OutSeqReserved != out || got.NextOutReserved != msg {
			t.Fatalf("SA %x: %v, want out seq %d and message ID %d", spi, err, out, msg)
		}
	}
	check(0xc001, 5<<20, 40)
	// A renewal in layout 5 rewrites the record; no seq/ comes back.
	renewed.Children[0].OutSeqReserved, renewed.NextOutReserved = 6<<20, 56
	persist(b, Reserved, renewed)
	if has(0xc001) {
		t.Fatalf("a renewal in layout 5 wrote seq/: %v", seqKeys())
	}
	check(0xc001, 6<<20, 56)

	// Reserved in layout 4, established in layout 5: the empty seq/ goes.
	persist(b, Established, sampleRecord(0xc002))
	if has(0xc002) {
		t.Fatalf("seq/ placeholder of an SPI reserved in layout 4 left: %v", seqKeys())
	}
	check(0xc002, sampleRecord(0xc002).Children[0].OutSeqReserved, sampleRecord(0xc002).NextOutReserved)
	// Reservations of both forms released: none of their keys left.
	reserve(b, 0xc005)
	if err := b.ReleaseSPIs(ctx, []uint64{0xc003, 0xc005}, nil); err != nil {
		t.Fatal(err)
	}
	g, err := cli.Get(ctx, DefaultPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range g.Kvs {
		for _, spi := range []uint64{0xc003, 0xc005} {
			if strings.HasSuffix(string(kv.Key), fmt.Sprintf("%016x", spi)) {
				t.Fatalf("released reservation left %s", kv.Key)
			}
		}
	}
	// A hand-off in layout 5 writes the final record and deletes seq/.
	c := open(t, cli, conf("c", 2, seqGone))
	to, _ := c.Registration()
	handed.Children[0].OutSeqReserved = 7 << 20
	if err := b.HandOff(ctx, 0xc004, handed, to); err != nil {
		t.Fatal(err)
	}
	if has(0xc004) {
		t.Fatalf("seq/ of an SA handed off in layout 5 left: %v", seqKeys())
	}
	if got, o, err := c.Load(ctx, 0xc004); err != nil || o != to || got.Children[0].OutSeqReserved != 7<<20 {
		t.Fatalf("handed-off SA: %v %v", o, err)
	}
	// Deleting SAs of layout 5 leaves none of their record keys.
	for _, spi := range []uint64{0xc001, 0xc002} {
		if err := b.Persist(ctx, Change{Kind: Deleted, SPI: spi}); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{"sa/", "seq/"} {
		g, err := cli.Get(ctx, DefaultPrefix+k, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range g.Kvs {
			if !strings.HasSuffix(string(kv.Key), "000000000000c004") {
				t.Fatalf("left behind: %s", kv.Key)
			}
		}
	}
}

// A node that still writes store layout 4 after the cluster moved to 5
// (it takes the move on at its next reading of the layout key) and is
// handed an SA of layout 5 writes it in layout 4's form: its renewal
// creates seq/ again, its record write leaves the reservations there,
// and every read takes the higher of both. Once the node takes layout 5
// on, its next write converts the SA back.
func TestLayout4WriterAfterTheMove(t *testing.T) {
	e := startEtcd(t, false)
	cli := dial(t, e.Endpoints())
	ctx := tctx(t, 60*time.Second)
	old := open(t, cli, quickLayoutConfig(t, "old", 2, 4))
	b := open(t, cli, quickLayoutConfig(t, "b", 2, seqGone))
	// c reads the layout key every 20 s: the steps below fit well inside.
	ccfg := layoutConfig(t, "c", 2, seqGone)
	ccfg.LeaseTTL, ccfg.KeepAliveInterval, ccfg.FenceMargin = 60*time.Second, 20*time.Second, 10*time.Second
	c := open(t, cli, ccfg)
	waitLayout(t, b, 4)
	waitLayout(t, c, 4)
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	waitLayout(t, b, seqGone)
	if l := c.Layout(); l != 4 {
		t.Fatalf("c took layout %d on before its next reading", l)
	}
	seqKey := func() bool {
		t.Helper()
		g, err := cli.Get(ctx, b.k.seq(0xd001), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		return g.Count > 0
	}
	check := func(what string, out uint64, msg uint32, inline bool) {
		t.Helper()
		got, _, err := c.Load(ctx, 0xd001)
		if err != nil || got.Children[0].OutSeqReserved != out || got.NextOutReserved != msg {
			t.Fatalf("%s: %v, want out seq %d and message ID %d", what, err, out, msg)
		}
		g, err := cli.Get(ctx, c.k.sa(0xd001))
		if err != nil {
			t.Fatal(err)
		}
		if _, mark, err := c.codec.unmarshal(saName(0xd001), g.Kvs[0].Value, bindingOf(g.Kvs[0])); err != nil || mark != inline {
			t.Fatalf("%s: the record's mark %v (%v), want %v", what, mark, err, inline)
		}
	}
	r := sampleRecord(0xd001)
	r.Children[0].OutSeqReserved, r.NextOutReserved = 1<<20, 16
	if err := b.Persist(ctx, Change{Kind: Established, Record: r}); err != nil {
		t.Fatal(err)
	}
	to, _ := c.Registration()
	if err := b.HandOff(ctx, 0xd001, r, to); err != nil {
		t.Fatal(err)
	}
	if seqKey() {
		t.Fatal("an SA of layout 5 has a seq/ key")
	}
	// c, still at 4: the renewal goes to seq/, the record write leaves it.
	r.Children[0].OutSeqReserved, r.NextOutReserved = 2<<20, 32
	if err := c.Persist(ctx, Change{Kind: Reserved, Record: r}); err != nil {
		t.Fatal(err)
	}
	if !seqKey() {
		t.Fatal("a renewal in layout 4 wrote no seq/")
	}
	check("renewed in layout 4", 2<<20, 32, true)
	if err := c.Persist(ctx, Change{Kind: Updated, Record: r}); err != nil {
		t.Fatal(err)
	}
	check("written in layout 4", 2<<20, 32, false)
	if err := c.listKeyNodes(ctx); err != nil {
		t.Fatal(err)
	}
	waitLayout(t, c, seqGone)
	r.Children[0].OutSeqReserved, r.NextOutReserved = 3<<20, 48
	if err := c.Persist(ctx, Change{Kind: Reserved, Record: r}); err != nil {
		t.Fatal(err)
	}
	if seqKey() {
		t.Fatal("a renewal in layout 5 left seq/")
	}
	check("converted in layout 5", 3<<20, 48, true)
}
