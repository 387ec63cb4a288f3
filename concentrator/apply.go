package concentrator

// Applying an engine step's Ready batch. Its state changes go to the state
// store first; once every one of them is committed, its data-plane changes
// are made and then its messages sent. A shard's batches are released in
// the order the engine made them, each behind the commits of those before
// it. A batch with a failed write is dropped whole: nothing of it is
// applied or sent, and the engine, told so, makes again what it still
// needs behind its next write. With statestore.mode none there is nothing
// to wait for and every batch is applied at once.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/statestore"
)

var persistKinds = map[ike.PersistKind]statestore.ChangeKind{
	ike.PersistEstablished: statestore.Established, ike.PersistChildCreated: statestore.ChildCreated,
	ike.PersistChildRekeyed: statestore.ChildRekeyed, ike.PersistChildDeleted: statestore.ChildDeleted,
	ike.PersistIKERekeyed: statestore.IKERekeyed, ike.PersistAddressChanged: statestore.AddressChanged,
	ike.PersistDeleted: statestore.Deleted, ike.PersistReserved: statestore.Reserved,
	ike.PersistUpdated: statestore.Updated,
}

// heldBatch is a batch waiting for its writes (or for those of the
// batches before it).
type heldBatch struct {
	dataPlane []ike.Action
	send      []ike.Send
	waiting   int  // writes not answered yet
	failed    bool // a write failed: drop the batch
}

// commitResult is the state store's answer to one write of a batch.
type commitResult struct {
	b            *heldBatch
	spi, version uint64
	kind         statestore.ChangeKind
	err          error
}

// commits carries the state store's answers to a shard's goroutine: the
// store's goroutines must never wait on a shard, so the list is unbounded
// and wake is only a nudge.
type commits struct {
	mu   sync.Mutex
	list []commitResult
	wake chan struct{} // capacity 1
}

func (c *commits) post(r commitResult) {
	c.mu.Lock()
	c.list = append(c.list, r)
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *commits) take(into []commitResult) []commitResult {
	c.mu.Lock()
	into = append(into, c.list...)
	clear(c.list)
	c.list = c.list[:0]
	c.mu.Unlock()
	return into
}

// perform applies one Ready batch of shard s; on s's goroutine (or before
// the shards run, at restore). rd may be reused once it returns.
func (n *Node) perform(ctx context.Context, s *shard, rd *ike.Ready) {
	if len(rd.EAP) > 0 {
		n.eapRequests(s, rd.EAP) // half-open: no state to commit first
	}
	for _, ev := range rd.Events {
		n.logEvent(s, ev)
	}
	if n.persist == nil {
		for _, p := range rd.Persist {
			s.eng.Committed(p.SPI, p.Version) // nothing to write
		}
		n.apply(ctx, s, rd.DataPlane, rd.Send)
		return
	}
	if len(rd.Persist) == 0 && len(s.held) == 0 {
		n.apply(ctx, s, rd.DataPlane, rd.Send) // nothing to wait for
		return
	}
	if len(rd.Persist) == 0 && len(rd.DataPlane) == 0 && revealsNothingHeld(rd.Send) {
		// Answers to IKE_SA_INIT requests (and NAT-T keepalives) reveal no
		// state that a write holds back: a new gateway's first round trip
		// does not wait behind other SAs' commits.
		n.apply(ctx, s, nil, rd.Send)
		return
	}
	if len(rd.Persist) == 0 && len(rd.DataPlane) == 0 && len(rd.Send) == 0 {
		return
	}
	b := &heldBatch{dataPlane: slices.Clone(rd.DataPlane), send: slices.Clone(rd.Send), waiting: len(rd.Persist)}
	s.held = append(s.held, b)
	for _, p := range rd.Persist {
		n.submit(s, b, p)
	}
	n.release(ctx, s)
}

// revealsNothingHeld reports sends that are only IKE_SA_INIT responses
// (a half-open SA's, or a cookie demand or refusal: nothing of them is
// written to the state store) and NAT-T keepalives. They may go ahead of
// the batches held for their writes; everything else keeps the engine's
// order.
func revealsNothingHeld(send []ike.Send) bool {
	for _, sd := range send {
		if sd.Keepalive {
			continue
		}
		for _, m := range sd.Messages {
			h, err := ike.DecodeHeader(m)
			if err != nil || h.Exchange != ike.IKE_SA_INIT || h.Flags&ike.FlagResponse == 0 {
				return false
			}
		}
	}
	return true
}

