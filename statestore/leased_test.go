package statestore

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// With SoleWriter a Store answers AddressOf from the identities its own
// writes leased (listed at Open), reading etcd only for those: after any
// sequence of leases and releases its answers are a reading Store's, and
// an identity without a lease costs no read.
func TestSoleWriterAddressOf(t *testing.T) {
	e := startEtcd(t, false)
	var ranges atomic.Int64
	soleCli := e.LocalClient()
	t.Cleanup(func() { soleCli.Close() })
	ObserveClient(soleCli, func(method string, _ time.Duration, _ error) {
		if method == "Range" {
			ranges.Add(1)
		}
	})
	cfg := testConfig(t, "sole")
	cfg.SingleMember, cfg.SoleWriter = true, true
	sole := open(t, soleCli, cfg)
	truthCli := e.LocalClient() // plain reads: a Store would register, and be another writer
	t.Cleanup(func() { truthCli.Close() })
	ctx := tctx(t, 60*time.Second)

	ids := make([]string, 10)
	for i := range ids {
		ids[i] = fmt.Sprintf("gw-%d@iot.example", i)
	}
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 64, 1, byte(i)}) }
	check := func(step string) {
		t.Helper()
		for _, id := range ids {
			ga, gok, gerr := sole.AddressOf(ctx, id)
			wa, wok := leaseInEtcd(t, truthCli, DefaultPrefix, id)
			if gerr != nil || ga != wa || gok != wok {
				t.Fatalf("%s: AddressOf(%s) = %v %v %v, etcd says %v %v", step, id, ga, gok, gerr, wa, wok)
			}
		}
	}
	noRead := func(id string) {
		t.Helper()
		before := ranges.Load()
		if _, ok, err := sole.AddressOf(ctx, id); ok || err != nil {
			t.Fatalf("AddressOf(%s) = %v %v, want none", id, ok, err)
		}
		if n := ranges.Load() - before; n != 0 {
			t.Fatalf("AddressOf(%s) without a lease read etcd %d times", id, n)
		}
	}
	noRead(ids[0])

	submit := func(c Change) error {
		errs := make(chan error, 1)
		if err := sole.Submit(c, func(err error) { errs <- err }); err != nil {
			return err
		}
		return <-errs
	}
	release := func(a netip.Addr, id string) error {
		errs := make(chan error, 1)
		if err := sole.ReleaseAddressAsync(a, id, func(err error) { errs <- err }); err != nil {
			return err
		}
		return <-errs
	}
	// An SA's Established change leases a free address, or the node's
	// reservation.
	r := sampleRecord(0x4fe)
	r.Children[0].InSPI = 0x0d0004fe
	if err := submit(Change{Kind: Established, Record: r, Lease: &AddressLease{Addr: addr(30), ID: ids[5]}}); err != nil {
		t.Fatal(err)
	}
	check("Established with a free address")
	if ok, err := sole.ReserveAddresses(ctx, []netip.Addr{addr(31)}); err != nil || !ok[0] {
		t.Fatalf("reserve: %v %v", ok, err)
	}
	r = sampleRecord(0x4ff)
	r.Children[0].InSPI = 0x0d0004ff
	if err := submit(Change{Kind: Established, Record: r, Lease: &AddressLease{Addr: addr(31), ID: ids[6], Reserved: true}}); err != nil {
		t.Fatal(err)
	}
	check("Established with a reservation")
	for _, id := range ids[5:7] {
		if _, ok, _ := sole.AddressOf(ctx, id); !ok {
			t.Fatalf("%s: no lease after its Established change", id)
		}
	}

	rng := rand.New(rand.NewPCG(7, 15))
	spi := uint64(0x500)
	for step := 0; step < 200; step++ {
		id, a := ids[rng.IntN(len(ids))], addr(rng.IntN(16))
		var what string
		var err error
		switch rng.IntN(5) {
		case 0:
			what = "LeaseAddress"
			_, err = sole.LeaseAddress(ctx, a, id)
		case 1:
			what = "LeaseAddresses"
			j := (rng.IntN(len(ids)-1) + 1 + indexOf(ids, id)) % len(ids)
			_, err = sole.LeaseAddresses(ctx, []netip.Addr{a, addr(16 + rng.IntN(4))}, []string{id, ids[j]})
		case 2:
			what = "ReleaseAddress"
			err = sole.ReleaseAddress(ctx, a, id)
		case 3:
			what = "ReleaseAddressAsync"
			err = release(a, id)
		case 4:
			what = "Established"
			spi++
			r := sampleRecord(spi)
			r.Children[0].InSPI = uint32(0x0d000000 + spi)
			err = submit(Change{Kind: Established, Record: r, Lease: &AddressLease{Addr: a, ID: id}})
			if errors.Is(err, ErrAddressTaken) {
				err = nil // another identity's address: refused whole
			}
		}
		if err != nil {
			t.Fatalf("step %d: %s(%v, %s): %v", step, what, a, id, err)
		}
		check(fmt.Sprintf("step %d, after %s(%v, %s)", step, what, a, id))
	}

	// Released, an identity costs no read again.
	for _, id := range ids {
		if a, ok := leaseInEtcd(t, truthCli, DefaultPrefix, id); ok {
			if err := sole.ReleaseAddress(ctx, a, id); err != nil {
				t.Fatal(err)
			}
		}
	}
	check("all released")
	for _, id := range ids {
		noRead(id)
	}

	// A new Store lists the leases that are there at Open.
	if h, err := sole.LeaseAddress(ctx, addr(40), ids[3]); err != nil || h != "" {
		t.Fatalf("lease of a fresh address: holder %q, %v", h, err)
	}
	sole.Close()
	again := open(t, soleCli, cfg)
	if a, ok, err := again.AddressOf(ctx, ids[3]); err != nil || !ok || a != addr(40) {
		t.Fatalf("after reopening: AddressOf(%s) = %v %v %v, want %v", ids[3], a, ok, err, addr(40))
	}
	before := ranges.Load()
	if _, ok, _ := again.AddressOf(ctx, ids[4]); ok || ranges.Load() != before {
		t.Fatalf("after reopening: an identity without a lease found one or read etcd")
	}
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

