package statestore

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/internal/etcdmetric"
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

func TestWrittenByFollowsBranches(t *testing.T) {
	nested := func(ok bool, rs ...*etcdserverpb.ResponseOp) *etcdserverpb.ResponseOp {
		return &etcdserverpb.ResponseOp{Response: &etcdserverpb.ResponseOp_ResponseTxn{
			ResponseTxn: &etcdserverpb.TxnResponse{Succeeded: ok, Responses: rs}}}
	}
	put := &etcdserverpb.ResponseOp{Response: &etcdserverpb.ResponseOp_ResponsePut{ResponsePut: &etcdserverpb.PutResponse{}}}
	del := &etcdserverpb.ResponseOp{Response: &etcdserverpb.ResponseOp_ResponseDeleteRange{ResponseDeleteRange: &etcdserverpb.DeleteRangeResponse{}}}
	get := &etcdserverpb.ResponseOp{Response: &etcdserverpb.ResponseOp_ResponseRange{ResponseRange: &etcdserverpb.RangeResponse{}}}
	inner := func() clientv3.Op {
		return clientv3.OpTxn(nil,
			[]clientv3.Op{clientv3.OpPut("a", "1"), clientv3.OpPut("b", "2"), clientv3.OpDelete("c")},
			[]clientv3.Op{clientv3.OpGet("a"), clientv3.OpDelete("d")})
	}
	ops := []clientv3.Op{clientv3.OpPut("x", "1"), inner(), inner(), clientv3.OpDelete("y"), clientv3.OpGet("z")}
	rs := []*etcdserverpb.ResponseOp{put, nested(true, put, put, del), nested(false, get, del), del, get}
	if p, d := writtenBy(ops, rs); p != 3 || d != 3 {
		t.Errorf("got %d puts, %d deletes; want 3 and 3", p, d)
	}
	// Fewer responses than ops (a refused request answers none): only
	// what was answered counts.
	if p, d := writtenBy(ops, rs[:1]); p != 1 || d != 0 {
		t.Errorf("one response: %d puts, %d deletes", p, d)
	}
}

// etcdWrites reads the puts and deletes the member in this process has
// made so far (etcd_mvcc_put_total, etcd_mvcc_delete_total).
func etcdWrites(t *testing.T) (puts, deletes uint64) {
	t.Helper()
	p, err := etcdmetric.Value("etcd_mvcc_put_total")
	if err != nil {
		t.Fatal(err)
	}
	d, err := etcdmetric.Value("etcd_mvcc_delete_total")
	if err != nil {
		t.Fatal(err)
	}
	return uint64(p), uint64(d)
}

// The store counts the writes of one SA's life as the etcd member does,
// and the counts are the footprint the architecture document gives.
func TestWritesCountedAsEtcdCounts(t *testing.T) {
	for _, layout := range []int{4, seqGone} {
		t.Run(fmt.Sprintf("layout %d", layout), func(t *testing.T) { testWritesCountedAsEtcdCounts(t, layout) })
	}
}

func testWritesCountedAsEtcdCounts(t *testing.T, layout int) {
	e := startEtcd(t, false)
	cli := e.LocalClient()
	t.Cleanup(func() { cli.Close() })
	s := open(t, cli, layoutConfig(t, "a", LayoutMin, layout))
	waitLayout(t, s, layout)
	// From layout 5 no seq/ key: one put fewer at the reservation and at
	// the establishment, one delete fewer at the delete.
	seq := uint64(1)
	if layout >= seqGone {
		seq = 0
	}
	ctx := tctx(t, 10*time.Second)
	const spi = 0x77
	r := sampleRecord(spi)
	vip, id := netip.MustParseAddr("10.64.0.77"), "gw-77@iot.example"

	ep0, ed0 := etcdWrites(t)
	h0 := s.Health()
	step := func(what string, wantPuts, wantDeletes uint64) {
		t.Helper()
		ep, ed := etcdWrites(t)
		h := s.Health()
		p, d := h.Puts-h0.Puts, h.Deletes-h0.Deletes
		t.Logf("%s: %d puts, %d deletes (etcd: %d, %d)", what, p, d, ep-ep0, ed-ed0)
		if p != ep-ep0 || d != ed-ed0 {
			t.Errorf("%s: the store counted %d puts and %d deletes, etcd %d and %d", what, p, d, ep-ep0, ed-ed0)
		}
		if p != wantPuts || d != wantDeletes {
			t.Errorf("%s: %d puts, %d deletes; want %d and %d", what, p, d, wantPuts, wantDeletes)
		}
		ep0, ed0, h0 = ep, ed, h
	}
	// What the node reserves ahead: the IKE SPI (its record keys), the
	// inbound ESP SPI, the virtual address.
	if ok, err := s.ReserveIKESPIs(ctx, []uint64{spi}); err != nil || !ok[0] {
		t.Fatalf("reserve IKE SPI: %v %v", ok, err)
	}
	if ok, err := s.ReserveESPSPIs(ctx, []uint32{r.Children[0].InSPI}); err != nil || !ok[0] {
		t.Fatalf("reserve ESP SPI: %v %v", ok, err)
	}
	if ok, err := s.ReserveAddresses(ctx, []netip.Addr{vip}); err != nil || !ok[0] {
		t.Fatalf("reserve address: %v %v", ok, err)
	}
	step("reservations", 3+seq, 0)
	// Record, reservations, ESP SPI, owner, identity, address and its
	// identity key.
	if err := s.Persist(ctx, Change{Kind: Established, Record: r, Identity: id, Unique: UniqueReplace,
		Lease: &AddressLease{Addr: vip, ID: id, Reserved: true}}); err != nil {
		t.Fatal(err)
	}
	step("established", 6+seq, 0)
	// The record (and its reservations key before layout 5), its owner
	// key, its identity entry, its ESP SPI (from layout 4: no spi/ike/
	// key of older releases to look for, no owned/ index entry).
	if err := s.Persist(ctx, Change{Kind: Deleted, Record: r, Identity: id}); err != nil {
		t.Fatal(err)
	}
	step("deleted", 0, 4+seq)
	if err := s.ReleaseAddress(ctx, vip, id); err != nil {
		t.Fatal(err)
	}
	step("address released", 0, 2)
	resp, err := cli.Get(ctx, DefaultPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		if k := string(kv.Key); k != s.k.node("a") && k != s.k.layout() && !strings.HasPrefix(k, s.k.slots()) {
			t.Errorf("left behind: %s", k)
		}
	}
}