// submit sends one write of batch b to the state store; its answer comes
// back to the shard through s.commits.
func (n *Node) submit(s *shard, b *heldBatch, p ike.Persist) {
	c := statestore.Change{Kind: persistKinds[p.Kind], SPI: p.SPI, OldSPI: p.OldSPI, Released: p.Released}
	if p.State != nil {
		c.Record = recordOf(p.State)
	}
	var vip *vipLease
	var cp *clusterPool
	if c.Kind == statestore.Established && p.State.VirtualIP.IsValid() {
		if cp = poolFor(&n.ecfg, p.State.PeerID, p.State.PeerCert); cp != nil {
			vip, c.Lease = cp.leaseFor(p.State.VirtualIP, p.State.PeerID.String())
		}
	}
	n.uniqueChange(&c, &p)
	n.goneHere(&c)
	switch {
	case p.ExclusiveSelectors:
		c.Selectors = &statestore.SelectorClaim{Identity: p.PeerID.String()}
		from := p.SPI // the SA whose claim the ranges carry on (a Deleted change has none)
		if c.Kind == statestore.IKERekeyed {
			from = c.OldSPI
		}
		for _, r := range p.Selectors {
			sr := statestore.SelectorRange{Start: r.Start, End: r.End}
			if book := n.persist.claims; book != nil {
				// When each range was first claimed, for a node that has
				// to list the claims instead of reading them in order.
				sr.Since = book.since(from, c.Selectors.Identity, r)
			}
			c.Selectors.Ranges = append(c.Selectors.Ranges, sr)
		}
	case n.ecfg.Selectors != nil && (c.Kind == statestore.Deleted || c.Kind == statestore.IKERekeyed):
		// Under policies the claim an SA's record may carry goes with it,
		// even if this node never registered it (a restored SA): a claim
		// outliving its SA would hold its range from every other identity.
		c.Selectors = &statestore.SelectorClaim{}
	}
	var claim *claimWait
	if book := n.persist.claims; book != nil && c.Selectors != nil && len(c.Selectors.Ranges) > 0 && claimsRanges(c.Kind) {
		// Held until the cluster's claims are read up to the write
		// (claimbook.go): nothing of it goes out if its ranges lost.
		claim = book.wait(c.Record.LocalSPI())
		c.Revision = new(int64)
		n.cluster.selectorHolds.Add(1)
	}
	submitted := time.Now()
	done := func(err error) {
		n.obs.etcd.ObserveCommit(c.Kind.String(), time.Since(submitted))
		if vip != nil {
			cp.settle(vip, err) // before the engine hears of it
		}
		n.uniqueCommitted(&c, err)
		if c.Kind == statestore.Established && errors.Is(err, statestore.ErrUnavailable) {
			n.unsettled(c) // settle.go
		}
		res := commitResult{b: b, spi: p.SPI, version: p.Version, kind: c.Kind, err: err}
		switch {
		case claim == nil:
		case err != nil:
			n.persist.claims.cancel(claim)
		default:
			n.persist.claims.committed(claim, *c.Revision, func(l *claimLoss) {
				if l != nil {
					res.err = &claimLostError{*l}
				}
				s.commits.post(res)
			})
			return
		}
		s.commits.post(res)
	}
	submit := n.persist.store.Submit
	if h := n.submitHook; h != nil {
		submit = func(c statestore.Change, done func(error)) error { return h(n.persist.store, c, done) }
	}
	if err := submit(c, done); err != nil {
		done(err)
	}
}

// goneHere puts the SPIs that change c ends into the claims' negative
// cache: the IKE SPI of an SA deleted here (or replaced by an IKE rekey)
// and the inbound ESP SPIs it frees. IKE and ESP SPIs are never used
// again, so a late message for one (a retransmission, a liveness check
// sent before the peer saw the Delete) must not start a claim: until the
// deletion commits, the claim would find this node's own record and
// restore the SA just deleted, whose next write then fails ("SA
// forgotten"). An SA that leaves for another node (a hand-off, Forget) is
// not deleted and may come back by a claim.
func (n *Node) goneHere(c *statestore.Change) {
	switch c.Kind {
	case statestore.Deleted: // its CHILD SAs' inbound SPIs are Released
		n.negative(c.SPI)
	case statestore.IKERekeyed:
		n.negative(c.OldSPI)
	}
	for _, x := range c.Released {
		n.negative(espKey(x))
	}
}

