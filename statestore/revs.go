package statestore

// Revision bindings (rollback protection). A sealed record (sa/<spi>,
// seq/<spi>) carries in its AAD the create revision of its key and the
// version the write gives the key (Binding); readers compare them with the
// key's metadata as read. Someone with write access to etcd who copies an
// older value back bumps the key's version; one who deletes the key and
// creates it again changes its create revision: either way the record
// gives *RollbackError instead of old reservations.
//
// From store layout 5 new records hold their reservations and there is
// no seq/<spi> (layout.go); the record's binding alone protects them.
//
// A writer must know the binding before it writes, so:
//   - a sealed record is only ever written over an existing key: a key
//     about to get its first record is created empty first (a placeholder,
//     on the node's lease until the record detaches it), in its own
//     transaction, whose revision is then the key's create revision;
//   - the store keeps, per SA it writes, the metadata of its two keys as
//     last read or written (revs), and each write compares the key's
//     ModRevision with it. A key changed by anyone else (Rewrap, the
//     previous owner, an attacker) fails that compare; the store forgets
//     what it knew, reads the metadata again and retries.

import (
	"context"
	"fmt"
	"sync"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// keyRev is one key's metadata as the store last saw it; mod == 0: the
// key does not exist.
type keyRev struct {
	create, mod, version int64
	empty                bool // no record in the current layout yet: a placeholder or a legacy record (known for seq/ keys only)
}

func (k keyRev) binding() Binding { return Binding{k.create, k.version} }

func keyRevOf(kv *mvccpb.KeyValue) keyRev {
	if kv == nil {
		return keyRev{}
	}
	return keyRev{kv.CreateRevision, kv.ModRevision, kv.Version, !currentLayout(kv.Value)}
}

// currentLayout: a record (not a placeholder) in the current layout.
func currentLayout(v []byte) bool {
	r, err := splitRecord(v)
	return len(v) > 0 && err == nil && r.version == RecordVersion
}

// saRevs: an SA's record key and reservation key.
type saRevs struct{ sa, seq keyRev }

type revTable struct {
	mu sync.Mutex
	m  map[uint64]saRevs
	// reserved: IKE SPIs reserved (ReserveIKESPIs) with their record keys
	// created empty; at most maxReservedRevs of them (an SPI not listed
	// costs its first write a prepare transaction).
	reserved map[uint64]reservedKeys
}

// reservedKeys: the revision that created an SPI's record keys empty, and
// whether it created seq/<spi> too (before store layout 5).
type reservedKeys struct {
	rev int64
	seq bool
}

// revs are the metadata of the record keys reserved as k says.
func (k reservedKeys) revs() saRevs {
	r := saRevs{sa: keyRev{k.rev, k.rev, 1, true}}
	if k.seq {
		r.seq = r.sa
	}
	return r
}

const maxReservedRevs = 1 << 16

func (t *revTable) get(spi uint64) (saRevs, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r, ok := t.m[spi]
	if !ok {
		if k, res := t.reserved[spi]; res {
			return k.revs(), true
		}
	}
	return r, ok
}

// reservedAt records that spi's record keys were created empty at rev
// (seq: seq/<spi> as well as sa/<spi>).
func (t *revTable) reservedAt(spi uint64, rev int64, seq bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.reserved == nil {
		t.reserved = map[uint64]reservedKeys{}
	}
	if len(t.reserved) < maxReservedRevs {
		t.reserved[spi] = reservedKeys{rev, seq}
	}
}

func (t *revTable) set(spi uint64, r saRevs) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[uint64]saRevs{}
	}
	t.m[spi] = r
	delete(t.reserved, spi)
}

func (t *revTable) forget(spi uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.m, spi)
	delete(t.reserved, spi)
}

// wrote records a committed write at revision rev of the SA's record
// (sa) and/or reservations (seq), or the delete of its reservations key
// (seqDeleted: a record of layout 5 took them in).
func (t *revTable) wrote(spi uint64, sa, seq, seqDeleted bool, rev int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r, ok := t.m[spi]
	if !ok {
		k, res := t.reserved[spi]
		if !res {
			return
		}
		r = k.revs()
		delete(t.reserved, spi)
		if t.m == nil {
			t.m = map[uint64]saRevs{}
		}
	}
	if sa {
		r.sa.mod, r.sa.version, r.sa.empty = rev, r.sa.version+1, false
	}
	if seq {
		r.seq.mod, r.seq.version, r.seq.empty = rev, r.seq.version+1, false
	}
	if seqDeleted {
		r.seq = keyRev{}
	}
	t.m[spi] = r
}

