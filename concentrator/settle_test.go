package concentrator

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/statestore"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// An Established write whose answer is lost (statestore.ErrUnavailable)
// leaves nothing of its SA in etcd once the settler has run. Landed, its
// record, reservations, owner key, identity entry and ESP SPI key are
// deleted; not landed, the reservations it was to take over (on the
// node's lease until the lease ended) are given back, its address's too.
// Without the settler both cases leave keys behind (an SA no node serves,
// or reservations until the node's lease ends).
func TestSettleUnknownEstablished(t *testing.T) {
	for _, landed := range []bool{true, false} {
		t.Run(fmt.Sprint("landed=", landed), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			c := newTestCluster(t, 1)
			var mu sync.Mutex
			var lost *statestore.Change // the write whose answer was lost
			c.adjust = func(_ string, n *Node) {
				n.submitHook = func(st statestore.Interface, ch statestore.Change, done func(error)) error {
					mu.Lock()
					first := ch.Kind == statestore.Established && lost == nil
					if first {
						lost = &ch
					}
					mu.Unlock()
					if !first {
						return st.Submit(ch, done)
					}
					unknown := fmt.Errorf("%w: the answer was lost", statestore.ErrUnavailable)
					if !landed {
						done(unknown)
						return nil
					}
					return st.Submit(ch, func(err error) {
						if err == nil {
							err = unknown
						}
						done(err)
					})
				}
			}
			a := c.start(ctx, "a")
			gw := netip.MustParseAddr("192.0.2.11")
			c.pin(gw, "a")
			g := startMemGateway(t, ctx, c.netw, c.clk, gw)
			g.initiate(gatewayInitiation(g, c.vip, 1))
			waitFor(t, ctx, "the write of unknown outcome settled", func() bool { return a.n.SettleStats().Settled == 1 })
			if got, want := a.n.SettleStats().Landed, map[bool]uint64{true: 1, false: 0}[landed]; got != want {
				t.Fatalf("settled writes found landed: %d, want %d", got, want)
			}
			mu.Lock()
			ch := *lost
			mu.Unlock()
			if ch.Lease == nil || !ch.Lease.Reserved || ch.Identity == "" {
				t.Fatalf("the lost write: lease %+v, identity %q; want a reserved address and an identity", ch.Lease, ch.Identity)
			}
			cli, err := statestore.Dial(c.etcd.Client())
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			spi := fmt.Sprintf("%016x", ch.Record.LocalSPI())
			esp := fmt.Sprintf("spi/esp/%08x", ch.Record.InSPIs()[0])
			r, err := cli.Get(ctx, statestore.DefaultPrefix, clientv3.WithPrefix())
			if err != nil {
				t.Fatal(err)
			}
			addrKey := statestore.DefaultPrefix + "pool/addr/" + ch.Lease.Addr.String()
			var addr string
			for _, kv := range r.Kvs {
				k := string(kv.Key)
				if (strings.HasSuffix(k, "/"+spi) && !strings.HasPrefix(k, statestore.DefaultPrefix+"pool/")) || strings.HasSuffix(k, esp) {
					t.Errorf("left in etcd: %s", k)
				}
				if k == addrKey {
					addr = string(kv.Value)
				}
			}
			// Landed, the address is its identity's lease (left to it, as
			// after any failed write); not landed, its reservation is
			// given back.
			if want := map[bool]string{true: ch.Identity, false: ""}[landed]; addr != want {
				t.Errorf("address %v in etcd: %q, want %q", ch.Lease.Addr, addr, want)
			}
		})
	}
}

// flakyReleaseStore fails its first releases of SPIs, then records them.
type flakyReleaseStore struct {
	heldStore
	mu       sync.Mutex
	failures int
	ike      []uint64
	esp      []uint32
}

func (s *flakyReleaseStore) ReleaseSPIs(_ context.Context, ike []uint64, esp []uint32) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failures > 0 {
		s.failures--
		return fmt.Errorf("%w: etcd down", statestore.ErrUnavailable)
	}
	s.ike, s.esp = append(s.ike, ike...), append(s.esp, esp...)
	return nil
}

// Unused SPIs whose release failed are released again by the settler
// until etcd answers, instead of staying reserved until the node's
// registration ends.
func TestFailedReleaseRetried(t *testing.T) {
	st := &flakyReleaseStore{failures: 2}
	r := newApplyRig(t, st)
	r.n.releaseLater([]uint64{0x100, 0x200}, []uint32{0x3001})
	for range 2 {
		r.n.settleQueued(r.ctx)
		if st.ike != nil {
			t.Fatal("released while the store failed")
		}
	}
	r.n.settleQueued(r.ctx)
	if !slices.Equal(st.ike, []uint64{0x100, 0x200}) || !slices.Equal(st.esp, []uint32{0x3001}) {
		t.Fatalf("released %x and %x, want 100 200 and 3001", st.ike, st.esp)
	}
	r.n.settleQueued(r.ctx) // nothing left: released once
	if len(st.ike) != 2 {
		t.Fatalf("released again: %x", st.ike)
	}
}
