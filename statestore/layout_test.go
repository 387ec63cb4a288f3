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
	ctx := tctx(t, 10*time.Second)
	l, err := cli.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := proto.Marshal(&pb.Node{Id: id, Slot: uint32(slot), RegisteredMs: time.Now().UnixMilli(), Lease: int64(l.ID)})
	k := keys{DefaultPrefix}
	r, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(k.node(id)), "=", 0)).
		Then(clientv3.OpPut(k.node(id), string(v), clientv3.WithLease(l.ID)), clientv3.OpPut(k.slot(slot), id, clientv3.WithLease(l.ID))).Commit()
	if err != nil || !r.Succeeded {
		t.Fatalf("registering %s: %v", id, err)
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