// writes tells which of an SA's sealed keys a change writes in store
// layout layout, and for which SPI (an IKE rekey: the new one).
func (c *Change) writes(layout int) (spi uint64, sa, seq bool) {
	// Before layout 5 a record in the current layout has its reservations
	// (decodeRec: without them, deleting seq/<spi> would hand back the
	// record's older ones): a new SA's are written with it, and so are
	// those of an SA whose seq/<spi> is still empty (build). seq here: the
	// key must exist. From layout 5 the record holds them all and a
	// renewal rewrites it; seq/<spi> is only deleted where an older layout
	// left one.
	switch c.Kind {
	case Established, IKERekeyed, ChildCreated, ChildRekeyed, ChildDeleted, AddressChanged, Updated:
		return c.Record.LocalSPI(), true, layout < seqGone
	case Reserved:
		return c.Record.LocalSPI(), layout >= seqGone, layout < seqGone
	}
	return 0, false, false
}

// sealedWrite is one SA's keys to be written with their expected
// metadata.
type sealedWrite struct {
	spi     uint64
	sa, seq bool
}

// ready reports whether the store knows the metadata of the keys w
// writes, each existing.
func (s *Store) ready(w sealedWrite) bool {
	r, ok := s.revs.get(w.spi)
	return ok && (!w.sa || r.sa.mod != 0) && (!w.seq || r.seq.mod != 0)
}

// prepare makes sure the store knows the metadata of the keys each write
// in ws writes, each existing, and of the SA's other record key: it reads
// them, and creates the missing ones it writes empty (on the node's
// lease: a write that never comes leaves nothing behind the node), in
// transactions of at most MaxBatch keys. (From store layout 5 no write
// needs seq/<spi>; it is read, so that a record write deletes one an
// older layout left.)
func (s *Store) prepare(ctx context.Context, reg *registration, ws []sealedWrite) error {
	var ops []clientv3.Op
	var spis []uint64
	create := func(k string, isSeq bool) clientv3.Op {
		return clientv3.OpTxn(
			[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(k), "=", 0)},
			[]clientv3.Op{clientv3.OpPut(k, "", clientv3.WithLease(reg.lease))},
			[]clientv3.Op{getMeta(k, isSeq)})
	}
	for _, w := range ws {
		if s.ready(w) {
			continue
		}
		sa, seq := getMeta(s.k.sa(w.spi), false), getMeta(s.k.seq(w.spi), true)
		if w.sa {
			sa = create(s.k.sa(w.spi), false)
		}
		if w.seq {
			seq = create(s.k.seq(w.spi), true)
		}
		ops = append(ops, sa, seq)
		spis = append(spis, w.spi)
	}
	per := max(2, s.cfg.Batch.MaxBatch) &^ 1 // both keys of an SA in one
	for lo := 0; lo < len(ops); lo += per {
		hi := min(lo+per, len(ops))
		rc, cancel := s.rctx(ctx)
		resp, err := s.txn(rc).Then(ops[lo:hi]...).Commit()
		cancel()
		s.noteResult(err)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		for i := lo; i < hi; i += 2 {
			var r saRevs
			for j, kr := range []*keyRev{&r.sa, &r.seq} {
				got := resp.Responses[i-lo+j].GetResponseRange()
				if t := resp.Responses[i-lo+j].GetResponseTxn(); t != nil {
					if t.Succeeded {
						*kr = keyRev{resp.Header.Revision, resp.Header.Revision, 1, true}
						continue
					}
					got = t.Responses[0].GetResponseRange()
				}
				if kvs := got.GetKvs(); len(kvs) > 0 {
					*kr = keyRevOf(kvs[0])
				}
			}
			s.revs.set(spis[i/2], r)
		}
	}
	return nil
}

// getMeta reads a record key's metadata; a seq/ key's value too (small),
// to tell a placeholder.
func getMeta(k string, isSeq bool) clientv3.Op {
	if isSeq {
		return opGet(k)
	}
	return opGetKeysOnly(k)
}

// errStale: a write's expected metadata did not hold (the key was written
// by someone else since); the store forgets it and retries.
var errStale = fmt.Errorf("statestore: record key changed since last seen")

// noteRead records the metadata of an SA's keys as read, for the writes
// that follow (the SA is, or becomes, this node's).
func (s *Store) noteRead(spi uint64, sa *mvccpb.KeyValue, seq []*mvccpb.KeyValue) {
	r := saRevs{sa: keyRevOf(sa)}
	r.sa.empty = false
	if len(seq) > 0 {
		r.seq = keyRevOf(seq[0])
	}
	s.revs.set(spi, r)
}
