package ike

import "time"

// expiryQueue holds keys with the times they expire, in the order they
// were pushed; prune stops at the first entry not yet due, so an entry
// pushed with an earlier time than the one before it waits for that one.
// The maps that count or date the keys are the caller's.
type expiryQueue[K comparable] struct {
	q []expiring[K]
}

type expiring[K comparable] struct {
	key   K
	until time.Time
}

func (x *expiryQueue[K]) push(k K, until time.Time) {
	x.q = append(x.q, expiring[K]{k, until})
}

// prune hands expire every entry whose time has come at now, oldest first,
// and drops them.
func (x *expiryQueue[K]) prune(now time.Time, expire func(k K, until time.Time)) {
	n := 0
	for n < len(x.q) && !now.Before(x.q[n].until) {
		expire(x.q[n].key, x.q[n].until)
		n++
	}
	if n > 0 {
		x.q = x.q[n:]
		if len(x.q) == 0 {
			x.q = nil // let the backing array go
		}
	}
}

func (x *expiryQueue[K]) len() int { return len(x.q) }
