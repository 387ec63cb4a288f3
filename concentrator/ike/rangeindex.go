package ike

import (
	"math/bits"
	"net/netip"
	"slices"

	"github.com/google/btree"
)

// RangeIndex finds, among many address ranges, those that overlap a
// query, without scanning them all: a fleet's selector claims are one or a
// few subnets per gateway, and there may be 100,000 gateways.
//
// Ranges are kept in one ordered tree per family and width class c (the
// bit length of end - start): a range of class c spans at most 2^c
// addresses, so those overlapping [s, e] start within [s - 2^c + 1, e]. A
// query visits the classes present (at most 33 for IPv4, 129 for IPv6)
// and, in each, the ranges starting in that window: a few, when ranges of
// one class do not overlap each other much (claims of different
// identities never do). Each value is held once per range; not safe for
// concurrent use.
type RangeIndex[V comparable] struct {
	trees map[rangeClass]*btree.BTreeG[*indexed[V]]
	n     int
}

type rangeClass struct {
	v6    bool
	class uint8
}

// u128 is an address as a number within its family.
type u128 struct{ hi, lo uint64 }

func (a u128) less(b u128) bool { return a.hi < b.hi || a.hi == b.hi && a.lo < b.lo }

func (a u128) sub(b u128) u128 {
	lo, borrow := bits.Sub64(a.lo, b.lo, 0)
	hi, _ := bits.Sub64(a.hi, b.hi, borrow)
	return u128{hi, lo}
}

func (a u128) bitLen() uint8 {
	if a.hi != 0 {
		return uint8(64 + bits.Len64(a.hi))
	}
	return uint8(bits.Len64(a.lo))
}

func numOf(a netip.Addr) u128 {
	if a.Is4() {
		b := a.As4()
		return u128{0, uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])}
	}
	b := a.As16()
	var x u128
	for i := range 8 {
		x.hi = x.hi<<8 | uint64(b[i])
		x.lo = x.lo<<8 | uint64(b[8+i])
	}
	return x
}

type indexed[V comparable] struct {
	start, end u128
	r          SelectorRange
	vals       []V
}

func lessIndexed[V comparable](a, b *indexed[V]) bool {
	if a.start != b.start {
		return a.start.less(b.start)
	}
	return a.end.less(b.end)
}

// key places r: its family and class, its numeric ends; ok is false for a
// range the index does not hold (ends of two families, or reversed).
func rangeKey(r SelectorRange) (c rangeClass, start, end u128, ok bool) {
	if !r.Start.IsValid() || r.Start.BitLen() != r.End.BitLen() || r.End.Less(r.Start) {
		return c, start, end, false
	}
	start, end = numOf(r.Start), numOf(r.End)
	return rangeClass{v6: !r.Start.Is4(), class: end.sub(start).bitLen()}, start, end, true
}

// Add records that v holds r (once: adding it again changes nothing).
func (x *RangeIndex[V]) Add(r SelectorRange, v V) {
	c, s, e, ok := rangeKey(r)
	if !ok {
		return
	}
	if x.trees == nil {
		x.trees = map[rangeClass]*btree.BTreeG[*indexed[V]]{}
	}
	t := x.trees[c]
	if t == nil {
		t = btree.NewG(16, lessIndexed[V])
		x.trees[c] = t
	}
	it, found := t.Get(&indexed[V]{start: s, end: e})
	if !found {
		it = &indexed[V]{start: s, end: e, r: r}
		t.ReplaceOrInsert(it)
	}
	if !slices.Contains(it.vals, v) {
		it.vals = append(it.vals, v)
		x.n++
	}
}

// Remove drops v's hold of r.
func (x *RangeIndex[V]) Remove(r SelectorRange, v V) {
	c, s, e, ok := rangeKey(r)
	t := x.trees[c]
	if !ok || t == nil {
		return
	}
	it, found := t.Get(&indexed[V]{start: s, end: e})
	if !found {
		return
	}
	i := slices.Index(it.vals, v)
	if i < 0 {
		return
	}
	it.vals = slices.Delete(it.vals, i, i+1)
	x.n--
	if len(it.vals) == 0 {
		t.Delete(it)
		if t.Len() == 0 {
			delete(x.trees, c)
		}
	}
}

// Len is the number of (range, value) holds.
func (x *RangeIndex[V]) Len() int { return x.n }

// Overlapping calls f with every held range that overlaps q (of q's
// family) and each value holding it, until f returns false.
func (x *RangeIndex[V]) Overlapping(q SelectorRange, f func(r SelectorRange, v V) bool) {
	qc, s, e, ok := rangeKey(q)
	if !ok {
		return
	}
	for c, t := range x.trees {
		if c.v6 != qc.v6 {
			continue
		}
		// A range of class c ends at most 2^c - 1 after its start.
		var from u128
		if w := widthOf(c.class); !s.less(w) {
			from = s.sub(w)
		}
		stop := false
		t.AscendGreaterOrEqual(&indexed[V]{start: from}, func(it *indexed[V]) bool {
			if e.less(it.start) {
				return false
			}
			if it.end.less(s) {
				return true
			}
			for _, v := range it.vals {
				if !f(it.r, v) {
					stop = true
					return false
				}
			}
			return true
		})
		if stop {
			return
		}
	}
}

// widthOf is 2^c - 1, the largest end - start of class c (0..128).
func widthOf(c uint8) u128 {
	if c >= 128 {
		return u128{^uint64(0), ^uint64(0)}
	}
	if c > 64 {
		return u128{1<<(c-64) - 1, ^uint64(0)}
	}
	if c == 64 {
		return u128{0, ^uint64(0)}
	}
	return u128{0, 1<<c - 1}
}
