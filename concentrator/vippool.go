package concentrator

// The virtual IP pool of a cluster node: addresses are leased per peer
// identity in the state store (statestore/pool.go), so a gateway keeps its
// address on whichever node serves it and two nodes never hand out the
// same one. Without a state store the node's own pool is used. The pool
// is called on the shard's goroutine; a lease costs one etcd transaction
// at IKE_AUTH (and at a restore, to confirm the lease).

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike"
)

const poolCallTimeout = 5 * time.Second

// addressLeaser is the state store's side (statestore.Store).
type addressLeaser interface {
	LeaseAddress(ctx context.Context, a netip.Addr, id string) (holder string, err error)
	AddressOf(ctx context.Context, id string) (netip.Addr, bool, error)
	ReleaseAddress(ctx context.Context, a netip.Addr, id string) error
}

type clusterPool struct {
	local *ike.Pool // candidates, and the addresses this node's SAs hold
	size  int
	v6    bool // an IPv6 pool (children.pool6)
	store atomic.Pointer[addressLeaser]

	mu   sync.Mutex
	held map[netip.Addr]string // address -> identity, of this node's SAs
}

func newClusterPool(p netip.Prefix) *clusterPool {
	return &clusterPool{local: ike.NewPool(p), size: ike.PoolSize(p), held: map[netip.Addr]string{}, v6: p.Addr().Is6()}
}

// leaseID is the name an identity's lease has in the state store, which
// keeps one lease per name: a dual-stack peer's IPv6 address is leased
// under a name of its own.
func (p *clusterPool) leaseID(peer ike.Identity) string {
	if p.v6 {
		return peer.String() + " (IPv6)"
	}
	return peer.String()
}

// useStore switches the pool to cluster-wide leases.
func (p *clusterPool) useStore(l addressLeaser) { p.store.Store(&l) }

func (p *clusterPool) leaser() addressLeaser {
	if l := p.store.Load(); l != nil {
		return *l
	}
	return nil
}

// foreign marks an address as held by another identity elsewhere in the
// cluster, so the local pool does not offer it again.
var foreign = ike.Identity{Type: 255, Data: []byte("another node's peer")}

func (p *clusterPool) Acquire(peer ike.Identity) (netip.Addr, error) {
	l := p.leaser()
	if l == nil {
		return p.local.Acquire(peer)
	}
	ctx, cancel := context.WithTimeout(context.Background(), poolCallTimeout)
	defer cancel()
	id := p.leaseID(peer)
	if a, ok, err := l.AddressOf(ctx, id); err != nil {
		return netip.Addr{}, err
	} else if ok {
		p.local.Release(a)
		if err := p.local.Claim(peer, a); err != nil {
			return netip.Addr{}, err
		}
		p.note(a, id)
		return a, nil
	}
	for i := 0; i < p.size; i++ {
		a, err := p.local.Acquire(peer)
		if err != nil {
			return netip.Addr{}, err
		}
		holder, err := l.LeaseAddress(ctx, a, id)
		if err != nil {
			p.local.Release(a)
			return netip.Addr{}, err
		}
		if holder == "" || holder == id {
			p.note(a, id)
			return a, nil
		}
		// Another identity has it (served by another node): keep it out
		// of this node's offers.
		p.local.Release(a)
		p.local.Claim(foreign, a)
	}
	return netip.Addr{}, ike.ErrPoolExhausted
}

func (p *clusterPool) Claim(peer ike.Identity, a netip.Addr) error {
	l := p.leaser()
	if l == nil {
		return p.local.Claim(peer, a)
	}
	id := p.leaseID(peer)
	p.mu.Lock()
	confirmed := p.held[a] == id
	p.mu.Unlock()
	if confirmed {
		return nil // leased already (a claim confirms it before the restore: claim.go)
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
	p.local.Release(a) // a foreign mark, or a stale local holder
	if err := p.local.Claim(peer, a); err != nil && !errors.Is(err, ike.ErrNotInPool) {
		return err
	}
	p.note(a, id)
	return nil
}

// Release ends the lease: the SA holding a was deleted.
func (p *clusterPool) Release(a netip.Addr) {
	id := p.forget(a)
	if l := p.leaser(); l != nil && id != "" {
		ctx, cancel := context.WithTimeout(context.Background(), poolCallTimeout)
		defer cancel()
		l.ReleaseAddress(ctx, a, id) // a failure leaves the lease to its identity
	}
}

// Forget drops a from this node only: its SA moved to another node, which
// keeps the lease.
func (p *clusterPool) Forget(a netip.Addr) { p.forget(a) }

func (p *clusterPool) note(a netip.Addr, id string) {
	p.mu.Lock()
	p.held[a] = id
	p.mu.Unlock()
}

func (p *clusterPool) forget(a netip.Addr) string {
	p.mu.Lock()
	id := p.held[a]
	delete(p.held, a)
	p.mu.Unlock()
	p.local.Release(a)
	return id
}
