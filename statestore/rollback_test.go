package statestore

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	pb "github.com/ikefleet/ikefleet/api/statestore/v1"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
)

// Reservations of the SAs rollbackSA writes: old values carry the first
// two, the current state the third.
const (
	seqFirst   = 1 << 20
	seqSecond  = 2 << 20
	seqCurrent = 3 << 20
)

// rollbackSA stores an SA owned by s and its reservations, advances both,
// and returns the raw etcd key-values of the older record and
// reservations (what an attacker with write access to etcd copies back;
// from store layout 5 there is no reservations key, oldSeq nil, and the
// older record holds the older reservations) and the current state.
func rollbackSA(t *testing.T, s *Store, cli *clientv3.Client, spi uint64) (oldSA, oldSeq *mvccpb.KeyValue, cur *SARecord) {
	t.Helper()
	ctx := tctx(t, 20*time.Second)
	r := sampleRecord(spi)
	r.Children[0].InSPI = uint32(spi) | 0x40000000
	r.Children[0].OutSeqReserved = seqFirst
	if err := s.Persist(ctx, Change{Kind: Established, Record: r}); err != nil {
		t.Fatal(err)
	}
	r.Children[0].OutSeqReserved = seqSecond
	r.NextOutReserved = 10
	if err := s.Persist(ctx, Change{Kind: Reserved, Record: r}); err != nil {
		t.Fatal(err)
	}
	get := func(k string) *mvccpb.KeyValue {
		g, err := cli.Get(ctx, k)
		if err != nil || len(g.Kvs) != 1 {
			t.Fatalf("get %s: %v", k, err)
		}
		return g.Kvs[0]
	}
	oldSA = get(s.k.sa(spi))
	if s.Layout() < seqGone {
		oldSeq = get(s.k.seq(spi))
	} else if g, err := cli.Get(ctx, s.k.seq(spi)); err != nil || len(g.Kvs) != 0 {
		t.Fatalf("store layout %d wrote a reservations key: %v %v", s.Layout(), g, err)
	}
	r.Children[0].OutSeqReserved = seqCurrent
	r.NextOutReserved = 20
	if err := s.Persist(ctx, Change{Kind: Reserved, Record: r}); err != nil {
		t.Fatal(err)
	}
	if err := s.Persist(ctx, Change{Kind: Updated, Record: r}); err != nil {
		t.Fatal(err)
	}
	return oldSA, oldSeq, r
}

// attack is a way of putting an older value back with raw etcd writes;
// seq: it needs the reservations key (store layouts before 5).
type attack struct {
	name string
	seq  bool
	do   func(t *testing.T, cli *clientv3.Client, oldSA, oldSeq *mvccpb.KeyValue)
}

var attacks = []attack{
	{"copy reservations back", true, func(t *testing.T, cli *clientv3.Client, _, seq *mvccpb.KeyValue) {
		put(t, cli, seq)
	}},
	{"copy record back", false, func(t *testing.T, cli *clientv3.Client, sa, _ *mvccpb.KeyValue) {
		put(t, cli, sa)
	}},
	{"copy both back", true, func(t *testing.T, cli *clientv3.Client, sa, seq *mvccpb.KeyValue) {
		if _, err := cli.Txn(context.Background()).Then(clientv3.OpPut(string(sa.Key), string(sa.Value)),
			clientv3.OpPut(string(seq.Key), string(seq.Value))).Commit(); err != nil {
			t.Fatal(err)
		}
	}},
	// Deleted: the record's older reservations would be used.
	{"delete reservations", true, func(t *testing.T, cli *clientv3.Client, _, seq *mvccpb.KeyValue) {
		if _, err := cli.Delete(context.Background(), string(seq.Key)); err != nil {
			t.Fatal(err)
		}
	}},
	// Deleted and created again, then written until the key's version is
	// the old value's: only the create revision tells.
	{"delete and recreate reservations", true, func(t *testing.T, cli *clientv3.Client, _, seq *mvccpb.KeyValue) {
		recreate(t, cli, seq)
	}},
	{"delete and recreate record", false, func(t *testing.T, cli *clientv3.Client, sa, _ *mvccpb.KeyValue) {
		recreate(t, cli, sa)
	}},
	{"delete and recreate both", true, func(t *testing.T, cli *clientv3.Client, sa, seq *mvccpb.KeyValue) {
		recreate(t, cli, sa)
		recreate(t, cli, seq)
	}},
}

