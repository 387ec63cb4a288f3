package lb

import (
	"context"
	"net/netip"
	"slices"
)

// Announcer makes the anycast prefixes reach this node, or stop reaching
// it.
type Announcer interface {
	// Start brings the announcer up with nothing announced.
	Start(ctx context.Context) error
	// Set announces exactly ps (nil: withdraw everything).
	Set(ctx context.Context, ps []netip.Prefix) error
	// Sessions reports the BGP sessions up and configured (kernel mode:
	// 0, 0).
	Sessions(ctx context.Context) (up, total int)
	// Close withdraws everything and stops.
	Close() error
}

// diff returns what is in want and not in have, and in have and not in
// want.
func diff(have map[netip.Prefix]bool, want []netip.Prefix) (add, del []netip.Prefix) {
	w := make(map[netip.Prefix]bool, len(want))
	for _, p := range want {
		w[p] = true
		if !have[p] {
			add = append(add, p)
		}
	}
	for p := range have {
		if !w[p] {
			del = append(del, p)
		}
	}
	slices.SortFunc(add, comparePrefix)
	slices.SortFunc(del, comparePrefix)
	return add, del
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}
