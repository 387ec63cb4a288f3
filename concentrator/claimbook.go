package concentrator

// Exclusive selector claims across a cluster. Every node reads every claim
// (statestore.WatchSelectors) in etcd's order and keeps, for each range an
// SA claims, the revision at which the range was first claimed. Of two
// claims of different identities that overlap, the one whose range was
// claimed first holds it; the other loses (same revision: the lower IKE
// SPI holds it). Every node judges the same writes in the same order, so
// they all agree on who holds what.
//
// A node's own registry (ike.SelectorRegistry) refuses claims that overlap
// those it has read; two claims made at once on two nodes both pass it.
// So a write that makes an SA claim a range is held back (its IKE_AUTH or
// CREATE_CHILD_SA answer, its CHILD SA's install) until this node has
// read the claims up to the write's revision, and stands only if its new
// ranges did not lose; a losing SA is removed before anything of it is
// revealed. Losing claims that no write of this node waits for (from a
// node of a release before this rule) are settled after the fact: the
// node that holds the SA deletes it.

import (
	"slices"
	"sync"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike"
)

// claimVerdictTimeout bounds the wait of a write for its verdict: past
// it (the watch stalled) the write counts as lost, never as held.
var claimVerdictTimeout = 10 * time.Second

// claimBook is the cluster's selector claims as this node has read them,
// and the writes of this node waiting for their verdicts. Safe for
// concurrent use.
type claimBook struct {
	mu     sync.Mutex
	claims map[uint64]*bookClaim  // by IKE SPI
	index  ike.RangeIndex[uint64] // the claims' ranges, by IKE SPI
	// gone: the ranges of the claims deleted at revision goneAt, by
	// identity. An IKE rekey deletes the old SA's claim and writes the new
	// SA's in one transaction: its ranges keep their first revision.
	gone   map[string][]claimedRange
	goneAt int64
	grown  []grownClaim // claims that took new ranges since the last sync
	read   int64        // every claim written up to this revision is read
	waits  map[uint64][]*claimWait
}

type claimedRange struct {
	ike.SelectorRange
	since int64 // the revision the range was first claimed at
}

type bookClaim struct {
	identity string
	ranges   []claimedRange
}

type grownClaim struct {
	spi uint64
	at  int64
	// listed: the ranges a listing found new (claimBook.list), each with
	// its own revision; nil: those claimed at revision at.
	listed []ike.SelectorRange
}

// claimLoss is a claim that lost: its SA, the write, and what holds the
// range.
type claimLoss struct {
	spi, holderSPI uint64
	at             int64
	identity       string
	holder         string // the holding identity
}

// claimWait is a write that claims ranges for SA spi, waiting for its
// verdict (claimBook.wait).
type claimWait struct {
	spi      uint64
	rev      int64 // the write's revision (0: unknown, a retried commit)
	done     func(lost *claimLoss)
	verdicts []claimVerdict // the SA's claim writes judged since the wait began
	timer    *time.Timer
	resolved bool
}

type claimVerdict struct {
	at   int64
	loss *claimLoss
}

func newClaimBook() *claimBook {
	return &claimBook{claims: map[uint64]*bookClaim{}, gone: map[string][]claimedRange{}, waits: map[uint64][]*claimWait{}}
}

// wait registers a write of SA spi that claims ranges, before it is
// submitted: every judgement of the SA's claims from then on is kept for
// it. The write's answer goes through committed or cancel.
func (b *claimBook) wait(spi uint64) *claimWait {
	w := &claimWait{spi: spi}
	b.mu.Lock()
	b.waits[spi] = append(b.waits[spi], w)
	b.mu.Unlock()
	return w
}

// cancel drops a wait whose write failed.
func (b *claimBook) cancel(w *claimWait) {
	b.mu.Lock()
	b.drop(w)
	b.mu.Unlock()
}