func put(t *testing.T, cli *clientv3.Client, kv *mvccpb.KeyValue) {
	t.Helper()
	if _, err := cli.Put(context.Background(), string(kv.Key), string(kv.Value)); err != nil {
		t.Fatal(err)
	}
}

func recreate(t *testing.T, cli *clientv3.Client, kv *mvccpb.KeyValue) {
	t.Helper()
	ctx := context.Background()
	if _, err := cli.Delete(ctx, string(kv.Key)); err != nil {
		t.Fatal(err)
	}
	for v := int64(0); v < kv.Version; v++ {
		put(t, cli, kv)
	}
	g, err := cli.Get(ctx, string(kv.Key))
	if err != nil || g.Kvs[0].Version != kv.Version || g.Kvs[0].CreateRevision == kv.CreateRevision {
		t.Fatalf("recreated %s: %v %v", kv.Key, g, err)
	}
}

// noOldSequence fails if r would send from a sequence number or message
// ID of an older state.
func noOldSequence(t *testing.T, r *SARecord) {
	t.Helper()
	if r != nil && (r.Children[0].OutSeqReserved < seqCurrent || r.NextOutReserved < 20) {
		t.Fatalf("old reservations handed back: out seq %d, message ID %d", r.Children[0].OutSeqReserved, r.NextOutReserved)
	}
}

// An older sealed record or reservation record copied back over the
// current one (or put back after the key was deleted) is refused with
// *RollbackError on restore, takeover, hand-off and load; the SA is not
// restored from it; an SA next to it that was left alone moves as usual.
// In store layout 4 (record and reservations key) and 5 (the record
// alone).
func TestRollbackRefused(t *testing.T) {
	for _, layout := range []int{4, seqGone} {
		t.Run(fmt.Sprintf("layout %d", layout), func(t *testing.T) { testRollbackRefused(t, layout) })
	}
}

func testRollbackRefused(t *testing.T, layout int) {
	e := startEtcd(t, false)
	cli := dial(t, e.Endpoints())
	ctx := tctx(t, 120*time.Second)
	for ai, at := range attacks {
		if at.seq && layout >= seqGone {
			continue
		}
		t.Run(at.name, func(t *testing.T) {
			spi := uint64(0x7000 + 16*ai)
			node := func(role string) Config {
				return layoutConfig(t, "n"+string(rune('a'+ai))+"-"+role, LayoutMin, layout)
			}
			openAt := func(cfg Config) *Store {
				s := open(t, dial(t, e.Endpoints()), cfg)
				waitLayout(t, s, layout)
				return s
			}
			isRollback := func(what string, err error) {
				t.Helper()
				var re *RollbackError
				if !errors.Is(err, ErrRollback) || !errors.As(err, &re) || re.Bound == re.Found && re.Reason == "" {
					t.Fatalf("%s: %v, want *RollbackError", what, err)
				}
			}

			t.Run("restore", func(t *testing.T) {
				cfg := node("restore")
				a := openAt(cfg)
				oldSA, oldSeq, _ := rollbackSA(t, a, cli, spi)
				_, _, good := rollbackSA(t, a, cli, spi+1)
				at.do(t, cli, oldSA, oldSeq)
				a.Abandon()
				a2 := openAt(cfg)
				recs, err := a2.LoadOwned(ctx)
				isRollback("LoadOwned", err)
				if len(recs) != 1 || recs[0].LocalSPI() != good.LocalSPI() {
					t.Fatalf("restored %d records, want only the untouched one", len(recs))
				}
				noOldSequence(t, recs[0])
				if h := a2.Health(); h.Rollbacks != 1 {
					t.Fatalf("Health().Rollbacks = %d", h.Rollbacks)
				}
				r, _, err := a2.Load(ctx, spi)
				isRollback("Load", err)
				noOldSequence(t, r)
			})
			t.Run("takeover", func(t *testing.T) {
				a := openAt(node("dies"))
				b := openAt(node("takes"))
				oldSA, oldSeq, _ := rollbackSA(t, a, cli, spi+2)
				rollbackSA(t, a, cli, spi+3)
				rollbackSA(t, a, cli, spi+4)
				at.do(t, cli, oldSA, oldSeq)
				from, _ := a.Registration()
				a.Close() // its registration gone: its SAs may be taken over
				r, err := b.TakeOver(ctx, spi+2)
				isRollback("TakeOver", err)
				noOldSequence(t, r)
				r, err = b.TakeOver(ctx, spi+3)
				if err != nil {
					t.Fatalf("TakeOver of the untouched SA: %v", err)
				}
				noOldSequence(t, r)
				moved, err := b.TakeOverMany(ctx, from, []uint64{spi + 4})
				if err != nil || len(moved) != 1 || moved[0].Err != nil {
					t.Fatalf("TakeOverMany of the untouched SA: %v %v", moved, err)
				}
				noOldSequence(t, moved[0].Record)
			})
			t.Run("hand-off", func(t *testing.T) {
				a := openAt(node("gives"))
				b := openAt(node("gets"))
				to, _ := b.Registration()
				me, _ := a.Registration()
				oldSA, oldSeq, cur := rollbackSA(t, a, cli, spi+5)
				oldSA2, oldSeq2, cur2 := rollbackSA(t, a, cli, spi+6)
				_, _, good := rollbackSA(t, a, cli, spi+7)
				at.do(t, cli, oldSA, oldSeq)
				at.do(t, cli, oldSA2, oldSeq2)
				isRollback("HandOff", a.HandOff(ctx, spi+5, cur, to))
				moved, err := a.HandOffMany(ctx, []*SARecord{cur2, good}, to)
				if err != nil || len(moved) != 2 {
					t.Fatalf("HandOffMany: %v %v", moved, err)
				}
				isRollback("HandOffMany", moved[0].Err)
				if moved[1].Err != nil {
					t.Fatalf("HandOffMany of the untouched SA: %v", moved[1].Err)
				}
				for _, x := range []uint64{spi + 5, spi + 6} {
					if o, _, err := a.Owner(ctx, x); err != nil || o != me {
						t.Fatalf("SA %x after a refused hand-off owned by %v (%v), want %v", x, o, err, me)
					}
				}
				got, _, err := b.LoadMany(ctx, []uint64{spi + 7})
				if err != nil || got[0].Err != nil {
					t.Fatalf("LoadMany of the handed-off SA: %v %v", got, err)
				}
				noOldSequence(t, got[0].Record)
			})
		})
	}
}

