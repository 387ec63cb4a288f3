package concentrator

// Claiming SAs this node does not hold. Gateways reach the cluster through
// one anycast address, and ECMP moves a gateway to another node whenever a
// node joins, leaves or dies. A message for an SA this node does not hold
// is parked, and the SA is claimed: its owner is read from the state store
// (the authority); a live owner is asked to hand it over (peer.go), a dead
// one's SA is taken over under the store's fencing rules. The SA is then
// restored as at a restart (reservations honoured, RFC 6311
// synchronisation when the peer supports it, no rekeys), and the parked
// messages are processed. SAs nobody owns go into a negative cache, so a
// flood of unknown SPIs costs one state store read per SPI per interval.
//
// Claims run in batches: SPIs waiting to be claimed are read together
// (one etcd transaction for their owners), SAs of a dead owner are taken
// over in one transaction per batch, and a live owner is asked for all of
// its SAs in the batch with one HandOffMany call (one transaction on its
// side). A few batches run at once. A claim whose owner is live but
// unreachable waits for that owner's registration to end: the registry
// watch (WatchNodes) wakes it the moment the lease is gone, and the SA is
// taken over at once, without waiting for the gateway's next
// retransmission. Such a claim is never negative-cached.
//
// Half-open SAs (IKE_SA_INIT answered by another node, IKE_AUTH here) are
// never stored: the IKE_AUTH is forwarded to the node whose slot the SPI
// carries, which finishes the exchange and answers from the shared
// address. Transferring the half-open state instead would put keys of
// unauthenticated peers on the wire and into every node's memory for a
// handful of messages per SA; forwarding costs one RPC per message.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	peerv1 "github.com/ikefleet/ikefleet/api/peer/v1"
	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/statestore"
)

// Implementation limits of claims.
const (
	claimParkPerSPI = 16              // messages parked per SA being claimed; more are dropped
	claimParkTotal  = 16384           // messages parked in all
	claimNegTTL     = 5 * time.Second // an SPI nobody owns is not looked up again for this long
	claimNegMax     = 1 << 16         // negative cache entries
	claimBatch      = 128             // SPIs claimed together
	claimWorkers    = 4               // batches under way at once
	claimRetry      = 200 * time.Millisecond
	claimUnreached  = time.Second // an unreachable live owner is asked again after this (its lease's end wakes the claim sooner)
)

// errNobody: no node owns the SA or holds it half-open.
var errNobody = errors.New("no owner")

// clusterStats counts claims and hand-offs.
type clusterStats struct {
	claims, handOffs, takeOvers, forwarded    atomic.Uint64
	handedOff, forwardedIn                    atomic.Uint64
	claimFailures, negHits, parkDrops, nobody atomic.Uint64
	handOffCalls, claimBatches                atomic.Uint64
	rewraps, rewrapped, rewrapUnreadable      atomic.Uint64
	selectorConflicts                         atomic.Uint64
	selectorHolds, selectorHoldTimeouts       atomic.Uint64
}

// ClusterStats are a node's counters of SA moves.
type ClusterStats struct {
	Claims        uint64 // claims started
	HandOffs      uint64 // SAs received from live owners
	TakeOvers     uint64 // SAs taken over from dead owners
	Forwarded     uint64 // messages of half-open SAs forwarded to their node
	HandedOff     uint64 // SAs given to other nodes
	ForwardedIn   uint64 // forwarded messages taken
	ClaimFailures uint64 // claims given up (owner unreachable past the deadline...)
	Nobody        uint64 // claims of SPIs nobody owns
	NegativeHits  uint64 // messages dropped by the negative cache
	ParkDrops     uint64 // messages dropped: parking full
	HandOffCalls  uint64 // HandOffMany calls made (each asks one owner for a batch)
	ClaimBatches  uint64 // claim batches run
	// Cluster key rotation: rewrap passes completed, records rewritten
	// under the sealing key, records no key of the node opens.
	Rewraps, Rewrapped, RewrapUnreadable uint64
	// SelectorConflicts: selector claims that lost to an earlier
	// overlapping claim of another identity, as judged here (claimbook.go;
	// the losing SA is discarded by its node). SelectorHolds: writes held
	// here for their claims' verdict; SelectorHoldTimeouts: those given up
	// without one (the claims watch behind), their SAs discarded.
	SelectorConflicts, SelectorHolds, SelectorHoldTimeouts uint64
}

