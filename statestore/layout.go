package statestore

// Store layouts and rolling upgrades.
//
// The keys a node writes for an SA, and what it reads and compares of
// them, are the store's layout. Nodes of different releases share a
// cluster during a rolling upgrade, and a node that misreads another's
// keys can lose or double-claim an SA, so the layout changes only when
// every live node can read and write the new one:
//   - The cluster's layout is the value of the key "layout" under the
//     prefix; without it, layout 2 (the releases before the key).
//   - A registration publishes the layouts its release supports
//     (Node.layout_min, layout_max). A release registers only into a
//     cluster whose layout it supports (*LayoutError otherwise), its
//     registration compared with the layout key as read.
//   - Each node reads the registry and the layout key together, at Open
//     and every KeepAliveInterval (followKeys), takes on a new layout as
//     it reads it, and names it in its registration (Node.layout) once
//     every request it built in the one before has ended (RequestTimeout
//     after). When every live registration names the current layout and
//     supports the next, a node moves the cluster one layout on, in one
//     transaction that also migrates what the one before left. The
//     transaction holds only if the layout key and every registration are
//     as read (no node joined or changed since), so one node moves it,
//     once. So a layout only has to be read right by nodes still writing
//     the one before it (expand, then contract, over two layouts), never
//     by nodes two layouts behind.
//   - Releases before the layout key do not read it. One that registers
//     into a cluster that moved on is fenced by the others: they delete
//     its registration, so none of its writes commits (they all compare
//     it), and its SAs are taken over as a dead node's.
//
// Layouts:
//
//	2  the record keys sa/ and seq/ reserve an IKE SPI; an SA's delete also
//	   deletes spi/ike/<spi>, the reservation of releases before them
//	3  no spi/ike/ keys: the move deletes those left, and an SA's delete
//	   no longer looks for one (a write fewer per SA)
//	4  no owned/<node>/ index: a node lists its SAs by the owner/ keys
//	   that name it (every release writes them; this one reads them in
//	   every layout), so an SA keeps one key and makes two writes fewer;
//	   the move deletes the index, and once every live registration
//	   names layout 4 each node deletes what is left of it once more
//	   (entries that requests built in layout 3 wrote after the move:
//	   sweepOwnedIndex)
//	5  no seq/ keys for new records: a record holds all of its SA's
//	   reservations (marked so in its authenticated clear part,
//	   reservations_inline), a renewal rewrites it, and the SPI's
//	   reservation creates sa/ alone; an SA's first record write in
//	   layout 5 deletes the seq/ key an older layout left (its
//	   reservations are in the record: build), so an SA makes three
//	   writes fewer. Records of both forms are read in every layout;
//	   nodes still writing layout 4 write SAs of layout 5 in layout 4's
//	   form (a seq/ key created again). Nothing to migrate at the move.