// The store's writes follow records that others rewrote meanwhile (a
// rewrap under a new cluster key bumps the keys' versions): the owner's
// next writes read the keys' metadata again and succeed, and what they
// wrote is what is read. A rewrap never binds a rolled-back record anew.
func TestRecordsRewrittenByOthers(t *testing.T) {
	for _, layout := range []int{4, seqGone} {
		t.Run(fmt.Sprintf("layout %d", layout), func(t *testing.T) { testRecordsRewrittenByOthers(t, layout) })
	}
}

func testRecordsRewrittenByOthers(t *testing.T, layout int) {
	e := startEtcd(t, false)
	cli := dial(t, e.Endpoints())
	ctx := tctx(t, 60*time.Second)
	// b holds key 2 as well; a does not yet, so both seal under key 1.
	keysA, keysB := testKeyring(t, 1, 9), testKeyring(t, 1, 9)
	if err := keysB.Add(2, make([]byte, ClusterKeyLen)); err != nil {
		t.Fatal(err)
	}
	cfg := layoutConfig(t, "a", LayoutMin, layout)
	cfg.Keys = keysA
	a := open(t, cli, cfg)
	cfg = layoutConfig(t, "b", LayoutMin, layout)
	cfg.Keys = keysB
	b := open(t, dial(t, e.Endpoints()), cfg)
	waitLayout(t, a, layout)
	_, _, r := rollbackSA(t, a, cli, 0x8001)
	oldSA, oldSeq, _ := rollbackSA(t, a, cli, 0x8002)
	// Records rewritten per SA: its record, and before layout 5 its
	// reservations.
	perSA := 2
	if oldSeq != nil {
		put(t, cli, oldSeq)
	} else {
		put(t, cli, oldSA)
		perSA = 1
	}
	if err := keysA.Add(2, make([]byte, ClusterKeyLen)); err != nil {
		t.Fatal(err)
	}
	if err := a.AdvertiseKeys(ctx); err != nil {
		t.Fatal(err)
	}
	waitSealing(t, 2, keysA, keysB)
	st, err := b.Rewrap(ctx, nil)
	if err != nil || st.Rewritten != 2*perSA-1 || st.Failed != 1 {
		// 0x8001's records, 0x8002's other than the one rolled back.
		t.Fatalf("rewrap: %+v %v", st, err)
	}
	if _, _, err := b.Load(ctx, 0x8002); !errors.Is(err, ErrRollback) {
		t.Fatalf("after rewrap, the rolled-back SA: %v", err)
	}

	r.Children[0].OutSeqReserved = 4 << 20
	if err := a.Persist(ctx, Change{Kind: Reserved, Record: r}); err != nil {
		t.Fatalf("Persist after a rewrap: %v", err)
	}
	if got, _, err := b.Load(ctx, 0x8001); err != nil || got.Children[0].OutSeqReserved != 4<<20 {
		t.Fatalf("after the write: %v", err)
	}
	if st, err := b.Rewrap(ctx, nil); err != nil || st.Rewritten != 0 {
		t.Fatalf("second rewrap: %+v %v", st, err)
	}
	// Rewritten again (a drops key 2: both seal under key 1 again), then
	// written through the batcher.
	keysA.Update(testKeyring(t, 1, 9))
	if err := a.AdvertiseKeys(ctx); err != nil {
		t.Fatal(err)
	}
	waitSealing(t, 1, keysA, keysB)
	if st, err := b.Rewrap(ctx, nil); err != nil || st.Rewritten != 2*perSA-1 {
		t.Fatalf("third rewrap: %+v %v", st, err)
	}
	r.Children[0].OutSeqReserved = 5 << 20
	done := make(chan error, 2)
	for _, k := range []ChangeKind{Reserved, Updated} {
		if err := a.Submit(Change{Kind: k, Record: r}, func(err error) { done <- err }); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if err := <-done; err != nil {
			t.Fatalf("Submit after a rewrap: %v", err)
		}
	}
	to, _ := b.Registration()
	if err := a.HandOff(ctx, 0x8001, r, to); err != nil {
		t.Fatalf("HandOff after a rewrap: %v", err)
	}
	if got, o, err := b.Load(ctx, 0x8001); err != nil || o != to || got.Children[0].OutSeqReserved != 5<<20 {
		t.Fatalf("after the hand-off: %v %v", o, err)
	}
}

