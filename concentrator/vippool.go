package concentrator

// The virtual IP pool of a cluster node: addresses are leased per peer
// identity in the state store (statestore/pool.go), so a gateway keeps its
// address on whichever node serves it and two nodes never hand out the
// same one. Without a state store the node's own pool is used.
//
// The pool is called on the shard's goroutine, so a new SA's lease costs
// no transaction there: the node reserves addresses ahead of need in
// blocks (refillAddresses, like the SPI pools), Acquire hands one out at
// once, and the SA's Established change turns the reservation into the
// identity's lease in the same transaction as the SA's record (persist
// before send: the IKE_AUTH response with the address leaves only after
// it). Releases go through the store's batched commits too. What still
// costs a round trip on the shard: the read of the identity's current
// lease (AddressOf, to give a returning gateway its address; with the
// embedded member only for an identity that has one, statestore's
// SoleWriter) and, when the reservations have run out, the old path (a
// lease transaction per address tried); restores and claims lease
// synchronously (Claim).

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/statestore"
)

const poolCallTimeout = 5 * time.Second

// Reserved addresses kept per node: refilled to vipReserveLen when below
// half (every spiRefillInterval, or at once when an Acquire finds them
// low).
const vipReserveLen = 512

// addressLeaser is the state store's side (statestore.Store).
type addressLeaser interface {
	LeaseAddress(ctx context.Context, a netip.Addr, id string) (holder string, err error)
	LeaseAddresses(ctx context.Context, addrs []netip.Addr, ids []string) (holders []string, err error)
	AddressOf(ctx context.Context, id string) (netip.Addr, bool, error)
	ReleaseAddress(ctx context.Context, a netip.Addr, id string) error
	ReleaseAddressAsync(a netip.Addr, id string, done func(error)) error
	ReserveAddresses(ctx context.Context, addrs []netip.Addr) ([]bool, error)
	UnreserveAddresses(ctx context.Context, addrs []netip.Addr) error
}

// vipLease is an address held by one of this node's SAs.
type vipLease struct {
	addr      netip.Addr
	id        string
	lease     *statestore.AddressLease // to be written with the SA's Established change
	confirmed bool                     // the identity's lease is in the store
	submitted bool                     // the Established change is in flight
	released  bool                     // the SA let go while it was
	taken     bool                     // the store said another identity has the address
	reserved  bool                     // handed out of the node's reservations (its lease Reserved)
}

type clusterPool struct {
	local *ike.Pool // candidates, and the addresses this node's SAs hold
	size  int
	v6    bool // an IPv6 pool (children.pool6): leased one at a time, no reservations
	store atomic.Pointer[addressLeaser]

	mu        sync.Mutex
	held      map[netip.Addr]*vipLease
	releasing map[string]chan struct{} // identity -> closed when its release is committed
	reserved  []netip.Addr             // reserved for this node, not handed out yet
	low       chan struct{}            // capacity 1: the reservations run low
}

func newClusterPool(p netip.Prefix, maxPerPeer int) *clusterPool {
	local := ike.NewPool(p)
	local.SetMaxPerPeer(maxPerPeer)
	return &clusterPool{local: local, size: ike.PoolSize(p), v6: p.Addr().Is6(), held: map[netip.Addr]*vipLease{},
		releasing: map[string]chan struct{}{}, low: make(chan struct{}, 1)}
}

// leaseID returns the name an identity's lease has in the state store,
// which keeps one lease per name (a dual-stack peer's IPv6 address is
// leased under a name of its own), and the identity's key in the local
// pool: one string for an IPv4 pool's, which the tables holding the SA's
// address share.
func (p *clusterPool) leaseID(peer ike.Identity) (id, key string) {
	key = peer.String()
	if p.v6 {
		return key + " (IPv6)", key
	}
	return key, key
}

// useStore switches the pool to cluster-wide leases.
func (p *clusterPool) useStore(l addressLeaser) { p.store.Store(&l) }