// ClusterStats returns the node's claim and hand-off counters.
func (n *Node) ClusterStats() ClusterStats {
	c := &n.cluster
	return ClusterStats{Claims: c.claims.Load(), HandOffs: c.handOffs.Load(), TakeOvers: c.takeOvers.Load(),
		Forwarded: c.forwarded.Load(), HandedOff: c.handedOff.Load(), ForwardedIn: c.forwardedIn.Load(),
		ClaimFailures: c.claimFailures.Load(), Nobody: c.nobody.Load(), NegativeHits: c.negHits.Load(),
		ParkDrops: c.parkDrops.Load(), HandOffCalls: c.handOffCalls.Load(), ClaimBatches: c.claimBatches.Load(),
		Rewraps: c.rewraps.Load(), Rewrapped: c.rewrapped.Load(), RewrapUnreadable: c.rewrapUnreadable.Load(),
		SelectorConflicts: c.selectorConflicts.Load(), SelectorHolds: c.selectorHolds.Load(),
		SelectorHoldTimeouts: c.selectorHoldTimeouts.Load()}
}

// Where a claim is.
const (
	claimIdle    = iota // waiting: for a retry timer or an owner's lease to end
	claimQueued         // in the queue for the next batch
	claimRunning        // in a batch
	claimLookup         // an ESP SPI being looked up (its IKE SA is not known yet)
)

// claim is one SA being claimed.
type claim struct {
	pkts    []ike.Packet
	started time.Time // real time: the deadline runs on it
	state   int
	batch   uint64           // claimRunning: the batch it runs in (claims.batches)
	again   bool             // enqueued while running: run once more at once
	waitOn  statestore.Owner // live but unreachable owner whose lease's end wakes the claim
}

// claims are the SAs being claimed, with their parked messages, and the
// negative cache.
type claims struct {
	mu     sync.Mutex
	parked map[uint64]*claim
	total  int
	neg    map[uint64]time.Time
	queue  []uint64
	// batches numbers the batches: a claim a batch sent back to the queue
	// at once may run in the next batch before the first one has ended.
	batches uint64
	wake    chan struct{}                  // one token: the queue is not empty
	owners  map[statestore.Owner]ownerCtx  // cancelled when the owner's registration ends
	live    map[string]statestore.NodeInfo // the registry, as the watch sees it
}

func (c *claims) init() {
	if c.parked == nil {
		c.parked = map[uint64]*claim{}
		c.neg = map[uint64]time.Time{}
		c.wake = make(chan struct{}, 1)
	}
}

// unknownESP starts the claim of the IKE SA whose CHILD SA has inbound SPI
// spi (ESP for an SA this node does not hold, from the data plane's
// receive path). The packet itself is not kept: the ones after it flow
// once the claimed CHILD SAs are installed. One lookup per SPI at a time,
// and SPIs nobody owns wait out the negative cache.
func (n *Node) unknownESP(spi uint32) {
	if n.persist == nil || n.runCtx == nil {
		return
	}
	key := espKey(spi)
	if n.negativeHit(key) {
		return
	}
	c := &n.claims
	c.mu.Lock()
	c.init()
	if _, busy := c.parked[key]; busy || len(c.parked) >= claimParkTotal {
		c.mu.Unlock()
		return
	}
	c.parked[key] = &claim{started: time.Now(), state: claimLookup}
	c.mu.Unlock()
	go func() {
		ctx, cancel := context.WithTimeout(n.runCtx, n.claimDeadline())
		defer cancel()
		ikeSPI, err := n.persist.store.LookupESP(ctx, spi)
		n.takeParked(key)
		if err != nil {
			if errors.Is(err, statestore.ErrNotFound) {
				n.negative(key)
			} else {
				n.log.Debug("ESP SPI lookup failed", "spi_in", fmt.Sprintf("%08x", spi), "err", err)
			}
			return
		}
		s := n.shardOfSPI(ikeSPI)
		held := false
		n.do(ctx, s, func() { held = s.eng.SA(ikeSPI) != nil })
		if held || n.negativeHit(ikeSPI) {
			return // held, or deleted here meanwhile (goneHere)
		}
		c.mu.Lock()
		_, busy := c.parked[ikeSPI]
		if !busy {
			c.parked[ikeSPI] = &claim{started: time.Now()}
		}
		c.mu.Unlock()
		if !busy {
			n.cluster.claims.Add(1)
			n.enqueueClaim(ikeSPI)
		}
	}()
}

