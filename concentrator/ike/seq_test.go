package ike

import (
	"math/rand/v2"
	"testing"
	"time"
)

func progress(w *wire, inSPI uint32, out, in uint64) *Ready {
	return R(func(rd *Ready) { w.res.SeqProgress(w.now, inSPI, out, in, rd) })
}

func seqLimits(rd *Ready) []SetSeqLimit {
	var l []SetSeqLimit
	for _, a := range rd.DataPlane {
		if s, ok := a.(SetSeqLimit); ok {
			l = append(l, s)
		}
	}
	return l
}

func TestSeqReservationRenewal(t *testing.T) {
	w, _ := establish(t, responderConfig(t, 1))
	ic := w.installs[0]
	c := ic.Child
	if ic.OutSeq != 0 || ic.OutSeqLimit != SeqBlockStart || ic.OutSeqMargin != SeqBlockStart/2 || ic.InSeqLow != 0 {
		t.Fatalf("new CHILD SA installed with %+v", ic)
	}
	if cs := w.persists[0].State.Children[0]; cs.OutSeqReserved != SeqBlockStart || cs.SeqBlock != SeqBlockStart {
		t.Fatalf("new CHILD SA persisted with %+v", cs)
	}
	if c.OutSeqReserved != SeqBlockStart {
		t.Fatalf("committed reservation %d", c.OutSeqReserved)
	}
	// Not yet at the reservation minus half a block: nothing.
	if rd := progress(w, c.InSPI, 2000, 100); !rd.Empty() {
		t.Fatalf("renewed too early: %+v", rd)
	}
	// Crossing it: a write, then the limit.
	w.hold = true
	rd := progress(w, c.InSPI, 2100, 100)
	if len(rd.Persist) != 1 || rd.Persist[0].Kind != PersistReserved || rd.Persist[0].State.Children[0].OutSeqReserved != 2100+SeqBlockStart {
		t.Fatalf("renewal wrote %+v", rd.Persist)
	}
	if l := seqLimits(rd); len(l) != 1 || l[0].OutSeqLimit != 2100+SeqBlockStart || l[0].InSPI != c.InSPI {
		t.Fatalf("renewal limit %+v", l)
	}
	w.run(rd, false)
	if c.OutSeqReserved != SeqBlockStart || len(w.seqLimits) != 0 {
		t.Fatal("the new reservation counts before its write is committed")
	}
	// A second report while the write is pending changes nothing.
	if rd := progress(w, c.InSPI, 2200, 100); len(rd.Persist) != 0 {
		t.Fatal("renewed twice")
	}
	w.commit()
	if c.OutSeqReserved != 2100+SeqBlockStart || len(w.seqLimits) != 1 {
		t.Fatalf("after the commit: reservation %d, limits applied %d", c.OutSeqReserved, len(w.seqLimits))
	}
	// The next renewal 10 s later: the block doubles.
	w.now = w.now.Add(10 * time.Second)
	out := c.OutSeqReserved - SeqBlockStart/2
	rd = progress(w, c.InSPI, out, 100)
	if l := seqLimits(rd); len(l) != 1 || l[0].OutSeqLimit != out+2*SeqBlockStart || l[0].OutSeqMargin != SeqBlockStart {
		t.Fatalf("busy SA: %+v", l)
	}
	w.run(rd, false)
	// Two minutes later: the block stays.
	w.now = w.now.Add(2 * time.Minute)
	out = c.OutSeqReserved - SeqBlockStart
	rd = progress(w, c.InSPI, out, 100)
	if l := seqLimits(rd); len(l) != 1 || l[0].OutSeqLimit != out+2*SeqBlockStart {
		t.Fatalf("renewal after two minutes: %+v", l)
	}
	w.run(rd, false)
	// Inbound only: a write of InSeqLow, no new limit.
	w.now = w.now.Add(2 * time.Minute)
	rd = progress(w, c.InSPI, out, 100+2*SeqBlockStart)
	if len(rd.Persist) != 1 || rd.Persist[0].State.Children[0].InSeqLow != 100+2*SeqBlockStart || len(seqLimits(rd)) != 0 {
		t.Fatalf("inbound renewal: %+v", rd)
	}
	w.run(rd, false)
	if c.InSeqLow != 100+2*SeqBlockStart || w.res.Stats().SeqReservations != 4 {
		t.Fatalf("InSeqLow %d, renewals %d", c.InSeqLow, w.res.Stats().SeqReservations)
	}
}