func (p *clusterPool) leaser() addressLeaser {
	if l := p.store.Load(); l != nil {
		return *l
	}
	return nil
}

// foreign is the local pool's key that marks an address as held by
// another identity elsewhere in the cluster, so the pool does not offer it
// again.
var foreign = ike.Identity{Type: 255, Data: []byte("another node's peer")}.String()

// reservation is the local pool's key that marks the addresses this node
// reserved and has not handed out.
var reservation = ike.Identity{Type: 254, Data: []byte("reserved by this node")}.String()

func (p *clusterPool) Acquire(peer ike.Identity) (netip.Addr, error) {
	l := p.leaser()
	if l == nil {
		return p.local.Acquire(peer)
	}
	id, key := p.leaseID(peer) // in the store, in the local pool
	p.mu.Lock()
	wait := p.releasing[id]
	p.mu.Unlock()
	if wait != nil { // this identity's previous address is being released
		select {
		case <-wait:
		case <-time.After(poolCallTimeout):
			return netip.Addr{}, ike.ErrAddressInUse
		}
	}
	// Another SA of the identity on this node holds as many addresses as
	// it may: share one (leased already).
	if a, ok := p.local.ShareKey(key); ok {
		return a, nil
	}
	// The store bounds its reads by its request timeout; most calls read
	// nothing (a node that is the store's sole writer knows which
	// identities hold a lease), and a context with a timeout of its own
	// would cost every new SA a timer.
	if a, ok, err := l.AddressOf(context.Background(), id); err != nil {
		return netip.Addr{}, err
	} else if ok {
		if holder, _ := p.local.Holder(a); holder != key {
			p.local.Drop(a) // a foreign mark, or a stale local holder
		}
		if err := p.local.ClaimKey(key, a); err != nil {
			return netip.Addr{}, err
		}
		p.note(a, id, &statestore.AddressLease{Addr: a, ID: id, Held: true})
		return a, nil
	}
	if a, ok := p.takeReserved(key); ok && !p.v6 {
		p.note(a, id, &statestore.AddressLease{Addr: a, ID: id, Reserved: true})
		return a, nil
	}
	// No reservation left (a burst outran the refills): lease one address
	// at a time, here.
	ctx, cancel := context.WithTimeout(context.Background(), poolCallTimeout)
	defer cancel()
	for i := 0; i < p.size; i++ {
		a, err := p.local.AcquireKey(key)
		if err != nil {
			return netip.Addr{}, err
		}
		holder, err := l.LeaseAddress(ctx, a, id)
		if err != nil {
			p.local.Release(a)
			return netip.Addr{}, err
		}
		if holder == "" || holder == id {
			p.note(a, id, nil)
			return a, nil
		}
		// Another identity has it (served by another node): keep it out
		// of this node's offers.
		p.local.Drop(a)
		p.local.MarkKey(foreign, a)
	}
	return netip.Addr{}, ike.ErrPoolExhausted
}

// takeReserved hands out a reserved address to the identity whose pool
// key is key.
func (p *clusterPool) takeReserved(key string) (netip.Addr, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(p.reserved)
	if n < vipReserveLen/2 {
		select {
		case p.low <- struct{}{}:
		default:
		}
	}
	if n == 0 {
		return netip.Addr{}, false
	}
	a := p.reserved[n-1]
	p.reserved = p.reserved[:n-1]
	p.local.Release(a)
	if err := p.local.ClaimKey(key, a); err != nil {
		p.local.MarkKey(reservation, a)
		return netip.Addr{}, false
	}
	return a, true
}

