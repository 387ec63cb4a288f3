package statestore

import (
	"net/netip"
	"testing"
	"time"
)

// BenchmarkBuild: what turning one SA's changes into transaction parts
// costs the batcher (its Established change with a lease and an
// identity, then its Deleted change), without etcd's share: the lists
// the transactions are built in recycled, as the batcher recycles them.
func BenchmarkBuild(b *testing.B) {
	e := startEtcd(b, false)
	cli := e.LocalClient()
	b.Cleanup(func() { cli.Close() })
	s := open(b, cli, testConfig(b, "bench"))
	me, _ := s.Registration()
	r := sampleRecord(0x77)
	// Its record keys exist and their revisions are known, as after a
	// reservation.
	if err := s.prepare(tctx(b, 10*time.Second), s.current(), []sealedWrite{{0x77, true, true}}); err != nil {
		b.Fatal(err)
	}
	est := Change{Kind: Established, Record: r, Identity: "gw-77@iot.example", Unique: UniqueReplace,
		Lease: &AddressLease{Addr: netip.MustParseAddr("10.64.0.77"), ID: "gw-77@iot.example", Reserved: true}}
	del := Change{Kind: Deleted, Record: r, Identity: "gw-77@iot.example"}
	b.ReportAllocs()
	for b.Loop() {
		// Each change's lists go back for the next, as the batcher's do
		// once its transaction was sent.
		for _, c := range []*Change{&est, &del} {
			p, err := s.build(c, me)
			if err != nil {
				b.Fatal(err)
			}
			p.recycle()
		}
	}
}
