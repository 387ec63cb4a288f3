package statestore

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func spiHex(spi uint64) string { return fmt.Sprintf("%016x", spi) }

// ReserveIKESPIs claims IKE SPIs cluster-wide (create-if-absent, on the
// node's lease until the SA is stored). ok[i] says whether spis[i] is now
// ours; a taken SPI is simply not ok. Reserve ahead, in blocks, to keep
// etcd out of the IKE_SA_INIT path.
//
// The reservation is the SA's record keys, sa/ and (before store layout
// 5) seq/, created empty (so that its first records can be bound to them,
// revs.go, without a transaction of their own): while they exist no other
// node can reserve the SPI, and the SA's records then take them over.
// Releases before this one also wrote spi/ike/<spi>; they check sa/ and
// seq/ as well, so both kinds of node keep each other's SPIs apart, and
// spi/ike/ keys still stored are deleted with their SAs.
func (s *Store) ReserveIKESPIs(ctx context.Context, spis []uint64) ([]bool, error) {
	keys := make([]string, len(spis))
	for i, x := range spis {
		keys[i] = s.k.sa(x)
	}
	seq := s.Layout() < seqGone
	var extra func(int) []string
	if seq {
		extra = func(i int) []string { return []string{s.k.seq(spis[i])} }
	}
	ok, revs, err := s.reserve(ctx, keys, "", extra)
	for i, got := range ok {
		if got {
			s.revs.reservedAt(spis[i], revs[i], seq)
		}
	}
	return ok, err
}

// ReserveESPSPIs claims inbound ESP SPIs like ReserveIKESPIs.
func (s *Store) ReserveESPSPIs(ctx context.Context, spis []uint32) ([]bool, error) {
	keys := make([]string, len(spis))
	for i, x := range spis {
		keys[i] = s.k.espSPI(x)
	}
	ok, _, err := s.reserve(ctx, keys, s.cfg.NodeID, nil)
	return ok, err
}