// claimsRanges reports the changes by which an SA may claim selector
// ranges it did not hold.
func claimsRanges(k statestore.ChangeKind) bool {
	switch k {
	case statestore.Established, statestore.ChildCreated, statestore.ChildRekeyed, statestore.IKERekeyed:
		return true
	}
	return false
}

// claimLostError: a committed write whose SA claimed selector ranges that
// an earlier claim of another identity holds (claimbook.go). Its batch is
// dropped and the SA discarded.
type claimLostError struct{ claimLoss }

func (e *claimLostError) Error() string {
	if e.holder == "" {
		return "no verdict on the selectors claimed (the claims watch is behind)"
	}
	return fmt.Sprintf("selectors claimed by %s are held by %s (IKE SA %016x)", e.identity, e.holder, e.holderSPI)
}

// commitResults takes the state store's answers on s's goroutine: tells
// the engine, then releases what may go.
func (n *Node) commitResults(ctx context.Context, s *shard) {
	s.results = s.commits.take(s.results[:0])
	for _, r := range s.results {
		r.b.waiting--
		if r.err == nil {
			s.eng.Committed(r.spi, r.version)
			continue
		}
		r.b.failed = true
		var rd ike.Ready
		var lost *claimLostError
		if errors.As(r.err, &lost) {
			// Stored, but lost its selectors: removed before anything of
			// the batch is revealed.
			s.eng.Committed(r.spi, r.version)
			if lost.holder == "" {
				n.cluster.selectorHoldTimeouts.Add(1)
			} else {
				n.cluster.selectorConflicts.Add(1)
			}
			n.log.Warn("SA discarded: its selectors are another identity's", "spi", fmt.Sprintf("%016x", r.spi),
				"change", r.kind.String(), "err", r.err)
			s.eng.Discard(r.spi, "selectors held by another identity", &rd)
			rd.DataPlane = withoutRemovalsOf(rd.DataPlane, r.b.dataPlane)
			n.perform(ctx, s, &rd)
			continue
		}
		n.persistFailures.Add(1)
		var oe *statestore.OwnerError
		if errors.As(r.err, &oe) && oe.Owner.Node != n.nodeID && s.eng.Disowned(r.spi, r.version, &rd) {
			// etcd gives the SA to another node or to no one: it is not
			// served here any more (a retry would fail the same way, at
			// every tick). Owned by this node's previous registration, it
			// is the reclaim's to move, and retried meanwhile.
			owner := "none"
			if oe.Owner.Node != "" {
				owner = oe.Owner.String()
			}
			n.log.Warn("SA forgotten: the state store says it is not this node's", "spi", fmt.Sprintf("%016x", r.spi),
				"change", r.kind.String(), "owner", owner)
		} else {
			n.log.Warn("SA state not persisted; its batch is dropped", "spi", fmt.Sprintf("%016x", r.spi),
				"change", r.kind.String(), "err", r.err)
			if refusedUnwritten(r.err) {
				s.eng.PersistRefused(r.spi, r.version, &rd)
			} else {
				s.eng.PersistFailed(r.spi, r.version, &rd)
			}
		}
		n.perform(ctx, s, &rd)
	}
	clear(s.results)
	n.release(ctx, s)
}

// refusedUnwritten tells the state store's refusals of a change whose
// conditions did not hold, so that nothing of it was written.
func refusedUnwritten(err error) bool {
	var held *statestore.IdentityHeldError
	var taken *statestore.AddressTakenError
	return errors.As(err, &held) || errors.As(err, &taken)
}

// withoutRemovalsOf drops from dp the removals of CHILD SAs that the
// dropped batch's actions were to install: they never were.
func withoutRemovalsOf(dp, dropped []ike.Action) []ike.Action {
	never := map[uint32]bool{}
	for _, a := range dropped {
		if in, ok := a.(ike.InstallChild); ok {
			never[in.Child.InSPI] = true
		}
	}
	return slices.DeleteFunc(dp, func(a ike.Action) bool {
		rm, ok := a.(ike.RemoveChild)
		return ok && never[rm.Child.InSPI]
	})
}

// release applies the batches at the head of s's queue whose writes are
// all committed, in order, and drops those with a failed write.
func (n *Node) release(ctx context.Context, s *shard) {
	for len(s.held) > 0 && s.held[0].waiting == 0 {
		b := s.held[0]
		s.held[0] = nil
		s.held = s.held[1:]
		if b.failed {
			n.droppedBatches.Add(1)
			continue
		}
		n.apply(ctx, s, b.dataPlane, b.send)
	}
	if len(s.held) == 0 {
		s.held = nil // let the backing array go
	}
}

