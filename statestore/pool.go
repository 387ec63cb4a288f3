package statestore

// Virtual IP leases: an address of the cluster's pool belongs to one peer
// identity cluster-wide, so a gateway keeps its address on whichever node
// serves it. pool/addr/<ip> holds the identity, pool/id/<identity> the
// address; both are written create-if-absent, in the new SA's Established
// change (Change.Lease) or on their own (LeaseAddress, for restores and
// claims), and stay until the SA holding the address is deleted
// (ReleaseAddressAsync, ReleaseAddress).

import (
	"context"
	"encoding/hex"
	"fmt"
	"net/netip"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
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
	resp, err := s.txn(rc).If(clientv3.Compare(clientv3.CreateRevision(ak), "=", 0)).
		Then(clientv3.OpPut(ak, id), clientv3.OpPut(ik, a.String())).
		Else(clientv3.OpGet(ak)).Commit()
	s.noteResult(err)
	if err != nil {
		s.leaseWritten(id) // it may have been
		return "", fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if resp.Succeeded {
		s.leaseWritten(id)
		return "", nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return s.LeaseAddress(ctx, a, id) // released meanwhile
	}
	return string(kvs[0].Value), nil
}

// LeaseAddresses is LeaseAddress for many addresses (addrs[i] for
// ids[i]), a batch per transaction: each lease a nested transaction
// guarded by its address being free. holders[i] is as LeaseAddress's
// holder ("" or ids[i]: leased to ids[i]).
func (s *Store) LeaseAddresses(ctx context.Context, addrs []netip.Addr, ids []string) (holders []string, err error) {
	if len(addrs) != len(ids) {
		return nil, fmt.Errorf("statestore: %d addresses for %d identities", len(addrs), len(ids))
	}
	holders = make([]string, len(addrs))
	per := max(1, s.cfg.Batch.MaxBatch)
	for lo := 0; lo < len(addrs); lo += per {
		hi := min(lo+per, len(addrs))
		ops := make([]clientv3.Op, 0, hi-lo)
		for i := lo; i < hi; i++ {
			ak, ik := s.k.poolAddr(addrs[i]), s.k.poolID(ids[i])
			ops = append(ops, clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(ak), "=", 0)},
				[]clientv3.Op{clientv3.OpPut(ak, ids[i]), clientv3.OpPut(ik, addrs[i].String())},
				[]clientv3.Op{clientv3.OpGet(ak)}))
		}
		rc, cancel := s.rctx(ctx)
		resp, err := s.txn(rc).Then(ops...).Commit()
		cancel()
		s.noteResult(err)
		if err != nil {
			for i := lo; i < hi; i++ {
				s.leaseWritten(ids[i]) // they may have been
			}
			return holders[:lo], fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		for i := lo; i < hi; i++ {
			t := resp.Responses[i-lo].GetResponseTxn()
			if t.Succeeded {
				s.leaseWritten(ids[i])
				continue
			}
			kvs := t.Responses[0].GetResponseRange().Kvs
			if len(kvs) == 0 { // released meanwhile
				if holders[i], err = s.LeaseAddress(ctx, addrs[i], ids[i]); err != nil {
					return holders[:i], err
				}
				continue
			}
			holders[i] = string(kvs[0].Value)
		}
	}
	return holders, nil
}

