package statestore

// Moving many SAs at once: a node joining or leaving the route, or one
// dying, moves a third of the fleet at a time. These read and move SAs
// in batches, one etcd transaction per batch: each SA's move is a nested
// transaction guarded by its owner record, under one guard on the
// registrations involved. A batch is at most Batch.MaxBatch SAs (etcd's
// --max-txn-ops limits the operations of each level of a transaction).

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	pb "github.com/ikefleet/ikefleet/api/statestore/v1"
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
)

// OwnerState is one SA's owner record as Owners read it.
type OwnerState struct {
	Owner Owner
	Found bool // the SA has an owner record
	Live  bool // the owner's registration (this epoch) is in the registry
}

// Owners reads the owners of many SAs and whether each owner is live, as
// one consistent read per batch (the registry read in the same
// transaction as the owner records).
func (s *Store) Owners(ctx context.Context, spis []uint64) ([]OwnerState, error) {
	out := make([]OwnerState, len(spis))
	per := max(1, min(readBatch, s.cfg.Batch.MaxBatch)-1)
	for lo := 0; lo < len(spis); lo += per {
		chunk := spis[lo:min(lo+per, len(spis))]
		ops := make([]clientv3.Op, 0, len(chunk)+1)
		ops = append(ops, clientv3.OpGet(s.k.p+"nodes/", clientv3.WithPrefix()))
		for _, spi := range chunk {
			ops = append(ops, clientv3.OpGet(s.k.owner(spi)))
		}
		rc, cancel := s.rctx(ctx)
		resp, err := s.txn(rc).Then(ops...).Commit()
		cancel()
		s.noteResult(err)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		live := map[string]int64{}
		for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
			var n pb.Node
			if proto.Unmarshal(kv.Value, &n) == nil {
				live[n.Id] = kv.CreateRevision
			}
		}
		for i := range chunk {
			kvs := resp.Responses[i+1].GetResponseRange().Kvs
			if len(kvs) == 0 {
				continue
			}
			o, err := parseOwner(kvs[0].Value)
			if err != nil {
				return nil, err
			}
			out[lo+i] = OwnerState{Owner: o, Found: true, Live: live[o.Node] == o.Epoch}
		}
	}
	return out, nil
}

// Moved is the outcome of one SA in TakeOverMany or HandOffMany.
type Moved struct {
	SPI    uint64
	Record *SARecord // TakeOverMany: the stored record, now ours
	Err    error     // nil: moved; *OwnerError: its owner is not the one named
}

// TakeOverMany makes this node the owner of SAs whose owner from is dead
// (its registration gone), returning their records: one transaction per
// batch, guarded by from's registration being gone and ours being
// current, each SA by its owner record still naming from. A live from
// gives *OwnerError for every SA (ask it to hand them off); a fenced
// store ErrFenced.
func (s *Store) TakeOverMany(ctx context.Context, from Owner, spis []uint64) ([]Moved, error) {
	reg := s.current()
	if !reg.usable() {
		return nil, ErrFenced
	}
	me := reg.owner
	out := make([]Moved, 0, len(spis))
	per := max(1, s.cfg.Batch.MaxBatch)
	layout := s.Layout()
	for lo := 0; lo < len(spis); lo += per {
		chunk := spis[lo:min(lo+per, len(spis))]
		ops := make([]clientv3.Op, len(chunk))
		for i, spi := range chunk {
			ok := s.k.owner(spi)
			then := []clientv3.Op{clientv3.OpPut(ok, me.value()), clientv3.OpGet(s.k.sa(spi)), clientv3.OpGet(s.k.seq(spi))}
			then = s.k.appendOwnedMove(then, spi, from.Node, me.Node, layout)
			ops[i] = clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.Value(ok), "=", from.value())},
				then, []clientv3.Op{clientv3.OpGet(ok)})
		}
		rc, cancel := s.rctx(ctx)
		resp, err := s.txn(rc).If(
			clientv3.Compare(clientv3.CreateRevision(s.k.node(from.Node)), "!=", from.Epoch),
			s.regCmp(me),
		).Then(ops...).Else(clientv3.OpGet(s.k.node(from.Node)), clientv3.OpGet(s.k.node(me.Node))).Commit()
		cancel()
		s.noteResult(err)
		if err != nil {
			return out, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		if !resp.Succeeded {
			if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) == 0 || kvs[0].CreateRevision != me.Epoch {
				return out, ErrFenced
			}
			for _, spi := range chunk {
				out = append(out, Moved{SPI: spi, Err: &OwnerError{SPI: spi, Owner: from}})
			}
			continue
		}
		for i, spi := range chunk {
			t := resp.Responses[i].GetResponseTxn()
			if !t.Succeeded {
				out = append(out, Moved{SPI: spi, Err: s.ownerErr(spi, t.Responses[0].GetResponseRange().Kvs)})
				continue
			}
			kvs := t.Responses[1].GetResponseRange().Kvs
			if len(kvs) == 0 {
				out = append(out, Moved{SPI: spi, Err: fmt.Errorf("%w: %016x has an owner but no record", ErrNotFound, spi)})
				continue
			}
			rec, err := s.decode(spi, kvs[0], t.Responses[2].GetResponseRange().Kvs, true)
			out = append(out, Moved{SPI: spi, Record: rec, Err: err})
		}
	}
	return out, nil
}

