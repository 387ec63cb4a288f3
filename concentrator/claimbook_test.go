package concentrator

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike"
)

func bookRange(p string) ike.SelectorRange {
	pf := netip.MustParsePrefix(p)
	ts := ike.SelectorFromPrefix(pf)
	return ike.SelectorRange{Start: ts.Start, End: ts.End}
}

// verdict waits for a claim write's answer.
func verdict(t *testing.T, ch chan *claimLoss) *claimLoss {
	t.Helper()
	select {
	case l := <-ch:
		return l
	case <-time.After(5 * time.Second):
		t.Fatal("no verdict")
		return nil
	}
}

// committedAt registers w's commit at rev and returns where its verdict
// comes.
func committedAt(b *claimBook, w *claimWait, rev int64) chan *claimLoss {
	ch := make(chan *claimLoss, 1)
	b.committed(w, rev, func(l *claimLoss) { ch <- l })
	return ch
}

func noVerdict(t *testing.T, ch chan *claimLoss) {
	t.Helper()
	select {
	case l := <-ch:
		t.Fatalf("answered before the claims were read: %+v", l)
	default:
	}
}

// Two identities claim overlapping ranges at once on two nodes: the
// later write loses, the earlier holds; each node's writes wait until the
// claims are read up to them.
func TestClaimBookLaterClaimLoses(t *testing.T) {
	a, b := newClaimBook(), newClaimBook() // two nodes' books
	wa, wb := a.wait(0xa), b.wait(0xb)
	ca, cb := committedAt(a, wa, 10), committedAt(b, wb, 11)
	noVerdict(t, ca)
	noVerdict(t, cb)
	for _, bk := range []*claimBook{a, b} { // both read the same writes
		bk.put(0xa, "gwa", []ike.SelectorRange{bookRange("10.1.0.0/24")}, 10)
		bk.put(0xb, "gwb", []ike.SelectorRange{bookRange("10.1.0.128/25")}, 11)
	}
	if un := a.sync(11); len(un) != 1 || un[0].spi != 0xb || un[0].holderSPI != 0xa {
		t.Fatalf("a: losses nobody here waits for: %+v, want b's", un)
	}
	if l := verdict(t, ca); l != nil {
		t.Fatalf("the earlier claim lost: %+v", l)
	}
	if un := b.sync(11); len(un) != 0 {
		t.Fatalf("b: unwaited losses %+v", un)
	}
	if l := verdict(t, cb); l == nil || l.spi != 0xb || l.holder != "gwa" || l.identity != "gwb" {
		t.Fatalf("the later claim: %+v, want lost to gwa", l)
	}
	if len(a.waits)+len(b.waits) != 0 {
		t.Fatalf("waits left: %d %d", len(a.waits), len(b.waits))
	}
}

// Judged in one order whatever the events' grouping: the same revision
// goes to the lower SPI; the same identity never conflicts with itself; a
// write answered after the claims were read gets its verdict at once.
func TestClaimBookTiesAndSameIdentity(t *testing.T) {
	bk := newClaimBook()
	w5, w6, w7 := bk.wait(5), bk.wait(6), bk.wait(7)
	bk.put(6, "gwx", []ike.SelectorRange{bookRange("10.2.0.0/24")}, 20)
	bk.put(5, "gwy", []ike.SelectorRange{bookRange("10.2.0.0/24")}, 20)
	bk.put(7, "gwx", []ike.SelectorRange{bookRange("10.2.0.0/25")}, 21)
	bk.sync(21)
	if l := verdict(t, committedAt(bk, w5, 20)); l != nil {
		t.Fatalf("lower SPI at the same revision lost: %+v", l)
	}
	if l := verdict(t, committedAt(bk, w6, 20)); l == nil || l.holderSPI != 5 {
		t.Fatalf("higher SPI at the same revision: %+v, want lost to 5", l)
	}
	// gwx's second SA overlaps its own first one (no conflict) but also
	// gwy's, which holds the range.
	if l := verdict(t, committedAt(bk, w7, 21)); l == nil || l.holderSPI != 5 {
		t.Fatalf("gwx's second SA: %+v, want lost to gwy's", l)
	}
	bk2 := newClaimBook()
	w := bk2.wait(8)
	bk2.put(8, "gwz", []ike.SelectorRange{bookRange("10.3.0.0/24")}, 30)
	bk2.put(9, "gwz", []ike.SelectorRange{bookRange("10.3.0.0/24")}, 31)
	if un := bk2.sync(31); len(un) != 0 {
		t.Fatalf("one identity's own overlap counted: %+v", un)
	}
	if l := verdict(t, committedAt(bk2, w, 30)); l != nil {
		t.Fatalf("%+v", l)
	}
}

