package statestore

import (
	"errors"
	"net/netip"
	"testing"
	"time"
)

// A new SA's virtual IP lease rides in its Established change: from this
// node's reservation, from a free address, or checked when the identity
// holds the address already; a lease that does not hold fails the change
// (and writes nothing of it). Releases go through the batches too and
// leave another identity's lease alone. The same through the member's
// local client with SingleMember (serializable reads), as a node with
// its embedded member runs.
func TestAddressLeaseWithEstablished(t *testing.T) {
	t.Run("grpc", func(t *testing.T) { testAddressLeaseWithEstablished(t, false) })
	t.Run("single-member", func(t *testing.T) { testAddressLeaseWithEstablished(t, true) })
}

func testAddressLeaseWithEstablished(t *testing.T, single bool) {
	e := startEtcd(t, false)
	cli := dial(t, e.Endpoints())
	ca, cb := testConfig(t, "a"), testConfig(t, "b")
	if single {
		cli = e.LocalClient()
		t.Cleanup(func() { cli.Close() })
		ca.SingleMember, cb.SingleMember = true, true
	}
	a := open(t, cli, ca)
	b := open(t, cli, cb)
	ctx := tctx(t, 20*time.Second)
	submit := func(s *Store, c Change) error {
		errs := make(chan error, 1)
		if err := s.Submit(c, func(err error) { errs <- err }); err != nil {
			return err
		}
		return <-errs
	}
	release := func(s *Store, addr netip.Addr, id string) {
		errs := make(chan error, 1)
		if err := s.ReleaseAddressAsync(addr, id, func(err error) { errs <- err }); err != nil {
			t.Fatal(err)
		}
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	x1, x2, x3 := netip.MustParseAddr("10.64.0.1"), netip.MustParseAddr("10.64.0.2"), netip.MustParseAddr("10.64.0.3")

	// a reserves x1 and x2; b cannot reserve x2 nor lease it.
	if ok, err := a.ReserveAddresses(ctx, []netip.Addr{x1, x2}); err != nil || !ok[0] || !ok[1] {
		t.Fatalf("reserve: %v %v", ok, err)
	}
	if ok, err := b.ReserveAddresses(ctx, []netip.Addr{x2, x3}); err != nil || ok[0] || !ok[1] {
		t.Fatalf("b's reserve: %v %v", ok, err)
	}
	if h, err := b.LeaseAddress(ctx, x2, "gw-9"); err != nil || h == "" || h == "gw-9" {
		t.Fatalf("b leased a's reservation: holder %q %v", h, err)
	}
	if _, ok, _ := a.AddressOf(ctx, "gw-1"); ok {
		t.Fatal("a reservation is nobody's lease")
	}

	// gw-1 gets x1 from a's reservation with its SA.
	r1 := sampleRecord(0x101)
	if err := submit(a, Change{Kind: Established, Record: r1, Lease: &AddressLease{Addr: x1, ID: "gw-1", Reserved: true}}); err != nil {
		t.Fatal(err)
	}
	if got, ok, err := a.AddressOf(ctx, "gw-1"); err != nil || !ok || got != x1 {
		t.Fatalf("AddressOf gw-1: %v %v %v", got, ok, err)
	}
	// x3 is b's reservation: a's SA claiming it as a's reservation fails
	// whole (no SA record left behind).
	r2 := sampleRecord(0x102)
	err := submit(a, Change{Kind: Established, Record: r2, Lease: &AddressLease{Addr: x3, ID: "gw-2", Reserved: true}})
	var taken *AddressTakenError
	if !errors.As(err, &taken) || !errors.Is(err, ErrAddressTaken) || taken.Addr != x3 {
		t.Fatalf("lease of b's reservation: %v", err)
	}
	if _, _, err := a.Load(ctx, 0x102); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the refused SA was stored: %v", err)
	}
	// Leasing a held address to another identity as free fails too.
	if err := submit(a, Change{Kind: Established, Record: r2, Lease: &AddressLease{Addr: x1, ID: "gw-2"}}); !errors.Is(err, ErrAddressTaken) {
		t.Fatalf("lease of gw-1's address for gw-2: %v", err)
	}
	// gw-1's second SA (on b) finds its address held and keeps it.
	r3 := sampleRecord(0x103)
	r3.Children[0].InSPI = 0x0c000103
	if err := submit(b, Change{Kind: Established, Record: r3, Lease: &AddressLease{Addr: x1, ID: "gw-1", Held: true}}); err != nil {
		t.Fatal(err)
	}
	// Releasing x1 for another identity leaves it; for gw-1 it frees it.
	release(a, x1, "gw-2")
	if _, ok, _ := a.AddressOf(ctx, "gw-1"); !ok {
		t.Fatal("another identity's release freed gw-1's address")
	}
	release(a, x1, "gw-1")
	if _, ok, _ := a.AddressOf(ctx, "gw-1"); ok {
		t.Fatal("gw-1's address still leased after its release")
	}
	// A held lease that no longer holds fails.
	r4 := sampleRecord(0x104)
	r4.Children[0].InSPI = 0x0c000104
	if err := submit(b, Change{Kind: Established, Record: r4, Lease: &AddressLease{Addr: x1, ID: "gw-1", Held: true}}); !errors.Is(err, ErrAddressTaken) {
		t.Fatalf("held lease of a released address: %v", err)
	}
	// A free address is leased with the SA.
	if err := submit(b, Change{Kind: Established, Record: r4, Lease: &AddressLease{Addr: x1, ID: "gw-4"}}); err != nil {
		t.Fatal(err)
	}
	if h, err := a.LeaseAddress(ctx, x1, "gw-5"); err != nil || h != "gw-4" {
		t.Fatalf("x1's holder: %q %v", h, err)
	}
	// Unused reservations go back.
	if err := a.UnreserveAddresses(ctx, []netip.Addr{x2, x1}); err != nil {
		t.Fatal(err)
	}
	if h, err := b.LeaseAddress(ctx, x2, "gw-6"); err != nil || h != "" {
		t.Fatalf("x2 after unreserve: %q %v", h, err)
	}
	if h, err := b.LeaseAddress(ctx, x1, "gw-6"); err != nil || h != "gw-4" {
		t.Fatalf("unreserve dropped a lease: %q %v", h, err)
	}
	// Many leases confirmed at once: one free address leased, one held by
	// its identity already, one another identity's; the free one is taken
	// (another identity's lease of it then fails).
	x4 := netip.MustParseAddr("10.64.0.4")
	if h, err := a.LeaseAddresses(ctx, []netip.Addr{x4, x2, x1}, []string{"gw-7", "gw-6", "gw-8"}); err != nil || h[0] != "" || h[1] != "gw-6" || h[2] != "gw-4" {
		t.Fatalf("LeaseAddresses: %q %v", h, err)
	}
	if h, err := b.LeaseAddress(ctx, x4, "gw-9"); err != nil || h != "gw-7" {
		t.Fatalf("x4 after LeaseAddresses: %q %v", h, err)
	}
	if err := (&Change{Kind: Updated, Record: r4, Lease: &AddressLease{Addr: x1, ID: "gw-4"}}).validate(); err == nil {
		t.Fatal("a lease with an update accepted")
	}
}
