package concentrator

// Engine shards: each runs one ike.Engine on its own goroutine and applies
// the batches it makes (apply.go).

import (
	"context"
	"errors"
	"fmt"
	"sync"
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
	// Reserved SPIs the engine handed back unused (spipool.go), until the
	// refill loop puts them back in the pools or releases them.
	spareMu  sync.Mutex
	spareIKE []uint64
	spareESP []uint32
	// Batches waiting for their writes (apply.go), and the state store's
	// answers.
	held    []*heldBatch
	commits commits
	results []commitResult
}

func (n *Node) runShard(ctx context.Context, s *shard) {
	timer := n.clock.NewTimer(time.Hour)
	defer timer.Stop()
	watchTick := n.clock.NewTicker(watchInterval)
	defer watchTick.Stop()
	var rd ike.Ready
	streak := 0
	// The socket loop answers with cookies from the first request of a
	// flood on (ike.Cookies.Screen): the secret exists from the start.
	s.eng.RenewCookieSecret(n.clock.Mono())
	for {
		// The store's answers first: each releases what its write held
		// back (an IKE_AUTH's response, its CHILD SA's install), which
		// has waited for etcd already. In the wait below they would
		// come after up to prioStreak packets, a few milliseconds of
		// key exchanges while new IKE_SA_INITs keep coming.
		select {
		case <-s.commits.wake:
			n.commitResults(ctx, s)
		default:
		}
		// Queued IKE_AUTHs and messages of established SAs before
		// cookie-proven new IKE_SA_INITs, and those before other new ones
		// (shardQueue.next); after prioStreak packets in a row, one wait
		// on everything, so timers and calls get their turn.
		var pkt ike.Packet
		ok := false
		if streak < prioStreak {
			pkt, ok = s.q.next()
		}
		if ok {
			streak++
			n.handle(s, pkt, &rd)
		} else {
			streak = 0
			select {
			case <-ctx.Done():
				return
			case pkt := <-s.q.prio:
				n.handle(s, pkt, &rd)
			case <-s.q.spill.wake: // overflow waits in a spill (next takes it)
			case <-s.q.provenSpill.wake: // the same
			case pkt := <-s.q.proven:
				s.eng.Handle(n.clock.Mono(), pkt, &rd)
			case pkt := <-s.q.init:
				s.eng.Handle(n.clock.Mono(), pkt, &rd)
			case f := <-s.calls:
				f()
			case <-timer.C():
				s.eng.Tick(n.clock.Mono(), &rd)
			case <-watchTick.C():
				n.checkWatched(ctx, s)
				s.eng.RenewCookieSecret(n.clock.Mono())
			case <-s.commits.wake:
				n.commitResults(ctx, s)
			}
		}
		n.perform(ctx, s, &rd)
		rd.Reset()
		timer.Stop()
		if d := s.eng.NextDeadline(n.clock.Mono()); !d.IsZero() {
			timer.ResetAt(d)
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
	case <-n.stopped:
		return errStopped
	}
	<-done
	return nil
}

// errStopped: the node's Run has ended; its shards run nothing more.
var errStopped = errors.New("node stopped")

// shardOfESP is the shard owning the CHILD SA with inbound SPI inSPI
// (the SPI's top bits carry the shard), or nil.
func (n *Node) shardOfESP(inSPI uint32) *shard {
	i := 0
	if n.espBits > 0 {
		i = int(inSPI >> (32 - n.espBits))
	}
	if i >= len(n.shards) {
		return nil
	}
	return n.shards[i]
}

// expiries hands the data plane's CHILD SA expiries to the shard that owns
// the SA: soft ones are rekeyed now, hard ones deleted.
func (n *Node) expiries(ctx context.Context, ch <-chan dataplane.Expiry) {
	for {
		select {
		case <-ctx.Done():
			return
		case ex, ok := <-ch:
			if !ok {
				return // the data plane closed
			}
			s := n.shardOfESP(ex.InSPI)
			if s == nil {
				continue
			}
			n.log.Info("CHILD_SA expiring", "spi_in", fmt.Sprintf("%08x", ex.InSPI), "hard", ex.Hard, "reason", ex.Reason)
			n.do(ctx, s, func() {
				var rd ike.Ready
				s.eng.ExpireChild(n.clock.Mono(), ex.InSPI, ex.Hard, &rd)
				n.perform(ctx, s, &rd)
			})
		}
	}
}

// seqProgress hands the data plane's sequence number reports to the shard
// that owns the CHILD SA: the engine renews its reservation (a small
// write) and raises the data plane's limit once that is committed.
func (n *Node) seqProgress(ctx context.Context, ch <-chan dataplane.SeqProgress) {
	for {
		select {
		case <-ctx.Done():
			return
		case p, ok := <-ch:
			if !ok {
				return // the data plane closed
			}
			s := n.shardOfESP(p.InSPI)
			if s == nil {
				continue
			}
			n.do(ctx, s, func() {
				var rd ike.Ready
				s.eng.SeqProgress(n.clock.Mono(), p.InSPI, p.OutSeq, p.InSeq, &rd)
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
	now := n.clock.Mono()
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
		err = n.dp.Install(ctx, toDataplane(ike.InstallChild{SPIi: a.SPIi, SPIr: a.SPIr, PeerID: a.PeerID, Child: c}, n.wallOffset()))
	}
	if err != nil {
		n.log.Error("CHILD_SA address update failed", childAttrs(a.SPIi, a.SPIr, ike.Identity{}, c, "err", err)...)
	}
}

// handle gives a received message to the shard's engine, or parks it while
// the SA it belongs to is claimed from the node that holds it (claim.go).
// New IKE_SA_INITs never wait: they start SAs here.
func (n *Node) handle(s *shard, pkt ike.Packet, rd *ike.Ready) {
	if spi, ok := n.unheld(s, pkt); ok {
		n.park(spi, pkt)
		return
	}
	s.eng.Handle(n.clock.Mono(), pkt, rd)
}
