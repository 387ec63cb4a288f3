package statestore

// Virtual IP leases: an address of the cluster's pool belongs to one peer
// identity cluster-wide, so a gateway keeps its address on whichever node
// serves it. pool/addr/<ip> holds the identity, pool/id/<identity> the
// address; both are written in one create-if-absent transaction and stay
// until the SA holding the address is deleted (ReleaseAddress).

import (
	"context"
	"encoding/hex"
	"fmt"
	"net/netip"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func (k keys) poolAddr(a netip.Addr) string { return k.p + "pool/addr/" + a.String() }
func (k keys) poolID(id string) string      { return k.p + "pool/id/" + hex.EncodeToString([]byte(id)) }

// LeaseAddress gives address a to identity id unless another identity
// holds it; it returns the holder ("" on success, id if id held it
// already). An identity holds at most one address: its previous lease,
// if any, is replaced.
func (s *Store) LeaseAddress(ctx context.Context, a netip.Addr, id string) (holder string, err error) {
	rc, cancel := s.rctx(ctx)
	defer cancel()
	ak, ik := s.k.poolAddr(a), s.k.poolID(id)
	resp, err := s.cli.Txn(rc).If(clientv3.Compare(clientv3.CreateRevision(ak), "=", 0)).
		Then(clientv3.OpPut(ak, id), clientv3.OpPut(ik, a.String())).
		Else(clientv3.OpGet(ak)).Commit()
	s.noteResult(err)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if resp.Succeeded {
		return "", nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return s.LeaseAddress(ctx, a, id) // released meanwhile
	}
	return string(kvs[0].Value), nil
}

// AddressOf returns the address leased to identity id, if any.
func (s *Store) AddressOf(ctx context.Context, id string) (netip.Addr, bool, error) {
	rc, cancel := s.rctx(ctx)
	defer cancel()
	resp, err := s.cli.Get(rc, s.k.poolID(id))
	s.noteResult(err)
	if err != nil {
		return netip.Addr{}, false, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if len(resp.Kvs) == 0 {
		return netip.Addr{}, false, nil
	}
	a, err := netip.ParseAddr(string(resp.Kvs[0].Value))
	if err != nil {
		return netip.Addr{}, false, fmt.Errorf("statestore: address lease of %q: %w", id, err)
	}
	// The identity's record may be stale (its address went to another
	// identity after a release): the address key decides.
	g, err := s.cli.Get(rc, s.k.poolAddr(a))
	if err != nil {
		return netip.Addr{}, false, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return a, len(g.Kvs) > 0 && string(g.Kvs[0].Value) == id, nil
}

// ReleaseAddress ends identity id's lease of address a (nothing if another
// identity holds it).
func (s *Store) ReleaseAddress(ctx context.Context, a netip.Addr, id string) error {
	rc, cancel := s.rctx(ctx)
	defer cancel()
	ak := s.k.poolAddr(a)
	_, err := s.cli.Txn(rc).If(clientv3.Compare(clientv3.Value(ak), "=", id)).
		Then(clientv3.OpDelete(ak), clientv3.OpDelete(s.k.poolID(id))).Commit()
	s.noteResult(err)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return nil
}
