package ike

import (
	"net/netip"
	"testing"
)

// A dual-stack gateway asks for an address of each family: it gets one
// from each pool, its CHILD SA is narrowed to both, the state keeps both,
// a restore claims both, and the SA's end (or its IKE rekey) does not
// lose track of them.
func TestVirtualIPv6DualStack(t *testing.T) {
	rcfg := responderConfig(t, 1)
	rcfg.Pool = NewPool(netip.MustParsePrefix("10.99.0.0/24"))
	rcfg.Pool6 = NewPool(netip.MustParsePrefix("fd00:99::/112"))
	rcfg.LocalTS = append(append([]TrafficSelector(nil), coreTS...), SelectorFromPrefix(netip.MustParsePrefix("fd00:30::/64")))
	rcfg.RemoteTS = nil
	w := newWire(t, rcfg)
	ini := pskInitiation(t)
	ini.RequestVIP, ini.RequestVIP6 = true, true
	ini.TSi = []TrafficSelector{SelectorFromPrefix(netip.MustParsePrefix("0.0.0.0/0")), SelectorFromPrefix(netip.MustParsePrefix("::/0"))}
	ini.TSr = rcfg.LocalTS
	acts := &Ready{}
	spi, err := w.ini.Initiate(w.now, ini, acts)
	if err != nil {
		t.Fatal(err)
	}
	w.run(acts, true)
	if w.count(EventIKEEstablished) != 2 || len(w.installs) != 2 {
		t.Fatalf("not established: %+v", w.events)
	}
	isa, rsa := w.ini.SA(spi), w.res.SA(resSPI(w))
	v4, v6 := isa.VirtualIPs()
	r4, r6 := rsa.VirtualIPs()
	if v4 != netip.MustParseAddr("10.99.0.1") || v6 != netip.MustParseAddr("fd00:99::1") || v4 != r4 || v6 != r6 {
		t.Fatalf("virtual IPs: gateway %v %v, concentrator %v %v", v4, v6, r4, r6)
	}
	rc := w.installs[0].Child
	if got := FormatSelectors(rc.RemoteTS); got != "10.99.0.1/32,fd00:99::1/128" {
		t.Fatalf("concentrator CHILD SA remote TS %s", got)
	}
	if got := FormatSelectors(rc.LocalTS); got != "10.30.0.0/24,fd00:30::/64" {
		t.Fatalf("concentrator CHILD SA local TS %s", got)
	}
	st, err := rsa.Snapshot()
	if err != nil || st.VirtualIP6 != v6 {
		t.Fatalf("snapshot: %v %v", st.VirtualIP6, err)
	}
	// Restored elsewhere: both addresses claimed there.
	rcfg2 := rcfg
	rcfg2.Pool = NewPool(netip.MustParsePrefix("10.99.0.0/24"))
	rcfg2.Pool6 = NewPool(netip.MustParsePrefix("fd00:99::/112"))
	res2, _ := NewEngine(rcfg2)
	if _, err := res2.Restore(w.now, st, &Ready{}); err != nil {
		t.Fatal(err)
	}
	if rcfg2.Pool6.(*Pool).InUse() != 1 || rcfg2.Pool.(*Pool).InUse() != 1 {
		t.Fatal("restore did not claim both addresses")
	}
	// An IKE rekey keeps them; the delete gives both back.
	w.run(R(func(rd *Ready) { w.ini.RekeyIKE(w.now, spi, rd) }), true)
	var nsa *IKESA
	w.res.Each(func(sa *IKESA) bool { nsa = sa; return false })
	if a, b := nsa.VirtualIPs(); a != v4 || b != v6 || rcfg.Pool6.(*Pool).InUse() != 1 {
		t.Fatalf("after the IKE rekey: %v %v, %d in use", a, b, rcfg.Pool6.(*Pool).InUse())
	}
	var ispi uint64
	w.ini.Each(func(sa *IKESA) bool { ispi = sa.localSPI(); return false })
	w.run(R(func(rd *Ready) { w.ini.Delete(w.now, ispi, rd) }), true)
	if rcfg.Pool6.(*Pool).InUse() != 0 || rcfg.Pool.(*Pool).InUse() != 0 {
		t.Fatal("addresses not released")
	}
}

// Only IPv6 asked for, only IPv6 given.
func TestVirtualIPv6Only(t *testing.T) {
	rcfg := responderConfig(t, 1)
	rcfg.Pool = NewPool(netip.MustParsePrefix("10.99.0.0/24"))
	rcfg.Pool6 = NewPool(netip.MustParsePrefix("fd00:99::/120"))
	rcfg.LocalTS = []TrafficSelector{SelectorFromPrefix(netip.MustParsePrefix("fd00:30::/64"))}
	rcfg.RemoteTS = nil
	w := newWire(t, rcfg)
	ini := pskInitiation(t)
	ini.RequestVIP6 = true
	ini.TSi = []TrafficSelector{SelectorFromPrefix(netip.MustParsePrefix("::/0"))}
	ini.TSr = rcfg.LocalTS
	acts := &Ready{}
	spi, _ := w.ini.Initiate(w.now, ini, acts)
	w.run(acts, true)
	if w.count(EventIKEEstablished) != 2 || len(w.installs) != 2 {
		t.Fatalf("not established: %+v", w.events)
	}
	v4, v6 := w.ini.SA(spi).VirtualIPs()
	if v4.IsValid() || !v6.Is6() || rcfg.Pool.(*Pool).InUse() != 0 || w.installs[0].Child.VirtualIP != v6 {
		t.Fatalf("virtual IPs %v %v", v4, v6)
	}
	if PoolSize(netip.MustParsePrefix("fd00::/64")) != 1<<20-2 || PoolSize(netip.MustParsePrefix("10.0.0.0/24")) != 254 {
		t.Fatal("PoolSize")
	}
}
