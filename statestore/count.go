package statestore

import "context"

// OwnedCounts counts the SAs the owner/ keys give each node id (any
// epoch): the load operators see per node. It reads the owner keys of the
// whole cluster once, a page at a time.
func (s *Store) OwnedCounts(ctx context.Context) (map[string]int64, error) {
	counts := map[string]int64{}
	err := s.eachOwner(ctx, func(e ownerEntry) { counts[e.owner.Node]++ })
	return counts, err
}
