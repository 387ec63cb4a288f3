package ike

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
)

// The index finds exactly the ranges a scan finds, for ranges of every
// width in both families, as they are added and removed.
func TestRangeIndexMatchesScan(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	randRange := func() SelectorRange {
		if rng.IntN(4) == 0 { // IPv6, near each other so that they overlap
			var a [16]byte
			a[0], a[1], a[15] = 0x20, 0x01, byte(rng.IntN(256))
			a[7] = byte(rng.IntN(4))
			s := netip.AddrFrom16(a)
			b := a
			switch rng.IntN(3) {
			case 0:
				b[15] = byte(min(255, int(a[15])+rng.IntN(8)))
			case 1:
				for i := 8; i < 16; i++ {
					b[i] = 0xff
				}
			default:
				for i := 6; i < 16; i++ {
					b[i] = 0xff
				}
			}
			return SelectorRange{s, netip.AddrFrom16(b)}
		}
		s := uint32(10<<24 | rng.IntN(1<<16))
		w := []uint32{0, 3, 255, 4095, 1 << 20}[rng.IntN(5)]
		e := s + w
		return SelectorRange{netip.AddrFrom4([4]byte{byte(s >> 24), byte(s >> 16), byte(s >> 8), byte(s)}),
			netip.AddrFrom4([4]byte{byte(e >> 24), byte(e >> 16), byte(e >> 8), byte(e)})}
	}
	type hold struct {
		r SelectorRange
		v int
	}
	var x RangeIndex[int]
	var all []hold
	for i := range 3000 {
		if len(all) > 0 && rng.IntN(3) == 0 {
			j := rng.IntN(len(all))
			x.Remove(all[j].r, all[j].v)
			all = slices.Delete(all, j, j+1)
		} else {
			h := hold{randRange(), i % 50}
			if !slices.Contains(all, h) {
				all = append(all, h)
			}
			x.Add(h.r, h.v)
		}
		if x.Len() != len(all) {
			t.Fatalf("step %d: Len %d, want %d", i, x.Len(), len(all))
		}
		if i%10 != 0 {
			continue
		}
		q := randRange()
		var want, got []hold
		for _, h := range all {
			if h.r.Overlaps(q) {
				want = append(want, h)
			}
		}
		x.Overlapping(q, func(r SelectorRange, v int) bool {
			got = append(got, hold{r, v})
			return true
		})
		key := func(a, b hold) int {
			if c := a.r.Start.Compare(b.r.Start); c != 0 {
				return c
			}
			if c := a.r.End.Compare(b.r.End); c != 0 {
				return c
			}
			return a.v - b.v
		}
		slices.SortFunc(want, key)
		slices.SortFunc(got, key)
		if !slices.Equal(got, want) {
			t.Fatalf("step %d: query %v: got %d ranges %v, want %d %v", i, q, len(got), got, len(want), want)
		}
	}
	// Stopping early; ranges the index does not hold.
	n := 0
	x.Overlapping(SelectorRange{netip.MustParseAddr("0.0.0.0"), netip.MustParseAddr("255.255.255.255")}, func(SelectorRange, int) bool { n++; return false })
	if n != 1 {
		t.Fatalf("f called %d times after it returned false", n)
	}
	before := x.Len()
	x.Add(SelectorRange{netip.MustParseAddr("10.0.0.9"), netip.MustParseAddr("10.0.0.1")}, 1)
	x.Add(SelectorRange{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("::1")}, 1)
	if x.Len() != before {
		t.Fatal("a reversed or mixed-family range was indexed")
	}
}
