package statestore

import (
	"context"
	"fmt"
	"hash/fnv"
	"net/netip"
	"sync"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ChangeKind names an SA state change worth persisting. DPD and
// keepalives are not state changes: nothing is written for them.
type ChangeKind uint8

const (
	Established    ChangeKind = iota + 1 // IKE SA authenticated, first CHILD SA
	ChildCreated                         // CREATE_CHILD_SA for a new CHILD SA
	ChildRekeyed                         // CHILD SA replaced; Released names the old inbound SPI
	ChildDeleted                         // CHILD SA removed; Released names its inbound SPI
	IKERekeyed                           // IKE SA replaced: Record under a new local SPI, OldSPI the previous
	AddressChanged                       // MOBIKE / NAT mapping change
	Updated                              // anything else the engine wants persisted
	Deleted                              // IKE SA gone: SPI (or Record) names it
	// Reserved renews reservations (ESP sequence numbers, IKE message
	// IDs): only Record's reservations are written, under seq/<spi>, a
	// few dozen bytes instead of the whole record; from store layout 5,
	// which keeps them in the record, the record itself.
	Reserved
	// addressReleased ends a virtual IP lease (ReleaseAddressAsync).
	addressReleased
	barrier // Flush marker
)

var kindNames = [...]string{"", "established", "child-created", "child-rekeyed", "child-deleted",
	"ike-rekeyed", "address-changed", "updated", "deleted", "reserved", "address-released", "barrier"}

func (k ChangeKind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("change(%d)", k)
}

// Change is one SA state change: the full state after it, plus what it
// freed.
type Change struct {
	Kind     ChangeKind
	Record   *SARecord // state after the change; for Deleted optional
	SPI      uint64    // Deleted without Record: our IKE SPI
	OldSPI   uint64    // IKERekeyed: our IKE SPI of the replaced IKE SA
	Released []uint32  // inbound ESP SPIs no longer in use (freed cluster-wide)
	// Lease (Established only): the virtual IP lease the new SA takes, in
	// the same transaction as its record: no transaction of its own and
	// nothing to wait for on the engine's path (see AddressLease).
	Lease *AddressLease
	// Identity (Established, IKERekeyed, Deleted): the peer identity as
	// the node prints it. With it the SA is kept in the identity index
	// (identity.go) by the same transaction; "" leaves the index alone.
	Identity string
	// Unique (Established with an Identity): what the change does about
	// the identity's other SAs.
	Unique UniquePolicy
	// Others (Established, UniqueReplace): set to the identity's other
	// SAs, read in the change's transaction, before done is called.
	Others *[]IdentitySA
	// Revision, if not nil, is set to the revision of the transaction
	// that committed the change before done is called; it stays 0 when
	// the commit is known only from a retry that found it done.
	Revision *int64
	// Selectors: the SA's exclusive selector claim after the change
	// (selectors.go), written with its record; on Deleted and IKERekeyed
	// any non-nil value deletes the old SA's claim. nil: the SA's policy
	// claims none.
	Selectors *SelectorClaim
}

// AddressLease is a virtual IP lease written with an SA's Established
// change. Held: the identity holds the address already (AddressOf said
// so) and the change only checks that it still does. Reserved: the node
// reserved the address (ReserveAddresses) and the reservation becomes
// ID's lease. Neither: the address must be free and is leased to ID. The
// change fails as a whole with an *AddressTakenError when the check does
// not hold.
type AddressLease struct {
	Addr     netip.Addr
	ID       string
	Held     bool
	Reserved bool
}

func (c *Change) spi() uint64 {
	if c.Record != nil {
		return c.Record.LocalSPI()
	}
	if c.Kind == addressReleased && c.Lease != nil {
		return c.Lease.key()
	}
	return c.SPI
}

// key stands for the lease's address among the SPIs a batch touches
// (batcher.conflicts): two changes to one address never share a
// transaction, which etcd would refuse (a duplicate key). A clash with a
// real SPI only delays a change to the next batch.
func (l *AddressLease) key() uint64 {
	h := fnv.New64a()
	b := l.Addr.As16()
	h.Write(b[:])
	return h.Sum64() | 1<<63
}

func (c *Change) validate() error {
	switch c.Kind {
	case Established, ChildCreated, ChildRekeyed, ChildDeleted, AddressChanged, Updated, Reserved:
		if c.Record == nil {
			return fmt.Errorf("statestore: %v change without a record", c.Kind)
		}
	case IKERekeyed:
		if c.Record == nil || c.OldSPI == 0 || c.OldSPI == c.Record.LocalSPI() {
			return fmt.Errorf("statestore: IKE rekey needs the new record and the old SPI")
		}
	case Deleted:
		if c.spi() == 0 {
			return fmt.Errorf("statestore: delete without an SPI")
		}
	case addressReleased:
		if c.Lease == nil || !c.Lease.Addr.IsValid() || c.Lease.ID == "" {
			return fmt.Errorf("statestore: address release without an address and identity")
		}
	default:
		return fmt.Errorf("statestore: unknown change kind %d", c.Kind)
	}
	if c.Lease != nil && c.Kind != Established && c.Kind != addressReleased {
		return fmt.Errorf("statestore: an address lease goes with an established SA only, not %v", c.Kind)
	}
	if c.Lease != nil && (!c.Lease.Addr.IsValid() || c.Lease.ID == "") {
		return fmt.Errorf("statestore: address lease without an address and identity")
	}
	return nil
}

// txnParts is one change as a (sub-)transaction.
type txnParts struct {
	cmps       []clientv3.Cmp
	then, els  []clientv3.Op
	spi        uint64 // owner key checked on failure
	newSPI     uint64 // IKERekeyed: success if this one is ours
	absentIsOK bool   // Deleted: an absent owner means done
	createOnly bool   // Established
	lease      *AddressLease
	leaseAt    int    // index of the lease's address in the Else responses
	mark       string // the node's reservation mark (reservedMark)
	noOwner    bool   // addressReleased: no owner record involved, never fails
	identity   string // the change's Identity
	identGet   bool   // UniqueReplace: Then[identAt] reads the identity's entries
	identAt    int
	identKeep  bool // UniqueKeep: Else[identElse] reads them
	identElse  int
	// The sealed keys written (revision bindings, revs.go): their
	// expected ModRevisions, compared; Else[revAt:] reads their metadata.
	sw             sealedWrite
	wantSA, wantSq int64
	revAt          int
	forget         []uint64 // SAs whose keys the change deletes
	// delSeq: the change deletes sw.spi's seq/ key (wantSq compared), whose
	// reservations its record of layout 5 holds.
	delSeq bool
}

// build turns a change into transaction parts for registration me.
func (s *Store) build(c *Change, me Owner) (txnParts, error) {
	// Sized for the change up front: an Op is 240 bytes, and growing the
	// slices by appends cost several kilobytes of garbage per change.
	then, cmps, els := 4, 3, 3 // els: the owner's read and the record keys' metadata
	switch c.Kind {
	case Established, IKERekeyed:
		then, cmps, els = 10, 5, 5
	case Deleted:
		then = 7
	case Reserved:
		then = 1
	case addressReleased:
		then, cmps, els = 2, 1, 0
	}
	then += len(c.Released)
	if c.Record != nil {
		then += len(c.Record.Children)
		if c.Kind == Deleted {
			then += len(c.Record.Children) // their inbound SPIs released
		}
	}
	p := txnParts{then: opLists.get(then), cmps: cmpLists.get(cmps)}
	if els > 0 {
		p.els = opLists.get(els)[:1] // els[0]: the owner's read, set below
	}
	id := s.cfg.NodeID
	layout := s.Layout()
	inline := layout >= seqGone
	spi, wsa, wseq := c.writes(layout)
	rv, _ := s.revs.get(spi)
	if (wsa || wseq) && !s.ready(sealedWrite{spi, wsa, wseq}) {
		return p, errStale // prepare first
	}
	if wsa && !inline && c.Kind != Established && c.Kind != IKERekeyed {
		// A record write carries the reservations only where there are
		// none yet: the stored ones may be higher (renewed since).
		wseq = rv.seq.empty
	}
	p.sw = sealedWrite{spi, wsa, wseq}
	putSeq := func(r *SARecord) error {
		v, err := s.codec.MarshalReservations(seqName(spi), ReservationsOf(r), rv.seq.binding().next())
		if err != nil {
			return err
		}
		p.wantSq = rv.seq.mod
		p.cmps = append(p.cmps, clientv3.Compare(clientv3.ModRevision(s.k.seq(spi)), "=", rv.seq.mod))
		p.then = append(p.then, opPut(s.k.seq(spi), v))
		return nil
	}
	// putSA writes the record itself; from layout 5 with all of its
	// reservations, and over a seq/<spi> that an older layout left, which
	// it deletes: the record holds what that one did, because an SA's
	// changes carry snapshots of it taken in order (IKESA.persist) and a
	// record read with its seq/<spi> was raised to it (decodeRec).
	putSA := func(r *SARecord) error {
		v, err := s.marshalRecord(r, rv.sa.binding().next(), layout)
		if err != nil {
			return err
		}
		p.wantSA = rv.sa.mod
		p.cmps = append(p.cmps, clientv3.Compare(clientv3.ModRevision(s.k.sa(spi)), "=", rv.sa.mod))
		p.then = append(p.then, opPut(s.k.sa(spi), v))
		if inline && rv.seq.mod != 0 {
			p.delSeq, p.wantSq = true, rv.seq.mod
			p.cmps = append(p.cmps, clientv3.Compare(clientv3.ModRevision(s.k.seq(spi)), "=", rv.seq.mod))
			p.then = append(p.then, opDelete(s.k.seq(spi)))
		}
		return nil
	}
	putRecord := func(r *SARecord) error {
		if err := putSA(r); err != nil {
			return err
		}
		for i := range r.Children {
			p.then = append(p.then, opPutString(s.k.espSPI(r.Children[i].InSPI), spiHex(spi)))
		}
		ops, err := s.selectorOps(c, spi)
		if err != nil {
			return err
		}
		p.then = append(p.then, ops...)
		if wseq {
			return putSeq(r)
		}
		return nil
	}
	own := func(spi uint64) {
		// The SPI stays reserved by its record keys (ReserveIKESPIs).
		p.then = append(p.then, opPutString(s.k.owner(spi), me.value()))
		p.then = s.k.appendOwnedPut(p.then, spi, id, layout)
	}
	drop := func(spi uint64) {
		p.forget = append(p.forget, spi)
		// seq/<spi>: unless the store knows there is none (an SA of layout 5).
		r, known := s.revs.get(spi)
		p.then = s.k.appendSADeletes(p.then, spi, id, layout, !known || r.seq.mod != 0)
		if c.Selectors != nil {
			p.then = append(p.then, opDelete(s.k.sel(spi)))
		}
	}
	release := func(spis []uint32) {
		for _, x := range spis {
			p.then = append(p.then, opDelete(s.k.espSPI(x)))
		}
	}
	p.spi = c.spi()
	switch c.Kind {
	case Established:
		spi := c.spi()
		p.createOnly = true
		p.cmps = append(p.cmps, clientv3.Compare(clientv3.CreateRevision(s.k.owner(spi)), "=", 0))
		if err := putRecord(c.Record); err != nil {
			return p, err
		}
		own(spi)
		if id := c.Identity; id != "" {
			p.identity = id
			switch c.Unique {
			case UniqueReplace:
				// Read before the new entry goes in: the others only.
				p.identGet, p.identAt = true, len(p.then)
				p.then = append(p.then, opGetPrefix(s.k.identPrefix(id)))
			case UniqueKeep:
				p.identKeep, p.identElse = true, len(p.els)
				p.cmps = append(p.cmps, clientv3.Compare(clientv3.CreateRevision(s.k.identPrefix(id)), "=", 0).WithPrefix())
				p.els = append(p.els, opGetPrefix(s.k.identPrefix(id)))
			}
			p.then = append(p.then, opPutString(s.k.ident(id, spi), id2node(s.cfg.NodeID)))
		}
		if l := c.Lease; l != nil {
			ak := s.k.poolAddr(l.Addr)
			p.lease, p.mark = l, s.reservedMark()
			if l.Held {
				p.cmps = append(p.cmps, clientv3.Compare(clientv3.Value(ak), "=", l.ID))
			} else if l.Reserved {
				p.cmps = append(p.cmps, clientv3.Compare(clientv3.Value(ak), "=", s.reservedMark()))
				p.then = append(p.then, opPutString(ak, l.ID), opPutString(s.k.poolID(l.ID), l.Addr.String()))
			} else {
				p.cmps = append(p.cmps, clientv3.Compare(clientv3.CreateRevision(ak), "=", 0))
				p.then = append(p.then, opPutString(ak, l.ID), opPutString(s.k.poolID(l.ID), l.Addr.String()))
			}
			p.els = append(p.els, opGet(ak))
		}
	case addressReleased:
		l := c.Lease
		ak := s.k.poolAddr(l.Addr)
		p.noOwner, p.lease = true, l
		p.cmps = append(p.cmps, clientv3.Compare(clientv3.Value(ak), "=", l.ID))
		p.then = append(p.then, s.releaseOps(l.Addr, l.ID)...)
		return p, nil
	case IKERekeyed:
		p.spi = c.OldSPI
		p.newSPI = c.Record.LocalSPI()
		p.cmps = append(p.cmps,
			clientv3.Compare(clientv3.Value(s.k.owner(c.OldSPI)), "=", me.value()),
			clientv3.Compare(clientv3.CreateRevision(s.k.owner(p.newSPI)), "=", 0))
		drop(c.OldSPI)
		if err := putRecord(c.Record); err != nil {
			return p, err
		}
		own(p.newSPI)
		if id := c.Identity; id != "" {
			p.then = append(p.then, opDelete(s.k.ident(id, c.OldSPI)), opPutString(s.k.ident(id, p.newSPI), id2node(s.cfg.NodeID)))
		}
		p.els = append(p.els, opGet(s.k.owner(p.newSPI)))
	case Deleted:
		p.absentIsOK = true
		p.cmps = append(p.cmps, s.mine(c, me))
		drop(c.spi())
		if c.Identity != "" {
			p.then = append(p.then, opDelete(s.k.ident(c.Identity, c.spi())))
		}
		if c.Record != nil {
			release(c.Record.InSPIs())
		}
	case Reserved:
		p.cmps = append(p.cmps, s.mine(c, me))
		put := putSeq
		if inline {
			put = putSA // the record, without the keys that go with it (unchanged)
		}
		if err := put(c.Record); err != nil {
			return p, err
		}
	default:
		p.cmps = append(p.cmps, s.mine(c, me))
		if err := putRecord(c.Record); err != nil {
			return p, err
		}
	}
	release(c.Released)
	p.els[0] = opGet(s.k.owner(p.spi))
	p.leaseAt = len(p.els) - 1
	p.revAt = len(p.els)
	if wsa || wseq { // p.delSeq implies wsa
		p.els = append(p.els, getMeta(s.k.sa(spi), false), getMeta(s.k.seq(spi), true))
	}
	return p, nil
}

// recycle gives the change's lists back for another change's: once its
// transaction was sent (the client or the server copied them) and its
// outcome read.
func (p *txnParts) recycle() {
	opLists.put(p.then)
	opLists.put(p.els)
	cmpLists.put(p.cmps)
	p.then, p.els, p.cmps = nil, nil, nil
}

// opLists and cmpLists keep the lists that changes' transactions were
// built in (build). A clientv3.Op is 240 bytes, and a new SA's change
// made lists of 2.5-3.5 KB, deleting it 2.2 KB: 6% of what a node with
// the embedded store allocated per SA.
var (
	opLists  listPool[clientv3.Op]
	cmpLists listPool[clientv3.Cmp]
)

// listPool recycles slices of T of at least listCap elements.
type listPool[T any] struct{ p sync.Pool }

const listCap = 16

// get returns an empty slice with room for n.
func (l *listPool[T]) get(n int) []T {
	if v, ok := l.p.Get().(*[]T); ok && cap(*v) >= n {
		return (*v)[:0]
	}
	return make([]T, 0, max(n, listCap))
}

// put keeps s, cleared (it no longer holds what its elements pointed
// to), unless it is too small to be worth it.
func (l *listPool[T]) put(s []T) {
	if cap(s) < listCap {
		return
	}
	s = s[:cap(s)]
	clear(s)
	s = s[:0]
	l.p.Put(&s)
}

// mine holds while registration me owns the change's SA.
func (s *Store) mine(c *Change, me Owner) clientv3.Cmp {
	return clientv3.Compare(clientv3.Value(s.k.owner(c.spi())), "=", me.value())
}

// stale reports whether a failed change's expected key metadata (Else
// responses rs) no longer held.
func (p *txnParts) stale(rs []*etcdserverpb.ResponseOp) bool {
	if !p.sw.sa && !p.sw.seq || p.revAt+1 >= len(rs) {
		return false
	}
	seq := p.sw.seq || p.delSeq
	mod := func(r *etcdserverpb.ResponseOp) int64 {
		if kvs := r.GetResponseRange().GetKvs(); len(kvs) > 0 {
			return kvs[0].ModRevision
		}
		return 0
	}
	return p.sw.sa && mod(rs[p.revAt]) != p.wantSA || seq && mod(rs[p.revAt+1]) != p.wantSq
}

// committed updates the store's key metadata after the change's
// transaction committed at revision rev with Then responses rs.
func (s *Store) committed(p *txnParts, rev int64, rs []*etcdserverpb.ResponseOp) {
	for _, spi := range p.forget {
		s.revs.forget(spi)
	}
	if p.sw.sa || p.sw.seq {
		s.revs.wrote(p.sw.spi, p.sw.sa, p.sw.seq, p.delSeq, rev)
	}
	switch {
	case p.noOwner: // addressReleased: its identity's key may be gone
		if idKeyDeleted(rs) {
			s.leaseDeleted(p.lease.ID)
		}
	case p.putsLease():
		s.leaseWritten(p.lease.ID)
	}
}

// putsLease: the change writes its identity's pool/id key.
func (p *txnParts) putsLease() bool { return p.lease != nil && !p.lease.Held && !p.noOwner }

// settled notes what a change whose transaction failed but whose outcome
// was no error may have written: an Established change found done by a
// retry put its lease.
func (s *Store) settled(p *txnParts) {
	if p.putsLease() {
		s.leaseWritten(p.lease.ID)
	}
}

// outcome reads a failed (sub-)transaction's Else responses.
func (p *txnParts) outcome(me Owner, rs []*etcdserverpb.ResponseOp) error {
	if p.noOwner {
		return nil // the address is no longer this identity's: nothing to release
	}
	var cur Owner
	if len(rs) > 0 {
		if kvs := rs[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
			cur, _ = parseOwner(kvs[0].Value)
		} else if p.absentIsOK {
			return nil // already deleted (a retried commit)
		}
	}
	if p.createOnly && cur == me {
		return nil // a retried commit that had succeeded
	}
	if (cur == me || p.createOnly && cur == (Owner{})) && p.stale(rs) {
		return errStale
	}
	if p.identKeep && cur == (Owner{}) && p.identElse < len(rs) {
		if kvs := rs[p.identElse].GetResponseRange().GetKvs(); len(kvs) > 0 {
			e := &IdentityHeldError{Identity: p.identity}
			for _, kv := range kvs {
				e.SAs = append(e.SAs, IdentitySA{SPI: spiOfIdentKey(string(kv.Key)), Node: string(kv.Value)})
			}
			return e
		}
	}
	if p.newSPI != 0 && len(rs) > 1 {
		if kvs := rs[1].GetResponseRange().GetKvs(); len(kvs) > 0 {
			if o, _ := parseOwner(kvs[0].Value); o == me {
				return nil
			}
		}
	}
	if p.lease != nil && p.leaseAt < len(rs) {
		holder := ""
		if kvs := rs[p.leaseAt].GetResponseRange().GetKvs(); len(kvs) > 0 {
			holder = string(kvs[0].Value)
		}
		want := ""
		if p.lease.Held {
			want = p.lease.ID
		} else if p.lease.Reserved {
			want = p.mark
		}
		if cur == (Owner{}) && holder != want {
			return &AddressTakenError{Addr: p.lease.Addr, Holder: holder}
		}
	}
	if p.createOnly {
		return fmt.Errorf("%w: %016x (owner %s)", ErrExists, p.spi, cur)
	}
	return &OwnerError{SPI: p.spi, Owner: cur}
}

// regCmp holds when registration me is still the node's live one.
func (s *Store) regCmp(me Owner) clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(s.k.node(me.Node)), "=", me.Epoch)
}

