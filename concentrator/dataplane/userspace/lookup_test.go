package userspace

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
)

func testSA(order uint64, local []dataplane.Selector, remote ...dataplane.Selector) *sa {
	return &sa{order: order, localTS: local, remoteTS: remote}
}

func TestOutIndex(t *testing.T) {
	any4 := []dataplane.Selector{sel("0.0.0.0/0")}
	lan := testSA(1, any4, sel("10.20.0.0/16"))
	narrow := testSA(2, any4, sel("10.20.5.0/24"))
	vip := testSA(3, any4, sel("10.99.0.7/32"))
	dns := testSA(4, any4, dataplane.Selector{Start: netip.MustParseAddr("10.20.5.53"), End: netip.MustParseAddr("10.20.5.53"),
		IPProto: 17, StartPort: 53, EndPort: 53})
	odd := testSA(5, any4, dataplane.Selector{Start: netip.MustParseAddr("10.50.0.3"), End: netip.MustParseAddr("10.50.0.9"), EndPort: 0xffff})
	v6 := testSA(6, []dataplane.Selector{sel("::/0")}, sel("fd00:20::/48"))
	onlyFromCore := testSA(7, []dataplane.Selector{sel("10.30.0.0/24")}, sel("10.60.0.0/24"))
	tcp70 := testSA(9, any4, dataplane.Selector{Start: netip.MustParseAddr("10.70.0.0"), End: netip.MustParseAddr("10.70.255.255"),
		IPProto: 6, EndPort: 0xffff})
	plain70 := testSA(10, any4, sel("10.70.1.0/24"))
	var x outIndex
	for _, s := range []*sa{lan, narrow, vip, dns, odd, v6, onlyFromCore, tcp70, plain70} {
		x.add(s)
	}
	f := func(src, dst string, proto uint8, port uint16) flow {
		return flow{src: netip.MustParseAddr(src), dst: netip.MustParseAddr(dst), proto: proto, dstPort: port}
	}
	for _, c := range []struct {
		f    flow
		want *sa
	}{
		{f("10.30.0.1", "10.20.1.1", 1, 0), lan},
		{f("10.30.0.1", "10.20.5.1", 1, 0), narrow}, // longest prefix
		{f("10.30.0.1", "10.99.0.7", 6, 80), vip},
		{f("10.30.0.1", "10.99.0.8", 6, 80), nil},
		{f("10.30.0.1", "10.20.5.53", 17, 53), dns}, // the most specific selector
		{f("10.30.0.1", "10.20.5.53", 6, 53), narrow},
		{f("10.30.0.1", "10.70.1.1", 6, 22), plain70}, // a narrower plain prefix beats a wide restricted range
		{f("10.30.0.1", "10.70.2.1", 6, 22), tcp70},
		{f("10.30.0.1", "10.50.0.5", 1, 0), odd},
		{f("10.30.0.1", "10.50.0.10", 1, 0), nil},
		{f("fd00:30::1", "fd00:20::5", 58, 0), v6},
		{f("10.30.0.1", "10.60.0.1", 1, 0), onlyFromCore},
		{f("192.168.100.2", "10.60.0.1", 1, 0), nil}, // source outside our selector
	} {
		if got := x.lookup(c.f); got != c.want {
			t.Errorf("%v -> %v: SA %v, want %v", c.f.src, c.f.dst, got, c.want)
		}
	}
	x.remove(narrow)
	x.remove(narrow) // idempotent
	if got := x.lookup(f("10.30.0.1", "10.20.5.1", 17, 53)); got != lan {
		t.Errorf("after removing the /24: %v, want the /16", got)
	}
	// A rekeyed SA with the same selector wins until it is removed.
	rekeyed := testSA(8, any4, sel("10.20.0.0/16"))
	x.add(rekeyed)
	if got := x.lookup(f("10.30.0.1", "10.20.1.1", 1, 0)); got != rekeyed {
		t.Error("the newest SA does not win")
	}
	for _, s := range []*sa{lan, vip, dns, odd, v6, onlyFromCore, rekeyed, tcp70, plain70} {
		x.remove(s)
	}
	if len(x.byLen) != 0 || len(x.lens) != 0 || len(x.other) != 0 {
		t.Fatalf("index not empty: %+v", x)
	}
}

// BenchmarkOutLookup: 100,000 gateways, each with a /32 virtual IP, plus
// 1,000 with a /24 LAN: a lookup is a few map probes.
func BenchmarkOutLookup(b *testing.B) {
	var x outIndex
	any4 := []dataplane.Selector{sel("0.0.0.0/0")}
	for i := 0; i < 100000; i++ {
		x.add(testSA(uint64(i), any4, sel(fmt.Sprintf("10.%d.%d.%d/32", 100+i>>16, i>>8&0xff, i&0xff))))
	}
	for i := 0; i < 1000; i++ {
		x.add(testSA(uint64(i), any4, sel(fmt.Sprintf("10.%d.%d.0/24", 20+i>>8, i&0xff))))
	}
	fl := flow{src: netip.MustParseAddr("10.30.0.1"), dst: netip.MustParseAddr("10.101.0.77"), proto: 6}
	b.ReportAllocs()
	for b.Loop() {
		if x.lookup(fl) == nil {
			b.Fatal("not found")
		}
	}
}

// FuzzParseFlow: no inner packet panics the parser, and what it accepts
// has addresses of the packet's IP version.
func FuzzParseFlow(f *testing.F) {
	f.Add(ipv4Packet("10.0.0.1", "10.0.0.2", 17, []byte{0, 53, 0, 53}))
	f.Add(make([]byte, 40))
	f.Fuzz(func(t *testing.T, b []byte) {
		fl, ok := parseFlow(b)
		if !ok {
			return
		}
		if v4 := b[0]>>4 == 4; fl.src.Is4() != v4 || fl.dst.Is4() != v4 {
			t.Fatalf("version %d, addresses %v %v", b[0]>>4, fl.src, fl.dst)
		}
	})
}
