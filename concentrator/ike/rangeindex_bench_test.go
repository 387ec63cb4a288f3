package ike

import (
	"fmt"
	"net/netip"
	"testing"
)

// BenchmarkSelectorClaim is a new gateway's claim of its LAN (a /24)
// against a registry already holding held others: half of them this
// node's SAs, half remote claims of other nodes, each gateway its own
// identity. The cost should not grow with held.
func BenchmarkSelectorClaim(b *testing.B) {
	for _, held := range []int{1000, 100000} {
		b.Run(fmt.Sprintf("held=%d", held), func(b *testing.B) {
			r := NewSelectorRegistry()
			for i := range held {
				ts := SelectorFromPrefix(netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(10 + i>>16), byte(i >> 8), byte(i), 0}), 24))
				if i%2 == 0 {
					if err := r.Claim(fmt.Sprintf("gw%d", i), uint64(i+1), []TrafficSelector{ts}, false); err != nil {
						b.Fatal(err)
					}
				} else {
					r.SetRemote(uint64(i+1), fmt.Sprintf("gw%d", i), []SelectorRange{{ts.Start, ts.End}})
				}
			}
			free := SelectorFromPrefix(netip.MustParsePrefix("172.16.5.0/24"))
			taken := SelectorFromPrefix(netip.MustParsePrefix("10.0.7.0/25"))
			b.ResetTimer()
			for i := range b.N {
				spi := uint64(held + 1 + i)
				if err := r.Claim("newgw", spi, []TrafficSelector{free}, false); err != nil {
					b.Fatal(err)
				}
				r.Release(spi)
				if r.Claim("newgw", spi, []TrafficSelector{taken}, false) == nil {
					b.Fatal("an overlapping claim passed")
				}
			}
		})
	}
}