// Persist writes one change in its own transaction. Errors: *OwnerError
// (another node owns the SA), ErrExists, ErrFenced, or etcd's.
func (s *Store) Persist(ctx context.Context, c Change) error {
	if err := c.validate(); err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		err := s.persist(ctx, &c)
		if err != errStale || attempt == maxStale {
			return err
		}
		spi, _, _ := c.writes(s.Layout())
		s.revs.forget(spi)
	}
}

// maxStale bounds the retries of a change whose record keys someone else
// keeps writing.
const maxStale = 3

func (s *Store) persist(ctx context.Context, c *Change) error {
	reg := s.current()
	if !reg.usable() {
		return ErrFenced
	}
	if spi, sa, seq := c.writes(s.Layout()); sa || seq {
		if err := s.prepare(ctx, reg, []sealedWrite{{spi, sa, seq}}); err != nil {
			return err
		}
	}
	p, err := s.build(c, reg.owner)
	if err != nil {
		return err
	}
	rc, cancel := s.rctx(ctx)
	defer cancel()
	resp, err := s.txn(rc).If(append(p.cmps, s.regCmp(reg.owner))...).Then(p.then...).Else(p.els...).Commit()
	s.noteResult(err)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if resp.Succeeded {
		s.committed(&p, resp.Header.Revision, resp.Responses)
		p.others(c, resp.Responses)
		if c.Revision != nil {
			*c.Revision = resp.Header.Revision
		}
		return nil
	}
	if err := p.outcome(reg.owner, resp.Responses); err != nil {
		if err == errStale || s.stillRegistered(ctx, reg.owner) {
			return err
		}
		return ErrFenced
	}
	s.settled(&p)
	return nil
}

func (s *Store) stillRegistered(ctx context.Context, me Owner) bool {
	rc, cancel := s.rctx(ctx)
	defer cancel()
	r, err := s.cli.Get(rc, s.k.node(me.Node))
	return err != nil || (len(r.Kvs) > 0 && r.Kvs[0].CreateRevision == me.Epoch)
}
