package userspace

import (
	"math/bits"
	"net/netip"
	"slices"
	"sort"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
)

// outIndex finds the SA for an outbound inner packet. Remote selectors
// that are exactly one prefix with any protocol and port (virtual IPs,
// gateway LANs: the fleet's common case) sit in one hash map per prefix
// length, searched longest first, so a lookup costs one map probe per
// distinct length, not one comparison per SA. Other selectors (ranges,
// protocol or port restrictions) are scanned in order of specificity and
// win over a prefix that is not narrower.
// Within one key the newest SA comes first: after a CHILD rekey, traffic
// moves to the new SA. Not safe for concurrent use (DataPlane.mu guards it).
type outIndex struct {
	byLen map[int]map[netip.Prefix][]*sa
	lens  []int        // lengths present in byLen, longest first
	other []restricted // selectors that are not plain prefixes, most specific first
}

type restricted struct {
	sel  dataplane.Selector
	bits int // equivalentBits(sel)
	sa   *sa
}

// plainPrefix returns the prefix a selector covers when it is exactly one
// and unrestricted by protocol or port.
func plainPrefix(s dataplane.Selector) (netip.Prefix, bool) {
	if s.IPProto != 0 || s.StartPort != 0 || (s.EndPort != 0xffff && s.EndPort != 0) {
		return netip.Prefix{}, false
	}
	ps := prefixes(s)
	if len(ps) != 1 {
		return netip.Prefix{}, false
	}
	return ps[0], true
}

func (x *outIndex) add(s *sa) {
	if x.byLen == nil {
		x.byLen = map[int]map[netip.Prefix][]*sa{}
	}
	for _, sel := range s.remoteTS {
		p, ok := plainPrefix(sel)
		if !ok {
			x.other = append(x.other, restricted{sel: sel, bits: equivalentBits(&sel), sa: s})
			sort.SliceStable(x.other, func(i, j int) bool {
				a, b := x.other[i], x.other[j]
				if a.bits != b.bits {
					return a.bits > b.bits
				}
				return a.sa.order > b.sa.order
			})
			continue
		}
		m := x.byLen[p.Bits()]
		if m == nil {
			m = map[netip.Prefix][]*sa{}
			x.byLen[p.Bits()] = m
			x.lens = append(x.lens, p.Bits())
			sort.Sort(sort.Reverse(sort.IntSlice(x.lens)))
		}
		m[p] = append([]*sa{s}, m[p]...)
	}
}

func (x *outIndex) remove(s *sa) {
	for _, sel := range s.remoteTS {
		p, ok := plainPrefix(sel)
		if !ok {
			continue
		}
		m := x.byLen[p.Bits()]
		l := slices.DeleteFunc(m[p], func(y *sa) bool { return y == s })
		if len(l) > 0 {
			m[p] = l
			continue
		}
		delete(m, p)
		if len(m) == 0 {
			delete(x.byLen, p.Bits())
			x.lens = slices.DeleteFunc(x.lens, func(b int) bool { return b == p.Bits() })
		}
	}
	x.other = slices.DeleteFunc(x.other, func(r restricted) bool { return r.sa == s })
}

func (x *outIndex) lookup(f flow) *sa {
	var hit *sa
	hitBits := -1
outer:
	for _, bits := range x.lens {
		p, err := f.dst.Prefix(bits)
		if err != nil {
			continue // a length of the other address family
		}
		for _, s := range x.byLen[bits][p] {
			if matchAny(s.localTS, f.src, f.proto, f.srcPort) {
				hit, hitBits = s, bits
				break outer
			}
		}
	}
	// A restricted selector at least as narrow as the prefix found wins:
	// the most specific policy applies.
	for i := range x.other {
		r := &x.other[i]
		if r.bits < hitBits {
			break // sorted: the rest are wider still
		}
		if match(&r.sel, f.dst, f.proto, f.dstPort) && matchAny(r.sa.localTS, f.src, f.proto, f.srcPort) {
			return r.sa
		}
	}
	return hit
}

// equivalentBits is the prefix length of the smallest prefix holding the
// selector's range: its specificity.
func equivalentBits(s *dataplane.Selector) int {
	a, b := s.Start.As16(), s.End.As16()
	n := 0
	for i := range a {
		x := a[i] ^ b[i]
		if x != 0 {
			n += bits.LeadingZeros8(x)
			break
		}
		n += 8
	}
	if s.Start.Is4() {
		n -= 96
	}
	return n
}
