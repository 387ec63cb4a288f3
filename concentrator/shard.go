package concentrator

// Engine shards: each runs one ike.Engine on its own goroutine and performs
// the actions it returns.

import (
	"context"
	"fmt"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
	"github.com/ikefleet/ikefleet/concentrator/ike"
)

type shard struct {
	id    int
	eng   *ike.Engine
	q     shardQueue
	calls chan func()
	// watch: rekeyed CHILD SAs (inbound SPI) whose first inbound traffic
	// retires their predecessor, until when to look.
	watch map[uint32]time.Time
	// SPIs reserved cluster-wide ahead of need (state store), taken by the
	// engine without waiting.
	ikeSPIs chan uint64
	espSPIs chan uint32
}

func (n *Node) runShard(ctx context.Context, s *shard) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	watchTick := time.NewTicker(watchInterval)
	defer watchTick.Stop()
	var acts []ike.Action
	streak := 0
	for {
		// Queued IKE_AUTHs and messages of established SAs before new
		// IKE_SA_INITs (shardQueue.next); after prioStreak packets in a
		// row, one wait on everything, so timers and calls get their turn.
		var pkt ike.Packet
		ok := false
		if streak < prioStreak {
			pkt, ok = s.q.next()
		}
		if ok {
			streak++
			acts = s.eng.Handle(time.Now(), pkt, acts[:0])
		} else {
			streak = 0
			select {
			case <-ctx.Done():
				return
			case pkt := <-s.q.prio:
				acts = s.eng.Handle(time.Now(), pkt, acts[:0])
			case pkt := <-s.q.init:
				acts = s.eng.Handle(time.Now(), pkt, acts[:0])
			case f := <-s.calls:
				f()
			case <-timer.C:
				acts = s.eng.Tick(time.Now(), acts[:0])
			case <-watchTick.C:
				n.checkWatched(ctx, s)
			}
		}
		n.perform(ctx, s, acts)
		clear(acts)
		acts = acts[:0]
		timer.Stop()
		if d := s.eng.NextDeadline(time.Now()); !d.IsZero() {
			timer.Reset(time.Until(d))
		}
	}
}

// do runs f on the shard's goroutine and waits for it.
func (n *Node) do(ctx context.Context, s *shard, f func()) error {
	done := make(chan struct{})
	select {
	case s.calls <- func() { f(); close(done) }:
	case <-ctx.Done():
		return ctx.Err()
	}
	<-done
	return nil
}

func (n *Node) perform(ctx context.Context, s *shard, acts []ike.Action) {
	// The caller persists before it sends (DESIGN.md): messages that go
	// with a state change leave once the change is in the state store.
	var gate *sendGate
	if n.persist != nil {
		count := 0
		for _, a := range acts {
			if _, ok := a.(ike.Persist); ok {
				count++
			}
		}
		if count > 0 {
			gate = &sendGate{pending: count + 1} // +1: this loop
			defer gate.done(n, true)
		}
	}
	for _, a := range acts {
		switch a := a.(type) {
		case ike.Send:
			if gate != nil {
				gate.hold(a)
			} else {
				n.send(a)
			}
		case ike.InstallChild:
			if err := n.dp.Install(ctx, toDataplane(a)); err != nil {
				n.log.Error("CHILD_SA install failed", childAttrs(a.SPIi, a.SPIr, a.PeerID, a.Child, "err", err)...)
			}
			if _, ok := n.dp.(dataplane.SACounter); ok && a.Replaces != 0 && n.ecfg.RekeyOverlap > 0 {
				s.watch[a.Child.InSPI] = time.Now().Add(n.ecfg.RekeyOverlap)
			}
		case ike.Keepalive:
			n.sendKeepalive(a)
		case ike.Persist:
			n.persistChange(s, a, gate)
		case ike.RemoveChild:
			if err := n.dp.Remove(ctx, a.Child.InSPI); err != nil {
				n.log.Error("CHILD_SA remove failed", childAttrs(a.SPIi, a.SPIr, ike.Identity{}, a.Child, "err", err)...)
			}
		case ike.UpdateChild:
			n.updateChild(ctx, a)
		case ike.Event:
			n.logEvent(s, a)
		}
	}
}

// expiries hands the data plane's CHILD SA expiries to the shard that owns
// the SA (its inbound SPI carries the shard): soft ones are rekeyed now,
// hard ones deleted.
func (n *Node) expiries(ctx context.Context, ch <-chan dataplane.Expiry) {
	for {
		select {
		case <-ctx.Done():
			return
		case ex, ok := <-ch:
			if !ok {
				return // the data plane closed
			}
			i := 0
			if n.espBits > 0 {
				i = int(ex.InSPI >> (32 - n.espBits))
			}
			if i >= len(n.shards) {
				continue
			}
			s := n.shards[i]
			n.log.Info("CHILD_SA expiring", "spi_in", fmt.Sprintf("%08x", ex.InSPI), "hard", ex.Hard, "reason", ex.Reason)
			n.do(ctx, s, func() {
				n.perform(ctx, s, s.eng.ExpireChild(time.Now(), ex.InSPI, ex.Hard, nil))
			})
		}
	}
}

// watchInterval is how often a shard looks at the counters of rekeyed
// CHILD SAs waiting for their first traffic.
const watchInterval = 500 * time.Millisecond

// checkWatched retires the predecessors of rekeyed CHILD SAs that carry
// traffic now.
func (n *Node) checkWatched(ctx context.Context, s *shard) {
	if len(s.watch) == 0 {
		return
	}
	counter := n.dp.(dataplane.SACounter)
	now := time.Now()
	for spi, until := range s.watch {
		c, err := counter.Counter(ctx, spi)
		switch {
		case err == nil && c.InPackets > 0:
			s.eng.ChildActive(now, spi)
			delete(s.watch, spi)
		case err != nil || now.After(until):
			delete(s.watch, spi) // the engine's overlap timer retires it
		}
	}
}

// updateChild moves an installed CHILD SA to new outer addresses: in place
// where the data plane can, else by reinstalling it.
func (n *Node) updateChild(ctx context.Context, a ike.UpdateChild) {
	c := a.Child
	var err error
	if u, ok := n.dp.(dataplane.AddressUpdater); ok {
		err = u.UpdateAddresses(ctx, c.InSPI, c.Local, c.Remote)
	} else if err = n.dp.Remove(ctx, c.InSPI); err == nil {
		err = n.dp.Install(ctx, toDataplane(ike.InstallChild{SPIi: a.SPIi, SPIr: a.SPIr, PeerID: a.PeerID, Child: c}))
	}
	if err != nil {
		n.log.Error("CHILD_SA address update failed", childAttrs(a.SPIi, a.SPIr, ike.Identity{}, c, "err", err)...)
	}
}