// reserve claims keys (create-if-absent, on the node's lease, with value),
// each with the keys extra(i) created empty alongside (none of them may
// exist either); revs[i]: the revision of keys[i]'s claim.
func (s *Store) reserve(ctx context.Context, keys []string, value string, extra func(int) []string) (ok []bool, revs []int64, err error) {
	reg := s.current()
	if reg.done.Load() {
		return nil, nil, ErrFenced
	}
	ok, revs = make([]bool, len(keys)), make([]int64, len(keys))
	// The keys' compares and puts share two arrays a transaction, and the
	// puts are copies of one (putsOnLease).
	put := putsOnLease(reg.lease)
	for lo := 0; lo < len(keys); lo += s.cfg.Batch.MaxBatch {
		hi := min(lo+s.cfg.Batch.MaxBatch, len(keys))
		ops := make([]clientv3.Op, 0, hi-lo)
		per := 1
		if extra != nil {
			per += len(extra(lo))
		}
		cmpsAll, thenAll := make([]clientv3.Cmp, 0, (hi-lo)*per), make([]clientv3.Op, 0, (hi-lo)*per)
		for i, k := range keys[lo:hi] {
			c0, t0 := len(cmpsAll), len(thenAll)
			cmpsAll = append(cmpsAll, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
			thenAll = append(thenAll, put(k, value))
			if extra != nil {
				for _, x := range extra(lo + i) {
					cmpsAll = append(cmpsAll, clientv3.Compare(clientv3.CreateRevision(x), "=", 0))
					thenAll = append(thenAll, put(x, ""))
				}
			}
			ops = append(ops, clientv3.OpTxn(cmpsAll[c0:len(cmpsAll):len(cmpsAll)], thenAll[t0:len(thenAll):len(thenAll)], nil))
		}
		rc, cancel := s.rctx(ctx)
		resp, err := s.txn(rc).Then(ops...).Commit()
		cancel()
		s.noteResult(err)
		if err != nil {
			return ok, revs, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		for i, r := range resp.Responses {
			ok[lo+i] = r.GetResponseTxn().Succeeded
			revs[lo+i] = resp.Header.Revision
		}
	}
	return ok, revs, nil
}

// ReleaseSPIs frees reservations that were never used for a stored SA
// (a half-open SA that failed). SPIs of stored SAs are freed by the
// Deleted, ChildDeleted and ChildRekeyed changes.
func (s *Store) ReleaseSPIs(ctx context.Context, ike []uint64, esp []uint32) error {
	reg := s.current()
	var ops []clientv3.Op
	del := func(k string) {
		ops = append(ops, clientv3.OpTxn(
			[]clientv3.Cmp{clientv3.Compare(clientv3.Value(k), "=", s.cfg.NodeID)},
			[]clientv3.Op{clientv3.OpDelete(k)}, nil))
	}
	for _, x := range ike {
		// The record keys created empty with the reservation, if still
		// ours and empty: sa/ and seq/, or from store layout 5 sa/ alone.
		sa, seq := s.k.sa(x), s.k.seq(x)
		empty := func(k string) []clientv3.Cmp {
			return []clientv3.Cmp{clientv3.Compare(clientv3.Value(k), "=", ""), clientv3.Compare(clientv3.LeaseValue(k), "=", reg.lease)}
		}
		alone := clientv3.OpTxn(append(empty(sa), clientv3.Compare(clientv3.CreateRevision(seq), "=", 0)),
			[]clientv3.Op{clientv3.OpDelete(sa)}, nil)
		ops = append(ops, clientv3.OpTxn(append(empty(sa), empty(seq)...),
			[]clientv3.Op{clientv3.OpDelete(sa), clientv3.OpDelete(seq)}, []clientv3.Op{alone}))
		s.revs.forget(x)
	}
	for _, x := range esp {
		del(s.k.espSPI(x))
	}
	for lo := 0; lo < len(ops); lo += s.cfg.Batch.MaxBatch {
		hi := min(lo+s.cfg.Batch.MaxBatch, len(ops))
		rc, cancel := s.rctx(ctx)
		_, err := s.txn(rc).Then(ops[lo:hi]...).Commit()
		cancel()
		s.noteResult(err)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
	}
	return nil
}

// Load reads an SA's record and owner. ErrNotFound when there is none.
func (s *Store) Load(ctx context.Context, spi uint64) (*SARecord, Owner, error) {
	rc, cancel := s.rctx(ctx)
	defer cancel()
	resp, err := s.txn(rc).Then(clientv3.OpGet(s.k.owner(spi)), clientv3.OpGet(s.k.sa(spi)), clientv3.OpGet(s.k.seq(spi))).Commit()
	s.noteResult(err)
	if err != nil {
		return nil, Owner{}, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	var o Owner
	if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
		if o, err = parseOwner(kvs[0].Value); err != nil {
			return nil, Owner{}, err
		}
	}
	kvs := resp.Responses[1].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return nil, o, fmt.Errorf("%w: %016x", ErrNotFound, spi)
	}
	r, err := s.decode(spi, kvs[0], resp.Responses[2].GetResponseRange().Kvs, false)
	return r, o, err
}

// decode opens an SA's record (kv, as read with its metadata) and raises
// its reservations to those renewed since (seq, empty or one key-value).
// A record or reservations rolled back give *RollbackError (counted,
// logged): the SA is not restored from them. note: the SA is, or becomes,
// this node's; its keys' metadata is kept for its next writes.
func (s *Store) decode(spi uint64, kv *mvccpb.KeyValue, seq []*mvccpb.KeyValue, note bool) (*SARecord, error) {
	r, err := s.decodeRec(spi, kv, seq)
	if errors.Is(err, ErrRollback) {
		s.rollbacks.Add(1)
		s.log.Warn("statestore: rolled-back record refused; SA not restored", "spi", spiHex(spi), "err", err)
	}
	if err == nil && note {
		s.noteRead(spi, kv, seq)
	}
	return r, err
}

func (s *Store) decodeRec(spi uint64, kv *mvccpb.KeyValue, seq []*mvccpb.KeyValue) (*SARecord, error) {
	if len(kv.Value) == 0 {
		// A placeholder: the key was created for a record never written.
		return nil, fmt.Errorf("%w: %016x has no record yet", ErrNotFound, spi)
	}
	r, inline, err := s.codec.unmarshal(saName(spi), kv.Value, bindingOf(kv))
	if err != nil {
		return nil, err
	}
	// A record with its reservations inline (layout 5) needs no seq/<spi>:
	// its binding alone keeps it from being rolled back. One that is there
	// (written by a node still at layout 4 since) can only raise them.
	if rec, _ := splitRecord(kv.Value); rec.version == RecordVersion && !inline {
		// Written with its reservations in the current layout: without
		// them (deleted, emptied, or an older layout put back) the SA
		// would restore from the record's older ones.
		var found Binding
		var sv uint32
		if len(seq) > 0 {
			found = bindingOf(seq[0])
			sr, _ := splitRecord(seq[0].Value)
			sv = sr.version
		}
		if len(seq) == 0 || len(seq[0].Value) == 0 || sv == legacyRecordVersion {
			return nil, &RollbackError{Key: seqName(spi), Found: found, Reason: "reservations missing or of the older layout"}
		}
	}
	if len(seq) == 0 || len(seq[0].Value) == 0 {
		return r, nil
	}
	res, err := s.codec.UnmarshalReservations(seqName(spi), seq[0].Value, bindingOf(seq[0]))
	if err != nil {
		// Without its renewed reservations the SA would reuse sequence
		// numbers: refuse it rather than restore it short.
		return nil, err
	}
	r.Apply(res)
	return r, nil
}

// bindingOf is a key's metadata as a record stored under it must be
// bound.
func bindingOf(kv *mvccpb.KeyValue) Binding {
	return Binding{CreateRevision: kv.CreateRevision, Version: kv.Version}
}

// Owner reads an SA's owner record and whether that registration is live.
func (s *Store) Owner(ctx context.Context, spi uint64) (o Owner, live bool, err error) {
	rc, cancel := s.rctx(ctx)
	defer cancel()
	resp, err := s.cli.Get(rc, s.k.owner(spi))
	s.noteResult(err)
	if err != nil {
		return Owner{}, false, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if len(resp.Kvs) == 0 {
		return Owner{}, false, fmt.Errorf("%w: %016x", ErrNotFound, spi)
	}
	if o, err = parseOwner(resp.Kvs[0].Value); err != nil {
		return Owner{}, false, err
	}
	n, err := s.cli.Get(rc, s.k.node(o.Node))
	if err != nil {
		return o, false, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return o, len(n.Kvs) > 0 && n.Kvs[0].CreateRevision == o.Epoch, nil
}

// TakeOver makes this node the owner of an SA whose owner is dead (its
// registration is gone) and returns the stored record, in one
// transaction: owner unchanged since revision r AND the owner's node key
// is gone (AND we are still registered). A live owner gives *OwnerError
// naming it: ask it over peer.v1 to HandOff. Two nodes racing: exactly
// one wins, the other gets *OwnerError naming the winner.
func (s *Store) TakeOver(ctx context.Context, spi uint64) (*SARecord, error) {
	reg := s.current()
	if !reg.usable() {
		return nil, ErrFenced
	}
	me := reg.owner
	cur, live, err := s.Owner(ctx, spi)
	if err != nil {
		return nil, err
	}
	if cur == me {
		r, _, err := s.Load(ctx, spi)
		return r, err
	}
	if live {
		return nil, &OwnerError{SPI: spi, Owner: cur}
	}
	rc, cancel := s.rctx(ctx)
	defer cancel()
	ok, r, err := s.transfer(rc, spi, cur, me, nil, true)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, s.lostRace(ctx, spi, me)
	}
	return r, nil
}

// lostRace explains a failed ownership transaction.
func (s *Store) lostRace(ctx context.Context, spi uint64, me Owner) error {
	o, _, err := s.Owner(ctx, spi)
	if err != nil {
		return err
	}
	if o == me {
		return nil
	}
	if !s.stillRegistered(ctx, me) {
		return ErrFenced
	}
	return &OwnerError{SPI: spi, Owner: o}
}

// HandOff moves an SA this node owns to a live node, writing its final
// state in the same transaction (owner unchanged since r AND the
// owner is me handing off). The caller has frozen the SA and stops acting
// for it whatever the result, unless the error is retryable.
func (s *Store) HandOff(ctx context.Context, spi uint64, final *SARecord, to Owner) error {
	reg := s.current()
	if !reg.usable() {
		return ErrFenced
	}
	if final != nil && final.LocalSPI() != spi {
		return fmt.Errorf("statestore: hand-off of %016x with the record of %016x", spi, final.LocalSPI())
	}
	rc, cancel := s.rctx(ctx)
	defer cancel()
	var ok bool
	var err error
	for attempt := 0; ; attempt++ {
		ok, _, err = s.transfer(rc, spi, reg.owner, to, final, false)
		if err != errStale || attempt == maxStale {
			break
		}
	}
	if err != nil {
		return err
	}
	if !ok {
		if err := s.lostRace(ctx, spi, reg.owner); err != nil {
			return err
		}
		return fmt.Errorf("statestore: hand-off of %016x: target %s not registered", spi, to)
	}
	return nil
}

// transfer is the ownership transaction. from is the owner read at
// revision r (read here); dead: require from's registration to be gone
// (takeover), else require from to be us (handoff) and to to be live.
func (s *Store) transfer(ctx context.Context, spi uint64, from, to Owner, final *SARecord, dead bool) (bool, *SARecord, error) {
	ok := s.k.owner(spi)
	g, err := s.cli.Get(ctx, ok)
	s.noteResult(err)
	if err != nil {
		return false, nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if len(g.Kvs) == 0 {
		return false, nil, fmt.Errorf("%w: %016x", ErrNotFound, spi)
	}
	if o, _ := parseOwner(g.Kvs[0].Value); o != from {
		return false, nil, &OwnerError{SPI: spi, Owner: o}
	}
	r := g.Kvs[0].ModRevision
	cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(ok), "=", r)}
	if dead {
		cmps = append(cmps,
			clientv3.Compare(clientv3.CreateRevision(s.k.node(from.Node)), "!=", from.Epoch),
			s.regCmp(to))
	} else {
		cmps = append(cmps,
			clientv3.Compare(clientv3.Value(ok), "=", from.value()),
			s.regCmp(from),
			s.regCmp(to))
	}
	then := []clientv3.Op{clientv3.OpPut(ok, to.value())}
	then = s.k.appendOwnedMove(then, spi, from.Node, to.Node, s.Layout())
	var rv saRevs
	var els []clientv3.Op
	if final != nil {
		// The final state goes over the record as this node last saw it,
		// and over its reservations: a record or reservations put back
		// since are found (*RollbackError), not overwritten.
		layout := s.Layout()
		if err := s.prepare(ctx, s.current(), []sealedWrite{{spi: spi, sa: true, seq: layout < seqGone}}); err != nil {
			return false, nil, err
		}
		rv, _ = s.revs.get(spi)
		cmps = append(cmps, s.handOffCmps(spi, from, rv)[1:]...)
		if then, err = s.finalOps(then, final, rv, layout); err != nil {
			return false, nil, err
		}
		els = []clientv3.Op{clientv3.OpGet(ok), clientv3.OpGet(s.k.sa(spi)), clientv3.OpGet(s.k.seq(spi))}
	}
	then = append(then, clientv3.OpGet(s.k.sa(spi)), clientv3.OpGet(s.k.seq(spi)))
	resp, err := s.txn(ctx).If(cmps...).Then(then...).Else(els...).Commit()
	s.noteResult(err)
	if err != nil {
		return false, nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if final != nil {
		s.revs.forget(spi) // moved, or to be read again
	}
	if !resp.Succeeded {
		if final != nil {
			if err := s.handOffRefused(spi, from, rv, resp.Responses); err != nil {
				var oe *OwnerError
				if errors.As(err, &oe) || errors.Is(err, ErrNotFound) {
					return false, nil, nil // lostRace explains
				}
				return false, nil, err
			}
		}
		return false, nil, nil
	}
	kvs := resp.Responses[len(resp.Responses)-2].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return true, nil, fmt.Errorf("%w: %016x has an owner but no record", ErrNotFound, spi)
	}
	rec, err := s.decode(spi, kvs[0], resp.Responses[len(resp.Responses)-1].GetResponseRange().Kvs, dead)
	return true, rec, err
}

// ownedPage: keys per page of ownersOf and OwnedCounts. etcd visits the
// whole rest of the range for every page (to count it), so listing n
// keys costs about n²/(2·ownedPage) visits: at 1,000 a page, a node
// owning 50,000 SAs made etcd visit 1.25M keys for each re-registration.
// Since store layout 4 the listing reads the whole cluster's owner keys
// (about 60 bytes each, so a page is about 3 MB): BenchmarkListOwners,
// 400,000 of them, 2.31 s at 10,000 a page, 0.99 s at 50,000, 1.08 s at
// 100,000 (the rest is per key, about 2.5 µs).
const ownedPage = 50000

// ownerEntry is one owner/ key as listed: the SA, its owner and the
// key's ModRevision.
type ownerEntry struct {
	spi   uint64
	owner Owner
	mod   int64
}

// ownersOf lists the owner/ keys that name node id (any epoch): the SAs
// the cluster gives that node. Every release writes owner/ keys, so this
// holds in every store layout; the owned/ index of layouts 2 and 3 is
// not read (layout 4 has none).
func (s *Store) ownersOf(ctx context.Context, id string) ([]ownerEntry, error) {
	var out []ownerEntry
	err := s.eachOwner(ctx, func(e ownerEntry) {
		if e.owner.Node == id {
			out = append(out, e)
		}
	})
	return out, err
}

// eachOwner hands visit every owner/ key of the cluster whose value
// parses, reading them a page at a time.
func (s *Store) eachOwner(ctx context.Context, visit func(ownerEntry)) error {
	prefix := s.k.p + "owner/"
	return s.eachPage(ctx, prefix, ownedPage, func(kvs []*mvccpb.KeyValue) error {
		for _, kv := range kvs {
			spi, ok := parseSPIKey(string(kv.Key), prefix)
			if !ok {
				continue
			}
			if o, err := parseOwner(kv.Value); err == nil {
				visit(ownerEntry{spi, o, kv.ModRevision})
			}
		}
		return nil
	})
}

// eachKeyPage reads the keys under prefix (keys only) page keys at a
// time, with the options opts too, and hands each page to visit until
// visit returns an error, which it returns. A failed read is
// ErrUnavailable.
func (s *Store) eachKeyPage(ctx context.Context, prefix string, page int64, visit func([]*mvccpb.KeyValue) error, opts ...clientv3.OpOption) error {
	return s.eachPage(ctx, prefix, page, visit, append([]clientv3.OpOption{clientv3.WithKeysOnly()}, opts...)...)
}

// eachPage is eachKeyPage with the keys' values.
func (s *Store) eachPage(ctx context.Context, prefix string, page int64, visit func([]*mvccpb.KeyValue) error, opts ...clientv3.OpOption) error {
	from := prefix
	opts = append([]clientv3.OpOption{clientv3.WithRange(clientv3.GetPrefixRangeEnd(prefix)), clientv3.WithLimit(page)}, opts...)
	for {
		rc, cancel := s.rctx(ctx)
		resp, err := s.cli.Get(rc, from, opts...)
		cancel()
		s.noteResult(err)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		if err := visit(resp.Kvs); err != nil {
			return err
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// reclaim moves this node's SAs from its earlier epochs to the current
// one (each a takeover from our dead past self) and returns the SAs it
// owns now.
func (s *Store) reclaim(ctx context.Context) ([]uint64, error) {
	reg := s.current()
	if reg.done.Load() {
		return nil, ErrFenced
	}
	me := reg.owner
	listed, err := s.ownersOf(ctx, me.Node)
	if err != nil {
		return nil, err
	}
	owned := make([]uint64, 0, len(listed))
	var earlier []ownerEntry
	for _, e := range listed {
		if e.owner == me {
			owned = append(owned, e.spi)
		} else {
			earlier = append(earlier, e)
		}
	}
	for lo := 0; lo < len(earlier); lo += readBatch {
		chunk := earlier[lo:min(lo+readBatch, len(earlier))]
		moves := make([]clientv3.Op, len(chunk))
		for i, e := range chunk {
			// As listed, or changed since (deleted, handed off, taken
			// over): then not ours to move. The owned/ index of layouts 2
			// and 3 is by node id and holds it already.
			moves[i] = clientv3.OpTxn(
				[]clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(s.k.owner(e.spi)), "=", e.mod)},
				[]clientv3.Op{clientv3.OpPut(s.k.owner(e.spi), me.value())}, nil)
		}
		rc, cancel := s.rctx(ctx)
		tr, err := s.txn(rc).If(s.regCmp(me)).Then(moves...).Commit()
		cancel()
		s.noteResult(err)
		if err != nil {
			return owned, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		if !tr.Succeeded {
			return owned, ErrFenced
		}
		for i, r := range tr.Responses {
			if r.GetResponseTxn().Succeeded {
				owned = append(owned, chunk[i].spi)
			}
		}
	}
	return owned, nil
}

// LoadOwned reclaims this node's SAs from its earlier lives (a restart
// after a crash, or a re-registration after a fence) and returns their
// records: what a restarted node restores. Records that fail to decode
// are skipped and reported in the error (a *LoadError).
func (s *Store) LoadOwned(ctx context.Context) ([]*SARecord, error) {
	spis, err := s.reclaim(ctx)
	if err != nil {
		return nil, err
	}
	recs := make([]*SARecord, 0, len(spis))
	var bad LoadError
	const per = readBatch / 2 // two keys per SA: record and reservations
	for lo := 0; lo < len(spis); lo += per {
		chunk := spis[lo:min(lo+per, len(spis))]
		gets := make([]clientv3.Op, 2*len(chunk))
		for i, spi := range chunk {
			gets[2*i] = clientv3.OpGet(s.k.sa(spi))
			gets[2*i+1] = clientv3.OpGet(s.k.seq(spi))
		}
		rc, cancel := s.rctx(ctx)
		resp, err := s.txn(rc).Then(gets...).Commit()
		cancel()
		s.noteResult(err)
		if err != nil {
			return recs, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		for i, spi := range chunk {
			kvs := resp.Responses[2*i].GetResponseRange().Kvs
			if len(kvs) == 0 {
				bad.Errs = append(bad.Errs, fmt.Errorf("%w: %016x owned but no record", ErrNotFound, spi))
				continue
			}
			r, err := s.decode(spi, kvs[0], resp.Responses[2*i+1].GetResponseRange().Kvs, true)
			if err != nil {
				bad.Errs = append(bad.Errs, err)
				continue
			}
			recs = append(recs, r)
		}
	}
	if len(bad.Errs) > 0 {
		return recs, &bad
	}
	return recs, nil
}

// LoadError lists the records LoadOwned could not restore.
type LoadError struct{ Errs []error }

func (e *LoadError) Error() string {
	return "statestore: " + strconv.Itoa(len(e.Errs)) + " owned records not loaded; first: " + e.Errs[0].Error()
}

func (e *LoadError) Unwrap() []error { return e.Errs }
