package ike

import (
	"errors"
	"net/netip"
	"sync"
)

// Pool is an AddressPool over one IPv4 or IPv6 prefix. A peer that comes
// back gets its previous address if it is still free. Safe for concurrent
// use.
type Pool struct {
	mu     sync.Mutex
	prefix netip.Prefix
	next   netip.Addr
	inUse  map[netip.Addr]string
	byPeer map[string]netip.Addr
}

// Errors of an AddressPool.
var (
	ErrPoolExhausted = errors.New("address pool exhausted")
	ErrAddressInUse  = errors.New("address pool: address held by another peer")
	ErrNotInPool     = errors.New("address pool: address not in the pool")
)

// NewPool returns a pool handing out the host addresses of p (not the
// network and broadcast addresses).
func NewPool(p netip.Prefix) *Pool {
	p = p.Masked()
	return &Pool{prefix: p, next: p.Addr().Next(), inUse: map[netip.Addr]string{}, byPeer: map[string]netip.Addr{}}
}

// Acquire returns an address for peer.
func (p *Pool) Acquire(peer Identity) (netip.Addr, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	key := peer.String()
	if a, ok := p.byPeer[key]; ok {
		if _, taken := p.inUse[a]; !taken {
			p.inUse[a] = key
			return a, nil
		}
	}
	last := lastAddr(p.prefix)
	size := PoolSize(p.prefix) + 2
	a := p.next
	for i := 0; i < size; i++ {
		if !p.prefix.Contains(a) || a == last {
			a = p.prefix.Addr().Next()
		}
		if _, taken := p.inUse[a]; !taken {
			p.inUse[a] = key
			p.byPeer[key] = a
			p.next = a.Next()
			return a, nil
		}
		a = a.Next()
	}
	return netip.Addr{}, ErrPoolExhausted
}

// Claim marks a as held by peer (a restored SA's address).
func (p *Pool) Claim(peer Identity, a netip.Addr) error {
	if a.Is4() != p.prefix.Addr().Is4() || !p.prefix.Contains(a) || a == p.prefix.Addr() || a == lastAddr(p.prefix) {
		return ErrNotInPool
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	key := peer.String()
	if holder, taken := p.inUse[a]; taken && holder != key {
		return ErrAddressInUse
	}
	p.inUse[a] = key
	p.byPeer[key] = a
	return nil
}

// Release returns a to the pool.
func (p *Pool) Release(a netip.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.inUse, a)
}

// InUse returns how many addresses are handed out.
func (p *Pool) InUse() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.inUse)
}

// maxPoolBits bounds the addresses a pool walks: an IPv6 /64 is not
// searched to its end.
const maxPoolBits = 20

// PoolSize is how many addresses a pool over p hands out at most (its
// host addresses without the first and the last, IPv6 prefixes counted up
// to 2^20).
func PoolSize(p netip.Prefix) int {
	return 1<<min(p.Addr().BitLen()-p.Bits(), maxPoolBits) - 2
}