// espKey keeps ESP SPIs apart from IKE SPIs in the claim tables: an IKE
// SPI with its top 32 bits all set is a 1 in 2^32 chance, and a clash
// only delays one claim.
func espKey(spi uint32) uint64 { return 0xffffffff00000000 | uint64(spi) }

// unheld reports whether pkt is for an SA this shard does not hold and
// should be claimed (on the shard's goroutine). New IKE_SA_INITs are not.
func (n *Node) unheld(s *shard, pkt ike.Packet) (uint64, bool) {
	if n.persist == nil || len(pkt.Data) < 28 {
		return 0, false
	}
	h, err := ike.DecodeHeader(pkt.Data)
	if err != nil {
		return 0, false
	}
	if h.Flags&ike.FlagInitiator != 0 && h.SPIr == 0 {
		return 0, false // IKE_SA_INIT
	}
	spi := localSPIOf(h)
	if spi == 0 || s.eng.SA(spi) != nil {
		return 0, false
	}
	return spi, true
}

// park keeps pkt until the SA with our SPI spi is claimed, and starts the
// claim if none is under way.
func (n *Node) park(spi uint64, pkt ike.Packet) {
	if n.negativeHit(spi) {
		return
	}
	c := &n.claims
	c.mu.Lock()
	c.init()
	e := c.parked[spi]
	if (e != nil && len(e.pkts) >= claimParkPerSPI) || c.total >= claimParkTotal || (e == nil && len(c.parked) >= claimParkTotal) {
		c.mu.Unlock()
		n.cluster.parkDrops.Add(1)
		return
	}
	fresh := e == nil
	if fresh {
		e = &claim{started: time.Now()}
		c.parked[spi] = e
	}
	e.pkts = append(e.pkts, pkt)
	c.total++
	c.mu.Unlock()
	if fresh {
		n.cluster.claims.Add(1)
		n.enqueueClaim(spi)
	}
}

// takeParked ends the claim of spi and returns its parked messages.
func (n *Node) takeParked(spi uint64) []ike.Packet {
	c := &n.claims
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.parked[spi]
	if e == nil {
		return nil
	}
	delete(c.parked, spi)
	c.total -= len(e.pkts)
	return e.pkts
}

// negativeHit reports a live negative-cache entry for spi (counted as a
// hit); an expired one is removed.
func (n *Node) negativeHit(spi uint64) bool {
	c := &n.claims
	now := n.clock.Mono()
	c.mu.Lock()
	exp, ok := c.neg[spi]
	if ok && !now.Before(exp) {
		delete(c.neg, spi)
	}
	c.mu.Unlock()
	if ok && now.Before(exp) {
		n.cluster.negHits.Add(1)
		return true
	}
	return false
}

func (n *Node) negative(spi uint64) {
	c := &n.claims
	now := n.clock.Mono()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.init()
	if len(c.neg) >= claimNegMax {
		for k, exp := range c.neg {
			if !now.Before(exp) || len(c.neg) >= claimNegMax {
				delete(c.neg, k)
			}
		}
	}
	c.neg[spi] = now.Add(claimNegTTL)
}

