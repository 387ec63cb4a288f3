package concentrator

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/statestore"
)

// recordingLeaser grants every reservation and lease, and records them.
type recordingLeaser struct {
	mu       sync.Mutex
	reserved [][]netip.Addr
	leases   int
}

func (l *recordingLeaser) LeaseAddress(context.Context, netip.Addr, string) (string, error) {
	l.mu.Lock()
	l.leases++
	l.mu.Unlock()
	return "", nil
}
func (l *recordingLeaser) LeaseAddresses(_ context.Context, addrs []netip.Addr, _ []string) ([]string, error) {
	l.mu.Lock()
	l.leases += len(addrs)
	l.mu.Unlock()
	return make([]string, len(addrs)), nil
}
func (l *recordingLeaser) AddressOf(context.Context, string) (netip.Addr, bool, error) {
	return netip.Addr{}, false, nil
}
func (l *recordingLeaser) ReleaseAddress(context.Context, netip.Addr, string) error { return nil }
func (l *recordingLeaser) ReleaseAddressAsync(_ netip.Addr, _ string, done func(error)) error {
	done(nil)
	return nil
}
func (l *recordingLeaser) ReserveAddresses(_ context.Context, addrs []netip.Addr) ([]bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reserved = append(l.reserved, addrs)
	ok := make([]bool, len(addrs))
	for i := range ok {
		ok[i] = true
	}
	return ok, nil
}
func (l *recordingLeaser) UnreserveAddresses(context.Context, []netip.Addr) error { return nil }

// The addresses a node reserves ahead are many distinct addresses, however
// few one identity may hold (policies[].max_virtual_ips, 1 by default): new
// SAs then take them from memory and lease none on the shard's path. With
// the per-identity limit applied to the node's reservation mark, the
// refill asked for one address 512 times, etcd refused the batch, and
// every new SA leased its address in a transaction of its own.
func TestClusterPoolReservesDistinctAddresses(t *testing.T) {
	p := newClusterPool(netip.MustParsePrefix("10.80.0.0/16"), 1)
	l := &recordingLeaser{}
	p.useStore(l)
	p.refill(context.Background())
	if len(l.reserved) != 1 {
		t.Fatalf("%d reservation calls, want 1", len(l.reserved))
	}
	seen := map[netip.Addr]bool{}
	for _, a := range l.reserved[0] {
		if seen[a] {
			t.Fatalf("address %v asked for twice in one reservation of %d", a, len(l.reserved[0]))
		}
		seen[a] = true
	}
	if len(seen) != vipReserveLen {
		t.Fatalf("reserved %d addresses, want %d", len(seen), vipReserveLen)
	}
	got := map[netip.Addr]bool{}
	for i := range 100 {
		id, _ := ike.ParseIdentity("gw" + string(rune('a'+i%26)) + string(rune('a'+i/26)) + "@iot.example")
		a, err := p.Acquire(id)
		if err != nil {
			t.Fatal(err)
		}
		if got[a] || !seen[a] {
			t.Fatalf("gateway %d got %v (given before: %v, reserved: %v)", i, a, got[a], seen[a])
		}
		got[a] = true
	}
	if l.leases != 0 {
		t.Fatalf("%d leases on the shard's path, want 0 (the reservations cover them)", l.leases)
	}
}

// unreservingLeaser is recordingLeaser that also records the addresses
// given back.
type unreservingLeaser struct {
	recordingLeaser
	back chan netip.Addr
}

func (l *unreservingLeaser) UnreserveAddresses(_ context.Context, addrs []netip.Addr) error {
	for _, a := range addrs {
		l.back <- a
	}
	return nil
}

// An SA whose Established change fails gives its address's reservation
// back to the store before the address is offered again. Released at once
// (as before), the next refill tried to reserve the address again, found
// the node's own mark and counted it as another node's: one address lost
// to the pool per refused SA (unique_ids keep refuses a gateway at every
// attempt) until the node's lease ended.
func TestClusterPoolGivesBackAFailedSAsReservation(t *testing.T) {
	for _, why := range []error{&statestore.IdentityHeldError{Identity: "gw@iot.example"}, statestore.ErrUnavailable} {
		t.Run(why.Error(), func(t *testing.T) {
			p := newClusterPool(netip.MustParsePrefix("10.80.0.0/24"), 1)
			l := &unreservingLeaser{back: make(chan netip.Addr, 1)}
			p.useStore(l)
			p.refill(context.Background())
			peer, _ := ike.ParseIdentity("gw@iot.example")
			a, err := p.Acquire(peer)
			if err != nil {
				t.Fatal(err)
			}
			id, _ := p.leaseID(peer)
			v, lease := p.leaseFor(a, id)
			if lease == nil || !lease.Reserved {
				t.Fatalf("lease %+v, want one from the reservations", lease)
			}
			p.settle(v, why)
			p.Release(a)
			select {
			case got := <-l.back:
				if got != a {
					t.Fatalf("gave back %v, want %v", got, a)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the failed SA's reservation was not given back")
			}
			for deadline := time.Now().Add(5 * time.Second); ; {
				if holder, _ := p.local.Holder(a); holder == "" {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the address is not offered again")
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
}
