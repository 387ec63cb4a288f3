package concentrator

// Restoring the SAs this node owns at start, and dropping those other nodes
// took over while it was fenced.

import (
	"context"
	"fmt"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/statestore"
)

// Reconciler is implemented by data planes that keep state across
// restarts (the kernel): at start they are told what to keep.
type Reconciler interface {
	Reconcile(ctx context.Context, want []*dataplane.ChildSA) (adopted, removed int, err error)
}

// restore puts back the SAs this node owns, before any packet is served,
// and tells the data plane which CHILD SAs to keep.
func (n *Node) restore(ctx context.Context) error {
	var want []*dataplane.ChildSA
	var rd ike.Ready
	rest := make([][]*ike.Ready, len(n.shards)) // per shard, per SA: what its restore writes, changes and sends
	restored := 0
	if n.persist != nil {
		recs, err := n.persist.store.LoadOwned(ctx)
		if err != nil {
			return fmt.Errorf("statestore: loading owned SAs: %w", err)
		}
		now := n.clock.Mono()
		for _, r := range recs {
			st := stateOf(r)
			s := n.shardOfSPI(r.LocalSPI())
			if s == nil {
				n.log.Warn("stored SA with a foreign shard number", "spi", fmt.Sprintf("%016x", r.LocalSPI()))
				continue
			}
			rd.Reset()
			_, err = s.eng.Restore(now, st, &rd)
			if err != nil {
				n.log.Warn("stored SA not restored", "spi", fmt.Sprintf("%016x", r.LocalSPI()), "err", err)
				continue
			}
			restored++
			// The CHILD SAs go into the data plane now, sending from their
			// committed reservation and no further (OutSeqLimit = OutSeq)
			// until the fresh reservation is committed: its SetSeqLimit
			// waits for that write like any batch.
			r := &ike.Ready{}
			rest[s.id] = append(rest[s.id], r)
			for _, a := range rd.DataPlane {
				if ic, ok := a.(ike.InstallChild); ok {
					want = append(want, toDataplane(ic, n.wallOffset()))
				} else {
					r.DataPlane = append(r.DataPlane, a)
				}
			}
			r.Persist = append(r.Persist, rd.Persist...)
			r.Send = append(r.Send, rd.Send...)
			r.Events = append(r.Events, rd.Events...)
		}
	}
	if r, ok := n.dp.(Reconciler); ok {
		adopted, removed, err := r.Reconcile(ctx, want)
		if err != nil {
			return fmt.Errorf("dataplane: reconcile: %w", err)
		}
		n.log.Info("data plane reconciled", "dataplane", n.dp.Name(), "adopted", adopted, "removed_strays", removed, "wanted", len(want))
	} else {
		for _, c := range want {
			if err := n.dp.Install(ctx, c); err != nil {
				n.log.Error("CHILD_SA restore failed", "spi_in", fmt.Sprintf("%08x", c.InSPI), "err", err)
			}
		}
	}
	// The restored SAs' fresh reservations and message ID
	// synchronisations, one batch per SA so that a failed write holds
	// back only its own SA; the shards take the commits once they run.
	for i, s := range n.shards {
		for _, r := range rest[i] {
			n.perform(ctx, s, r)
		}
	}
	if n.persist != nil {
		n.log.Info("SAs restored", "count", restored, "children", len(want))
	}
	return nil
}

// onReclaimed: after a fence, the store re-registered and reclaimed these
// SAs; the others went to other nodes meanwhile and are dropped here
// without a word to their peers. The SPIs and addresses reserved ahead
// were reserved on the old registration's lease: gone with it (another
// node may hold them now), so they are dropped before anything is sent
// again and reserved anew.
func (n *Node) onReclaimed(me statestore.Owner, owned []uint64, err error) {
	n.dropReservations()
	if err != nil {
		n.log.Warn("statestore: reclaim incomplete", "err", err)
		return
	}
	keep := make(map[uint64]bool, len(owned))
	for _, s := range owned {
		keep[s] = true
	}
	ctx := n.runCtx
	for _, s := range n.shards {
		n.do(ctx, s, func() {
			var gone []uint64
			s.eng.Each(func(sa *ike.IKESA) bool {
				spi := sa.SPIr
				if sa.IsInitiator() {
					spi = sa.SPIi
				}
				if sa.Established() && !keep[spi] {
					gone = append(gone, spi)
				}
				return true
			})
			var rd ike.Ready
			for _, spi := range gone {
				s.eng.Forget(spi, &rd)
			}
			n.perform(ctx, s, &rd)
			if len(gone) > 0 {
				n.log.Warn("SAs taken over by other nodes dropped", "count", len(gone), "epoch", me.Epoch)
			}
		})
	}
}
