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
	claimBackoffMax = 500 * time.Millisecond
)

// errNobody: no node owns the SA or holds it half-open.
var errNobody = errors.New("no owner")

// clusterStats counts claims and hand-offs.
type clusterStats struct {
	claims, handOffs, takeOvers, forwarded    atomic.Uint64
	handedOff, forwardedIn                    atomic.Uint64
	claimFailures, negHits, parkDrops, nobody atomic.Uint64
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
}

// ClusterStats returns the node's claim and hand-off counters.
func (n *Node) ClusterStats() ClusterStats {
	c := &n.cluster
	return ClusterStats{Claims: c.claims.Load(), HandOffs: c.handOffs.Load(), TakeOvers: c.takeOvers.Load(),
		Forwarded: c.forwarded.Load(), HandedOff: c.handedOff.Load(), ForwardedIn: c.forwardedIn.Load(),
		ClaimFailures: c.claimFailures.Load(), Nobody: c.nobody.Load(), NegativeHits: c.negHits.Load(),
		ParkDrops: c.parkDrops.Load()}
}

// claims are the SAs being claimed, with their parked messages, and the
// negative cache.
type claims struct {
	mu     sync.Mutex
	parked map[uint64][]ike.Packet
	total  int
	neg    map[uint64]time.Time
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
	c := &n.claims
	now := n.clock.Now()
	c.mu.Lock()
	if exp, ok := c.neg[key]; ok && now.Before(exp) {
		c.mu.Unlock()
		n.cluster.negHits.Add(1)
		return
	}
	if _, busy := c.parked[key]; busy || len(c.parked) >= claimParkTotal {
		c.mu.Unlock()
		return
	}
	if c.parked == nil {
		c.parked = map[uint64][]ike.Packet{}
	}
	c.parked[key] = nil // a lookup under way
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
		c.mu.Lock()
		_, busy := c.parked[ikeSPI]
		if !busy {
			c.parked[ikeSPI] = nil
		}
		c.mu.Unlock()
		s := n.shardOfSPI(ikeSPI)
		held := false
		n.do(ctx, s, func() { held = s.eng.SA(ikeSPI) != nil })
		switch {
		case busy:
		case held:
			n.takeParked(ikeSPI)
		default:
			n.cluster.claims.Add(1)
			n.claim(ikeSPI)
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
	c := &n.claims
	now := n.clock.Now()
	c.mu.Lock()
	if exp, ok := c.neg[spi]; ok {
		if now.Before(exp) {
			c.mu.Unlock()
			n.cluster.negHits.Add(1)
			return
		}
		delete(c.neg, spi)
	}
	q, busy := c.parked[spi]
	if len(q) >= claimParkPerSPI || c.total >= claimParkTotal {
		c.mu.Unlock()
		n.cluster.parkDrops.Add(1)
		return
	}
	if c.parked == nil {
		c.parked = map[uint64][]ike.Packet{}
	}
	c.parked[spi] = append(q, pkt)
	c.total++
	c.mu.Unlock()
	if !busy {
		n.cluster.claims.Add(1)
		go n.claim(spi)
	}
}

// takeParked removes and returns the messages parked for spi.
func (n *Node) takeParked(spi uint64) []ike.Packet {
	c := &n.claims
	c.mu.Lock()
	defer c.mu.Unlock()
	q := c.parked[spi]
	delete(c.parked, spi)
	c.total -= len(q)
	return q
}

func (n *Node) negative(spi uint64) {
	c := &n.claims
	now := n.clock.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.neg) >= claimNegMax {
		for k, exp := range c.neg {
			if !now.Before(exp) || len(c.neg) >= claimNegMax {
				delete(c.neg, k)
			}
		}
	}
	if c.neg == nil {
		c.neg = map[uint64]time.Time{}
	}
	c.neg[spi] = now.Add(claimNegTTL)
}

// claimDeadline: how long a claim keeps trying: an unreachable owner's
// lease expires within the lease TTL, and the SA can be taken over then.
func (n *Node) claimDeadline() time.Duration {
	return 2*n.cfg.StateStore.LeaseTTL + 5*time.Second
}