// claimDeadline: how long a claim keeps trying: an unreachable owner's
// lease expires within the lease TTL, and the SA can be taken over then.
func (n *Node) claimDeadline() time.Duration {
	return 2*n.cfg.StateStore.LeaseTTL + 5*time.Second
}

// enqueueClaim puts spi's claim into the queue for the next batch (or has
// its running batch look at it once more).
func (n *Node) enqueueClaim(spi uint64) {
	c := &n.claims
	c.mu.Lock()
	e := c.parked[spi]
	if e == nil {
		c.mu.Unlock()
		return
	}
	switch e.state {
	case claimQueued, claimLookup:
	case claimRunning:
		e.again = true
	default:
		if time.Since(e.started) > n.claimDeadline() {
			c.mu.Unlock()
			n.cluster.claimFailures.Add(1)
			n.log.Warn("SA claim given up", "spi", fmt.Sprintf("%016x", spi), "waited_for", e.waitOn.String())
			n.takeParked(spi)
			return
		}
		e.state = claimQueued
		e.waitOn = statestore.Owner{}
		c.queue = append(c.queue, spi)
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
	c.mu.Unlock()
}

// unsettled are the claims of spis still running in batch id: neither
// restored, nor sent back, nor given up on. One sent back at once (its
// owner changed) and running in a later batch already is not.
func (c *claims) unsettled(id uint64, spis []uint64) []uint64 {
	var left []uint64
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, spi := range spis {
		if e := c.parked[spi]; e != nil && e.state == claimRunning && e.batch == id {
			left = append(left, spi)
		}
	}
	return left
}

// retryClaims has the claims of spis run again after d (or at once if
// enqueued meanwhile); waitOn: the live owner that could not be reached.
func (n *Node) retryClaims(spis []uint64, d time.Duration, waitOn statestore.Owner) {
	c := &n.claims
	var now []uint64
	c.mu.Lock()
	for _, spi := range spis {
		e := c.parked[spi]
		if e == nil || e.state != claimRunning {
			continue
		}
		e.state = claimIdle
		e.waitOn = waitOn
		if e.again {
			e.again = false
			now = append(now, spi)
		}
	}
	c.mu.Unlock()
	for _, spi := range now {
		n.enqueueClaim(spi)
	}
	time.AfterFunc(d, func() {
		for _, spi := range spis {
			n.enqueueClaim(spi)
		}
	})
}

// ownerCtx is ctx, cancelled as well when o's registration ends.
func (n *Node) ownerCtx(ctx context.Context, o statestore.Owner) (context.Context, context.CancelFunc) {
	c := &n.claims
	c.mu.Lock()
	oc, ok := c.owners[o]
	if !ok {
		if c.owners == nil {
			c.owners = map[statestore.Owner]ownerCtx{}
		}
		oc.ctx, oc.cancel = context.WithCancel(n.runCtx)
		c.owners[o] = oc
	}
	c.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(oc.ctx, cancel)
	return ctx, func() { stop(); cancel() }
}

type ownerCtx struct {
	ctx    context.Context
	cancel context.CancelFunc
}

// ownerGone wakes the claims waiting for o, whose registration just
// ended: their SAs can be taken over now.
func (n *Node) ownerGone(o statestore.Owner) {
	c := &n.claims
	var spis []uint64
	c.mu.Lock()
	if oc, ok := c.owners[o]; ok {
		oc.cancel()
		delete(c.owners, o)
	}
	// Every claim waiting looks at its owner again (those waiting for o
	// above all; others may have been told to retry by o as it stopped).
	for spi, e := range c.parked {
		if e.state == claimIdle || e.state == claimRunning {
			spis = append(spis, spi)
		}
	}
	c.mu.Unlock()
	if len(spis) > 0 {
		n.log.Debug("owner's registration ended: taking its SAs over", "owner", o.String(), "claims", len(spis))
	}
	for _, spi := range spis {
		n.enqueueClaim(spi)
	}
}

// watchOwners follows the registry: a registration that ends wakes the
// claims waiting for it.
func (n *Node) watchOwners(ctx context.Context) {
	w, ok := n.persist.store.(interface {
		WatchNodes(context.Context, func(statestore.NodeEvent))
	})
	if !ok {
		return
	}
	c := &n.claims
	w.WatchNodes(ctx, func(ev statestore.NodeEvent) {
		c.mu.Lock()
		if c.live == nil {
			c.live = map[string]statestore.NodeInfo{}
		}
		if ev.Gone {
			if c.live[ev.Node].Epoch == ev.Epoch {
				delete(c.live, ev.Node)
			}
		} else {
			c.live[ev.Node] = ev.NodeInfo
		}
		k := len(c.live)
		c.mu.Unlock()
		if ev.Gone {
			n.ownerGone(ev.Owner)
		}
		n.rekeyShare(k)
	})
}

// peerOf is o's registry entry as the watch last saw it, if it is that
// registration and publishes a peer address (no etcd read per hand-off).
func (n *Node) peerOf(o statestore.Owner) (statestore.NodeInfo, bool) {
	c := &n.claims
	c.mu.Lock()
	defer c.mu.Unlock()
	info, ok := c.live[o.Node]
	return info, ok && info.Epoch == o.Epoch && info.PeerAddr != ""
}

// rekeyShare sets the node's CHILD rekey cap to its share of
// cluster.fleet_rekeys_per_second among live nodes.
func (n *Node) rekeyShare(live int) {
	fleet := n.cfg.Cluster.FleetRekeysPerSec
	sch, ok := n.ecfg.ChildRekey.(*ike.SmoothScheduler)
	if fleet <= 0 || !ok || live < 1 {
		return
	}
	share := max(1, (fleet+live-1)/live)
	if own := n.cfg.Children.MaxRekeysPerSec; own > 0 {
		share = min(share, own)
	}
	if sch.Cap() != share {
		sch.SetMaxPerSecond(share)
		n.log.Info("CHILD rekey cap: the node's share of the fleet's", "fleet_per_second", fleet, "live_nodes", live, "per_second", share)
	}
}

// claimLoop runs the queued claims in batches, a few at once.
func (n *Node) claimLoop(ctx context.Context) {
	c := &n.claims
	c.mu.Lock()
	c.init()
	wake := c.wake
	c.mu.Unlock()
	sem := make(chan struct{}, claimWorkers)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-wake:
		}
		for {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			c.mu.Lock()
			k := min(len(c.queue), claimBatch)
			batch := make([]uint64, 0, k)
			c.batches++
			id := c.batches
			for _, spi := range c.queue[:k] {
				if e := c.parked[spi]; e != nil && e.state == claimQueued {
					e.state, e.batch = claimRunning, id
					batch = append(batch, spi)
				}
			}
			c.queue = c.queue[k:]
			if len(c.queue) == 0 {
				c.queue = nil
			}
			c.mu.Unlock()
			if len(batch) == 0 {
				<-sem
				break
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				n.claimBatch(ctx, id, batch)
			}()
		}
	}
}