// A lease key that names no identity turns the set off: every AddressOf
// reads etcd, as with several writers.
func TestSoleWriterUnreadableLeaseKey(t *testing.T) {
	e := startEtcd(t, false)
	cli := e.LocalClient()
	t.Cleanup(func() { cli.Close() })
	cfg := testConfig(t, "sole")
	cfg.SingleMember, cfg.SoleWriter = true, true
	ctx := tctx(t, 20*time.Second)
	if _, err := cli.Put(ctx, DefaultPrefix+"pool/id/not-hex", "10.64.1.1"); err != nil {
		t.Fatal(err)
	}
	s := open(t, cli, cfg)
	if s.leased.Load() != nil {
		t.Fatal("the set is kept despite a key it cannot read")
	}
	if _, err := s.LeaseAddress(ctx, netip.MustParseAddr("10.64.1.2"), "gw-1"); err != nil {
		t.Fatal(err)
	}
	if a, ok, err := s.AddressOf(ctx, "gw-1"); err != nil || !ok || a != netip.MustParseAddr("10.64.1.2") {
		t.Fatalf("AddressOf = %v %v %v", a, ok, err)
	}
}

// An identity's lease is its newest address: releasing an older address
// it still held (another SA of it, or a lease replaced) leaves the newer
// one, so that the identity keeps the address its live SA holds.
func TestReleaseKeepsNewerLease(t *testing.T) {
	e := startEtcd(t, false)
	ctx := tctx(t, 60*time.Second)
	older, newer := netip.MustParseAddr("10.64.2.1"), netip.MustParseAddr("10.64.2.2")
	for _, sole := range []bool{false, true} {
		for _, async := range []bool{false, true} {
			name := fmt.Sprintf("sole=%v,async=%v", sole, async)
			t.Run(name, func(t *testing.T) {
				cli := e.LocalClient()
				t.Cleanup(func() { cli.Close() })
				cfg := testConfig(t, "n")
				cfg.Prefix = "/" + name + "/"
				cfg.SingleMember, cfg.SoleWriter = sole, sole
				s := open(t, cli, cfg)
				const id = "gw-7@iot.example"
				for _, a := range []netip.Addr{older, newer} {
					if h, err := s.LeaseAddress(ctx, a, id); err != nil || h != "" {
						t.Fatalf("lease %v: holder %q, %v", a, h, err)
					}
				}
				if async {
					errs := make(chan error, 1)
					if err := s.ReleaseAddressAsync(older, id, func(err error) { errs <- err }); err != nil {
						t.Fatal(err)
					}
					if err := <-errs; err != nil {
						t.Fatal(err)
					}
				} else if err := s.ReleaseAddress(ctx, older, id); err != nil {
					t.Fatal(err)
				}
				if a, ok, err := s.AddressOf(ctx, id); err != nil || !ok || a != newer {
					t.Fatalf("after releasing %v: AddressOf = %v %v %v, want %v", older, a, ok, err, newer)
				}
				if a, ok := leaseInEtcd(t, cli, cfg.Prefix, id); !ok || a != newer {
					t.Fatalf("after releasing %v: etcd says %v %v, want %v", older, a, ok, newer)
				}
				// Releasing the newer one ends the lease.
				if err := s.ReleaseAddress(ctx, newer, id); err != nil {
					t.Fatal(err)
				}
				if a, ok, err := s.AddressOf(ctx, id); err != nil || ok {
					t.Fatalf("after releasing both: AddressOf = %v %v %v", a, ok, err)
				}
			})
		}
	}
}

