package statestore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	pb "github.com/ikefleet/ikefleet/api/statestore/v1"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
)

// NodeInfo is a live registration in the node registry.
type NodeInfo struct {
	Owner      // node id and epoch
	Slot       int
	PeerAddr   string // peer.v1 address, for hand-offs
	Registered time.Time
	KeyIDs     []uint32 // cluster keys the node holds; empty from releases before they were published
	// LayoutMin, LayoutMax: the store layouts its release reads and
	// writes (layout.go); 0 from releases before the layout key. Layout:
	// the one it writes.
	LayoutMin, LayoutMax, Layout uint32
}

// Nodes lists the live registrations.
func (s *Store) Nodes(ctx context.Context) ([]NodeInfo, error) {
	rc, cancel := s.rctx(ctx)
	defer cancel()
	resp, err := s.cli.Get(rc, s.k.p+"nodes/", clientv3.WithPrefix())
	s.noteResult(err)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return nodesOf(resp.Kvs)
}

// nodesOf reads registrations (the keys under nodes/).
func nodesOf(kvs []*mvccpb.KeyValue) ([]NodeInfo, error) {
	out := make([]NodeInfo, 0, len(kvs))
	for _, kv := range kvs {
		n, ok := nodeInfoOf(kv)
		if !ok {
			return nil, &CorruptError{Key: string(kv.Key), Reason: "not a node registration"}
		}
		out = append(out, n)
	}
	return out, nil
}

// Node returns a node's live registration; ErrNotFound if it has none.
func (s *Store) Node(ctx context.Context, id string) (NodeInfo, error) {
	ns, err := s.Nodes(ctx)
	if err != nil {
		return NodeInfo{}, err
	}
	for _, n := range ns {
		if n.Node == id {
			return n, nil
		}
	}
	return NodeInfo{}, fmt.Errorf("%w: node %s not registered", ErrNotFound, id)
}

// LookupESP names the IKE SA (our IKE SPI) that a stored inbound ESP SPI
// belongs to: the claim path for ESP that arrives at a non-owner.
// ErrNotFound when the SPI is free or only reserved.
func (s *Store) LookupESP(ctx context.Context, spi uint32) (uint64, error) {
	rc, cancel := s.rctx(ctx)
	defer cancel()
	resp, err := s.cli.Get(rc, s.k.espSPI(spi))
	s.noteResult(err)
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if len(resp.Kvs) == 0 || resp.Kvs[0].Lease != 0 {
		return 0, fmt.Errorf("%w: ESP SPI %08x", ErrNotFound, spi)
	}
	v := string(resp.Kvs[0].Value)
	ike, err := strconv.ParseUint(v, 16, 64)
	if err != nil || len(v) != 16 || strings.ContainsAny(v, "+-") {
		return 0, &CorruptError{Key: string(resp.Kvs[0].Key), Reason: "not an IKE SPI"}
	}
	return ike, nil
}

// updateRegistration rewrites the node's live registration with update
// applied (compared with its value as read: a concurrent update of another
// field is not lost); ErrFenced if it is not live.
func (s *Store) updateRegistration(ctx context.Context, update func(*pb.Node)) error {
	reg := s.current()
	if reg == nil || reg.done.Load() {
		return ErrFenced
	}
	rc, cancel := s.rctx(ctx)
	defer cancel()
	nk := s.k.node(s.cfg.NodeID)
	for attempt := 0; attempt < 8; attempt++ {
		resp, err := s.cli.Get(rc, nk)
		s.noteResult(err)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		if len(resp.Kvs) == 0 || resp.Kvs[0].CreateRevision != reg.owner.Epoch {
			return ErrFenced
		}
		var n pb.Node
		if err := proto.Unmarshal(resp.Kvs[0].Value, &n); err != nil {
			return &CorruptError{Key: nk, Reason: err.Error()}
		}
		update(&n)
		info, _ := proto.Marshal(&n)
		tr, err := s.txn(rc).If(clientv3.Compare(clientv3.ModRevision(nk), "=", resp.Kvs[0].ModRevision)).
			Then(clientv3.OpPut(nk, string(info), clientv3.WithLease(reg.lease))).Commit()
		s.noteResult(err)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		if tr.Succeeded {
			return nil
		}
	}
	return errors.New("statestore: updating the registration kept racing")
}