// claimBatch claims SAs (batch id): reads their owners, takes over those
// of dead owners, asks live owners for theirs (one call per owner), loads
// those already ours, and restores them all here.
func (n *Node) claimBatch(ctx context.Context, id uint64, spis []uint64) {
	n.cluster.claimBatches.Add(1)
	t0 := time.Now()
	defer func() {
		left := n.claims.unsettled(id, spis)
		if len(left) > 0 {
			n.log.Warn("claim: batch left claims unsettled", "sas", len(left), "first", fmt.Sprintf("%016x", left[0]))
			n.retryClaims(left, claimRetry, statestore.Owner{})
		}
	}()
	st, ok := n.persist.store.(batchStore)
	if !ok {
		n.retryClaims(spis, claimRetry, statestore.Owner{})
		return
	}
	owners, err := st.Owners(ctx, spis)
	if err != nil {
		n.log.Debug("claim: owners not read", "claims", len(spis), "err", err)
		n.retryClaims(spis, claimRetry, statestore.Owner{})
		return
	}
	me, _ := st.Registration()
	var mine, nobody []uint64
	dead := map[statestore.Owner][]uint64{}
	live := map[statestore.Owner][]uint64{}
	for i, o := range owners {
		switch {
		case !o.Found:
			nobody = append(nobody, spis[i])
		case o.Owner == me:
			mine = append(mine, spis[i])
		case o.Live:
			live[o.Owner] = append(live[o.Owner], spis[i])
		default:
			dead[o.Owner] = append(dead[o.Owner], spis[i])
		}
	}
	var got []*statestore.SARecord
	for o, l := range dead {
		moved, err := st.TakeOverMany(ctx, o, l)
		got = append(got, n.sortMoved(l, moved, err, &n.cluster.takeOvers)...)
	}
	for o, l := range live {
		ok, retry, unreached := n.askHandOffMany(ctx, o, me, l)
		if len(unreached) > 0 {
			n.retryClaims(unreached, claimUnreached, o)
		}
		if len(retry) > 0 {
			n.retryClaims(retry, claimRetry, statestore.Owner{})
		}
		mine = append(mine, ok...)
	}
	if len(mine) > 0 {
		// Ours but not held: left by an earlier restore that failed, or
		// deleted here since the claim began, the deletion not committed
		// yet (goneHere put it in the negative cache): that one stays
		// deleted.
		mine = slices.DeleteFunc(mine, func(spi uint64) bool {
			if n.negativeHit(spi) {
				n.takeParked(spi)
				return true
			}
			return false
		})
	}
	if len(mine) > 0 {
		loaded, owners, err := st.LoadMany(ctx, mine)
		for i := range loaded {
			if loaded[i].SPI != 0 && loaded[i].Err == nil && owners[i] != me { // read, but not ours (whatever became of the other batches)
				loaded[i].Err = &statestore.OwnerError{SPI: loaded[i].SPI, Owner: owners[i]}
			}
		}
		got = append(got, n.sortMoved(mine, loaded, err, nil)...)
	}
	for _, spi := range nobody {
		n.claimUnowned(ctx, spi, me)
	}
	t1 := time.Now()
	n.restoreClaimed(ctx, got)
	n.log.Debug("claim batch", "sas", len(spis), "claimed", len(got), "moves_ms", t1.Sub(t0).Milliseconds(), "restore_ms", time.Since(t1).Milliseconds())
}