// legacyMarshal writes a record in the layout before revision bindings.
func legacyMarshal(t *testing.T, c Codec, name string, r *SARecord) []byte {
	return legacyMarshalAs(t, c, name, r, toPB(r))
}

// legacyMarshalAs is legacyMarshal with the clear part sa (r's, changed).
func legacyMarshalAs(t *testing.T, c Codec, name string, r *SARecord, sa *pb.IKESA) []byte {
	t.Helper()
	pub, err := proto.MarshalOptions{Deterministic: true}.Marshal(sa)
	if err != nil {
		t.Fatal(err)
	}
	sec, err := proto.Marshal(secretsToPB(r))
	if err != nil {
		t.Fatal(err)
	}
	id, sealed, err := c.Keys.Seal(sec, aad(name, pub))
	if err != nil {
		t.Fatal(err)
	}
	return assembleLayout(legacyRecordVersion, pub, id, sealed)
}

// Records of the previous layout (no binding) are read, and rewritten in
// the current one, with their reservations, by the owner's next write; a
// rewrap keeps their layout.
func TestLegacyRecordsUpgraded(t *testing.T) {
	for _, layout := range []int{4, seqGone} {
		t.Run(fmt.Sprintf("layout %d", layout), func(t *testing.T) { testLegacyRecordsUpgraded(t, layout) })
	}
}

