package statestore

import (
	"context"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// OwnedCounts counts the SAs the owner/ keys give each node id (any
// epoch): the load operators see per node. It reads the owner keys of the
// whole cluster once, a page at a time.
func (s *Store) OwnedCounts(ctx context.Context) (map[string]int64, error) {
	prefix := s.k.p + "owner/"
	counts := map[string]int64{}
	err := s.eachPage(ctx, prefix, ownedPage, func(kvs []*mvccpb.KeyValue) error {
		for _, kv := range kvs {
			if o, err := parseOwner(kv.Value); err == nil {
				counts[o.Node]++
			}
		}
		return nil
	})
	return counts, err
}