func (b *claimBook) drop(w *claimWait) {
	ws := b.waits[w.spi]
	for i, x := range ws {
		if x == w {
			ws = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(b.waits, w.spi)
	} else {
		b.waits[w.spi] = ws
	}
}

// committed says w's write committed at revision rev (0: unknown); done
// gets the verdict, nil when the write's ranges hold, once the claims are
// read up to rev (at once if they are), or a loss with no holder after
// claimVerdictTimeout.
func (b *claimBook) committed(w *claimWait, rev int64, done func(lost *claimLoss)) {
	b.mu.Lock()
	w.rev, w.done = rev, done
	if v, ok := b.verdictOf(w); ok {
		b.drop(w)
		w.resolved = true
		b.mu.Unlock()
		done(v)
		return
	}
	w.timer = time.AfterFunc(claimVerdictTimeout, func() {
		b.mu.Lock()
		if w.resolved {
			b.mu.Unlock()
			return
		}
		w.resolved = true
		b.drop(w)
		b.mu.Unlock()
		done(&claimLoss{spi: w.spi, at: w.rev})
	})
	b.mu.Unlock()
}

// verdictOf is w's verdict if the claims are read far enough: the first
// judgement of the SA's claim at or after the write; none (the write took
// no new range, or the SA's claim is gone since): it holds. A write of
// unknown revision takes the latest judgement once its claim is read.
func (b *claimBook) verdictOf(w *claimWait) (*claimLoss, bool) {
	if w.rev == 0 {
		if len(w.verdicts) > 0 {
			return w.verdicts[len(w.verdicts)-1].loss, true
		}
		_, ok := b.claims[w.spi]
		return nil, ok
	}
	if b.read < w.rev {
		return nil, false
	}
	for _, v := range w.verdicts {
		if v.at >= w.rev {
			return v.loss, true
		}
	}
	return nil, true
}

// put records SA spi's claim as written at revision at.
func (b *claimBook) put(spi uint64, identity string, ranges []ike.SelectorRange, at int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.putLocked(spi, identity, ranges, nil, at, false)
}

// list records SA spi's claim as read by a listing (the watch's first,
// or one after etcd compacted the history a broken watch would have gone
// on from): at is the claim's last write, not the write that made its
// ranges, and the writes between are not read. A range the book holds
// for the SPI keeps its revision; any other is dated by the revision the
// write names for it (since[i]: the revision it was first claimed at,
// which every later write of the claim carries on, Node.submit), or by
// at when it names none, and is judged at the next sync.
func (b *claimBook) list(spi uint64, identity string, ranges []ike.SelectorRange, since []int64, at int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.putLocked(spi, identity, ranges, since, at, true)
}

func (b *claimBook) putLocked(spi uint64, identity string, ranges []ike.SelectorRange, since []int64, at int64, listed bool) {
	old := b.claims[spi]
	c := &bookClaim{identity: identity, ranges: make([]claimedRange, len(ranges))}
	var fresh []ike.SelectorRange
	for i, r := range ranges {
		c.ranges[i] = claimedRange{r, at}
		if s, ok := sinceOf(old, identity, r); ok {
			c.ranges[i].since = s
		} else if s, ok := b.goneSince(identity, r, at); ok && !listed {
			c.ranges[i].since = s
		} else {
			if listed && i < len(since) && since[i] > 0 && since[i] < at {
				c.ranges[i].since = since[i]
			}
			fresh = append(fresh, r)
		}
	}
	if old != nil {
		for _, x := range old.ranges {
			b.index.Remove(x.SelectorRange, spi)
		}
	}
	for _, x := range c.ranges {
		b.index.Add(x.SelectorRange, spi)
	}
	b.claims[spi] = c
	if fresh != nil {
		g := grownClaim{spi: spi, at: at}
		if listed {
			g.listed = fresh
		}
		b.grown = append(b.grown, g)
	}
}

// since is the revision at which SA spi's claim first held range r for
// identity, as this node has read it; 0: it holds no such range (yet).
func (b *claimBook) since(spi uint64, identity string, r ike.SelectorRange) int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, _ := sinceOf(b.claims[spi], identity, r)
	return s
}

