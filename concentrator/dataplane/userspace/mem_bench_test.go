package userspace

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
	"github.com/ikefleet/ikefleet/concentrator/esp"
)

// BenchmarkMemoryPerSA installs N CHILD SAs as a node serving a fleet
// does (one gateway each: a virtual IP out of the pool the node routes as
// one prefix as its remote selector, the node's 0.0.0.0/0 as the local
// one, AES-GCM-256 keys, NAT-T) and reports the heap the data plane keeps per SA (B/SA). No
// packet flows, so each SA keeps its keys rather than keyed ciphers, as
// most of an idle fleet's SAs do. Deterministic: compare builds with it.
//
//	go test -run '^$' -bench MemoryPerSA -benchtime 1x ./concentrator/dataplane/userspace
//
// USERSPACE_BENCH_SAS sets N (default 20,000).
func BenchmarkMemoryPerSA(b *testing.B) {
	n := 20000
	if v, err := strconv.Atoi(os.Getenv("USERSPACE_BENCH_SAS")); err == nil && v > 0 {
		n = v
	}
	for i := 0; i < b.N; i++ {
		bytes, objects := heapPerSA(b, n)
		b.ReportMetric(bytes, "B/SA")
		b.ReportMetric(objects, "objects/SA")
	}
}

// An installed SA of an idle gateway is the heap objects the collector
// marks on every cycle, for as long as it lives: at 100,000 SAs each
// object per SA is 100,000 more. One for the SA (its directions, selector,
// first endpoints and sequence-number arm inside it), one for its peer's
// identity, and the indexes' share; it was 12.
func TestInstalledSAObjects(t *testing.T) {
	if _, objects := heapPerSA(t, 4000); objects > 4 {
		t.Errorf("%.2f heap objects per installed SA, want at most 4", objects)
	}
}

// heapPerSA installs n CHILD SAs and returns the heap they add per SA, in
// bytes and in objects (after a collection).
func heapPerSA(tb testing.TB, n int) (bytes, objects float64) {
	local := []dataplane.Selector{sel("0.0.0.0/0")}
	d, err := New(Config{Device: newMemDevice("conc0"), Router: &fakeRouter{}, Workers: 2,
		Routes: []netip.Prefix{netip.MustParsePrefix("10.112.0.0/12")}})
	if err != nil {
		tb.Fatal(err)
	}
	defer d.Close()
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for k := 0; k < n; k++ {
		var ip [4]byte
		binary.BigEndian.PutUint32(ip[:], 0x0a700000+uint32(k))
		vip := netip.AddrFrom4(ip)
		key := func(s int) []byte {
			kb := make([]byte, 36)
			binary.BigEndian.PutUint64(kb, uint64(s))
			return kb
		}
		c := &dataplane.ChildSA{InSPI: 0xc0000000 + uint32(k), OutSPI: 0x60000000 + uint32(k),
			Local: concAddr, Remote: netip.AddrPortFrom(netip.AddrFrom4([4]byte{100, 64, byte(k >> 8), byte(k)}), 4500), Encap: true,
			EncrID: esp.EncrAESGCM16, EncrKeyBits: 256, In: dataplane.Keys{Encr: key(2 * k)}, Out: dataplane.Keys{Encr: key(2*k + 1)},
			LocalTS: local, RemoteTS: []dataplane.Selector{{Start: vip, End: vip, EndPort: 0xffff}},
			VirtualIP: vip, PeerID: fmt.Sprintf("gw%d@iot.example", k), IKESPIi: uint64(k) + 1, IKESPIr: uint64(k) << 8,
			Created: time.Unix(1_800_000_000, 0), OutSeqLimit: 1 << 20, OutSeqMargin: 1 << 18}
		if err := d.Install(context.Background(), c); err != nil {
			tb.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(d)
	return float64(after.HeapAlloc-before.HeapAlloc) / float64(n), float64(after.HeapObjects-before.HeapObjects) / float64(n)
}
