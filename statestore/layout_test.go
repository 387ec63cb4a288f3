package statestore

import (
	"errors"
	"fmt"
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
	conf := func(id string, lo, hi int) Config {
		c := testConfig(t, id)
		c.KeepAliveInterval = 100 * time.Millisecond
		c.layoutMin, c.layoutMax = lo, hi
		return c
	}

	// A release of layouts 2-3 alone moves a fresh cluster to 3 at Open.
	a := open(t, cli, conf("a", 2, 3))
	if l, v := a.Layout(), clusterLayout(t, cli); l != 3 || v != "3" {
		t.Fatalf("a alone: writes layout %d, the layout key %s; want 3", l, v)
	}

	// A release of layout 2 only does not register into it.
	if _, err := Open(ctx, cli, conf("old", 2, 2)); !isLayoutError(err, 3) {
		t.Fatalf("Open of a release of layout 2 into a cluster at 3: %v, want a LayoutError", err)
	}

	// A newer release (layouts 3-4) joins; the cluster stays at 3 while a
	// is live, and moves to 4 when a leaves.
	b := open(t, cli, conf("b", 3, 4))
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
	if _, err := Open(ctx, cli, conf("a", 2, 3)); !isLayoutError(err, 4) {
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
