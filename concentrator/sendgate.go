package concentrator

// Persist before send: messages that go with a state change leave only once
// the change is in the state store.

import (
	"fmt"
	"sync"

	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/statestore"
)

var persistKinds = map[ike.PersistKind]statestore.ChangeKind{
	ike.PersistEstablished: statestore.Established, ike.PersistChildCreated: statestore.ChildCreated,
	ike.PersistChildRekeyed: statestore.ChildRekeyed, ike.PersistChildDeleted: statestore.ChildDeleted,
	ike.PersistIKERekeyed: statestore.IKERekeyed, ike.PersistAddressChanged: statestore.AddressChanged,
	ike.PersistDeleted: statestore.Deleted,
}

// sendGate holds the messages of one batch of actions until its state
// changes are persisted. A new SA whose record could not be written is not
// answered at all: the peer retries later rather than hold an SA the
// cluster does not know.
type sendGate struct {
	mu      sync.Mutex
	pending int
	sends   []ike.Send
	drop    bool
}

func (g *sendGate) hold(s ike.Send) {
	g.mu.Lock()
	g.sends = append(g.sends, s)
	g.mu.Unlock()
}

func (g *sendGate) done(n *Node, ok bool) {
	g.mu.Lock()
	g.drop = g.drop || !ok
	g.pending--
	if g.pending > 0 {
		g.mu.Unlock()
		return
	}
	sends, drop := g.sends, g.drop
	g.sends = nil
	g.mu.Unlock()
	if drop {
		return
	}
	for _, s := range sends {
		n.send(s)
	}
}

// persistChange submits one state change; gate releases the batch's
// messages when it is written. A new SA that cannot be persisted (etcd
// unreachable and statestore.queue_new off, or the write failed) is
// dropped without an answer.
func (n *Node) persistChange(s *shard, a ike.Persist, gate *sendGate) {
	if n.persist == nil {
		return
	}
	c := statestore.Change{Kind: persistKinds[a.Kind], SPI: a.SPI, OldSPI: a.OldSPI, Released: a.Released}
	if a.State != nil {
		c.Record = recordOf(a.State)
	}
	finish := func(err error) {
		ok := err == nil
		if err != nil {
			n.persistFailures.Add(1)
			n.log.Warn("SA state not persisted", "spi", fmt.Sprintf("%016x", a.SPI), "change", c.Kind.String(), "err", err)
		}
		// From a store goroutine or this shard's: hand the outcome to the
		// shard without waiting on it here. A new SA whose write failed is
		// forgotten by the engine; another one writes its state again.
		go n.do(n.runCtx, s, func() {
			if ok {
				s.eng.Committed(a.SPI, a.Version)
				return
			}
			var rd ike.Ready
			s.eng.PersistFailed(a.SPI, a.Version, &rd)
			n.perform(n.runCtx, s, &rd)
		})
		if gate != nil {
			gate.done(n, ok)
		}
	}
	if err := n.persist.store.Submit(c, finish); err != nil {
		finish(err)
	}
}
