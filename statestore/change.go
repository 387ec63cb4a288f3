package statestore

import (
	"context"
	"fmt"

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
	// few dozen bytes instead of the whole record.
	Reserved
	barrier // Flush marker
)

var kindNames = [...]string{"", "established", "child-created", "child-rekeyed", "child-deleted",
	"ike-rekeyed", "address-changed", "updated", "deleted", "reserved", "barrier"}

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
}

func (c *Change) spi() uint64 {
	if c.Record != nil {
		return c.Record.LocalSPI()
	}
	return c.SPI
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
	default:
		return fmt.Errorf("statestore: unknown change kind %d", c.Kind)
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
}

// build turns a change into transaction parts for registration me.
func (s *Store) build(c *Change, me Owner) (txnParts, error) {
	var p txnParts
	id := s.cfg.NodeID
	mine := clientv3.Compare(clientv3.Value(s.k.owner(c.spi())), "=", me.value())
	putRecord := func(r *SARecord) error {
		spi := r.LocalSPI()
		v, err := s.codec.Marshal(saName(spi), r)
		if err != nil {
			return err
		}
		p.then = append(p.then, clientv3.OpPut(s.k.sa(spi), string(v)))
		for i := range r.Children {
			p.then = append(p.then, clientv3.OpPut(s.k.espSPI(r.Children[i].InSPI), spiHex(spi)))
		}
		return nil
	}
	own := func(spi uint64) {
		p.then = append(p.then,
			clientv3.OpPut(s.k.owner(spi), me.value()),
			clientv3.OpPut(s.k.owned(id, spi), ""),
			clientv3.OpPut(s.k.ikeSPI(spi), id)) // without lease: detached from our life
	}
	drop := func(spi uint64) {
		p.then = append(p.then,
			clientv3.OpDelete(s.k.sa(spi)),
			clientv3.OpDelete(s.k.owner(spi)),
			clientv3.OpDelete(s.k.owned(id, spi)),
			clientv3.OpDelete(s.k.ikeSPI(spi)),
			clientv3.OpDelete(s.k.seq(spi)))
	}
	release := func(spis []uint32) {
		for _, x := range spis {
			p.then = append(p.then, clientv3.OpDelete(s.k.espSPI(x)))
		}
	}
	p.spi = c.spi()
	switch c.Kind {
	case Established:
		spi := c.spi()
		p.createOnly = true
		p.cmps = []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(s.k.owner(spi)), "=", 0)}
		if err := putRecord(c.Record); err != nil {
			return p, err
		}
		own(spi)
	case IKERekeyed:
		p.spi = c.OldSPI
		p.newSPI = c.Record.LocalSPI()
		p.cmps = []clientv3.Cmp{
			clientv3.Compare(clientv3.Value(s.k.owner(c.OldSPI)), "=", me.value()),
			clientv3.Compare(clientv3.CreateRevision(s.k.owner(p.newSPI)), "=", 0),
		}
		drop(c.OldSPI)
		if err := putRecord(c.Record); err != nil {
			return p, err
		}
		own(p.newSPI)
		p.els = append(p.els, clientv3.OpGet(s.k.owner(p.newSPI)))
	case Deleted:
		p.absentIsOK = true
		p.cmps = []clientv3.Cmp{mine}
		drop(c.spi())
		if c.Record != nil {
			release(c.Record.InSPIs())
		}
	case Reserved:
		p.cmps = []clientv3.Cmp{mine}
		spi := c.spi()
		v, err := s.codec.MarshalReservations(seqName(spi), ReservationsOf(c.Record))
		if err != nil {
			return p, err
		}
		p.then = append(p.then, clientv3.OpPut(s.k.seq(spi), string(v)))
	default:
		p.cmps = []clientv3.Cmp{mine}
		if err := putRecord(c.Record); err != nil {
			return p, err
		}
	}
	release(c.Released)
	p.els = append([]clientv3.Op{clientv3.OpGet(s.k.owner(p.spi))}, p.els...)
	return p, nil
}

// outcome reads a failed (sub-)transaction's Else responses.
func (p *txnParts) outcome(me Owner, rs []*etcdserverpb.ResponseOp) error {
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
	if p.newSPI != 0 && len(rs) > 1 {
		if kvs := rs[1].GetResponseRange().GetKvs(); len(kvs) > 0 {
			if o, _ := parseOwner(kvs[0].Value); o == me {
				return nil
			}
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
	reg := s.current()
	if !reg.usable() {
		return ErrFenced
	}
	p, err := s.build(&c, reg.owner)
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
		return nil
	}
	if err := p.outcome(reg.owner, resp.Responses); err != nil {
		if s.stillRegistered(ctx, reg.owner) {
			return err
		}
		return ErrFenced
	}
	return nil
}

func (s *Store) stillRegistered(ctx context.Context, me Owner) bool {
	rc, cancel := s.rctx(ctx)
	defer cancel()
	r, err := s.cli.Get(rc, s.k.node(me.Node))
	return err != nil || (len(r.Kvs) > 0 && r.Kvs[0].CreateRevision == me.Epoch)
}
