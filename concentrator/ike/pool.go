package ike

import (
	"errors"
	"net/netip"
	"slices"
	"sync"
)

// Pool is an AddressPool over one IPv4 or IPv6 prefix. A peer identity holds at
// most MaxPerPeer addresses at once (default 1): another SA of the same
// identity (a reauthentication, a second tunnel) shares the address the
// identity holds, as strongSwan reassigns an online lease. A peer that
// comes back gets its previous address if it is still free. Safe for
// concurrent use.
//
// An identity is known to the pool by its key, the identity's String: the
// methods named ...Key take it as rendered by a caller that keeps it
// anyway, so that an SA's identity is one string however many tables hold
// it. What the pool keeps per address and per identity is held in its
// maps, not in objects of their own: at 100,000 SAs each object per SA is
// 100,000 more for the collector to mark on every cycle.
type Pool struct {
	mu     sync.Mutex
	prefix netip.Prefix
	next   netip.Addr
	inUse  map[netip.Addr]lease
	byPeer map[string]addrs // addresses held (or last held) by each identity
	max    int
}

type lease struct {
	peer string
	refs int // SAs holding the address
}

// addrs is an identity's addresses, oldest first; the first in place (an
// identity holds one unless SetMaxPerPeer says more).
type addrs struct {
	first netip.Addr
	more  []netip.Addr
}

func (l *addrs) len() int {
	if !l.first.IsValid() {
		return 0
	}
	return 1 + len(l.more)
}

func (l *addrs) at(i int) netip.Addr {
	if i == 0 {
		return l.first
	}
	return l.more[i-1]
}

func (l *addrs) add(a netip.Addr) {
	if !l.first.IsValid() {
		l.first = a
		return
	}
	l.more = append(l.more, a)
}

func (l *addrs) remove(i int) {
	switch {
	case i > 0:
		l.more = slices.Delete(l.more, i-1, i)
	case len(l.more) == 0:
		l.first = netip.Addr{}
	default:
		l.first = l.more[0]
		l.more = slices.Delete(l.more, 0, 1)
	}
	if len(l.more) == 0 {
		l.more = nil
	}
}

// Errors of an AddressPool.
var (
	ErrPoolExhausted = errors.New("address pool exhausted")
	ErrAddressInUse  = errors.New("address pool: address held by another peer")
	ErrNotInPool     = errors.New("address pool: address not in the pool")
)

// NewPool returns a pool handing out the host addresses of p (not the
// network and broadcast addresses), one per identity.
func NewPool(p netip.Prefix) *Pool {
	p = p.Masked()
	return &Pool{prefix: p, next: p.Addr().Next(), inUse: map[netip.Addr]lease{}, byPeer: map[string]addrs{}, max: 1}
}

// SetMaxPerPeer sets how many distinct addresses one identity may hold at
// once (at least 1); beyond, its SAs share the addresses it holds.
func (p *Pool) SetMaxPerPeer(n int) {
	p.mu.Lock()
	p.max = max(n, 1)
	p.mu.Unlock()
}

// Prefix returns the pool's prefix.
func (p *Pool) Prefix() netip.Prefix { return p.prefix }

// Acquire returns an address for peer.
func (p *Pool) Acquire(peer Identity) (netip.Addr, error) { return p.AcquireKey(peer.String()) }

// AcquireKey is Acquire for the identity whose String is key.
func (p *Pool) AcquireKey(key string) (netip.Addr, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	held, free := p.held(key)
	if len(held) >= p.max {
		// Share the address the fewest of its SAs hold.
		best := p.fewest(held)
		p.ref(best)
		return best, nil
	}
	if free.IsValid() {
		p.inUse[free] = lease{peer: key, refs: 1}
		return free, nil
	}
	a, ok := p.take(key)
	if ok {
		p.remember(key, a)
		return a, nil
	}
	if len(held) > 0 { // exhausted: share rather than fail
		p.ref(held[0])
		return held[0], nil
	}
	return netip.Addr{}, ErrPoolExhausted
}

// FreshKey returns an address no one holds, held by key beside any others
// it holds, whatever SetMaxPerPeer says and without being remembered as
// one the identity returns to: for marks a node keeps in the pool
// (addresses it reserved ahead), which stand for many addresses, not one
// identity's.
func (p *Pool) FreshKey(key string) (netip.Addr, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if a, ok := p.take(key); ok {
		return a, nil
	}
	return netip.Addr{}, ErrPoolExhausted
}