// claim gets the SA with our SPI spi to this node and replays its parked
// messages, or drops them.
func (n *Node) claim(spi uint64) {
	ctx, cancel := context.WithTimeout(n.runCtx, n.claimDeadline())
	defer cancel()
	rec, fwd, err := n.acquire(ctx, spi)
	s := n.shardOfSPI(spi)
	switch {
	case err == nil && fwd != "":
		n.forward(ctx, fwd, n.takeParked(spi))
		return
	case errors.Is(err, errNobody):
		n.cluster.nobody.Add(1)
		n.negative(spi)
		n.takeParked(spi)
		return
	case err != nil:
		n.cluster.claimFailures.Add(1)
		n.log.Warn("SA claim failed", "spi", fmt.Sprintf("%016x", spi), "err", err)
		n.takeParked(spi)
		return
	}
	st := stateOf(rec)
	// The virtual IP's lease is confirmed here, so that the restore on
	// the shard's goroutine waits for no etcd round trip.
	if cp, ok := n.ecfg.Pool6.(*clusterPool); ok && st.VirtualIP6.IsValid() {
		if err := cp.Claim(st.PeerID, st.VirtualIP6); err != nil {
			n.log.Warn("claimed SA's virtual IPv6 address not leased", "spi", fmt.Sprintf("%016x", spi), "vip", st.VirtualIP6.String(), "err", err)
		}
	}
	if cp, ok := n.ecfg.Pool.(*clusterPool); ok && st.VirtualIP.IsValid() {
		if err := cp.Claim(st.PeerID, st.VirtualIP); err != nil {
			n.log.Warn("claimed SA's virtual IP not leased", "spi", fmt.Sprintf("%016x", spi), "vip", st.VirtualIP.String(), "err", err)
		}
	}
	n.do(n.runCtx, s, func() {
		var rd ike.Ready
		now := n.clock.Now()
		if s.eng.SA(spi) == nil {
			if _, err := s.eng.Restore(now, st, &rd); err != nil {
				n.log.Warn("claimed SA not restored", "spi", fmt.Sprintf("%016x", spi), "err", err)
			}
		}
		parked := n.takeParked(spi)
		for _, p := range parked {
			s.eng.Handle(now, p, &rd)
		}
		n.log.Debug("SA claimed", "spi", fmt.Sprintf("%016x", spi), "replayed", len(parked), "send", len(rd.Send), "persist", len(rd.Persist), "events", len(rd.Events))
		n.perform(n.runCtx, s, &rd)
	})
}

// acquire makes this node the SA's owner and returns its record, or the
// peer address of the node holding it half-open.
func (n *Node) acquire(ctx context.Context, spi uint64) (*statestore.SARecord, string, error) {
	st := n.persist.store
	backoff := 20 * time.Millisecond
	wait := func() error {
		t := time.NewTimer(backoff) // real time: the store's leases run on it
		defer t.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		backoff = min(2*backoff, claimBackoffMax)
		return nil
	}
	var last error
	for ctx.Err() == nil {
		me, _ := st.Registration()
		o, live, err := st.Owner(ctx, spi)
		switch {
		case errors.Is(err, statestore.ErrNotFound):
			addr, err := n.halfOpenHolder(ctx, spi, me)
			return nil, addr, err
		case err != nil:
			last = err
		case o == me:
			rec, _, err := st.Load(ctx, spi)
			return rec, "", err
		case !live:
			rec, err := st.TakeOver(ctx, spi)
			if err == nil {
				n.cluster.takeOvers.Add(1)
				return rec, "", nil
			}
			last = err
		default:
			var ok bool
			ok, err = n.askHandOff(ctx, spi, o, me)
			if ok {
				rec, owner, err := st.Load(ctx, spi)
				if err == nil && owner == me {
					n.cluster.handOffs.Add(1)
					return rec, "", nil
				}
				last = fmt.Errorf("after the hand-off: owner %v, %v", owner, err)
			} else {
				last = err
			}
		}
		if errors.Is(last, statestore.ErrFenced) {
			return nil, "", last
		}
		if err := wait(); err != nil {
			break
		}
	}
	return nil, "", fmt.Errorf("%w (last: %v)", ctx.Err(), last)
}

// askHandOff asks owner o for the SA; false with the reason when it did
// not move (the caller looks at the owner again).
func (n *Node) askHandOff(ctx context.Context, spi uint64, o, me statestore.Owner) (bool, error) {
	if n.peer == nil {
		return false, fmt.Errorf("owner %s is live and cluster.peer_listen is not set: waiting for its lease to expire", o)
	}
	info, err := n.persist.store.Node(ctx, o.Node)
	if err != nil {
		return false, err
	}
	if info.PeerAddr == "" {
		return false, fmt.Errorf("owner %s publishes no peer address", o)
	}
	cl, err := n.peer.client(info.PeerAddr)
	if err != nil {
		return false, err
	}
	cctx, cancel := context.WithTimeout(ctx, peerCallTimeout)
	defer cancel()
	resp, err := cl.HandOff(cctx, &peerv1.HandOffRequest{IkeSpi: spi, Node: me.Node, Epoch: me.Epoch})
	if err != nil {
		return false, fmt.Errorf("hand-off from %s: %w", o, err)
	}
	if resp.GetStatus() == peerv1.HandOffResponse_STATUS_OK {
		return true, nil
	}
	return false, fmt.Errorf("hand-off from %s: %s: %s", o, resp.GetStatus(), resp.GetReason())
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
