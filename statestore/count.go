package statestore

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// OwnedCount counts the SAs indexed under a node id (any epoch): the load
// operators see per node.
func (s *Store) OwnedCount(ctx context.Context, node string) (int64, error) {
	rc, cancel := s.rctx(ctx)
	defer cancel()
	resp, err := s.cli.Get(rc, s.k.ownedBy(node), clientv3.WithPrefix(), clientv3.WithCountOnly())
	s.noteResult(err)
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return resp.Count, nil
}