// batchStore is what batched claims need from the state store (*Store).
type batchStore interface {
	statestore.Interface
	Owners(ctx context.Context, spis []uint64) ([]statestore.OwnerState, error)
	TakeOverMany(ctx context.Context, from statestore.Owner, spis []uint64) ([]statestore.Moved, error)
	HandOffMany(ctx context.Context, finals []*statestore.SARecord, to statestore.Owner) ([]statestore.Moved, error)
	LoadMany(ctx context.Context, spis []uint64) ([]statestore.Moved, []statestore.Owner, error)
}

// sortMoved returns the records of the SAs that moved to us (moved[i]
// is spis[i]'s outcome) and sends the others back to the queue: at once
// if their owner changed (look again), after a pause on other errors.
// Those without an outcome (err broke the batch off) are retried too.
func (n *Node) sortMoved(spis []uint64, moved []statestore.Moved, err error, count *atomic.Uint64) []*statestore.SARecord {
	var recs []*statestore.SARecord
	var again, later []uint64
	if err != nil {
		n.log.Debug("claim: batch broke off", "sas", len(spis), "outcomes", len(moved), "err", err)
	}
	for i, spi := range spis {
		var m statestore.Moved
		if i < len(moved) {
			m = moved[i]
		}
		var oe *statestore.OwnerError
		switch {
		case m.SPI != spi:
			later = append(later, spi) // no outcome
		case m.Err == nil && m.Record != nil:
			recs = append(recs, m.Record)
			if count != nil {
				count.Add(1)
			}
		case errors.As(m.Err, &oe):
			again = append(again, spi)
		default:
			n.log.Debug("claim: SA not moved", "spi", fmt.Sprintf("%016x", spi), "err", m.Err)
			later = append(later, spi)
		}
	}
	if len(again) > 0 {
		n.retryClaims(again, 0, statestore.Owner{})
	}
	if len(later) > 0 {
		n.retryClaims(later, claimRetry, statestore.Owner{})
	}
	return recs
}

