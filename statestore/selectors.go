package statestore

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// SelectorClaim is what an SA holds exclusively under its peer's policy:
// the address ranges of the traffic selectors it claims, for its peer
// identity. It is written with the SA's record as sel/<ike-spi> and
// deleted with it, so that every node of a cluster knows the ranges the
// others' SAs hold (WatchSelectors) and refuses overlapping claims of
// other identities.
type SelectorClaim struct {
	Identity string          `json:"id"`
	Ranges   []SelectorRange `json:"r"`
}

// SelectorRange is an address range, both ends included.
type SelectorRange struct {
	Start netip.Addr `json:"s"`
	End   netip.Addr `json:"e"`
	// Since is the revision at which the SA (or the SA it was rekeyed
	// from) first claimed the range, carried on by each later write of
	// the claim; 0: first claimed by this write (or not known to the
	// writer). Watchers that read every write in order know it anyway;
	// one that lists the claims (after etcd compacted the history its
	// watch would have gone on from) reads it here instead of dating the
	// range by the claim's last write.
	Since int64 `json:"t,omitempty"`
}

func (k keys) sel(spi uint64) string { return hexKey(k.p, "sel/", spi, 16) }
func (k keys) sels() string          { return k.p + "sel/" }

// selectorOps are the writes of a change's selector claim for SA spi: put
// when it holds ranges, delete when it holds none any more; nothing
// without a claim (c.Selectors nil: the SA's policy claims none).
func (s *Store) selectorOps(c *Change, spi uint64) ([]clientv3.Op, error) {
	if c.Selectors == nil {
		return nil, nil
	}
	if len(c.Selectors.Ranges) == 0 {
		return []clientv3.Op{opDelete(s.k.sel(spi))}, nil
	}
	v, err := json.Marshal(c.Selectors)
	if err != nil {
		return nil, err
	}
	return []clientv3.Op{opPut(s.k.sel(spi), v)}, nil
}

// SelectorEvent is a claim that appeared, changed (Claim set) or went
// (Claim nil), or (Synced) the point up to which the store has been read.
type SelectorEvent struct {
	SPI   uint64
	Claim *SelectorClaim
	// Revision is the claim's create revision in etcd.
	Revision int64
	// At is the revision of the write the event reports (a listed
	// claim's last write); for Synced, the revision read up to.
	At int64
	// Synced: every claim written up to revision At has been reported
	// (after a listing, and after each batch of changes).
	Synced bool
	// Listed: the claim was read by a listing (the watch's first, or one
	// after a compaction), not as a write in etcd's order: the writes
	// between the claim's first and its last (At) were not read.
	Listed bool
}

// WatchSelectors calls f with every selector claim in the store and then
// with every change to them, until ctx ends, each batch followed by a
// Synced event (also at etcd's progress notifications). A broken watch
// goes on where it was, so every write is reported once and in order; if
// etcd compacted that history meanwhile, it lists the claims again
// (reported as Listed, with their last write's revision) and reports
// those that went meanwhile. A claim that cannot be read is reported gone (and
// logged). f runs on the watch's goroutine.
func (s *Store) WatchSelectors(ctx context.Context, f func(SelectorEvent)) {
	known := map[uint64]bool{}
	prefix := s.k.sels()
	report := func(kv *mvccpb.KeyValue, listed bool) (uint64, bool) {
		spi, ok := parseSPIKey(string(kv.Key), prefix)
		if !ok {
			return 0, false
		}
		var c SelectorClaim
		if err := json.Unmarshal(kv.Value, &c); err != nil || c.Identity == "" {
			s.log.Warn("statestore: unreadable selector claim", "key", string(kv.Key), "err", fmt.Sprint(err))
			f(SelectorEvent{SPI: spi, At: kv.ModRevision})
			return spi, false
		}
		f(SelectorEvent{SPI: spi, Claim: &c, Revision: kv.CreateRevision, At: kv.ModRevision, Listed: listed})
		return spi, true
	}
	s.followPrefix(ctx, prefix, func(kvs []*mvccpb.KeyValue) {
		now := map[uint64]bool{}
		for _, kv := range kvs {
			if spi, ok := report(kv, true); ok {
				now[spi] = true
			}
		}
		for spi := range known {
			if !now[spi] {
				f(SelectorEvent{SPI: spi})
			}
		}
		known = now
	}, func(ev *clientv3.Event) {
		if ev.Type == clientv3.EventTypeDelete {
			if spi, ok := parseSPIKey(string(ev.Kv.Key), prefix); ok {
				delete(known, spi)
				f(SelectorEvent{SPI: spi, At: ev.Kv.ModRevision})
			}
			return
		}
		if spi, ok := report(ev.Kv, false); ok {
			known[spi] = true
		}
	}, func(rev int64) { f(SelectorEvent{Synced: true, At: rev}) })
}