// refill tops the reservations up (from the refill loop).
func (p *clusterPool) refill(ctx context.Context) {
	l := p.leaser()
	if l == nil || p.v6 {
		return
	}
	p.mu.Lock()
	want := vipReserveLen - len(p.reserved)
	p.mu.Unlock()
	if want < vipReserveLen/2 {
		return
	}
	cand := make([]netip.Addr, 0, want)
	for len(cand) < want {
		a, err := p.local.FreshKey(reservation)
		if err != nil {
			break // exhausted: hand out what there is
		}
		cand = append(cand, a)
	}
	if len(cand) == 0 {
		return
	}
	ok, err := l.ReserveAddresses(ctx, cand)
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, a := range cand {
		switch {
		case err == nil && ok[i]:
			p.reserved = append(p.reserved, a)
		case err == nil:
			p.local.Release(a)
			p.local.MarkKey(foreign, a) // another identity's, or another node's reservation
		default:
			p.local.Release(a)
		}
	}
}

// dropReserved forgets the reservations (their registration ended: the
// store dropped them with its lease) and returns how many there were.
func (p *clusterPool) dropReserved() int {
	p.mu.Lock()
	rs := p.reserved
	p.reserved = nil
	p.mu.Unlock()
	for _, a := range rs {
		p.local.Release(a)
	}
	return len(rs)
}

// unreserve gives the reservations back (the node stops).
func (p *clusterPool) unreserve(ctx context.Context) {
	l := p.leaser()
	if l == nil {
		return
	}
	p.mu.Lock()
	rs := p.reserved
	p.reserved = nil
	p.mu.Unlock()
	if len(rs) > 0 {
		l.UnreserveAddresses(ctx, rs)
	}
}

// leaseFor returns the lease that the Established change of the SA
// holding address a (for identity id) must write, if any, and marks it in
// flight; settle takes the change's outcome.
func (p *clusterPool) leaseFor(a netip.Addr, id string) (*vipLease, *statestore.AddressLease) {
	p.mu.Lock()
	defer p.mu.Unlock()
	v := p.held[a]
	if v == nil || v.id != id || v.lease == nil || v.submitted {
		return nil, nil
	}
	v.submitted = true
	return v, v.lease
}

// settle records the outcome of v's Established change (on a store
// goroutine, before the shard hears of it).
func (p *clusterPool) settle(v *vipLease, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	v.submitted, v.lease = false, nil
	v.confirmed = err == nil
	v.taken = errors.Is(err, statestore.ErrAddressTaken)
	if v.released {
		p.letGo(v)
	}
}

// confirm leases a to the identity of lease id in the state store (a
// claimed SA's address, before its restore on the shard's goroutine: no
// etcd round trip there). The SA's own hold is taken by Claim at the
// restore.
func (p *clusterPool) confirm(id string, a netip.Addr) error {
	l := p.leaser()
	if l == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), poolCallTimeout)
	defer cancel()
	holder, err := l.LeaseAddress(ctx, a, id)
	if err != nil {
		return err
	}
	if holder != "" && holder != id {
		return ike.ErrAddressInUse
	}
	p.note(a, id, nil)
	return nil
}

// confirmMany is confirm for many SAs' addresses (peers[i] holds
// addrs[i]), one state store round trip per batch: claimed SAs are
// restored by the hundred when a node joins or leaves.
func (p *clusterPool) confirmMany(peers []ike.Identity, addrs []netip.Addr) []error {
	errs := make([]error, len(addrs))
	l := p.leaser()
	if l == nil || len(addrs) == 0 {
		return errs
	}
	ids := make([]string, len(peers))
	for i, peer := range peers {
		ids[i], _ = p.leaseID(peer)
	}
	ctx, cancel := context.WithTimeout(context.Background(), poolCallTimeout)
	defer cancel()
	holders, err := l.LeaseAddresses(ctx, addrs, ids)
	for i, a := range addrs {
		switch {
		case i >= len(holders):
			errs[i] = err
		case holders[i] != "" && holders[i] != ids[i]:
			errs[i] = ike.ErrAddressInUse
		default:
			p.note(a, ids[i], nil)
		}
	}
	return errs
}