// ownerErr explains a failed per-SA guard from the owner record read in
// its else branch.
func (s *Store) ownerErr(spi uint64, kvs []*mvccpb.KeyValue) error {
	if len(kvs) == 0 {
		return fmt.Errorf("%w: %016x", ErrNotFound, spi)
	}
	o, err := parseOwner(kvs[0].Value)
	if err != nil {
		return err
	}
	return &OwnerError{SPI: spi, Owner: o}
}

// HandOffMany moves SAs this node owns to the live node to, writing each
// one's final state in the same transaction: one per batch, guarded by
// both registrations, each SA by its owner record naming us. The caller
// has frozen the SAs; those whose Moved.Err is an *OwnerError were not
// ours any more. A top-level error leaves the whole batch unmoved
// (restore it), except ErrFenced (stop acting for it).
func (s *Store) HandOffMany(ctx context.Context, finals []*SARecord, to Owner) ([]Moved, error) {
	reg := s.current()
	if !reg.usable() {
		return nil, ErrFenced
	}
	out := make([]Moved, 0, len(finals))
	per := max(1, s.cfg.Batch.MaxBatch)
	for lo := 0; lo < len(finals); lo += per {
		chunk := finals[lo:min(lo+per, len(finals))]
		res := make([]Moved, len(chunk))
		todo := make([]int, len(chunk))
		for i := range todo {
			todo[i] = i
		}
		for attempt := 0; len(todo) > 0; attempt++ {
			var err error
			todo, err = s.handOffBatch(ctx, reg, chunk, todo, res, to, attempt < maxStale)
			if err != nil {
				return out, err
			}
		}
		out = append(out, res...)
	}
	return out, nil
}

// handOffBatch moves finals[i] for i in todo in one transaction, setting
// res[i]; it returns those to try again (their record keys were written
// by someone else since the store last saw them; retry false: give them
// errStale).
func (s *Store) handOffBatch(ctx context.Context, reg *registration, finals []*SARecord, todo []int, res []Moved, to Owner, retry bool) ([]int, error) {
	me := reg.owner
	layout := s.Layout()
	ws := make([]sealedWrite, len(todo))
	for j, i := range todo {
		ws[j] = sealedWrite{spi: finals[i].LocalSPI(), sa: true, seq: layout < seqGone}
	}
	if err := s.prepare(ctx, reg, ws); err != nil {
		return nil, err
	}
	ops := make([]clientv3.Op, len(todo))
	for j, i := range todo {
		f := finals[i]
		spi := f.LocalSPI()
		rv, _ := s.revs.get(spi)
		ok := s.k.owner(spi)
		then, err := s.finalOps([]clientv3.Op{clientv3.OpPut(ok, to.value())}, f, rv, layout)
		if err != nil {
			return nil, err
		}
		then = s.k.appendOwnedMove(then, spi, me.Node, to.Node, layout)
		ops[j] = clientv3.OpTxn(s.handOffCmps(spi, me, rv), then,
			[]clientv3.Op{clientv3.OpGet(ok), clientv3.OpGet(s.k.sa(spi)), clientv3.OpGet(s.k.seq(spi))})
	}
	rc, cancel := s.rctx(ctx)
	resp, err := s.txn(rc).If(s.regCmp(me), s.regCmp(to)).Then(ops...).
		Else(clientv3.OpGet(s.k.node(me.Node))).Commit()
	cancel()
	s.noteResult(err)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if !resp.Succeeded {
		if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) == 0 || kvs[0].CreateRevision != me.Epoch {
			return nil, ErrFenced
		}
		return nil, fmt.Errorf("statestore: hand-off: target %s not registered", to)
	}
	var again []int
	for j, i := range todo {
		spi := finals[i].LocalSPI()
		t := resp.Responses[j].GetResponseTxn()
		rv, _ := s.revs.get(spi)
		s.revs.forget(spi) // moved, or to be read again
		if t.Succeeded {
			res[i] = Moved{SPI: spi}
			continue
		}
		err := s.handOffRefused(spi, me, rv, t.Responses)
		if err == nil {
			err = errStale // raced: the keys changed and changed back
		}
		if err == errStale && retry {
			again = append(again, i)
			continue
		}
		res[i] = Moved{SPI: spi, Err: err}
	}
	return again, nil
}

