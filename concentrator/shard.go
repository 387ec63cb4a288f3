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
	var rd ike.Ready
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
			s.eng.Handle(time.Now(), pkt, &rd)
		} else {
			streak = 0
			select {
			case <-ctx.Done():
				return
			case pkt := <-s.q.prio:
				s.eng.Handle(time.Now(), pkt, &rd)
			case pkt := <-s.q.init:
				s.eng.Handle(time.Now(), pkt, &rd)
			case f := <-s.calls:
				f()
			case <-timer.C:
				s.eng.Tick(time.Now(), &rd)
			case <-watchTick.C:
				n.checkWatched(ctx, s)
			}
		}
		n.perform(ctx, s, &rd)
		rd.Reset()
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

func (n *Node) perform(ctx context.Context, s *shard, rd *ike.Ready) {
	for _, ev := range rd.Events {
		n.logEvent(s, ev)
	}
	// The caller persists before it sends (DESIGN.md): messages that go
	// with a state change leave once the change is in the state store.
	var gate *sendGate
	if n.persist != nil && len(rd.Persist) > 0 {
		gate = &sendGate{pending: len(rd.Persist) + 1} // +1: this function
		defer gate.done(n, true)
	}
	for _, p := range rd.Persist {
		if n.persist == nil {
			s.eng.Committed(p.SPI, p.Version) // nothing to write
			continue
		}
		n.persistChange(s, p, gate)
	}
	for _, a := range rd.DataPlane {
		switch a := a.(type) {
		case ike.InstallChild:
			err := n.dp.Install(ctx, toDataplane(a))
			n.noteInstall(err)
			if err != nil {
				n.log.Error("CHILD_SA install failed", childAttrs(a.SPIi, a.SPIr, a.PeerID, a.Child, "err", err)...)
			}
			if _, ok := n.dp.(dataplane.SACounter); ok && a.Replaces != 0 && n.ecfg.RekeyOverlap > 0 {
				s.watch[a.Child.InSPI] = time.Now().Add(n.ecfg.RekeyOverlap)
			}
		case ike.RemoveChild:
			if err := n.dp.Remove(ctx, a.Child.InSPI); err != nil {
				n.log.Error("CHILD_SA remove failed", childAttrs(a.SPIi, a.SPIr, ike.Identity{}, a.Child, "err", err)...)
			}
		case ike.UpdateChild:
			n.updateChild(ctx, a)
		}
	}
	for _, snd := range rd.Send {
		switch {
		case snd.Keepalive:
			n.sendKeepalive(snd)
		case gate != nil:
			gate.hold(snd)
		default:
			n.send(snd)
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
				var rd ike.Ready
				s.eng.ExpireChild(time.Now(), ex.InSPI, ex.Hard, &rd)
				n.perform(ctx, s, &rd)
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
