package userspace

import (
	"net/netip"
	"sync"
	"time"
)

// ESP for an SPI this node has no SA for, while the node claims the SA
// from another node (a flow moved by ECMP): its packets are kept and
// replayed once the SA is installed, so a live move (a drain, a node
// joining) loses no packet, it only delays them. A claim from a live owner
// takes several state store round trips, the hand-off call and the write
// of the SA's fresh sequence number reservation before the SA is
// installed: under load that is a second or two (TestClusterBIRD), so a
// flow's packets are kept for up to parkTTL, not just its first few.
// Bounded per SPI, in packets and bytes in total, and in time; what does
// not fit, or expires unclaimed, is dropped (DropNoSA) as before.
const (
	parkPerSPI = 256
	parkTotal  = 16384
	parkBytes  = 16 << 20
	parkTTL    = 5 * time.Second
)

type parkedESP struct {
	pkt           []byte
	local, remote netip.AddrPort
}

type parkedSPI struct {
	pkts  []parkedESP
	since time.Time
}

type espParking struct {
	mu        sync.Mutex
	m         map[uint32]*parkedSPI
	total     int // packets
	bytes     int
	lastSweep time.Time
	now       func() time.Time // tests
}

func (p *espParking) clock() time.Time {
	if p.now != nil {
		return p.now()
	}
	return time.Now()
}

// park keeps a copy of pkt for spi; false when there is no room. expired
// counts the packets it found too old (never replayed: dropped).
func (p *espParking) park(spi uint32, pkt []byte, local, remote netip.AddrPort) (ok bool, expired int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.clock()
	if p.m == nil {
		p.m = map[uint32]*parkedSPI{}
	}
	if now.Sub(p.lastSweep) > parkTTL/3 {
		for k, e := range p.m {
			if now.Sub(e.since) > parkTTL {
				expired += len(e.pkts)
				p.forget(e)
				delete(p.m, k)
			}
		}
		p.lastSweep = now
	}
	e := p.m[spi]
	if e == nil {
		e = &parkedSPI{since: now}
		p.m[spi] = e
	}
	if len(e.pkts) >= parkPerSPI || p.total >= parkTotal || p.bytes+len(pkt) > parkBytes {
		return false, expired
	}
	e.pkts = append(e.pkts, parkedESP{pkt: append([]byte(nil), pkt...), local: local, remote: remote})
	p.total++
	p.bytes += len(pkt)
	return true, expired
}

// forget takes e's packets off the totals.
func (p *espParking) forget(e *parkedSPI) {
	p.total -= len(e.pkts)
	for _, k := range e.pkts {
		p.bytes -= len(k.pkt)
	}
}

// take returns and forgets what is parked for spi (nothing once expired).
func (p *espParking) take(spi uint32) []parkedESP {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.m[spi]
	if e == nil {
		return nil
	}
	delete(p.m, spi)
	p.forget(e)
	if p.clock().Sub(e.since) > parkTTL {
		return nil
	}
	return e.pkts
}