import (
	"context"
	"fmt"
	"strconv"
	"time"

	pb "github.com/ikefleet/ikefleet/api/statestore/v1"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The store layouts this release reads and writes.
const (
	LayoutMin = 2
	LayoutMax = 5
	// layoutUnset: the layout of a cluster without the layout key, and
	// the only one registrations without layouts support.
	layoutUnset = 2
	// ownedGone: the first layout without the owned/ index.
	ownedGone = 4
	// seqGone: the first layout whose records hold all of their SA's
	// reservations, without a seq/ key.
	seqGone = 5
)

// LayoutError: the cluster's store layout is not one this release reads
// and writes.
type LayoutError struct {
	Cluster  int // the cluster's layout
	Min, Max int // the layouts the release supports
}

func (e *LayoutError) Error() string {
	what := "a newer release moved the cluster on: run one that supports it"
	if e.Cluster < e.Min {
		what = "the cluster has not moved on yet: upgrade it through a release that supports both"
	}
	return fmt.Sprintf("the cluster's store layout is %d; this release reads and writes layouts %d to %d (%s)",
		e.Cluster, e.Min, e.Max, what)
}

// layouts: the layouts a registration supports.
func (n NodeInfo) layouts() (lo, hi int) {
	if n.LayoutMax == 0 {
		return layoutUnset, layoutUnset
	}
	return int(n.LayoutMin), int(n.LayoutMax)
}

func (n NodeInfo) supports(layout int) bool {
	lo, hi := n.layouts()
	return lo <= layout && layout <= hi
}

// Layout is the cluster's store layout as this store last read it: the
// one it writes.
func (s *Store) Layout() int { return int(s.layout.Load()) }

func (s *Store) supportsLayout(l int) bool { return s.cfg.layoutMin <= l && l <= s.cfg.layoutMax }

func (s *Store) layoutError(l int) *LayoutError {
	return &LayoutError{Cluster: l, Min: s.cfg.layoutMin, Max: s.cfg.layoutMax}
}

// layoutOf reads the layout key's value (kvs: its Get; none: the key is
// absent, layout 2) and its ModRevision (0: absent).
func layoutOf(kvs []*mvccpb.KeyValue) (layout int, mod int64, err error) {
	if len(kvs) == 0 {
		return layoutUnset, 0, nil
	}
	l, err := strconv.Atoi(string(kvs[0].Value))
	if err != nil || l < 1 {
		return 0, 0, &CorruptError{Key: string(kvs[0].Key), Reason: "not a store layout"}
	}
	return l, kvs[0].ModRevision, nil
}

// registry is the registrations and the layout key, read at one revision.
type registry struct {
	nodes     []NodeInfo
	layout    int
	layoutMod int64
	rev       int64
}

// readRegistry reads the live registrations and the cluster's layout in
// one request.
func (s *Store) readRegistry(ctx context.Context) (registry, error) {
	rc, cancel := s.rctx(ctx)
	defer cancel()
	resp, err := s.txn(rc).Then(clientv3.OpGet(s.k.p+"nodes/", clientv3.WithPrefix()), clientv3.OpGet(s.k.layout())).Commit()
	s.noteResult(err)
	if err != nil {
		return registry{}, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	r := registry{rev: resp.Header.Revision}
	if r.nodes, err = nodesOf(resp.Responses[0].GetResponseRange().Kvs); err != nil {
		return registry{}, err
	}
	r.layout, r.layoutMod, err = layoutOf(resp.Responses[1].GetResponseRange().Kvs)
	return r, err
}

// tookLayout makes l the layout the store writes from now on;
// registered: it is the one its registration was written with.
func (s *Store) tookLayout(l int, registered bool) {
	s.layoutMu.Lock()
	defer s.layoutMu.Unlock()
	s.layout.Store(int32(l))
	s.layoutSince = time.Now()
	if registered {
		s.published = l
	}
}

// publishDue: the store's registration should name the store's current
// layout now: it names another, and every request the store built in
// that one has ended (each ends within RequestTimeout), or it built none
// (Open has not returned).
func (s *Store) publishDue() bool {
	s.layoutMu.Lock()
	defer s.layoutMu.Unlock()
	return s.published != s.Layout() && (!s.opened.Load() || time.Since(s.layoutSince) >= s.cfg.RequestTimeout)
}

// publishLayout writes layout l, taken on at least RequestTimeout ago,
// into the node's registration.
func (s *Store) publishLayout(ctx context.Context, l int) {
	if err := s.updateRegistration(ctx, func(n *pb.Node) { n.Layout = uint32(l) }); err != nil {
		s.log.Warn("statestore: naming the store layout in the registration failed", "layout", l, "err", err)
		return
	}
	s.layoutMu.Lock()
	s.published = l
	s.layoutMu.Unlock()
}

// sweepOwnedIndex deletes what is left of the owned/ index once every
// live registration names store layout 4 or later: entries that requests
// built in layout 3 wrote after the move deleted the index (a node takes
// a new layout on at its next reading of the layout key). By then none
// is in flight: a node names a layout once every request it built in the
// one before has ended, and a node no longer registered commits nothing.
// Each store sweeps once; no release that reads the index takes part in
// layout 4.
func (s *Store) sweepOwnedIndex(ctx context.Context, r registry) {
	if r.layout < ownedGone || s.ownedSwept.Load() {
		return
	}
	for _, n := range r.nodes {
		if n.writes() < ownedGone {
			return
		}
	}
	prefix := s.k.p + "owned/"
	rc, cancel := s.rctx(ctx)
	defer cancel()
	left, err := s.cli.Get(rc, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err == nil && left.Count > 0 {
		_, err = s.txn(rc).Then(clientv3.OpDelete(prefix, clientv3.WithPrefix())).Commit()
	}
	s.noteResult(err)
	if err != nil {
		s.log.Warn("statestore: deleting what is left of the owned/ index failed", "err", err)
		return
	}
	s.ownedSwept.Store(true)
	if left.Count > 0 {
		s.log.Info("statestore: deleted what was left of the owned/ index", "entries", left.Count)
	}
}

// writes: the layout a registration names as the one it writes.
func (n NodeInfo) writes() int {
	if n.LayoutMax == 0 {
		return layoutUnset
	}
	return int(n.Layout)
}

// followLayout acts on the registry as read: takes on the cluster's
// layout (or fences this node if its release does not support it), names
// it in the registration once the requests made in the one before have
// ended, fences registrations whose release does not support it, and
// moves the cluster on by one layout when every live registration writes
// its current one and supports the next.
func (s *Store) followLayout(ctx context.Context, r registry) {
	if was := s.Layout(); r.layout != was {
		if !s.supportsLayout(r.layout) {
			if reg := s.current(); reg != nil {
				s.fence(reg, s.layoutError(r.layout).Error())
			}
			return
		}
		s.tookLayout(r.layout, false)
		s.log.Info("statestore: the cluster's store layout changed", "layout", r.layout, "was", was)
	}
	if s.publishDue() {
		s.publishLayout(ctx, r.layout)
		return // the registry changed: move on from the next reading
	}
	s.sweepOwnedIndex(ctx, r)
	next, move := r.layout+1, s.supportsLayout(r.layout+1)
	for _, n := range r.nodes {
		switch {
		case n.Node != s.cfg.NodeID && !n.supports(r.layout):
			s.fenceRegistration(ctx, n, r.layout)
			move = false
		case n.writes() != r.layout || !n.supports(next):
			move = false
		}
	}
	if move {
		s.moveLayout(ctx, r, next)
	}
}

// moveLayout moves the cluster from r.layout to layout next, with its
// migrations, if the registry and the layout key are still as read and
// this node's registration is live.
func (s *Store) moveLayout(ctx context.Context, r registry, next int) {
	reg := s.current()
	if reg == nil || reg.done.Load() {
		return
	}
	ops := append(s.migrations(next), clientv3.OpPut(s.k.layout(), strconv.Itoa(next)))
	rc, cancel := s.rctx(ctx)
	defer cancel()
	resp, err := s.txn(rc).If(
		clientv3.Compare(clientv3.ModRevision(s.k.layout()), "=", r.layoutMod),
		clientv3.Compare(clientv3.ModRevision(s.k.p+"nodes/"), "<", r.rev+1).WithPrefix(),
		s.regCmp(reg.owner),
	).Then(ops...).Commit()
	s.noteResult(err)
	if err != nil {
		s.log.Warn("statestore: moving the cluster's store layout failed", "layout", next, "err", err)
		return
	}
	if !resp.Succeeded {
		return // the registry changed: read again at the next tick
	}
	s.tookLayout(next, false)
	s.log.Info("statestore: moved the cluster's store layout: every live node writes the one before and supports it", "layout", next, "was", r.layout, "nodes", len(r.nodes))
	if s.publishDue() { // in Open: nothing written in the one before
		s.publishLayout(ctx, next)
	}
}

// migrations are the writes that bring the keys of layout l-1 to layout l.
func (s *Store) migrations(l int) []clientv3.Op {
	switch l {
	case 3:
		return []clientv3.Op{clientv3.OpDelete(s.k.p+"spi/ike/", clientv3.WithPrefix())}
	case ownedGone:
		return []clientv3.Op{clientv3.OpDelete(s.k.p+"owned/", clientv3.WithPrefix())}
	}
	return nil
}

// fenceRegistration deletes registration n, whose release does not
// support the cluster's layout, if it is still as read.
func (s *Store) fenceRegistration(ctx context.Context, n NodeInfo, layout int) {
	nk := s.k.node(n.Node)
	rc, cancel := s.rctx(ctx)
	defer cancel()
	resp, err := s.txn(rc).If(clientv3.Compare(clientv3.CreateRevision(nk), "=", n.Epoch)).Then(clientv3.OpDelete(nk)).Commit()
	s.noteResult(err)
	if err != nil || !resp.Succeeded {
		return
	}
	lo, hi := n.layouts()
	s.layoutFenced.Add(1)
	s.log.Error("statestore: fenced a node whose release cannot read or write the cluster's store layout; upgrade it",
		"fenced", n.Node, "epoch", n.Epoch, "layout", layout, "its_layouts", fmt.Sprintf("%d-%d", lo, hi))
}
