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

// refillSPIs tops up every shard's pools with SPIs reserved cluster-wide
// (create-if-absent): IKE SPIs carry our slot and the shard, inbound ESP
// SPIs the shard.
func (n *Node) refillSPIs(ctx context.Context) {
	if n.persist == nil || !n.persist.store.CanSend() {
		return
	}
	_, slot := n.persist.store.Registration()
	var b [8]byte
	for i, s := range n.shards {
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
	ikeN, espN := 0, 0
	for _, s := range n.shards {
		ikeN += drain(s.ikeSPIs)
		espN += drain(s.espSPIs)
	}
	addrs := 0
	for _, cp := range clusterPools(&n.ecfg) {
		addrs += cp.dropReserved()
	}
	if ikeN+espN+addrs > 0 {
		n.log.Info("reservations of the previous registration dropped", "ike_spis", ikeN, "esp_spis", espN, "addresses", addrs)
	}
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