// Claim takes a restored SA's hold on its address, leasing it first
// unless confirm did.
func (p *clusterPool) Claim(peer ike.Identity, a netip.Addr) error {
	l := p.leaser()
	if l == nil {
		return p.local.Claim(peer, a)
	}
	id, key := p.leaseID(peer)
	p.mu.Lock()
	v := p.held[a]
	confirmed := v != nil && v.id == id && v.confirmed
	p.mu.Unlock()
	if !confirmed {
		if err := p.confirm(id, a); err != nil {
			return err
		}
	}
	if holder, _ := p.local.Holder(a); holder != "" && holder != key {
		p.local.Drop(a) // a foreign mark, or a stale local holder
	}
	if err := p.local.ClaimKey(key, a); err != nil && !errors.Is(err, ike.ErrNotInPool) {
		return err
	}
	return nil
}

// Release ends one SA's hold on a; the lease ends with the last one.
func (p *clusterPool) Release(a netip.Addr) {
	if _, refs := p.local.Holder(a); refs > 1 {
		p.local.Unref(a) // another SA of the identity shares it
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	v := p.held[a]
	delete(p.held, a)
	if v == nil {
		p.local.Release(a)
		return
	}
	v.released = true
	if !v.submitted {
		p.letGo(v)
	}
}

// letGo frees a released address: in the store if the identity's lease
// is there (committed in a batch; the address stays out of the local pool
// until then), else at once. p.mu held.
func (p *clusterPool) letGo(v *vipLease) {
	l := p.leaser()
	switch {
	case v.taken:
		p.local.Release(v.addr)
		p.local.MarkKey(foreign, v.addr)
	case !v.confirmed && v.reserved && l != nil:
		// The SA's Established change failed: refused unwritten (the
		// reservation mark is still this node's, unless another identity
		// took the address meanwhile), or its outcome is unknown (the
		// identity may hold the address now). Released here at once, a
		// refill would try to reserve the address again, find the mark
		// and count it as another node's until this node's lease ends.
		// So the mark is deleted where it is still this node's, and the
		// address is offered again only after that: kept out of this
		// node's offers and its identity's meanwhile.
		p.local.Release(v.addr)
		p.local.MarkKey(reservation, v.addr)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), poolCallTimeout)
			l.UnreserveAddresses(ctx, []netip.Addr{v.addr})
			cancel()
			p.mu.Lock()
			defer p.mu.Unlock()
			// Offered again: a refill that finds it leased (the change
			// landed) or still marked (etcd did not answer) leaves it to
			// its holder.
			if p.held[v.addr] == nil {
				p.local.Release(v.addr)
			}
		}()
	case !v.confirmed || l == nil:
		p.local.Release(v.addr)
	default:
		ch := make(chan struct{})
		p.releasing[v.id] = ch
		done := func(error) { // a failure leaves the lease to its identity
			p.mu.Lock()
			if p.held[v.addr] == nil {
				p.local.Release(v.addr)
			}
			if p.releasing[v.id] == ch {
				delete(p.releasing, v.id)
			}
			p.mu.Unlock()
			close(ch)
		}
		if err := l.ReleaseAddressAsync(v.addr, v.id, done); err != nil {
			go done(err) // p.mu is held here
		}
	}
}

// Forget drops one SA's hold on a from this node only: its SA moved to
// another node, which keeps the lease.
func (p *clusterPool) Forget(a netip.Addr) {
	if _, refs := p.local.Holder(a); refs > 1 {
		p.local.Unref(a) // another SA of the identity still holds it here
		return
	}
	p.mu.Lock()
	delete(p.held, a)
	p.mu.Unlock()
	p.local.Release(a)
}

// note records that one of this node's SAs holds a for identity id.
func (p *clusterPool) note(a netip.Addr, id string, lease *statestore.AddressLease) {
	p.mu.Lock()
	p.held[a] = &vipLease{addr: a, id: id, lease: lease, confirmed: lease == nil, reserved: lease != nil && lease.Reserved}
	p.mu.Unlock()
}