func sinceOf(c *bookClaim, identity string, r ike.SelectorRange) (int64, bool) {
	if c == nil || c.identity != identity {
		return 0, false
	}
	for _, x := range c.ranges {
		if x.SelectorRange == r {
			return x.since, true
		}
	}
	return 0, false
}

func (b *claimBook) goneSince(identity string, r ike.SelectorRange, at int64) (int64, bool) {
	if b.goneAt != at {
		return 0, false
	}
	return sinceOf(&bookClaim{identity: identity, ranges: b.gone[identity]}, identity, r)
}

// remove records that SA spi's claim went at revision at (0: unknown).
func (b *claimBook) remove(spi uint64, at int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	c := b.claims[spi]
	if c == nil {
		return
	}
	delete(b.claims, spi)
	for _, x := range c.ranges {
		b.index.Remove(x.SelectorRange, spi)
	}
	if at == 0 {
		return
	}
	if b.goneAt != at {
		clear(b.gone)
		b.goneAt = at
	}
	b.gone[c.identity] = append(b.gone[c.identity], c.ranges...)
}

// sync records that every claim written up to revision at is read: the
// claims that took new ranges are judged, and the writes waiting for
// them answered. It returns the losses no write of this node waited for.
func (b *claimBook) sync(at int64) (unwaited []claimLoss) {
	type answer struct {
		done func(*claimLoss)
		loss *claimLoss
	}
	var answers []answer
	b.mu.Lock()
	for _, g := range b.grown {
		loss := b.judge(g)
		ws := b.waits[g.spi]
		for _, w := range ws {
			w.verdicts = append(w.verdicts, claimVerdict{g.at, loss})
		}
		if loss != nil && len(ws) == 0 {
			unwaited = append(unwaited, *loss)
		}
	}
	b.grown = b.grown[:0]
	if at > b.read {
		b.read = at
	}
	for spi, ws := range b.waits {
		for _, w := range ws {
			if w.done == nil || w.resolved {
				continue
			}
			if v, ok := b.verdictOf(w); ok {
				w.resolved = true
				w.timer.Stop()
				answers = append(answers, answer{w.done, v})
			}
		}
		keep := ws[:0]
		for _, w := range ws {
			if !w.resolved {
				keep = append(keep, w)
			}
		}
		if len(keep) == 0 {
			delete(b.waits, spi)
		} else {
			b.waits[spi] = keep
		}
	}
	b.mu.Unlock()
	for _, a := range answers {
		a.done(a.loss)
	}
	return unwaited
}

// judge is the verdict on claim g's ranges first claimed at g.at (or
// those a listing found new): a loss if another identity's claim overlaps
// one of them and was claimed earlier (or at the same revision by a lower
// SPI).
func (b *claimBook) judge(g grownClaim) *claimLoss {
	c := b.claims[g.spi]
	if c == nil {
		return nil // gone meanwhile
	}
	var loss *claimLoss
	for _, x := range c.ranges {
		if g.listed == nil && x.since != g.at || g.listed != nil && !slices.Contains(g.listed, x.SelectorRange) {
			continue
		}
		b.index.Overlapping(x.SelectorRange, func(y ike.SelectorRange, spi uint64) bool {
			o := b.claims[spi]
			if spi == g.spi || o == nil || o.identity == c.identity {
				return true
			}
			if since, _ := sinceOf(o, o.identity, y); since < x.since || since == x.since && spi < g.spi {
				loss = &claimLoss{spi: g.spi, holderSPI: spi, at: g.at, identity: c.identity, holder: o.identity}
				return false
			}
			return true
		})
		if loss != nil {
			return loss
		}
	}
	return nil
}
