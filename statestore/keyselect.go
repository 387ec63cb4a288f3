package statestore

import (
	"context"
	"fmt"
	"slices"
	"time"

	pb "github.com/ikefleet/ikefleet/api/statestore/v1"
)

// SealingKey is the cluster key records are to be sealed under: the
// newest key of held (this node's) that every node of nodes holds too, so
// that any node can open what any other writes (take over its SAs, accept
// its hand-offs). Registrations that publish no key ids (releases before
// they were published) are not asked. ok is false when no key is held by
// all; the caller keeps its current key then.
func SealingKey(held []uint32, nodes []NodeInfo) (id uint32, ok bool) {
	held = slices.Sorted(slices.Values(held))
	for i := len(held) - 1; i >= 0; i-- {
		if slices.IndexFunc(nodes, func(n NodeInfo) bool {
			return len(n.KeyIDs) > 0 && !slices.Contains(n.KeyIDs, held[i])
		}) < 0 {
			return held[i], true
		}
	}
	return 0, false
}

// followKeys keeps the sealing key at SealingKey of the live
// registrations and follows the cluster's store layout, reading the
// registry and the layout key every KeepAliveInterval (a range read of a
// few keys; a watch stream would hold etcd's shutdown up), until the
// store closes.
func (s *Store) followKeys() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.KeepAliveInterval)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		s.listKeyNodes(s.ctx) // on error: again at the next tick
	}
}

// listKeyNodes reads the registry and the cluster's store layout (at
// Open, before anything is sealed or written, and then in followKeys),
// chooses the sealing key for the registry and follows the layout
// (followLayout).
func (s *Store) listKeyNodes(ctx context.Context) error {
	r, err := s.readRegistry(ctx)
	if err != nil {
		return err
	}
	s.keyMu.Lock()
	clear(s.keyNodes)
	for _, n := range r.nodes {
		s.keyNodes[n.Node] = n
	}
	s.keyMu.Unlock()
	s.chooseKey()
	s.followLayout(ctx, r)
	return nil
}

// chooseKey makes SealingKey of the known registrations current, and
// tells Config.OnSealingKey when that changed it.
func (s *Store) chooseKey() {
	s.keyMu.Lock()
	defer s.keyMu.Unlock()
	nodes := make([]NodeInfo, 0, len(s.keyNodes))
	for _, n := range s.keyNodes {
		if n.Node != s.cfg.NodeID { // ours: what the keyring holds now
			nodes = append(nodes, n)
		}
	}
	keys := s.cfg.Keys
	id, ok := SealingKey(keys.IDs(), nodes)
	if !ok {
		if !s.noCommonKey {
			s.noCommonKey = true
			s.log.Error("statestore: no cluster key is held by every node: records stay sealed under the current key, which some nodes cannot open",
				"current_key", keys.Current(), "held", keys.IDs(), "nodes", keyHolders(nodes))
		}
		return
	}
	s.noCommonKey = false
	old := keys.Current()
	if id == old || keys.SetCurrent(id) != nil {
		return
	}
	s.log.Info("statestore: sealing under another cluster key: the newest every node holds", "key", id, "was", old, "nodes", keyHolders(nodes))
	if f := s.cfg.OnSealingKey; f != nil {
		go f(old, id)
	}
}

func keyHolders(nodes []NodeInfo) string {
	var b []byte
	for i, n := range nodes {
		if i > 0 {
			b = append(b, ' ')
		}
		b = fmt.Appendf(b, "%s:%v", n.Node, n.KeyIDs)
	}
	return string(b)
}

// AdvertiseKeys publishes the keys the keyring holds now (after
// Keyring.Update) in the node's registration, so that the other nodes
// seal under a new key once every node holds it, and chooses the sealing
// key again, on the registry as read now. A fenced node publishes them
// when it registers again.
func (s *Store) AdvertiseKeys(ctx context.Context) error {
	defer func() {
		if s.listKeyNodes(ctx) != nil {
			s.chooseKey() // on what the last read saw
		}
	}()
	return s.updateRegistration(ctx, func(n *pb.Node) { n.KeyIds = s.cfg.Keys.IDs() })
}
