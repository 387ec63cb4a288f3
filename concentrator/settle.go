package concentrator

// Established writes whose outcome is unknown, and unused SPIs whose
// release failed. statestore.ErrUnavailable
// means the answer to the write's transaction was lost, not necessarily
// the transaction. The engine has let the SA go (its IKE_AUTH response
// never left) and names its SPIs no more (an SPI is never used again), but
// etcd may still hold what the write touched: the SPIs' reservations on
// the node's lease until the lease ends, or, if the write landed, the
// SA's record, owner key, identity entry and ESP SPI keys: an SA no node
// serves, restored at the node's next start only to fail its liveness
// check, and counted as the node's meanwhile. The settler clears them
// once etcd answers, in this order:
//  1. ReleaseSPIs deletes the reservations still empty on this node's
//     lease. After it no late commit of the write can land: the write
//     compares the record key's revision with the reservation's.
//  2. A Deleted change deletes what the write left if it landed (it
//     compares the owner key, so it deletes nothing of anyone else's).
//
// The virtual IP the write may have leased is left to its identity, as
// after any failed write (vippool.go gives back a reservation that is
// still this node's).

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ikefleet/ikefleet/statestore"
)

// maxUnsettled bounds the writes kept for settling: beyond, they are
// dropped (logged), and what they left goes with the node's lease or at
// its next start.
const maxUnsettled = 1 << 16

// settler holds the Established changes whose outcome is unknown, and
// the unused SPIs whose release failed (reuseSpare).
type settler struct {
	mu      sync.Mutex
	queue   []statestore.Change
	ike     []uint64 // reservations to give back
	esp     []uint32
	dropped int
	wake    chan struct{} // capacity 1

	settled, landed atomic.Uint64
}

// unsettled queues c, an Established change whose write's outcome is
// unknown, and keeps late messages for its SPIs from starting a claim
// (a claim would find the record the write may have left and restore
// the SA the engine let go).
func (n *Node) unsettled(c statestore.Change) {
	if c.Record == nil {
		return
	}
	n.negative(c.Record.LocalSPI())
	for _, in := range c.Record.InSPIs() {
		n.negative(espKey(in))
	}
	s := &n.settle
	s.mu.Lock()
	if len(s.queue) < maxUnsettled {
		s.queue = append(s.queue, c)
	} else {
		s.dropped++
	}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// releaseLater queues unused SPIs whose release failed, to be released
// with the next settling; those beyond the queue's bound stay reserved
// until the node's registration ends.
func (n *Node) releaseLater(ike []uint64, esp []uint32) {
	s := &n.settle
	s.mu.Lock()
	ike = ike[:min(len(ike), max(0, maxUnsettled-len(s.ike)))]
	esp = esp[:min(len(esp), max(0, maxUnsettled-len(s.esp)))]
	s.ike = append(s.ike, ike...)
	s.esp = append(s.esp, esp...)
	s.mu.Unlock()
}

// SettleStats: Established writes of unknown outcome settled, and how
// many of them had landed (their keys deleted).
type SettleStats struct{ Settled, Landed uint64 }

// SettleStats returns the settler's counters.
func (n *Node) SettleStats() SettleStats {
	return SettleStats{n.settle.settled.Load(), n.settle.landed.Load()}
}

// settleLoop settles the queued writes while the node runs: at once when
// one comes, again every second while etcd does not answer.
func (n *Node) settleLoop(ctx context.Context) {
	t := n.clock.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.settle.wake:
		case <-t.C():
		}
		n.settleQueued(ctx)
	}
}

// settleQueued takes the queued writes and settles them; those etcd did
// not answer for go back to the queue.
func (n *Node) settleQueued(ctx context.Context) {
	s := &n.settle
	s.mu.Lock()
	todo, dropped := s.queue, s.dropped
	unused, unusedESP := s.ike, s.esp
	s.queue, s.dropped, s.ike, s.esp = nil, 0, nil, nil
	s.mu.Unlock()
	if dropped > 0 {
		n.log.Warn("writes of unknown outcome not settled: too many; their reservations go with the node's lease", "dropped", dropped)
	}
	if len(todo)+len(unused)+len(unusedESP) == 0 {
		return
	}
	st := n.persist.store
	if !st.CanSend() {
		// Fenced: the lease ends, and every reservation on it (the
		// unused SPIs need no release). The writes are tried again once
		// the node re-registered: one that landed is then its previous
		// registration's SA, which the reclaim restores and its liveness
		// check ends (the Deleted change finds another owner and says so).
		n.requeue(todo)
		return
	}
	ike, esp := slices.Clone(unused), slices.Clone(unusedESP)
	for _, c := range todo {
		ike = append(ike, c.Record.LocalSPI())
		esp = append(esp, c.Record.InSPIs()...)
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := st.ReleaseSPIs(rctx, ike, esp)
	cancel()
	if err != nil {
		n.requeue(todo)
		n.releaseLater(unused, unusedESP)
		return
	}
	if len(unused)+len(unusedESP) > 0 {
		n.log.Info("unused SPIs released after a failed release", "ike", len(unused), "esp", len(unusedESP))
	}
	if len(todo) == 0 {
		return
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var again []statestore.Change
	for _, c := range todo {
		del := statestore.Change{Kind: statestore.Deleted, Record: c.Record, Identity: c.Identity, Revision: new(int64)}
		if c.Selectors != nil {
			del.Selectors = &statestore.SelectorClaim{}
		}
		wg.Add(1)
		done := func(err error) {
			defer wg.Done()
			switch {
			case err == nil:
				if *del.Revision != 0 { // committed: the write had landed (else nothing to delete)
					s.landed.Add(1)
				}
			case errors.Is(err, statestore.ErrUnavailable):
				mu.Lock()
				again = append(again, c)
				mu.Unlock()
				return
			default:
				// Not this node's (fenced meanwhile: taken over as a dead
				// node's, whose liveness checks then fail), or refused.
				n.log.Warn("write of unknown outcome not settled", "spi", fmt.Sprintf("%016x", c.Record.LocalSPI()), "err", err)
			}
			s.settled.Add(1)
		}
		if err := st.Submit(del, done); err != nil {
			done(err)
		}
	}
	wg.Wait()
	n.requeue(again)
	n.log.Info("writes of unknown outcome settled", "writes", len(todo)-len(again), "again", len(again),
		"landed_total", s.landed.Load())
}

// requeue puts writes back to be settled at the next tick.
func (n *Node) requeue(cs []statestore.Change) {
	if len(cs) == 0 {
		return
	}
	s := &n.settle
	s.mu.Lock()
	defer s.mu.Unlock()
	room := max(0, maxUnsettled-len(s.queue))
	if len(cs) > room {
		s.dropped += len(cs) - room
		cs = cs[:room]
	}
	s.queue = append(s.queue, cs...)
}