// A restored CHILD SA sends from its committed reservation on and no
// further until the fresh one is committed.
func TestSeqRestore(t *testing.T) {
	w, _ := establish(t, responderConfig(t, 1))
	c := w.installs[0].Child
	w.run(progress(w, c.InSPI, 3000, 5000), false)
	st := *w.persists[len(w.persists)-1].State
	cs := st.Children[0]
	if cs.OutSeqReserved != 3000+SeqBlockStart || cs.InSeqLow != 5000 {
		t.Fatalf("record %+v", cs)
	}
	fresh, _ := NewEngine(responderConfig(t, 7))
	rd := &Ready{}
	sa, err := fresh.Restore(w.now, st, rd)
	if err != nil {
		t.Fatal(err)
	}
	ic, ok := rd.DataPlane[0].(InstallChild)
	if !ok || ic.OutSeq != cs.OutSeqReserved || ic.OutSeqLimit != cs.OutSeqReserved || ic.InSeqLow != 5000 {
		t.Fatalf("restored install %+v", rd.DataPlane[0])
	}
	l := seqLimits(rd)
	if len(rd.Persist) != 1 || rd.Persist[0].Kind != PersistReserved || len(l) != 1 ||
		l[0].OutSeqLimit != cs.OutSeqReserved+cs.SeqBlock || rd.Persist[0].State.Children[0].OutSeqReserved != l[0].OutSeqLimit {
		t.Fatalf("restore writes %+v and raises %+v", rd.Persist, l)
	}
	rc := sa.children[0]
	if rc.OutSeqReserved != cs.OutSeqReserved {
		t.Fatal("fresh reservation counted before its commit")
	}
	fresh.Committed(rd.Persist[0].SPI, rd.Persist[0].Version)
	if rc.OutSeqReserved != l[0].OutSeqLimit {
		t.Fatal("fresh reservation not committed")
	}
}

// seqPlane is a data plane for one CHILD SA as the contract has it: it
// sends up to its limit, reports once outbound crosses limit-margin, and
// takes SetSeqLimit (after the batch's commit).
type seqPlane struct {
	out, limit, margin uint64
	reported           bool
}

// The property the reservations exist for: however often the node
// crashes (with writes in flight lost), a CHILD SA never sends a sequence
// number twice.
func TestSeqNeverReused(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	w, _ := establish(t, responderConfig(t, 1))
	var committed *SAState = w.persists[len(w.persists)-1].State
	dp := seqPlane{limit: w.installs[0].OutSeqLimit, margin: w.installs[0].OutSeqMargin}
	used := uint64(0) // highest number ever sent with the key
	spi := resSPI(w)
	var pending []*Ready
	apply := func(rd *Ready) {
		for _, a := range rd.DataPlane {
			if s, ok := a.(SetSeqLimit); ok && s.OutSeqLimit > dp.limit {
				dp.limit, dp.margin, dp.reported = s.OutSeqLimit, s.OutSeqMargin, false
			}
		}
	}
	restores := 0
	for step := 0; step < 3000; step++ {
		w.now = w.now.Add(time.Duration(rng.IntN(3000)) * time.Millisecond)
		switch r := rng.IntN(100); {
		case r < 60: // traffic
			n := uint64(rng.IntN(3000))
			for i := uint64(0); i < n && dp.out < dp.limit; i++ {
				dp.out++
				if dp.out <= used {
					t.Fatalf("step %d: sequence number %d sent twice (highest used %d)", step, dp.out, used)
				}
				used = dp.out
			}
			if !dp.reported && dp.out+dp.margin >= dp.limit {
				dp.reported = true
				rd := R(func(rd *Ready) { w.res.SeqProgress(w.now, w.res.SA(spi).children[0].InSPI, dp.out, 0, rd) })
				if len(rd.Persist) > 0 {
					pending = append(pending, rd)
				}
			}
		case r < 85 && len(pending) > 0: // the oldest write commits
			rd := pending[0]
			pending = pending[1:]
			for _, p := range rd.Persist {
				w.res.Committed(p.SPI, p.Version)
				committed = p.State
			}
			apply(rd)
		case r < 90 && len(pending) > 0: // the oldest write fails
			rd := pending[0]
			pending = pending[1:]
			for _, p := range rd.Persist {
				w.res.PersistFailed(p.SPI, p.Version, &Ready{})
			}
			rd2 := R(func(rd *Ready) { w.res.Tick(w.now, rd) })
			if len(rd2.Persist) > 0 {
				pending = append(pending, rd2)
			}
		case r >= 97: // crash: restore the committed record elsewhere
			restores++
			fresh, _ := NewEngine(responderConfig(t, byte(restores)))
			rd := &Ready{}
			if _, err := fresh.Restore(w.now, *committed, rd); err != nil {
				t.Fatal(err)
			}
			w.res, pending = fresh, []*Ready{rd}
			ic := rd.DataPlane[0].(InstallChild)
			dp = seqPlane{out: ic.OutSeq, limit: ic.OutSeqLimit, margin: ic.OutSeqMargin}
		}
	}
	if restores < 20 || used < 100000 {
		t.Fatalf("weak run: %d restores, %d numbers", restores, used)
	}
	t.Logf("%d restores, %d sequence numbers, %d renewals", restores, used, w.res.Stats().SeqReservations)
}
