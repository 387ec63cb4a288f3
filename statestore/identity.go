package statestore

// The identity index: ident/<identity>/<ike-spi> for every stored SA of a
// peer identity, so that with unique identities a new SA finds the older
// SAs of its identity on any node (RFC 7296 §2.4 INITIAL_CONTACT,
// auth.unique_ids). It is written in the transactions that create,
// rekey and delete an SA: no transaction of its own. Its values are the
// node that wrote the entry, a hint only: the owner record is the
// authority (SAs move between nodes without the index being rewritten).

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"go.etcd.io/etcd/api/v3/etcdserverpb"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// UniquePolicy is what an Established change with an Identity does about
// the other SAs of that identity.
type UniquePolicy uint8

const (
	// UniqueIndex only indexes the new SA.
	UniqueIndex UniquePolicy = iota
	// UniqueReplace indexes it and reports the identity's other SAs in
	// Change.Others, read in the same transaction: the caller deletes
	// them.
	UniqueReplace
	// UniqueKeep refuses the change with an *IdentityHeldError when the
	// identity has an SA already.
	UniqueKeep
)

// IdentitySA is one entry of the identity index: an SA and the node that
// indexed it (a hint; the owner record says who owns it now).
type IdentitySA struct {
	SPI  uint64
	Node string
}

// ErrIdentityHeld: an Established change with UniqueKeep was refused.
var ErrIdentityHeld = errors.New("statestore: identity has an SA already")

// IdentityHeldError is an Established change refused under UniqueKeep:
// SAs are the identity's stored SAs.
type IdentityHeldError struct {
	Identity string
	SAs      []IdentitySA
}

func (e *IdentityHeldError) Error() string {
	return fmt.Sprintf("statestore: identity %q has %d SA(s) already (unique identities: keep)", e.Identity, len(e.SAs))
}

func (e *IdentityHeldError) Is(target error) bool { return target == ErrIdentityHeld }

// identPrefix is the index prefix of an identity. The identity is
// escaped so that no identity's prefix is another's ("a" and "a/b").
func (k keys) identPrefix(id string) string { return k.p + "ident/" + url.PathEscape(id) + "/" }

func (k keys) ident(id string, spi uint64) string {
	return hexKey(k.identPrefix(id), "", spi, 16)
}

// Identity lists the SAs the index holds for an identity.
func (s *Store) Identity(ctx context.Context, id string) ([]IdentitySA, error) {
	rc, cancel := s.rctx(ctx)
	defer cancel()
	resp, err := s.cli.Get(rc, s.k.identPrefix(id), clientv3.WithPrefix())
	s.noteResult(err)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	var out []IdentitySA
	for _, kv := range resp.Kvs {
		if spi := spiOfIdentKey(string(kv.Key)); spi != 0 {
			out = append(out, IdentitySA{SPI: spi, Node: string(kv.Value)})
		}
	}
	return out, nil
}

// DropStaleIdentity removes index entries of id whose SA has no owner
// record any more (deleted by a path that did not know the identity).
// Entries of SAs that still exist stay.
func (s *Store) DropStaleIdentity(ctx context.Context, id string, spis []uint64) error {
	for _, spi := range spis {
		rc, cancel := s.rctx(ctx)
		_, err := s.txn(rc).If(clientv3.Compare(clientv3.CreateRevision(s.k.owner(spi)), "=", 0)).
			Then(clientv3.OpDelete(s.k.ident(id, spi))).Commit()
		cancel()
		s.noteResult(err)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
	}
	return nil
}

// DeleteOrphan deletes the stored SA spi of a dead owner (its
// registration is gone) without taking it over: its record, ownership,
// reservations, ESP SPIs and identity index entry go in one transaction
// that holds only while from still owns it, from's registration is still
// gone and ours is live (the fencing rules of TakeOver). A live owner
// gives *OwnerError naming it; an SA already gone, ErrNotFound.
func (s *Store) DeleteOrphan(ctx context.Context, spi uint64, from Owner, id string) error {
	reg := s.current()
	if !reg.usable() {
		return ErrFenced
	}
	rec, cur, err := s.Load(ctx, spi)
	if err != nil {
		return err
	}
	if cur != from {
		return &OwnerError{SPI: spi, Owner: cur}
	}
	if id == "" {
		return fmt.Errorf("statestore: orphan %016x: no identity", spi)
	}
	ok := s.k.owner(spi)
	then := append(s.k.appendSADeletes(nil, spi, from.Node, s.Layout(), true),
		clientv3.OpDelete(s.k.ident(id, spi)),
		clientv3.OpDelete(s.k.sel(spi)))
	for _, x := range rec.InSPIs() {
		then = append(then, clientv3.OpDelete(s.k.espSPI(x)))
	}
	rc, cancel := s.rctx(ctx)
	defer cancel()
	resp, err := s.txn(rc).If(
		clientv3.Compare(clientv3.Value(ok), "=", from.value()),
		clientv3.Compare(clientv3.CreateRevision(s.k.node(from.Node)), "!=", from.Epoch),
		s.regCmp(reg.owner)).Then(then...).Commit()
	s.noteResult(err)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if resp.Succeeded {
		return nil
	}
	o, live, err := s.Owner(ctx, spi)
	switch {
	case errors.Is(err, ErrNotFound):
		return err
	case err != nil:
		return err
	case o != from || live:
		return &OwnerError{SPI: spi, Owner: o}
	case !s.stillRegistered(ctx, reg.owner):
		return ErrFenced
	}
	return fmt.Errorf("statestore: orphan %016x not deleted (raced)", spi)
}

// id2node is the value of the index entries a node writes.
func id2node(node string) string { return node }

// spiOfIdentKey is the SPI at the end of an index key (0 if none).
func spiOfIdentKey(key string) uint64 {
	i := strings.LastIndexByte(key, '/')
	if i < 0 {
		return 0
	}
	spi, _ := parseSPIKey(key[i+1:], "")
	return spi
}

// others fills c.Others from a committed change's responses.
func (p *txnParts) others(c *Change, rs []*etcdserverpb.ResponseOp) {
	if !p.identGet || c.Others == nil || p.identAt >= len(rs) {
		return
	}
	var out []IdentitySA
	for _, kv := range rs[p.identAt].GetResponseRange().GetKvs() {
		if spi := spiOfIdentKey(string(kv.Key)); spi != 0 {
			out = append(out, IdentitySA{SPI: spi, Node: string(kv.Value)})
		}
	}
	*c.Others = out
}
