package concentrator

// SPI layout and the pools of SPIs reserved cluster-wide ahead of need.

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"time"
)

const (
	slotBits  = 12 // IKE SPI bits 52..63 carry the node's slot
	slotShift = 64 - slotBits
	slotMask  = uint64(1<<slotBits-1) << slotShift
)

// SPI pools: each shard keeps SPIs reserved in the state store ahead of
// need, refilled when half empty.
const (
	spiPoolLen        = 256
	spiRefillInterval = 100 * time.Millisecond
)

// refillSPIs tops up every shard's pools: first with the SPIs its engine
// handed back unused, then with SPIs reserved cluster-wide
// (create-if-absent): IKE SPIs carry our slot and the shard, inbound ESP
// SPIs the shard.
func (n *Node) refillSPIs(ctx context.Context) {
	if n.persist == nil || !n.persist.store.CanSend() {
		return
	}
	n.resvMu.Lock()
	defer n.resvMu.Unlock()
	_, slot := n.persist.store.Registration()
	var b [8]byte
	for i, s := range n.shards {
		n.reuseSpare(ctx, s)
		if want := spiPoolLen - len(s.ikeSPIs); want >= spiPoolLen/2 {
			cand := make([]uint64, want)
			for k := range cand {
				rand.Read(b[:])
				r := binary.BigEndian.Uint64(b[:])&^(slotMask|spiShardMask) | uint64(i)<<spiShardShift
				cand[k] = uint64(slot)<<slotShift | r
			}
			ok, err := n.persist.store.ReserveIKESPIs(ctx, cand)
			if err != nil {
				n.log.Debug("IKE SPI reservation failed", "err", err)
				return
			}
			for k, got := range ok {
				if got {
					select {
					case s.ikeSPIs <- cand[k]:
					default:
					}
				}
			}
		}
		if want := spiPoolLen - len(s.espSPIs); want >= spiPoolLen/2 {
			cand := make([]uint32, 0, want)
			for len(cand) < want {
				rand.Read(b[:4])
				spi := binary.BigEndian.Uint32(b[:4])
				if n.espBits > 0 {
					spi = spi&^(uint32(1<<n.espBits-1)<<(32-n.espBits)) | uint32(i)<<(32-n.espBits)
				}
				if spi >= 256 {
					cand = append(cand, spi)
				}
			}
			ok, err := n.persist.store.ReserveESPSPIs(ctx, cand)
			if err != nil {
				n.log.Debug("ESP SPI reservation failed", "err", err)
				return
			}
			for k, got := range ok {
				if got {
					select {
					case s.espSPIs <- cand[k]:
					default:
					}
				}
			}
		}
	}
}

// dropReservations forgets the SPIs and virtual IPs reserved ahead on a
// registration that ended (the store re-registered after a fence): their
// reservation keys lived on its lease, so another node may have reserved
// them since, and an IKE SPI carries the old registration's slot. The
// refill loop reserves new ones on the current lease.
func (n *Node) dropReservations() {
	n.resvMu.Lock()
	defer n.resvMu.Unlock()
	ikeN, espN := 0, 0
	for _, s := range n.shards {
		// On the shard's goroutine, so that the engine hands back no SPI
		// of the old registration after its pools are emptied.
		n.do(n.runCtx, s, func() {
			ikeN += drain(s.ikeSPIs)
			espN += drain(s.espSPIs)
			s.eng.ForgetReservations()
			s.spareMu.Lock()
			ikeN += len(s.spareIKE)
			espN += len(s.spareESP)
			s.spareIKE, s.spareESP = nil, nil
			s.spareMu.Unlock()
		})
	}
	addrs := 0
	for _, cp := range clusterPools(&n.ecfg) {
		addrs += cp.dropReserved()
	}
	if ikeN+espN+addrs > 0 {
		n.log.Info("reservations of the previous registration dropped", "ike_spis", ikeN, "esp_spis", espN, "addresses", addrs)
	}
}

// giveBackIKE and giveBackESP take an SPI of the pools back from the
// engine (ike.Config.ReturnIKESPI): it went out of use unpersisted (a
// half-open SA that expired or failed IKE_AUTH, a rekey that failed), and
// its reservation is still ours. Called on the shard's goroutine.
func (s *shard) giveBackIKE(spi uint64) {
	s.spareMu.Lock()
	s.spareIKE = append(s.spareIKE, spi)
	s.spareMu.Unlock()
}

func (s *shard) giveBackESP(spi uint32) {
	s.spareMu.Lock()
	s.spareESP = append(s.spareESP, spi)
	s.spareMu.Unlock()
}

// reuseSpare puts the SPIs s's engine handed back into its pools, behind
// those already there (so that a late message for the SA that had one
// rarely meets the next), and releases in the store the ones that do
// not fit: a flood of half-open SAs that never authenticate then keeps
// no more reservations than the pools hold.
func (n *Node) reuseSpare(ctx context.Context, s *shard) {
	s.spareMu.Lock()
	ikeSPIs, espSPIs := s.spareIKE, s.spareESP
	s.spareIKE, s.spareESP = nil, nil
	s.spareMu.Unlock()
	if len(ikeSPIs)+len(espSPIs) == 0 {
		return
	}
	ikeSPIs = fill(s.ikeSPIs, ikeSPIs)
	espSPIs = fill(s.espSPIs, espSPIs)
	if len(ikeSPIs)+len(espSPIs) == 0 {
		return
	}
	if err := n.persist.store.ReleaseSPIs(ctx, ikeSPIs, espSPIs); err != nil {
		// Some may be released and some not: none is handed out again.
		// The settler releases them again once etcd answers (a release
		// deletes only a reservation still this node's and unused).
		n.log.Debug("releasing unused SPIs failed", "ike", len(ikeSPIs), "esp", len(espSPIs), "err", err)
		n.releaseLater(ikeSPIs, espSPIs)
	}
}

// fill sends xs to c while it has room, returning those that did not fit.
func fill[T any](c chan T, xs []T) []T {
	for i, x := range xs {
		select {
		case c <- x:
		default:
			return xs[i:]
		}
	}
	return nil
}

// drain empties c without blocking, returning how many it held.
func drain[T any](c chan T) int {
	for k := 0; ; k++ {
		select {
		case <-c:
		default:
			return k
		}
	}
}

// shardOfSPI is the shard whose bits our SPI carries.
func (n *Node) shardOfSPI(spi uint64) *shard {
	// SPIs of other nodes (hand-offs, takeovers) may name more shards than
	// this node runs.
	return n.shards[((spi&spiShardMask)>>spiShardShift)%uint64(len(n.shards))]
}

// refillAddresses tops up the virtual IP reservations (vippool.go).
func (n *Node) refillAddresses(ctx context.Context) {
	if n.persist == nil || !n.persist.store.CanSend() {
		return
	}
	for _, cp := range clusterPools(&n.ecfg) {
		cp.refill(ctx)
	}
}

// addressesLow is signalled when the default pool's virtual IP
// reservations run low (nil without a cluster pool: never); the pools of
// policies are refilled on the timer and with it.
func (n *Node) addressesLow() <-chan struct{} {
	if cp, ok := n.ecfg.Pool.(*clusterPool); ok {
		return cp.low
	}
	return nil
}
