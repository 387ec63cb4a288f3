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

// mayHoldAddress reports whether identity id may have an address lease:
// always without the set (several writers).
func (s *Store) mayHoldAddress(id string) bool {
	return s.leased == nil || s.leased.has(id)
}

// leaseWritten notes that identity id may have a pool/id key now.
func (s *Store) leaseWritten(id string) {
	if s.leased != nil {
		s.leased.add(id)
	}
}

// leaseDeleted notes that identity id's pool/id key is gone.
func (s *Store) leaseDeleted(id string) {
	if s.leased != nil {
		s.leased.remove(id)
	}
}