// claimUnowned handles an SPI without an owner record: a half-open SA
// another node holds (forward its messages there), or nobody's.
func (n *Node) claimUnowned(ctx context.Context, spi uint64, me statestore.Owner) {
	cctx, cancel := context.WithTimeout(ctx, peerCallTimeout)
	defer cancel()
	addr, err := n.halfOpenHolder(cctx, spi, me)
	switch {
	case err == nil:
		n.forward(cctx, addr, n.takeParked(spi))
	case errors.Is(err, errNobody):
		n.cluster.nobody.Add(1)
		n.negative(spi)
		n.takeParked(spi)
	default:
		n.retryClaims([]uint64{spi}, claimRetry, statestore.Owner{})
	}
}

// restoreClaimed restores the claimed SAs on their shards (as at a
// restart: reservations honoured, no rekeys) and replays the messages
// parked for them.
func (n *Node) restoreClaimed(ctx context.Context, recs []*statestore.SARecord) {
	type claimed struct {
		spi uint64
		st  ike.SAState
	}
	byShard := map[*shard][]claimed{}
	// The virtual IPs' leases are confirmed here, so that the restores on
	// the shards' goroutines wait for no etcd round trip: one round trip
	// per pool and batch, not one per SA.
	type leases struct {
		spis  []uint64
		peers []ike.Identity
		addrs []netip.Addr
	}
	byPool := map[*clusterPool]*leases{}
	lease := func(cp *clusterPool, spi uint64, peer ike.Identity, a netip.Addr) {
		l := byPool[cp]
		if l == nil {
			l = &leases{}
			byPool[cp] = l
		}
		l.spis, l.peers, l.addrs = append(l.spis, spi), append(l.peers, peer), append(l.addrs, a)
	}
	for _, r := range recs {
		st := stateOf(r)
		if cp := poolFor(&n.ecfg, st.PeerID, st.PeerCert); cp != nil && st.VirtualIP.IsValid() {
			lease(cp, r.LocalSPI(), st.PeerID, st.VirtualIP)
		}
		if cp, ok := n.ecfg.Pool6.(*clusterPool); ok && st.VirtualIP6.IsValid() {
			lease(cp, r.LocalSPI(), st.PeerID, st.VirtualIP6)
		}
		s := n.shardOfSPI(r.LocalSPI())
		byShard[s] = append(byShard[s], claimed{r.LocalSPI(), st})
	}
	for cp, l := range byPool {
		for i, err := range cp.confirmMany(l.peers, l.addrs) {
			if err != nil {
				n.log.Warn("claimed SA's virtual IP not leased", "spi", fmt.Sprintf("%016x", l.spis[i]), "vip", l.addrs[i].String(), "err", err)
			}
		}
	}
	for s, sts := range byShard {
		n.do(ctx, s, func() {
			now := n.clock.Mono()
			for _, c := range sts {
				var rd ike.Ready // one per SA: a failed write holds back its own sends only
				if s.eng.SA(c.spi) == nil {
					if _, err := s.eng.Restore(now, c.st, &rd); err != nil {
						n.log.Warn("claimed SA not restored", "spi", fmt.Sprintf("%016x", c.spi), "err", err)
					}
				}
				parked := n.takeParked(c.spi)
				for _, p := range parked {
					s.handle(now, p, &rd)
				}
				n.log.Debug("SA claimed", "spi", fmt.Sprintf("%016x", c.spi), "replayed", len(parked), "send", len(rd.Send), "persist", len(rd.Persist), "events", len(rd.Events))
				n.perform(ctx, s, &rd)
			}
		})
	}
}