func testLegacyRecordsUpgraded(t *testing.T, storeLayout int) {
	e := startEtcd(t, false)
	cli := dial(t, e.Endpoints())
	ctx := tctx(t, 60*time.Second)
	cfg := layoutConfig(t, "a", LayoutMin, storeLayout)
	a := open(t, cli, cfg)
	waitLayout(t, a, storeLayout)
	me, _ := a.Registration()
	c := Codec{Keys: cfg.Keys}
	for _, spi := range []uint64{0x9001, 0x9002} {
		r := sampleRecord(spi)
		if _, err := cli.Txn(ctx).Then(clientv3.OpPut(a.k.sa(spi), string(legacyMarshal(t, c, saName(spi), r))),
			clientv3.OpPut(a.k.owner(spi), me.value()), clientv3.OpPut(a.k.owned(me.Node, spi), "")).Commit(); err != nil {
			t.Fatal(err)
		}
	}
	recs, err := a.LoadOwned(ctx)
	if err != nil || len(recs) != 2 {
		t.Fatalf("legacy records restored: %d, %v", len(recs), err)
	}
	layout := func(spi uint64) uint32 {
		g, err := cli.Get(ctx, a.k.sa(spi))
		if err != nil {
			t.Fatal(err)
		}
		rec, err := splitRecord(g.Kvs[0].Value)
		if err != nil {
			t.Fatal(err)
		}
		return rec.version
	}
	r := recs[0]
	r.NextOutReserved = 99
	if err := a.Persist(ctx, Change{Kind: Updated, Record: r}); err != nil {
		t.Fatal(err)
	}
	if err := a.Persist(ctx, Change{Kind: Reserved, Record: r}); err != nil {
		t.Fatal(err)
	}
	if v := layout(r.LocalSPI()); v != RecordVersion {
		t.Fatalf("after a write: layout %d", v)
	}
	other := recs[1].LocalSPI()
	if v := layout(other); v != legacyRecordVersion {
		t.Fatalf("untouched: layout %d", v)
	}
	// A rewrap under a new key keeps a legacy record's layout (it is
	// upgraded only with its reservations, by a write of its owner).
	if err := cfg.Keys.Add(2, make([]byte, ClusterKeyLen)); err != nil {
		t.Fatal(err)
	}
	if err := cfg.Keys.SetCurrent(2); err != nil {
		t.Fatal(err)
	}
	// The records, and before layout 5 the upgraded one's reservations.
	want := 3
	if a.Layout() >= seqGone {
		want = 2
	}
	st, err := a.Rewrap(ctx, nil)
	if err != nil || st.Rewritten != want || st.Failed != 0 || layout(other) != legacyRecordVersion {
		t.Fatalf("rewrap with a legacy record: %+v %v", st, err)
	}
	if err := cfg.Keys.Remove(1); err != nil {
		t.Fatal(err)
	}
	for _, spi := range []uint64{0x9001, 0x9002} {
		if got, _, err := a.Load(ctx, spi); err != nil || (spi == r.LocalSPI() && got.NextOutReserved != 99) {
			t.Fatalf("after the upgrade: %v", err)
		}
	}
}

// A reserved IKE SPI comes with its SA's record keys created empty: its
// Established change is one transaction, and a released reservation
// leaves no key behind. An SA whose SPI the store did not reserve costs
// one more transaction, once.
func TestReservedSPIRecordKeys(t *testing.T) {
	for _, layout := range []int{4, seqGone} {
		t.Run(fmt.Sprintf("layout %d", layout), func(t *testing.T) { testReservedSPIRecordKeys(t, layout) })
	}
}