// A range keeps the revision it was first claimed at through the SA's
// later writes and its IKE rekey; a range an SA adds later is judged by
// the revision it was added at.
func TestClaimBookRangesKeepTheirRevision(t *testing.T) {
	bk := newClaimBook()
	bk.put(0xa, "gwa", []ike.SelectorRange{bookRange("10.4.1.0/24")}, 10)
	bk.put(0xb, "gwb", []ike.SelectorRange{bookRange("10.4.2.0/24")}, 20)
	bk.sync(20)
	// gwa's SA rewrites its claim (a CHILD SA rekey: same ranges), then is
	// IKE-rekeyed: delete and put in one transaction.
	bk.put(0xa, "gwa", []ike.SelectorRange{bookRange("10.4.1.0/24")}, 25)
	bk.remove(0xa, 30)
	bk.put(0xa2, "gwa", []ike.SelectorRange{bookRange("10.4.1.0/24")}, 30)
	if un := bk.sync(30); len(un) != 0 {
		t.Fatalf("rewrites judged as new claims: %+v", un)
	}
	if got := bk.claims[0xa2].ranges[0].since; got != 10 {
		t.Fatalf("rekeyed claim's range since %d, want 10", got)
	}
	// gwb takes part of gwa's range too (a CHILD SA adding it, admitted
	// on a node that had not read gwa's claim): it loses, as gwa's range
	// dates from revision 10, not from its IKE rekey at 30.
	w := bk.wait(0xb)
	bk.put(0xb, "gwb", []ike.SelectorRange{bookRange("10.4.2.0/24"), bookRange("10.4.1.128/25")}, 40)
	bk.sync(40)
	if l := verdict(t, committedAt(bk, w, 40)); l == nil || l.holderSPI != 0xa2 {
		t.Fatalf("gwb's added range: %+v, want lost to gwa's rekeyed SA", l)
	}
	// gwa adding gwb's range later loses it, its own stays its own.
	bk.put(0xb, "gwb", []ike.SelectorRange{bookRange("10.4.2.0/24")}, 41) // gwb's SA, rewritten without it
	w = bk.wait(0xa2)
	bk.put(0xa2, "gwa", []ike.SelectorRange{bookRange("10.4.1.0/24"), bookRange("10.4.2.0/23")}, 50)
	if un := bk.sync(50); len(un) != 0 {
		t.Fatalf("unwaited: %+v", un)
	}
	if l := verdict(t, committedAt(bk, w, 50)); l == nil || l.holderSPI != 0xb {
		t.Fatalf("gwa's added range: %+v, want lost to gwb", l)
	}
}

// A write whose claims are never read within the bound counts as lost;
// a write that failed leaves no wait behind; a write of unknown revision
// (a retried commit found done) takes its claim's latest verdict.
func TestClaimBookTimeoutAndCancel(t *testing.T) {
	defer func(d time.Duration) { claimVerdictTimeout = d }(claimVerdictTimeout)
	claimVerdictTimeout = 50 * time.Millisecond
	bk := newClaimBook()
	w := bk.wait(1)
	if l := verdict(t, committedAt(bk, w, 100)); l == nil || l.holder != "" {
		t.Fatalf("a write never read: %+v, want a loss without holder", l)
	}
	bk.cancel(bk.wait(2))
	if len(bk.waits) != 0 {
		t.Fatalf("waits left: %v", bk.waits)
	}
	bk.put(3, "gwa", []ike.SelectorRange{bookRange("10.5.0.0/24")}, 110)
	w = bk.wait(4)
	bk.put(4, "gwb", []ike.SelectorRange{bookRange("10.5.0.0/24")}, 111)
	bk.sync(111)
	if l := verdict(t, committedAt(bk, w, 0)); l == nil || l.holderSPI != 3 {
		t.Fatalf("unknown revision: %+v, want lost to 3", l)
	}
}

// A listing (the watch's first, or one after a compaction) reads claims
// by their last write: each range the book does not hold yet is dated by
// the revision its claim names for it, so a claim rewritten (or moved by
// an IKE rekey) after a later overlapping claim still holds its range; a
// range the book holds keeps its revision; a named revision that is not
// before the write is not taken.
func TestClaimBookListingDatesByFirstClaim(t *testing.T) {
	bk := newClaimBook()
	bk.put(0xc, "gwc", []ike.SelectorRange{bookRange("10.3.0.0/24")}, 5)
	if un := bk.sync(5); len(un) != 0 {
		t.Fatal(un)
	}
	w := bk.wait(0xb) // this node's write of b's claim, at 30
	cb := committedAt(bk, w, 30)
	// First claimed at 10, last written at 50 (after b's claim at 30).
	bk.list(0xa, "gwa", []ike.SelectorRange{bookRange("10.1.0.0/24")}, []int64{10}, 50)
	bk.list(0xb, "gwb", []ike.SelectorRange{bookRange("10.1.0.128/25")}, nil, 30)
	bk.list(0xc, "gwc", []ike.SelectorRange{bookRange("10.3.0.0/24")}, []int64{0}, 70)
	bk.list(0xd, "gwd", []ike.SelectorRange{bookRange("10.4.0.0/24")}, []int64{99}, 80)
	noVerdict(t, cb)
	if un := bk.sync(80); len(un) != 0 {
		t.Fatalf("losses nobody waits for: %+v", un)
	}
	if l := verdict(t, cb); l == nil || l.spi != 0xb || l.holderSPI != 0xa {
		t.Fatalf("b's claim: %+v, want lost to a's (first claimed at 10)", l)
	}
	for _, c := range []struct {
		spi  uint64
		id   string
		r    string
		want int64
	}{{0xa, "gwa", "10.1.0.0/24", 10}, {0xb, "gwb", "10.1.0.128/25", 30}, {0xc, "gwc", "10.3.0.0/24", 5}, {0xd, "gwd", "10.4.0.0/24", 80}} {
		if got := bk.since(c.spi, c.id, bookRange(c.r)); got != c.want {
			t.Errorf("%s's range dated %d, want %d", c.id, got, c.want)
		}
	}
	if got := bk.since(0xa, "gwb", bookRange("10.1.0.0/24")); got != 0 {
		t.Errorf("another identity's range: %d", got)
	}
}