// raisedSeqLimit is a SetSeqLimit of a batch and where it is in it.
type raisedSeqLimit struct {
	ike.SetSeqLimit
	at int
}

// raisedLimits finds a batch's SetSeqLimit actions by inbound SPI. A
// restored or claimed CHILD SA comes as an InstallChild with no room to
// send (OutSeqLimit = OutSeq) followed, in the same batch, by the
// SetSeqLimit of its fresh reservation; the batch is applied once that
// reservation is committed, so apply installs the SA with the raised
// limit at once. Installed with the low one, the ESP parked for it while
// it was claimed (replayed by Install) would be answered before the
// limit is raised, and the answers dropped (seq_reservation).
func raisedLimits(dp []ike.Action) map[uint32]raisedSeqLimit {
	var m map[uint32]raisedSeqLimit
	for i, a := range dp {
		if l, ok := a.(ike.SetSeqLimit); ok {
			if m == nil {
				m = map[uint32]raisedSeqLimit{}
			}
			m[l.InSPI] = raisedSeqLimit{l, i}
		}
	}
	return m
}

// apply makes a released batch's data-plane changes, then sends its
// messages.
func (n *Node) apply(ctx context.Context, s *shard, dp []ike.Action, send []ike.Send) {
	raised := raisedLimits(dp)
	var checks []ike.CheckTraffic
	for i, a := range dp {
		switch a := a.(type) {
		case ike.CheckTraffic:
			checks = append(checks, a)
		case ike.InstallChild:
			if l, ok := raised[a.Child.InSPI]; ok && l.at > i && l.OutSeqLimit > a.OutSeqLimit {
				a.OutSeqLimit, a.OutSeqMargin = l.OutSeqLimit, l.OutSeqMargin
			}
			err := n.dp.Install(ctx, toDataplane(a, n.wallOffset()))
			n.noteInstall(err)
			if err != nil {
				n.log.Error("CHILD_SA install failed", childAttrs(a.SPIi, a.SPIr, a.PeerID, a.Child, "err", err)...)
			}
			if _, ok := n.dp.(dataplane.SACounter); ok && a.Replaces != 0 && n.ecfg.RekeyOverlap > 0 {
				s.watch[a.Child.InSPI] = n.clock.Mono().Add(n.ecfg.RekeyOverlap)
			}
		case ike.RemoveChild:
			if err := n.dp.Remove(ctx, a.Child.InSPI); err != nil {
				n.log.Error("CHILD_SA remove failed", childAttrs(a.SPIi, a.SPIr, ike.Identity{}, a.Child, "err", err)...)
			}
		case ike.UpdateChild:
			n.updateChild(ctx, a)
		case ike.SetSeqLimit:
			if l, ok := n.dp.(dataplane.SeqLimiter); ok {
				if err := l.SetSeqLimit(ctx, a.InSPI, a.OutSeqLimit); err != nil {
					n.log.Error("CHILD_SA sequence limit not raised", "spi_in", fmt.Sprintf("%08x", a.InSPI),
						"limit", a.OutSeqLimit, "err", err)
				}
			}
		}
	}
	for _, snd := range send {
		if snd.Keepalive {
			n.sendKeepalive(snd)
		} else {
			n.send(snd)
		}
	}
	if len(checks) > 0 {
		n.countTraffic(ctx, s, checks)
	}
}

// countTraffic answers the engine's CheckTraffic questions with one read
// of the data plane's counts for all of them: the liveness checks of
// peers whose ESP came since their last check wait, the others go out.
func (n *Node) countTraffic(ctx context.Context, s *shard, checks []ike.CheckTraffic) {
	var spis []uint32
	for _, c := range checks {
		spis = append(spis, c.InSPIs...)
	}
	packets := make([]uint64, len(spis))
	if tc, ok := n.dp.(dataplane.TrafficCounter); ok {
		tc.InboundPackets(ctx, spis, packets)
	} else {
		for i := range packets {
			packets[i] = ike.TrafficUnknown
		}
	}
	var rd ike.Ready
	now := n.clock.Mono()
	for _, c := range checks {
		k := len(c.InSPIs)
		s.eng.Traffic(now, c.SPI, c.InSPIs, packets[:k:k], &rd)
		packets = packets[k:]
	}
	n.perform(ctx, s, &rd)
}