// A node whose embedded member other nodes use as their store (a lab
// setup on one host) is not the sole writer whatever its configuration
// says: once another node registers there, its AddressOf reads etcd, so
// that a gateway leased an address by the other node keeps it here.
func TestSoleWriterSharedMember(t *testing.T) {
	addr := netip.MustParseAddr("10.64.3.1")
	const id = "gw-9@iot.example"
	for _, otherFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("other-first=%v", otherFirst), func(t *testing.T) {
			e := startEtcd(t, false)
			ctx := tctx(t, 60*time.Second)
			soleCli, otherCli := e.LocalClient(), e.LocalClient()
			t.Cleanup(func() { soleCli.Close(); otherCli.Close() })
			cfg := testConfig(t, "n1")
			cfg.SingleMember, cfg.SoleWriter = true, true
			var sole, other *Store
			if otherFirst {
				other = open(t, otherCli, testConfig(t, "n2"))
				sole = open(t, soleCli, cfg)
			} else {
				sole = open(t, soleCli, cfg)
				other = open(t, otherCli, testConfig(t, "n2"))
			}
			if h, err := other.LeaseAddress(ctx, addr, id); err != nil || h != "" {
				t.Fatalf("lease by the other node: holder %q, %v", h, err)
			}
			// The registration is seen by a watch: give it a moment.
			deadline := time.Now().Add(10 * time.Second)
			for {
				a, ok, err := sole.AddressOf(ctx, id)
				if err == nil && ok && a == addr {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("AddressOf(%s) on the embedded node = %v %v %v, want %v (leased by another node)", id, a, ok, err, addr)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

// leaseInEtcd reads identity id's lease as AddressOf does, with plain
// reads (no Store: a Store registers, and would be another writer).
func leaseInEtcd(t *testing.T, cli *clientv3.Client, prefix, id string) (netip.Addr, bool) {
	t.Helper()
	ctx := tctx(t, 10*time.Second)
	k := keys{prefix}
	r, err := cli.Get(ctx, k.poolID(id))
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Kvs) == 0 {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(string(r.Kvs[0].Value))
	if err != nil {
		t.Fatal(err)
	}
	g, err := cli.Get(ctx, k.poolAddr(a))
	if err != nil {
		t.Fatal(err)
	}
	return a, len(g.Kvs) > 0 && string(g.Kvs[0].Value) == id
}
