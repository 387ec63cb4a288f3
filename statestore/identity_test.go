package statestore

import (
	"errors"
	"slices"
	"testing"
	"time"
)

func identityRecord(spi uint64, id string) *SARecord {
	r := sampleRecord(spi)
	r.PeerID = Identity{Type: 2, Data: []byte(id)}
	return r
}

func spisOf(sas []IdentitySA) []uint64 {
	var out []uint64
	for _, s := range sas {
		out = append(out, s.SPI)
	}
	slices.Sort(out)
	return out
}

// submitWait submits c and waits for its answer.
func submitWait(t *testing.T, s *Store, c Change) error {
	t.Helper()
	ch := make(chan error, 1)
	if err := s.Submit(c, func(err error) { ch <- err }); err != nil {
		return err
	}
	select {
	case err := <-ch:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("no answer to a submitted change")
		return nil
	}
}

// The identity index follows an identity's SAs through establishment on
// two nodes, IKE rekey and delete, in the SAs' own transactions; an
// Established change with UniqueReplace reads the others in its
// transaction, UniqueKeep is refused while any exists.
func TestIdentityIndex(t *testing.T) {
	e := startEtcd(t, false)
	cli := dial(t, e.Endpoints())
	a := open(t, cli, testConfig(t, "a"))
	b := open(t, cli, testConfig(t, "b"))
	ctx := tctx(t, 60*time.Second)
	const id = "gw1.fleet.example"

	var others []IdentitySA
	if err := a.Persist(ctx, Change{Kind: Established, Record: identityRecord(0x100, id), Identity: id, Unique: UniqueReplace, Others: &others}); err != nil {
		t.Fatal(err)
	}
	if len(others) != 0 {
		t.Fatalf("first SA of the identity sees others: %v", others)
	}
	// Identities that share a prefix stay apart.
	for i, other := range []string{"gw1.fleet.example/x", "gw1.fleet.example2", "gw1.fleet.exampl"} {
		if err := a.Persist(ctx, Change{Kind: Established, Record: identityRecord(0x200+uint64(i), other), Identity: other}); err != nil {
			t.Fatal(err)
		}
	}
	// Through the batcher on node b: sees a's SA, names node a.
	if err := submitWait(t, b, Change{Kind: Established, Record: identityRecord(0x300, id), Identity: id, Unique: UniqueReplace, Others: &others}); err != nil {
		t.Fatal(err)
	}
	if len(others) != 1 || others[0].SPI != 0x100 || others[0].Node != "a" {
		t.Fatalf("others = %+v, want 0x100 on a", others)
	}
	// Keep: refused, naming both; nothing of the refused SA is stored.
	err := b.Persist(ctx, Change{Kind: Established, Record: identityRecord(0x400, id), Identity: id, Unique: UniqueKeep})
	var held *IdentityHeldError
	if !errors.As(err, &held) || !slices.Equal(spisOf(held.SAs), []uint64{0x100, 0x300}) || !errors.Is(err, ErrIdentityHeld) {
		t.Fatalf("keep: err = %v, want IdentityHeldError naming 0x100 and 0x300", err)
	}
	if _, _, err := b.Load(ctx, 0x400); !errors.Is(err, ErrNotFound) {
		t.Fatalf("refused SA stored: %v", err)
	}
	// An identity without SAs is let in under keep.
	if err := b.Persist(ctx, Change{Kind: Established, Record: identityRecord(0x500, "solo"), Identity: "solo", Unique: UniqueKeep}); err != nil {
		t.Fatal(err)
	}
	// IKE rekey moves the entry to the new SPI; delete removes it.
	if err := b.Persist(ctx, Change{Kind: IKERekeyed, Record: identityRecord(0x301, id), OldSPI: 0x300, Identity: id}); err != nil {
		t.Fatal(err)
	}
	got, err := a.Identity(ctx, id)
	if err != nil || !slices.Equal(spisOf(got), []uint64{0x100, 0x301}) {
		t.Fatalf("after rekey: %v %v", got, err)
	}
	if err := a.Persist(ctx, Change{Kind: Deleted, SPI: 0x100, Identity: id}); err != nil {
		t.Fatal(err)
	}
	got, err = a.Identity(ctx, id)
	if err != nil || !slices.Equal(spisOf(got), []uint64{0x301}) {
		t.Fatalf("after delete: %v %v", got, err)
	}
	if got, _ := a.Identity(ctx, "gw1.fleet.example/x"); !slices.Equal(spisOf(got), []uint64{0x200}) {
		t.Fatalf("identity with a slash: %v", got)
	}
	// A stale entry (its SA deleted by a path that did not name the
	// identity) is dropped; a live one is not.
	if err := b.Persist(ctx, Change{Kind: Deleted, SPI: 0x500}); err != nil {
		t.Fatal(err)
	}
	if err := b.DropStaleIdentity(ctx, "solo", []uint64{0x500}); err != nil {
		t.Fatal(err)
	}
	if err := b.DropStaleIdentity(ctx, id, []uint64{0x301}); err != nil {
		t.Fatal(err)
	}
	if got, _ := a.Identity(ctx, "solo"); len(got) != 0 {
		t.Fatalf("stale entry kept: %v", got)
	}
	if got, _ := a.Identity(ctx, id); !slices.Equal(spisOf(got), []uint64{0x301}) {
		t.Fatalf("live entry dropped: %v", got)
	}
}

// DeleteOrphan deletes a dead owner's SA (record, ownership, ESP SPIs,
// index entry) and refuses a live owner's.
func TestDeleteOrphan(t *testing.T) {
	e := startEtcd(t, false)
	cli := dial(t, e.Endpoints())
	a := open(t, cli, testConfig(t, "a"))
	b := open(t, cli, testConfig(t, "b"))
	ctx := tctx(t, 60*time.Second)
	const id = "gw2.fleet.example"
	rec := identityRecord(0x700, id)
	if err := a.Persist(ctx, Change{Kind: Established, Record: rec, Identity: id}); err != nil {
		t.Fatal(err)
	}
	ownerA, _ := a.Registration()
	var oe *OwnerError
	if err := b.DeleteOrphan(ctx, 0x700, ownerA, id); !errors.As(err, &oe) || oe.Owner != ownerA {
		t.Fatalf("live owner's SA: err = %v, want OwnerError naming a", err)
	}
	if err := a.Close(); err != nil { // lease revoked: a is gone
		t.Fatal(err)
	}
	if err := b.DeleteOrphan(ctx, 0x700, ownerA, id); err != nil {
		t.Fatal(err)
	}
	// (The owned/ index entry of store layout 3 is not the delete's at
	// layout 4: the layout's sweep deletes what is left of the index.)
	for _, k := range []string{b.k.sa(0x700), b.k.owner(0x700), b.k.ident(id, 0x700), b.k.espSPI(rec.Children[0].InSPI)} {
		r, err := cli.Get(ctx, k)
		if err != nil || len(r.Kvs) != 0 {
			t.Fatalf("%s still there after DeleteOrphan (%v)", k, err)
		}
	}
	if err := b.DeleteOrphan(ctx, 0x700, ownerA, id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v, want ErrNotFound", err)
	}
}
