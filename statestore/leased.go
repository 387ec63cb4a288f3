package statestore

// The identities holding an address lease (pool/id/<identity> keys), kept
// by a Store that is the only writer of its prefix (Config.SoleWriter:
// the node's embedded member). A new SA's AddressOf then reads etcd only
// for an identity that has a key there: a first connection, or one whose
// previous SA released its address, costs no read on the shard's path.
//
// The set may hold identities whose key is gone (a release that did not
// say whether it happened); that only costs a read. It must never miss
// one that has a key: it is listed at Open, every write of this Store
// that may have put a key adds it (before the write's callers learn of
// its success), and only a release known to have deleted the key removes
// it.

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

type leasedIDs struct {
	mu  sync.Mutex
	ids map[string]struct{}
}

func (l *leasedIDs) add(id string) {
	l.mu.Lock()
	l.ids[id] = struct{}{}
	l.mu.Unlock()
}

func (l *leasedIDs) remove(id string) {
	l.mu.Lock()
	delete(l.ids, id)
	l.mu.Unlock()
}

func (l *leasedIDs) has(id string) bool {
	l.mu.Lock()
	_, ok := l.ids[id]
	l.mu.Unlock()
	return ok
}

// leasedPage bounds the keys of one read while listing them.
const leasedPage = 10000

// listLeased reads every pool/id/ key (keys only, in pages). A key it
// cannot read leaves the set out (nil).
func (s *Store) listLeased(ctx context.Context) (*leasedIDs, error) {
	l := &leasedIDs{ids: map[string]struct{}{}}
	prefix := s.k.p + "pool/id/"
	err := s.eachKeyPage(ctx, prefix, leasedPage, func(kvs []*mvccpb.KeyValue) error {
		for _, kv := range kvs {
			id, err := hex.DecodeString(strings.TrimPrefix(string(kv.Key), prefix))
			if err != nil {
				return errNoIdentity{string(kv.Key)}
			}
			l.ids[string(id)] = struct{}{}
		}
		return nil
	}, clientv3.WithSerializable())
	var bad errNoIdentity
	if errors.As(err, &bad) {
		// Not a key this Store wrote: whose it is cannot be known, so
		// every AddressOf reads etcd, as with several writers.
		s.log.Warn("statestore: an address lease key that names no identity; AddressOf reads etcd for every identity", "key", bad.key)
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return l, nil
}

// errNoIdentity: a pool/id/ key that does not decode to an identity.
type errNoIdentity struct{ key string }

func (e errNoIdentity) Error() string {
	return "statestore: address lease key " + e.key + " names no identity"
}

// openLeased lists the leases for Open (Config.SoleWriter) once the
// registry has been read: none if another node is registered.
func (s *Store) openLeased(ctx context.Context) error {
	listed := make(chan struct{})
	s.wg.Add(1)
	go s.watchWriters(listed)
	select {
	case <-listed:
	case <-ctx.Done():
		s.cancel()
		return fmt.Errorf("statestore: reading the registry: %w", ctx.Err())
	}
	if s.otherWriter.Load() {
		return nil
	}
	var l *leasedIDs
	if err := s.retryOpen(ctx, "listing the address leases", func() (err error) {
		l, err = s.listLeased(ctx)
		return err
	}); err != nil {
		return err
	}
	s.leased.Store(l)
	if s.otherWriter.Load() { // registered while the leases were listed
		s.leased.Store(nil)
	}
	return nil
}

// watchWriters follows the registry while the Store takes itself for the
// only writer of its prefix (Config.SoleWriter): the node's embedded
// member, which other nodes may still use as their store (nodes sharing
// one host in a lab). Their leases are not in the set, so the first
// registration of another node, listed or watched, turns the set off for
// good: every AddressOf reads etcd from then on. A node registers before
// it writes anything; what is left is the watch's delay (in process,
// well under a millisecond): a lease the other node wrote within it, to
// an identity that meanwhile sets up an SA here, is missed, and that
// identity gets a new address. listed is closed after the first listing.
func (s *Store) watchWriters(listed chan<- struct{}) {
	defer s.wg.Done()
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	mine := s.k.node(s.cfg.NodeID)
	seen := func(kv *mvccpb.KeyValue) {
		if string(kv.Key) == mine || s.otherWriter.Swap(true) {
			return
		}
		s.leased.Store(nil)
		s.log.Info("statestore: another node uses this store: address leases are read from etcd from now on",
			"other", strings.TrimPrefix(string(kv.Key), s.k.p+"nodes/"))
		cancel()
	}
	first := true
	s.followPrefix(ctx, s.k.p+"nodes/", func(kvs []*mvccpb.KeyValue) {
		for _, kv := range kvs {
			seen(kv)
		}
		if first {
			first = false
			close(listed)
		}
	}, func(ev *clientv3.Event) {
		if ev.Type == clientv3.EventTypePut {
			seen(ev.Kv)
		}
	}, nil)
}

// mayHoldAddress reports whether identity id may have an address lease:
// always without the set (several writers).
func (s *Store) mayHoldAddress(id string) bool {
	l := s.leased.Load()
	return l == nil || l.has(id)
}

// leaseWritten notes that identity id may have a pool/id key now.
func (s *Store) leaseWritten(id string) {
	if l := s.leased.Load(); l != nil {
		l.add(id)
	}
}

// leaseDeleted notes that identity id's pool/id key is gone.
func (s *Store) leaseDeleted(id string) {
	if l := s.leased.Load(); l != nil {
		l.remove(id)
	}
}