// finalOps appends the writes of an SA's final state (a hand-off's) to
// ops, over its record keys as the store last saw them (rv) in store
// layout layout: the record, and before layout 5 its reservations where
// seq/<spi> holds none yet; from layout 5 the record holds them and a
// seq/<spi> an older layout left is deleted (handOffCmps compares it).
func (s *Store) finalOps(ops []clientv3.Op, f *SARecord, rv saRevs, layout int) ([]clientv3.Op, error) {
	spi := f.LocalSPI()
	v, err := s.marshalRecord(f, rv.sa.binding().next(), layout)
	if err != nil {
		return nil, err
	}
	ops = append(ops, opPut(s.k.sa(spi), v))
	switch {
	case layout >= seqGone && rv.seq.mod != 0:
		ops = append(ops, clientv3.OpDelete(s.k.seq(spi)))
	case layout < seqGone && rv.seq.empty:
		sv, err := s.codec.MarshalReservations(seqName(spi), ReservationsOf(f), rv.seq.binding().next())
		if err != nil {
			return nil, err
		}
		ops = append(ops, clientv3.OpPut(s.k.seq(spi), string(sv)))
	}
	return ops, nil
}

// marshalRecord seals r for its record key at binding at, in store
// layout layout's form: from layout 5 with all of its reservations
// (MarshalInline).
func (s *Store) marshalRecord(r *SARecord, at Binding, layout int) ([]byte, error) {
	if layout >= seqGone {
		return s.codec.MarshalInline(saName(r.LocalSPI()), r, at)
	}
	return s.codec.Marshal(saName(r.LocalSPI()), r, at)
}

// handOffCmps guards the hand-off of one SA: it is ours, and its record
// keys are as the store last saw them (rv), so that a record or
// reservations put back are found, not overwritten.
func (s *Store) handOffCmps(spi uint64, me Owner, rv saRevs) []clientv3.Cmp {
	return []clientv3.Cmp{clientv3.Compare(clientv3.Value(s.k.owner(spi)), "=", me.value()),
		clientv3.Compare(clientv3.ModRevision(s.k.sa(spi)), "=", rv.sa.mod),
		clientv3.Compare(clientv3.ModRevision(s.k.seq(spi)), "=", rv.seq.mod)}
}

// handOffRefused explains a failed hand-off guard from its Else responses
// (owner, record, reservations): another owner (*OwnerError), a record or
// reservations rolled back (*RollbackError), keys legitimately written
// since (errStale), or nil: none of these (the keys are as expected, rv).
func (s *Store) handOffRefused(spi uint64, me Owner, rv saRevs, rs []*etcdserverpb.ResponseOp) error {
	kvs := rs[0].GetResponseRange().GetKvs()
	if len(kvs) == 0 {
		return fmt.Errorf("%w: %016x", ErrNotFound, spi)
	}
	if o, err := parseOwner(kvs[0].Value); err != nil || o != me {
		return s.ownerErr(spi, kvs)
	}
	sa, seq := rs[1].GetResponseRange().GetKvs(), rs[2].GetResponseRange().GetKvs()
	var saKV, seqKV *mvccpb.KeyValue
	if len(sa) > 0 {
		saKV = sa[0]
		if _, err := s.decode(spi, saKV, seq, false); errors.Is(err, ErrRollback) {
			return err
		}
	}
	if len(seq) > 0 {
		seqKV = seq[0]
	}
	if keyRevOf(saKV).mod == rv.sa.mod && keyRevOf(seqKV).mod == rv.seq.mod {
		return nil
	}
	return errStale
}

