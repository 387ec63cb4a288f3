package ike

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

// prefixByBits is Prefix spelled out bit by bit: the reference the
// arithmetic one must agree with.
func prefixByBits(s TrafficSelector) (netip.Prefix, bool) {
	if s.Start.BitLen() != s.End.BitLen() || s.Start.BitLen() == 0 {
		return netip.Prefix{}, false
	}
	for n := 0; n <= s.Start.BitLen(); n++ {
		p := netip.PrefixFrom(s.Start, n)
		if p.Masked().Addr() != s.Start {
			continue
		}
		b := p.Addr().AsSlice()
		for i := range b {
			for bit := range 8 {
				if i*8+bit >= n {
					b[i] |= 0x80 >> bit
				}
			}
		}
		if last, _ := netip.AddrFromSlice(b); last == s.End {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

func TestPrefixAgreesWithTheBitwiseReference(t *testing.T) {
	mp := netip.MustParseAddr
	cases := []TrafficSelector{
		{Start: mp("0.0.0.0"), End: mp("255.255.255.255")},
		{Start: mp("10.1.2.3"), End: mp("10.1.2.3")},
		{Start: mp("10.0.0.0"), End: mp("10.0.0.255")},
		{Start: mp("10.0.0.0"), End: mp("10.0.0.254")},
		{Start: mp("10.0.0.1"), End: mp("10.0.0.255")},
		{Start: mp("10.0.0.0"), End: mp("10.0.1.255")},
		{Start: mp("10.0.1.0"), End: mp("10.0.2.255")},
		{Start: mp("128.0.0.0"), End: mp("255.255.255.255")},
		{Start: mp("10.0.0.255"), End: mp("10.0.0.0")},
		{Start: mp("::"), End: mp("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")},
		{Start: mp("2001:db8::"), End: mp("2001:db8::ffff:ffff:ffff:ffff")},
		{Start: mp("2001:db8::"), End: mp("2001:db8:0:1:ffff:ffff:ffff:ffff")},
		{Start: mp("2001:db8::"), End: mp("2001:db9:ffff:ffff:ffff:ffff:ffff:ffff")},
		{Start: mp("2001:db8::1"), End: mp("2001:db8::1")},
		{Start: mp("::ffff:10.0.0.0"), End: mp("::ffff:10.0.0.255")},
		{Start: mp("10.0.0.0"), End: mp("::ffff:10.0.0.255")},
		{Start: mp("10.0.0.0")},
		{},
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		// A prefix, or one with an end or a start off by one bit.
		v6 := r.IntN(2) == 0
		var a netip.Addr
		if v6 {
			var b [16]byte
			for i := range b {
				b[i] = byte(r.Uint32())
			}
			a = netip.AddrFrom16(b)
		} else {
			a = netip.AddrFrom4([4]byte{byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32()), byte(r.Uint32())})
		}
		p := netip.PrefixFrom(a, r.IntN(a.BitLen()+1)).Masked()
		s := TrafficSelector{Start: p.Addr(), End: lastAddr(p)}
		cases = append(cases, s)
		b := s.End.As16()
		b[r.IntN(16)] ^= 1 << r.IntN(8)
		e := netip.AddrFrom16(b)
		if !v6 {
			e = e.Unmap()
		}
		if e.BitLen() == s.Start.BitLen() {
			cases = append(cases, TrafficSelector{Start: s.Start, End: e}, TrafficSelector{Start: e, End: s.End})
		}
	}
	for _, s := range cases {
		want, wok := prefixByBits(s)
		got, ok := s.Prefix()
		if got != want || ok != wok {
			t.Fatalf("%v..%v: Prefix() = %v, %v; want %v, %v", s.Start, s.End, got, ok, want, wok)
		}
	}
}

func TestLastAddr(t *testing.T) {
	for _, c := range []struct{ p, want string }{
		{"0.0.0.0/0", "255.255.255.255"},
		{"10.0.0.0/8", "10.255.255.255"},
		{"10.1.2.3/32", "10.1.2.3"},
		{"10.1.2.0/23", "10.1.3.255"},
		{"::/0", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"},
		{"2001:db8::/64", "2001:db8::ffff:ffff:ffff:ffff"},
		{"2001:db8::/63", "2001:db8:0:1:ffff:ffff:ffff:ffff"},
		{"2001:db8::/65", "2001:db8::7fff:ffff:ffff:ffff"},
		{"2001:db8::1/128", "2001:db8::1"},
		{"::ffff:10.0.0.0/120", "::ffff:10.0.0.255"},
	} {
		if got := lastAddr(netip.MustParsePrefix(c.p)); got != netip.MustParseAddr(c.want) {
			t.Errorf("lastAddr(%s) = %v, want %s", c.p, got, c.want)
		}
	}
	if got := lastAddr(netip.Prefix{}); got.IsValid() {
		t.Errorf("lastAddr of the zero Prefix = %v, want the zero Addr", got)
	}
}

func BenchmarkSelectorString(b *testing.B) {
	ts := []TrafficSelector{SelectorFromPrefix(netip.MustParsePrefix("10.64.3.7/32"))}
	for b.Loop() {
		_ = FormatSelectors(ts)
	}
}
