package ike

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
	"strings"
)

// SelectorFromPrefix returns the selector covering all traffic of a prefix.
func SelectorFromPrefix(p netip.Prefix) TrafficSelector {
	p = p.Masked()
	start := p.Addr()
	end := lastAddr(p)
	return TrafficSelector{StartPort: 0, EndPort: 0xffff, Start: start, End: end}
}

// lastAddr is the highest address of p (the zero Addr for an invalid p).
func lastAddr(p netip.Prefix) netip.Addr {
	if !p.IsValid() {
		return netip.Addr{}
	}
	a := p.Addr()
	host := a.BitLen() - p.Bits() // the host bits, at most 128
	b := a.As16()
	hi, lo := binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
	mhi, mlo := hostMask(host)
	binary.BigEndian.PutUint64(b[:8], hi|mhi)
	binary.BigEndian.PutUint64(b[8:], lo|mlo)
	if a.Is4() {
		return netip.AddrFrom4([4]byte(b[12:]))
	}
	return netip.AddrFrom16(b)
}

// hostMask is the 128-bit mask of the lowest host bits (0 to 128), as its
// high and low halves.
func hostMask(host int) (hi, lo uint64) {
	switch {
	case host <= 0:
		return 0, 0
	case host < 64:
		return 0, 1<<host - 1
	case host < 128:
		return 1<<(host-64) - 1, ^uint64(0)
	}
	return ^uint64(0), ^uint64(0)
}

// String renders a selector as strongSwan does: a prefix when the range is
// one, otherwise start..end, plus protocol and ports when restricted.
func (s TrafficSelector) String() string {
	var b strings.Builder
	if p, ok := s.Prefix(); ok {
		b.WriteString(p.String())
	} else {
		b.WriteString(s.Start.String() + ".." + s.End.String())
	}
	if s.IPProto != 0 || s.StartPort != 0 || s.EndPort != 0xffff {
		fmt.Fprintf(&b, "[%d/%d-%d]", s.IPProto, s.StartPort, s.EndPort)
	}
	return b.String()
}

// Prefix returns the prefix the address range is equal to, if it is one:
// start and end differ in their lowest host bits only, all of them zero
// in start and one in end.
func (s TrafficSelector) Prefix() (netip.Prefix, bool) {
	n := s.Start.BitLen()
	if n == 0 || s.End.BitLen() != n {
		return netip.Prefix{}, false
	}
	a, b := s.Start.As16(), s.End.As16()
	ahi, alo := binary.BigEndian.Uint64(a[:8]), binary.BigEndian.Uint64(a[8:])
	xhi, xlo := ahi^binary.BigEndian.Uint64(b[:8]), alo^binary.BigEndian.Uint64(b[8:])
	host := bits.Len64(xlo)
	if xhi != 0 {
		host = 64 + bits.Len64(xhi)
	}
	mhi, mlo := hostMask(host)
	if xhi != mhi || xlo != mlo || ahi&mhi != 0 || alo&mlo != 0 {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(s.Start, n-host), true
}

// Valid reports whether the selector's ranges are well formed.
func (s TrafficSelector) Valid() bool {
	return s.Start.IsValid() && s.Start.BitLen() == s.End.BitLen() &&
		s.Start.Compare(s.End) <= 0 && s.StartPort <= s.EndPort
}

// Intersect returns the overlap of a and b, if any.
func Intersect(a, b TrafficSelector) (TrafficSelector, bool) {
	if !a.Valid() || !b.Valid() || a.Start.BitLen() != b.Start.BitLen() {
		return TrafficSelector{}, false
	}
	var r TrafficSelector
	switch {
	case a.IPProto == b.IPProto, b.IPProto == 0:
		r.IPProto = a.IPProto
	case a.IPProto == 0:
		r.IPProto = b.IPProto
	default:
		return TrafficSelector{}, false
	}
	r.StartPort, r.EndPort = max(a.StartPort, b.StartPort), min(a.EndPort, b.EndPort)
	if r.StartPort > r.EndPort {
		return TrafficSelector{}, false
	}
	r.Start, r.End = a.Start, a.End
	if b.Start.Compare(r.Start) > 0 {
		r.Start = b.Start
	}
	if b.End.Compare(r.End) < 0 {
		r.End = b.End
	}
	if r.Start.Compare(r.End) > 0 {
		return TrafficSelector{}, false
	}
	return r, true
}

// Narrow returns every non-empty intersection of the peer's proposed
// selectors with the configured ones (RFC 7296 §2.9): the responder's
// answer. Duplicates are dropped.
func Narrow(proposed, allowed []TrafficSelector) []TrafficSelector {
	var out []TrafficSelector
	for _, p := range proposed {
		for _, a := range allowed {
			if r, ok := Intersect(p, a); ok && !containsTS(out, r) {
				out = append(out, r)
			}
		}
	}
	return out
}

// sharedTS returns the engine's copy of its own selectors (Config.LocalTS)
// when got holds the same ones, as most CHILD SAs' local selectors do
// (0.0.0.0/0, or the configured subnets), and got otherwise: the CHILD
// SAs narrowed to them share one slice instead of each keeping a copy
// (memory per SA). Nothing writes into a CHILD SA's selectors, and the
// shared slice's capacity is its length, so an append would copy.
func (e *Engine) sharedTS(got []TrafficSelector) []TrafficSelector {
	if len(got) > 0 && slices.Equal(got, e.cfg.LocalTS) {
		return e.cfg.LocalTS
	}
	return got
}

// Within reports whether every selector of got lies inside one of within
// (initiator side: the responder may only narrow).
func Within(got, within []TrafficSelector) bool {
	for _, g := range got {
		ok := false
		for _, w := range within {
			if r, hit := Intersect(g, w); hit && r == g {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

func containsTS(l []TrafficSelector, t TrafficSelector) bool {
	for _, x := range l {
		if x == t {
			return true
		}
	}
	return false
}

// FormatSelectors joins selectors for logs.
func FormatSelectors(ts []TrafficSelector) string {
	parts := make([]string, len(ts))
	for i, t := range ts {
		parts[i] = t.String()
	}
	return strings.Join(parts, ",")
}
