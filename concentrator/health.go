package concentrator

// The node's own health, for probes and operators.

import (
	"context"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
	"github.com/ikefleet/ikefleet/statestore"
)

// Health is the node's view of its own state, for probes and operators.
type Health struct {
	StateStore      *statestore.Health // nil without a state store
	Fenced          bool               // not allowed to send for its SAs now
	PersistFailures uint64
	Listening       bool   // the IKE sockets are bound
	Draining        bool   // SetDraining
	DataPlane       string // its name
	DataPlaneError  string // the last CHILD SA install failed with it ("" once one succeeds)
	DroppedBatches  uint64 // engine batches not applied nor sent: a write failed
}

// Health reports the node's health.
func (n *Node) Health() Health {
	h := Health{PersistFailures: n.persistFailures.Load(), DroppedBatches: n.droppedBatches.Load(), Listening: n.listening(),
		Draining: n.obs.draining.Load(), DataPlane: n.dp.Name()}
	if e := n.obs.installErr.Load(); e != nil {
		h.DataPlaneError = *e
	}
	if n.persist != nil {
		sh := n.persist.store.Health()
		h.StateStore = &sh
		h.Fenced = !n.persist.store.CanSend()
	}
	return h
}

// watchStore logs when the state store becomes unreachable or reachable
// again, and when the node starts or stops refusing new SAs.
func (n *Node) watchStore(ctx context.Context) {
	if n.persist == nil {
		return
	}
	t := n.clock.NewTicker(time.Second)
	defer t.Stop()
	last := n.persist.store.Health()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
		h := n.persist.store.Health()
		switch {
		case last.Reachable && !h.Reachable:
			n.log.Warn("state store unreachable: serving established SAs, new ones refused unless statestore.queue_new",
				"err", h.LastError, "queued", h.Queued, "refuse_new", h.RefuseNew)
		case !last.Reachable && h.Reachable:
			n.log.Info("state store reachable again", "queued", h.Queued)
		}
		if last.Registered && !h.Registered {
			n.log.Warn("fenced: lease lost, not sending for our SAs until re-registered")
		} else if !last.Registered && h.Registered {
			n.log.Info("re-registered", "epoch", h.Owner.Epoch, "slot", h.Slot)
		}
		last = h
	}
}

// fenceDataPlane stops the data plane's outbound ESP as soon as the state
// store fences this node (before its lease can expire and another node
// take its SAs over), and resumes it once the node registered again and
// reclaimed its SAs (onReclaimed has dropped those it lost by then).
func (n *Node) fenceDataPlane(ctx context.Context) {
	f, ok := n.dp.(dataplane.Fencer)
	if n.persist == nil || !ok {
		return
	}
	st := n.persist.store
	for {
		// Both before waiting: the next registration is the one after
		// this fence, however soon it comes.
		fenced, registered := st.Fenced(), st.Registered()
		select {
		case <-ctx.Done():
			return
		case <-fenced:
		}
		if ctx.Err() != nil {
			return
		}
		f.SetFenced(true)
		n.log.Warn("fenced: outbound ESP stopped", "dataplane", n.dp.Name())
		select {
		case <-ctx.Done():
			return
		case <-registered:
		}
		f.SetFenced(false)
		n.log.Info("registered again: outbound ESP resumed", "dataplane", n.dp.Name())
	}
}