// LoadMany reads the records and owners of many SAs, a batch per
// transaction, a few transactions at once (reads: no order to keep). A
// missing record is ErrNotFound in its Moved.Err. On an error, the SAs
// whose batch was not read have no outcome (a zero Moved.SPI).
func (s *Store) LoadMany(ctx context.Context, spis []uint64) ([]Moved, []Owner, error) {
	out := make([]Moved, len(spis))
	owners := make([]Owner, len(spis))
	per := max(1, min(readBatch, s.cfg.Batch.MaxBatch)/3)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	sem := make(chan struct{}, loadManyInflight)
	for lo := 0; lo < len(spis); lo += per {
		chunk := spis[lo:min(lo+per, len(spis))]
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := s.loadChunk(ctx, chunk, out[lo:], owners[lo:]); err != nil {
				mu.Lock()
				first = cmp.Or(first, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return out, owners, first
}

// loadManyInflight: LoadMany's read transactions under way at once.
const loadManyInflight = 4

// loadChunk reads one LoadMany batch into out and owners.
func (s *Store) loadChunk(ctx context.Context, chunk []uint64, out []Moved, owners []Owner) error {
	ops := make([]clientv3.Op, 0, 3*len(chunk))
	for _, spi := range chunk {
		ops = append(ops, clientv3.OpGet(s.k.owner(spi)), clientv3.OpGet(s.k.sa(spi)), clientv3.OpGet(s.k.seq(spi)))
	}
	rc, cancel := s.rctx(ctx)
	resp, err := s.txn(rc).Then(ops...).Commit()
	cancel()
	s.noteResult(err)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	for i, spi := range chunk {
		m := &out[i]
		m.SPI = spi
		if kvs := resp.Responses[3*i].GetResponseRange().Kvs; len(kvs) > 0 {
			owners[i], _ = parseOwner(kvs[0].Value)
		}
		kvs := resp.Responses[3*i+1].GetResponseRange().Kvs
		if len(kvs) == 0 {
			m.Err = fmt.Errorf("%w: %016x", ErrNotFound, spi)
			continue
		}
		m.Record, m.Err = s.decode(spi, kvs[0], resp.Responses[3*i+2].GetResponseRange().Kvs, true)
	}
	return nil
}

// NodeEvent is a registration that began or ended.
type NodeEvent struct {
	NodeInfo
	Gone    bool // the registration ended: lease expired or revoked
	Updated bool // a live registration changed (the keys it holds: Store.AdvertiseKeys)
}

// WatchNodes calls f for every registration that ends (its lease expired
// or was revoked), begins or changes, as etcd reports it, until ctx ends. A
// broken watch goes on where it was; if etcd compacted that history
// meanwhile, it lists the registry again and reports the registrations
// that ended meanwhile. f runs on the watch's goroutine.
func (s *Store) WatchNodes(ctx context.Context, f func(NodeEvent)) {
	known := map[string]NodeInfo{}
	s.followPrefix(ctx, s.k.p+"nodes/", func(kvs []*mvccpb.KeyValue) {
		now := map[string]NodeInfo{}
		for _, kv := range kvs {
			if ni, ok := nodeInfoOf(kv); ok {
				now[ni.Node] = ni
			}
		}
		for id, ni := range known {
			if cur, ok := now[id]; !ok || cur.Epoch != ni.Epoch {
				f(NodeEvent{NodeInfo: ni, Gone: true})
			}
		}
		for id, ni := range now {
			if old, ok := known[id]; !ok || old.Epoch != ni.Epoch {
				f(NodeEvent{NodeInfo: ni})
			}
		}
		known = now
	}, func(ev *clientv3.Event) {
		switch {
		case ev.Type == clientv3.EventTypeDelete && ev.PrevKv != nil:
			if ni, ok := nodeInfoOf(ev.PrevKv); ok {
				if cur, ok := known[ni.Node]; ok && cur.Epoch == ni.Epoch {
					delete(known, ni.Node)
				}
				f(NodeEvent{NodeInfo: ni, Gone: true})
			}
		case ev.Type == clientv3.EventTypePut:
			if ni, ok := nodeInfoOf(ev.Kv); ok {
				known[ni.Node] = ni
				f(NodeEvent{NodeInfo: ni, Updated: !ev.IsCreate()})
			}
		}
	}, nil, clientv3.WithPrevKV())
}

// followPrefix lists the keys under prefix (list gets them), then watches
// them from the listing's revision on (event gets each change, opts added
// to the watch), until ctx ends. A watch that breaks (its etcd member lost
// its leader, the stream failed) resumes after the last revision it
// reported, so that every change is reported once and in etcd's order
// across the break; only when that revision's history is compacted does
// it list again (and list gets the keys as they are then). synced, if not
// nil, is called after the listing with its revision, after every watch
// response with its last event's, and with the revision of each progress
// notification: every change under prefix up to that revision has been
// reported (etcd never splits one revision's events between responses).
func (s *Store) followPrefix(ctx context.Context, prefix string, list func([]*mvccpb.KeyValue), event func(*clientv3.Event), synced func(rev int64), opts ...clientv3.OpOption) {
	next := int64(0) // the revision the watch goes on from; 0: list first
	for ctx.Err() == nil {
		if next == 0 {
			rc, cancel := s.rctx(ctx)
			resp, err := s.cli.Get(rc, prefix, clientv3.WithPrefix())
			cancel()
			s.noteResult(err)
			if err != nil {
				sleepCtx(ctx, s.cfg.KeepAliveInterval)
				continue
			}
			list(resp.Kvs)
			if synced != nil {
				synced(resp.Header.Revision)
			}
			next = resp.Header.Revision + 1
		}
		wctx, wcancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wopts := append([]clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithRev(next), clientv3.WithProgressNotify(),
			clientv3.WithCreatedNotify()}, opts...)
		var werr error
		created := false
		for wr := range s.cli.Watch(wctx, prefix, wopts...) {
			created = created || wr.Created
			if werr = wr.Err(); werr != nil {
				if wr.CompactRevision != 0 || errors.Is(werr, rpctypes.ErrCompacted) {
					next = 0 // the history from next on is gone
				}
				break
			}
			if n := len(wr.Events); n > 0 {
				for _, ev := range wr.Events {
					event(ev)
				}
				next = wr.Events[n-1].Kv.ModRevision + 1
				if synced != nil {
					synced(next - 1)
				}
			} else if wr.IsProgressNotify() && wr.Header.Revision >= next {
				next = wr.Header.Revision + 1
				if synced != nil {
					synced(next - 1)
				}
			}
		}
		wcancel()
		if ctx.Err() != nil {
			return
		}
		if next == 0 {
			s.watchRelists.Add(1)
			s.log.Warn("statestore: watch history compacted, listing again", "prefix", prefix, "err", fmt.Sprint(werr))
			continue
		}
		if created { // not a watch etcd refused to create again (its member still has no leader)
			s.watchResumes.Add(1)
			s.log.Info("statestore: watch broken, resuming", "prefix", prefix, "from", next, "err", fmt.Sprint(werr))
		}
		sleepCtx(ctx, min(s.cfg.KeepAliveInterval, time.Second))
	}
}

func nodeInfoOf(kv *mvccpb.KeyValue) (NodeInfo, bool) {
	var n pb.Node
	if err := proto.Unmarshal(kv.Value, &n); err != nil {
		return NodeInfo{}, false
	}
	return NodeInfo{Owner: Owner{Node: n.Id, Epoch: kv.CreateRevision}, Slot: int(n.Slot),
		PeerAddr: n.PeerAddr, Registered: timeOf(n.RegisteredMs), KeyIDs: n.KeyIds,
		LayoutMin: n.LayoutMin, LayoutMax: n.LayoutMax, Layout: n.Layout}, true
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