// AddressOf returns the address leased to identity id, if any.
func (s *Store) AddressOf(ctx context.Context, id string) (netip.Addr, bool, error) {
	if !s.mayHoldAddress(id) {
		return netip.Addr{}, false, nil // Config.SoleWriter: known without a read
	}
	rc, cancel := s.rctx(ctx)
	defer cancel()
	resp, err := s.cli.Get(rc, s.k.poolID(id), s.pathRead()...)
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
	g, err := s.cli.Get(rc, s.k.poolAddr(a), s.pathRead()...)
	if err != nil {
		return netip.Addr{}, false, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return a, len(g.Kvs) > 0 && string(g.Kvs[0].Value) == id, nil
}

// pathRead: the options of a read on the path of a new SA
// (Config.SingleMember).
func (s *Store) pathRead() []clientv3.OpOption {
	if s.cfg.SingleMember {
		return []clientv3.OpOption{clientv3.WithSerializable()}
	}
	return nil
}

// reservedMark is what pool/addr/<ip> holds while this node has the
// address reserved: no identity's string (it starts with a NUL byte).
func (s *Store) reservedMark() string { return "\x00reserved:" + s.cfg.NodeID }

// ReserveAddresses reserves addresses ahead of need for this node (on its
// lease, create-if-absent; in transactions of up to MaxBatch), so that a
// new SA's lease needs no transaction of its own: its Established change
// turns the reservation into the identity's lease (AddressLease.Reserved).
// ok[i] says whether addrs[i] is now reserved. A reservation not used
// ends with the node's lease or with UnreserveAddresses.
func (s *Store) ReserveAddresses(ctx context.Context, addrs []netip.Addr) ([]bool, error) {
	reg := s.current()
	if reg.done.Load() {
		return nil, ErrFenced
	}
	mark := s.reservedMark()
	ok := make([]bool, len(addrs))
	for lo := 0; lo < len(addrs); lo += s.cfg.Batch.MaxBatch {
		hi := min(lo+s.cfg.Batch.MaxBatch, len(addrs))
		ops := make([]clientv3.Op, 0, hi-lo)
		for _, a := range addrs[lo:hi] {
			k := s.k.poolAddr(a)
			ops = append(ops, clientv3.OpTxn(
				[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(k), "=", 0)},
				[]clientv3.Op{clientv3.OpPut(k, mark, clientv3.WithLease(reg.lease))}, nil))
		}
		rc, cancel := s.rctx(ctx)
		resp, err := s.txn(rc).Then(ops...).Commit()
		cancel()
		s.noteResult(err)
		if err != nil {
			return ok, fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		for i, r := range resp.Responses {
			ok[lo+i] = r.GetResponseTxn().Succeeded
		}
	}
	return ok, nil
}

// UnreserveAddresses drops this node's reservations of addrs (those that
// are still reservations).
func (s *Store) UnreserveAddresses(ctx context.Context, addrs []netip.Addr) error {
	mark := s.reservedMark()
	for lo := 0; lo < len(addrs); lo += s.cfg.Batch.MaxBatch {
		hi := min(lo+s.cfg.Batch.MaxBatch, len(addrs))
		ops := make([]clientv3.Op, 0, hi-lo)
		for _, a := range addrs[lo:hi] {
			k := s.k.poolAddr(a)
			ops = append(ops, clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.Value(k), "=", mark)},
				[]clientv3.Op{clientv3.OpDelete(k)}, nil))
		}
		rc, cancel := s.rctx(ctx)
		_, err := s.txn(rc).Then(ops...).Commit()
		cancel()
		s.noteResult(err)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
	}
	return nil
}

// ReleaseAddressAsync ends identity id's lease of address a like
// ReleaseAddress, through the batched commits of Submit: it shares a
// transaction with other changes instead of taking one of its own. done
// (if not nil) is called from a store goroutine once it is committed (nil
// also when a was not id's) or given up.
func (s *Store) ReleaseAddressAsync(a netip.Addr, id string, done func(error)) error {
	if s.closed.Load() {
		return ErrClosed
	}
	c := Change{Kind: addressReleased, Lease: &AddressLease{Addr: a, ID: id}}
	if err := c.validate(); err != nil {
		return err
	}
	return s.b.enqueue(pending{c: c, done: done})
}

// ReleaseAddress ends identity id's lease of address a (nothing if another
// identity holds it). The identity's pool/id key goes with it only if it
// names a: an identity that was leased another address since (its lease
// replaced, another SA of it) keeps that one.
func (s *Store) ReleaseAddress(ctx context.Context, a netip.Addr, id string) error {
	rc, cancel := s.rctx(ctx)
	defer cancel()
	ak := s.k.poolAddr(a)
	resp, err := s.txn(rc).If(clientv3.Compare(clientv3.Value(ak), "=", id)).
		Then(s.releaseOps(a, id)...).Commit()
	s.noteResult(err)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if resp.Succeeded && idKeyDeleted(resp.Responses) {
		s.leaseDeleted(id)
	}
	return nil
}

// releaseOps end identity id's lease of address a, its address key
// checked by the caller: the address key, and the identity's key if it
// names a.
func (s *Store) releaseOps(a netip.Addr, id string) []clientv3.Op {
	ik := s.k.poolID(id)
	return []clientv3.Op{opDelete(s.k.poolAddr(a)),
		clientv3.OpTxn([]clientv3.Cmp{clientv3.Compare(clientv3.Value(ik), "=", a.String())},
			[]clientv3.Op{opDelete(ik)}, nil)}
}

// idKeyDeleted reads releaseOps' responses: whether the identity's key
// went.
func idKeyDeleted(rs []*etcdserverpb.ResponseOp) bool {
	return len(rs) > 1 && rs[1].GetResponseTxn().GetSucceeded()
}