// take marks the next free address as held by key.
func (p *Pool) take(key string) (netip.Addr, bool) {
	last := lastAddr(p.prefix)
	size := PoolSize(p.prefix) + 2
	a := p.next
	for i := 0; i < size; i++ {
		if !p.prefix.Contains(a) || a == last {
			a = p.prefix.Addr().Next()
		}
		if _, taken := p.inUse[a]; !taken {
			p.inUse[a] = lease{peer: key, refs: 1}
			p.next = a.Next()
			return a, true
		}
		a = a.Next()
	}
	return netip.Addr{}, false
}

// ShareKey adds one SA's hold on an address the identity whose String is
// key holds already, when it holds as many as it may (SetMaxPerPeer);
// false otherwise.
func (p *Pool) ShareKey(key string) (netip.Addr, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	held, _ := p.held(key)
	if len(held) == 0 || len(held) < p.max {
		return netip.Addr{}, false
	}
	best := p.fewest(held)
	p.ref(best)
	return best, true
}

// fewest returns the address of held that the fewest SAs hold.
func (p *Pool) fewest(held []netip.Addr) netip.Addr {
	best := held[0]
	for _, a := range held[1:] {
		if p.inUse[a].refs < p.inUse[best].refs {
			best = a
		}
	}
	return best
}

// ref adds an SA's hold on a, which is in use.
func (p *Pool) ref(a netip.Addr) {
	l := p.inUse[a]
	l.refs++
	p.inUse[a] = l
}

// held returns the addresses key holds now and one it held before that
// is free again.
func (p *Pool) held(key string) (held []netip.Addr, free netip.Addr) {
	l := p.byPeer[key]
	for i := range l.len() {
		a := l.at(i)
		switch h, ok := p.inUse[a]; {
		case !ok:
			if !free.IsValid() {
				free = a
			}
		case h.peer == key:
			held = append(held, a)
		}
	}
	return held, free
}

func (p *Pool) remember(key string, a netip.Addr) {
	l := p.byPeer[key]
	for i := range l.len() {
		if l.at(i) == a {
			return
		}
	}
	if l.len() >= p.max { // forget the oldest address no SA of key holds
		for i := range l.len() {
			if h, ok := p.inUse[l.at(i)]; !ok || h.peer != key {
				l.remove(i)
				break
			}
		}
	}
	l.add(a)
	p.byPeer[key] = l
}

// Claim marks a as held by peer (a restored SA's address).
func (p *Pool) Claim(peer Identity, a netip.Addr) error { return p.claim(peer.String(), a, true) }

// ClaimKey is Claim for the identity whose String is key.
func (p *Pool) ClaimKey(key string, a netip.Addr) error { return p.claim(key, a, true) }

// MarkKey is ClaimKey without remembering a as an address the identity
// returns to: for marks that stand for many addresses, not one identity's
// (those another node's peers hold), as FreshKey. A mark's list would grow
// with every address it covers, and each claim would walk it.
func (p *Pool) MarkKey(key string, a netip.Addr) error { return p.claim(key, a, false) }

func (p *Pool) claim(key string, a netip.Addr, remember bool) error {
	if a.Is4() != p.prefix.Addr().Is4() || !p.prefix.Contains(a) || a == p.prefix.Addr() || a == lastAddr(p.prefix) {
		return ErrNotInPool
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if l, ok := p.inUse[a]; ok {
		if l.peer != key {
			return ErrAddressInUse
		}
		p.ref(a)
		return nil
	}
	p.inUse[a] = lease{peer: key, refs: 1}
	if remember {
		p.remember(key, a)
	}
	return nil
}

// Release returns one SA's hold on a; the address is free once no SA
// holds it.
func (p *Pool) Release(a netip.Addr) { p.Unref(a) }

// Unref is Release, reporting whether a is free now.
func (p *Pool) Unref(a netip.Addr) (free bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l, ok := p.inUse[a]
	if !ok {
		return true
	}
	if l.refs--; l.refs > 0 {
		p.inUse[a] = l
		return false
	}
	delete(p.inUse, a)
	return true
}

// Drop frees a whoever holds it, however many SAs do.
func (p *Pool) Drop(a netip.Addr) {
	p.mu.Lock()
	delete(p.inUse, a)
	p.mu.Unlock()
}

// Holder returns the identity (its key) holding a and how many of its SAs
// do.
func (p *Pool) Holder(a netip.Addr) (peer string, refs int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.inUse[a]
	return l.peer, l.refs
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