func testReservedSPIRecordKeys(t *testing.T, layout int) {
	e := startEtcd(t, false)
	cli := dial(t, e.Endpoints())
	ctx := tctx(t, 30*time.Second)
	a := open(t, cli, layoutConfig(t, "a", LayoutMin, layout))
	waitLayout(t, a, layout)
	keysPerSA := int64(2) // sa/ and seq/; from layout 5 sa/ alone
	if layout >= seqGone {
		keysPerSA = 1
	}
	if ok, err := a.ReserveIKESPIs(ctx, []uint64{0xa001, 0xa002}); err != nil || !ok[0] || !ok[1] {
		t.Fatalf("reserve: %v %v", ok, err)
	}
	count := func(prefix string) int64 {
		g, err := cli.Get(ctx, DefaultPrefix+prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		return g.Count
	}
	if n := count("sa/") + count("seq/"); n != 2*keysPerSA {
		t.Fatalf("%d record keys after reserving 2 SPIs, want %d", n, 2*keysPerSA)
	}
	txns := func(f func()) uint64 {
		t0 := a.Health().Txns
		f()
		return a.Health().Txns - t0
	}
	if n := txns(func() {
		if err := a.Persist(ctx, Change{Kind: Established, Record: sampleRecord(0xa001)}); err != nil {
			t.Fatal(err)
		}
	}); n != 1 {
		t.Fatalf("Established of a reserved SPI: %d transactions, want 1", n)
	}
	if n := txns(func() {
		if err := a.Persist(ctx, Change{Kind: Established, Record: sampleRecord(0xa003)}); err != nil {
			t.Fatal(err)
		}
	}); n != 2 {
		t.Fatalf("Established of an SPI not reserved: %d transactions, want 2", n)
	}
	if err := a.ReleaseSPIs(ctx, []uint64{0xa002}, nil); err != nil {
		t.Fatal(err)
	}
	if n := count("sa/") + count("seq/"); n != 2*keysPerSA {
		t.Fatalf("%d record keys after the release, want %d (two SAs)", n, 2*keysPerSA)
	}
	for _, spi := range []uint64{0xa001, 0xa003} {
		if _, _, err := a.Load(ctx, spi); err != nil {
			t.Fatalf("Load %x: %v", spi, err)
		}
	}
}

// The IKE SPI reservation is the SA's record keys alone. Nodes of the
// release before, which also wrote spi/ike/<spi> and checked all three
// keys, and nodes of this one keep each other's SPIs apart; while such a
// node is registered the cluster stays at store layout 2, and an spi/ike/
// key it left goes with its SA. Once it is gone the cluster moves to
// layout 3, and the spi/ike/ keys left go with the move.
func TestIKESPIReservationMixedReleases(t *testing.T) {
	e := startEtcd(t, false)
	cli := dial(t, e.Endpoints())
	ctx := tctx(t, 30*time.Second)
	// An older node, registered first.
	lease := registerOlder(t, cli, "older", 7)
	cfg := testConfig(t, "a")
	cfg.KeepAliveInterval = 100 * time.Millisecond
	a := open(t, cli, cfg)
	if l := a.Layout(); l != 2 {
		t.Fatalf("store layout %d with a node of an older release registered, want 2", l)
	}
	p := DefaultPrefix
	// An older node's reservation of 0xb001, as it wrote it.
	legacy := func(spi uint64) bool {
		t.Helper()
		keys := []string{hexKey(p, "spi/ike/", spi, 16), hexKey(p, "sa/", spi, 16), hexKey(p, "seq/", spi, 16)}
		var cmps []clientv3.Cmp
		var puts []clientv3.Op
		for i, k := range keys {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(k), "=", 0))
			v := ""
			if i == 0 {
				v = "old"
			}
			puts = append(puts, clientv3.OpPut(k, v, clientv3.WithLease(lease)))
		}
		r, err := cli.Txn(ctx).If(cmps...).Then(puts...).Commit()
		if err != nil {
			t.Fatal(err)
		}
		return r.Succeeded
	}
	if !legacy(0xb001) {
		t.Fatal("the older node's reservation failed")
	}
	if ok, err := a.ReserveIKESPIs(ctx, []uint64{0xb001, 0xb002}); err != nil || ok[0] || !ok[1] {
		t.Fatalf("reserve next to an older node's reservation: %v %v (want [false true])", ok, err)
	}
	if legacy(0xb002) {
		t.Fatal("an older node reserved an SPI this node holds")
	}
	if n, err := cli.Get(ctx, p+"spi/ike/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || n.Count != 1 {
		t.Fatalf("spi/ike/ keys: %v %v, want only the older node's", n, err)
	}
	// An SA an older node established left its spi/ike/ key: deleted with
	// the SA.
	r := sampleRecord(0xb002)
	if err := a.Persist(ctx, Change{Kind: Established, Record: r}); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, hexKey(p, "spi/ike/", 0xb002, 16), "a"); err != nil {
		t.Fatal(err)
	}
	if err := a.Persist(ctx, Change{Kind: Deleted, SPI: 0xb002}); err != nil {
		t.Fatal(err)
	}
	if n, err := cli.Get(ctx, hexKey(p, "spi/ike/", 0xb002, 16), clientv3.WithCountOnly()); err != nil || n.Count != 0 {
		t.Fatalf("the older release's spi/ike/ key after the delete: %v %v", n, err)
	}
	// An SA the older node established (its key off the lease); then the
	// node leaves.
	if _, err := cli.Put(ctx, hexKey(p, "spi/ike/", 0xb003, 16), "older"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Revoke(ctx, lease); err != nil {
		t.Fatal(err)
	}
	waitLayout(t, a, 3)
	if n, err := cli.Get(ctx, p+"spi/ike/", clientv3.WithPrefix(), clientv3.WithCountOnly()); err != nil || n.Count != 0 {
		t.Fatalf("spi/ike/ keys at layout 3: %v %v, want none", n, err)
	}
}
