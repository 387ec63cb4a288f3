package statestore

import (
	"errors"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func TestReservationsRoundTripAndTamper(t *testing.T) {
	c := Codec{Keys: testKeyring(t, 3, 1)}
	r := sampleRecord(77)
	r.NextOutReserved = 48
	res := ReservationsOf(r)
	b, err := c.MarshalReservations(seqName(77), res, Binding{1, 1})
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.UnmarshalReservations(seqName(77), b, Binding{1, 1})
	if err != nil || got.NextOutReserved != 48 || len(got.Children) != 1 || got.Children[0] != res.Children[0] {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	// Lowering a reservation in etcd would make a restored SA reuse
	// sequence numbers: a lowered body under the original tag is refused.
	low := ReservationsOf(r)
	low.Children[0].OutSeqReserved = 1
	lb, _ := c.MarshalReservations(seqName(77), low, Binding{1, 1})
	low2, _ := splitRecord(lb)
	cur, _ := splitRecord(b)
	if _, err := c.UnmarshalReservations(seqName(77), assemble(low2.body, cur.keyID, cur.sealed, Binding{1, 1}), Binding{1, 1}); !errors.Is(err, ErrSeal) {
		t.Fatalf("lowered reservation: %v", err)
	}
	if _, err := c.UnmarshalReservations(seqName(78), b, Binding{1, 1}); !errors.Is(err, ErrSeal) {
		t.Fatalf("moved to another SA: %v", err)
	}
	if _, err := c.UnmarshalReservations(saName(77), b, Binding{1, 1}); !errors.Is(err, ErrSeal) {
		t.Fatalf("read as another kind of key: %v", err)
	}
}

func TestApplyTakesTheHigher(t *testing.T) {
	r := sampleRecord(5)
	r.NextOutReserved = 20
	r.Children[0].OutSeqReserved, r.Children[0].InSeqLow, r.Children[0].SeqBlock = 100, 50, 4096
	in := r.Children[0].InSPI
	r.Apply(&Reservations{NextOutReserved: 10, Children: []ChildReservation{
		{InSPI: in, OutSeqReserved: 9000, InSeqLow: 40, SeqBlock: 8192},
		{InSPI: 0x99, OutSeqReserved: 1 << 30}, // a CHILD SA the record no longer has
	}})
	c := r.Children[0]
	if r.NextOutReserved != 20 || c.OutSeqReserved != 9000 || c.InSeqLow != 50 || c.SeqBlock != 8192 || len(r.Children) != 1 {
		t.Fatalf("after Apply: %d %+v", r.NextOutReserved, c)
	}
}

func FuzzUnmarshalReservations(f *testing.F) {
	c := Codec{Keys: testKeyring(f, 1, 1)}
	good, _ := c.MarshalReservations("seq/x", ReservationsOf(sampleRecord(1)), Binding{1, 1})
	f.Add(good)
	f.Add([]byte{0x08, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := c.UnmarshalReservations("seq/x", b, Binding{1, 1})
		if err == nil && r == nil {
			t.Fatal("nil reservations without error")
		}
		if err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrUnknownVersion) &&
			!errors.Is(err, ErrSeal) && !errors.Is(err, ErrUnknownKey) {
			t.Fatalf("untyped error %v", err)
		}
	})
}

// Renewing a reservation writes only the reservations, under their own
// key (store layout 4), or rewrites the record, which holds them (layout
// 5); every way of reading the SA back sees them; deleting the SA removes
// them. The test reports the bytes each kind of write puts into etcd.
func TestReservedChange(t *testing.T) {
	for _, layout := range []int{4, seqGone} {
		t.Run(fmt.Sprintf("layout %d", layout), func(t *testing.T) { testReservedChange(t, layout) })
	}
}

func testReservedChange(t *testing.T, layout int) {
	e := startEtcd(t, false)
	cli := dial(t, e.Endpoints())
	cfg := func(id string) Config { return layoutConfig(t, id, LayoutMin, layout) }
	a := open(t, cli, cfg("a"))
	waitLayout(t, a, layout)
	ctx := tctx(t, 10*time.Second)
	r := sampleRecord(200)
	r.NextOutReserved = 16
	r.Children[0].OutSeqReserved, r.Children[0].InSeqLow = 4096, 0
	if err := a.Persist(ctx, Change{Kind: Established, Record: r}); err != nil {
		t.Fatal(err)
	}
	rev := func() int64 {
		g, err := cli.Get(ctx, "x")
		if err != nil {
			t.Fatal(err)
		}
		return g.Header.Revision
	}
	recKV, _ := cli.Get(ctx, DefaultPrefix+saName(200))
	recBytes := len(recKV.Kvs[0].Key) + len(recKV.Kvs[0].Value)

	r.NextOutReserved = 32
	r.Children[0].OutSeqReserved, r.Children[0].InSeqLow, r.Children[0].SeqBlock = 12288, 7000, 8192
	r.NextIn = 9 // message IDs go with the reservations
	r.SPIi = 77  // the rest of the record does not before layout 5
	before := rev()
	if err := a.Submit(Change{Kind: Reserved, Record: r}, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if d := rev() - before; d != 1 {
		t.Fatalf("a renewal took %d revisions", d)
	}
	seqKV, err := cli.Get(ctx, DefaultPrefix+seqName(200))
	if err != nil {
		t.Fatal(err)
	}
	kv, _ := cli.Get(ctx, DefaultPrefix+saName(200))
	if layout >= seqGone {
		if len(seqKV.Kvs) != 0 || kv.Kvs[0].ModRevision == recKV.Kvs[0].ModRevision {
			t.Fatalf("layout %d: a renewal wrote %d reservation keys, the record at revision %d (was %d)",
				layout, len(seqKV.Kvs), kv.Kvs[0].ModRevision, recKV.Kvs[0].ModRevision)
		}
		t.Logf("etcd bytes (key+value): full record %d, renewal (the record again) %d",
			recBytes, len(kv.Kvs[0].Key)+len(kv.Kvs[0].Value))
	} else {
		if len(seqKV.Kvs) != 1 {
			t.Fatal("no reservation key")
		}
		if kv.Kvs[0].ModRevision != recKV.Kvs[0].ModRevision {
			t.Fatal("a renewal rewrote the record")
		}
		seqBytes := len(seqKV.Kvs[0].Key) + len(seqKV.Kvs[0].Value)
		t.Logf("etcd bytes (key+value): full record %d, reservation renewal %d (%.1fx smaller)",
			recBytes, seqBytes, float64(recBytes)/float64(seqBytes))
		if seqBytes*4 > recBytes {
			t.Fatalf("renewal %d bytes is not much smaller than the record's %d", seqBytes, recBytes)
		}
	}

	check := func(how string, got *SARecord, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", how, err)
		}
		c := got.Children[0]
		if got.NextOutReserved != 32 || c.OutSeqReserved != 12288 || c.InSeqLow != 7000 || c.SeqBlock != 8192 ||
			got.NextIn != 9 || (got.SPIi == 77) != (layout >= seqGone) {
			t.Fatalf("%s: reservations %d %+v, next-in %d, SPIi %x", how, got.NextOutReserved, c, got.NextIn, got.SPIi)
		}
	}
	got, _, err := a.Load(ctx, 200)
	check("Load", got, err)
	// The node dies; its next life loads what it owns.
	a.Close()
	a2 := open(t, cli, cfg("a"))
	recs, err := a2.LoadOwned(ctx)
	if len(recs) != 1 {
		t.Fatalf("LoadOwned: %d records, %v", len(recs), err)
	}
	check("LoadOwned", recs[0], err)
	// Another node takes it over once a2 is gone too.
	a2.Close()
	b := open(t, cli, cfg("b"))
	var taken *SARecord
	for ctx.Err() == nil {
		if taken, err = b.TakeOver(ctx, 200); !errors.Is(err, ErrNotOwner) {
			break
		}
		time.Sleep(100 * time.Millisecond) // a2's lease has to expire
	}
	check("TakeOver", taken, err)
	// A full write later carries the same values (the engine's state only
	// grows): before layout 5 reading still takes the higher of both.
	r.SPIi = 0x1122334455667788
	if layout < seqGone {
		r.Children[0].OutSeqReserved = 10000 // lower than the renewal: cannot happen, yet harmless
	}
	if err := b.Persist(ctx, Change{Kind: Updated, Record: r}); err != nil {
		t.Fatal(err)
	}
	got, _, err = b.Load(ctx, 200)
	if err != nil || got.Children[0].OutSeqReserved != 12288 {
		t.Fatalf("after a full write: %+v %v", got.Children[0], err)
	}
	if err := b.Persist(ctx, Change{Kind: Deleted, SPI: 200}); err != nil {
		t.Fatal(err)
	}
	if g, _ := cli.Get(ctx, DefaultPrefix+"seq/", clientv3.WithPrefix(), clientv3.WithCountOnly()); g.Count != 0 {
		t.Fatalf("%d reservation keys left after delete", g.Count)
	}
	// Renewing for an SA we do not own is refused like any change.
	if err := b.Persist(ctx, Change{Kind: Reserved, Record: r}); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("renewal of a deleted SA: %v", err)
	}
}