// askHandOffMany asks live owner o for SAs spis: ok moved to us, retry
// should be asked again shortly, unreached could not be asked (the owner
// is gone or cut off: wait for its lease to end).
func (n *Node) askHandOffMany(ctx context.Context, o, me statestore.Owner, spis []uint64) (ok, retry, unreached []uint64) {
	if n.peer == nil {
		return nil, nil, spis // cluster.peer_listen is not set: wait for the owner's lease to end
	}
	info, known := n.peerOf(o)
	if !known {
		var err error
		if info, err = n.persist.store.Node(ctx, o.Node); err != nil || info.PeerAddr == "" || info.Epoch != o.Epoch {
			return nil, spis, nil
		}
	}
	cl, err := n.peer.client(info.PeerAddr)
	if err != nil {
		return nil, nil, spis
	}
	// The call ends when the owner's registration does: its SAs can be
	// taken over then, whatever the owner still says.
	octx, ocancel := n.ownerCtx(ctx, o)
	defer ocancel()
	cctx, cancel := context.WithTimeout(octx, peerCallTimeout)
	defer cancel()
	n.cluster.handOffCalls.Add(1)
	resp, err := cl.HandOffMany(cctx, &peerv1.HandOffManyRequest{IkeSpis: spis, Node: me.Node, Epoch: me.Epoch})
	if err != nil {
		n.log.Debug("hand-off call failed", "owner", o.String(), "sas", len(spis), "err", err)
		return nil, nil, spis
	}
	res := resp.GetResults()
	for i, spi := range spis {
		switch {
		case i >= len(res):
			retry = append(retry, spi)
		case res[i].GetStatus() == peerv1.HandOffResponse_STATUS_OK:
			ok = append(ok, spi)
		case res[i].GetReason() == reasonFenced || res[i].GetReason() == reasonStopping:
			unreached = append(unreached, spi)
		case res[i].GetStatus() == peerv1.HandOffResponse_STATUS_NOT_OWNER:
			n.retryClaims([]uint64{spi}, 0, statestore.Owner{}) // look at the owner again
		default:
			retry = append(retry, spi)
		}
	}
	if len(ok) > 0 {
		n.cluster.handOffs.Add(uint64(len(ok)))
	}
	return ok, retry, unreached
}

// halfOpenHolder is the peer address of the live node whose slot spi
// carries (it allocated the SPI and holds the half-open SA), or errNobody.
func (n *Node) halfOpenHolder(ctx context.Context, spi uint64, me statestore.Owner) (string, error) {
	if n.peer == nil {
		return "", errNobody
	}
	nodes, err := n.persist.store.Nodes(ctx)
	if err != nil {
		return "", err
	}
	slot := int(spi >> slotShift)
	for _, nd := range nodes {
		if nd.Slot == slot && nd.Node != me.Node && nd.PeerAddr != "" {
			return nd.PeerAddr, nil
		}
	}
	return "", errNobody
}

// forward sends the parked messages of a half-open SA to its node.
func (n *Node) forward(ctx context.Context, addr string, pkts []ike.Packet) {
	cl, err := n.peer.client(addr)
	if err != nil {
		return
	}
	for _, p := range pkts {
		cctx, cancel := context.WithTimeout(ctx, peerCallTimeout)
		resp, err := cl.Forward(cctx, &peerv1.ForwardRequest{Datagram: p.Data, Local: p.Local.String(), Remote: p.Remote.String()})
		cancel()
		if err == nil && resp.GetAccepted() {
			n.cluster.forwarded.Add(1)
		}
	}
}

// claimStates counts the claims under way by state, and the queue.
func (n *Node) claimStates() string {
	c := &n.claims
	c.mu.Lock()
	defer c.mu.Unlock()
	var st [4]int
	again, waiting := 0, 0
	for _, e := range c.parked {
		st[e.state]++
		if e.again {
			again++
		}
		if e.waitOn.Node != "" {
			waiting++
		}
	}
	return fmt.Sprintf("idle=%d queued=%d running=%d lookup=%d again=%d waiting=%d queue=%d", st[0], st[1], st[2], st[3], again, waiting, len(c.queue))
}
