package ike

import (
	"testing"
	"time"
)

// The engine's timers run on the time it is given (the node's monotonic
// time); Config.Wall, the wall date, is stepped by an hour: no CHILD SA
// rekeys early, and the persisted state carries wall dates that keep
// the rekey schedule across a restore into an engine whose monotonic time
// started again elsewhere.
func TestWallClockStepMovesNoTimer(t *testing.T) {
	rcfg := responderConfig(t, 1)
	rcfg.ChildRekey = NewSmoothScheduler(50*time.Minute, 10*time.Minute, 0, newDetRand(5))
	var off time.Duration // wall date minus the engine's time
	rcfg.Wall = func(t time.Time) time.Time { return t.Add(off) }
	w, _ := establish(t, rcfg)
	c := w.installs[0].Child
	at := c.RekeyAt()
	if at.Before(c.Created.Add(40 * time.Minute)) {
		t.Fatalf("rekey at %v after creation", at.Sub(c.Created))
	}
	// The wall clock jumps an hour ahead; a minute passes.
	off = time.Hour
	installs := len(w.installs)
	for i := 0; i < 6; i++ {
		w.now = w.now.Add(10 * time.Second)
		w.run(R(func(rd *Ready) { w.res.Tick(w.now, rd) }), false)
	}
	if _, live := w.live(); c.RekeyAt() != at || len(w.installs) != installs || w.res.Stats().ChildRekeys != 0 || len(live) != 1 {
		t.Fatalf("after a +1h wall step: rekey at %v (was %v), %d CHILD SAs installed since, %d rekeys", c.RekeyAt(), at, len(w.installs)-installs, w.res.Stats().ChildRekeys)
	}
	// The snapshot's times are wall dates as of now.
	st, err := w.res.SA(resSPI(w)).Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Children[0].RekeyAt; !got.Equal(at.Add(off)) {
		t.Fatalf("persisted RekeyAt %v, want the wall date %v", got, at.Add(off))
	}
	if !st.Children[0].Created.Equal(c.Created.Add(off)) || !st.Established.Equal(w.res.SA(resSPI(w)).EstablishedAt().Add(off)) {
		t.Fatalf("persisted Created %v / Established %v are not wall dates", st.Children[0].Created, st.Established)
	}
	// A restart: monotonic time starts again far from the wall date (and
	// the wall clock is stepped back meanwhile). The rekey stays as far
	// ahead as it was.
	left := at.Sub(w.now)
	mono2 := time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC)
	wall2 := w.now.Add(off).Add(-30 * time.Minute) // 30 min later by the wall, stepped back 1 h
	ecfg := responderConfig(t, 3)
	ecfg.ChildRekey = NewSmoothScheduler(50*time.Minute, 10*time.Minute, 0, newDetRand(6))
	ecfg.Wall = func(t time.Time) time.Time { return t.Add(wall2.Sub(mono2)) }
	e2, err := NewEngine(ecfg)
	if err != nil {
		t.Fatal(err)
	}
	sa, err := e2.Restore(mono2, st, &Ready{})
	if err != nil {
		t.Fatal(err)
	}
	got := sa.Children()[0].RekeyAt().Sub(mono2)
	if want := st.Children[0].RekeyAt.Sub(wall2); got != want || got != left+30*time.Minute {
		t.Fatalf("restored rekey %v ahead, want %v (the wall date's distance; %v before the restart)", got, want, left)
	}
	if e2.WallTime(sa.Children()[0].RekeyAt()) != st.Children[0].RekeyAt {
		t.Fatalf("WallTime of the restored rekey %v, persisted %v", e2.WallTime(sa.Children()[0].RekeyAt()), st.Children[0].RekeyAt)
	}
}

// A node restarts after its wall clock was stepped an hour ahead: every
// persisted rekey time (wall dates within the next hour) has passed by
// the new wall date. They are placed by the scheduler, spread under its
// cap, not all rekeyed at once.
func TestRestoreAfterForwardStepSpreadsRekeys(t *testing.T) {
	const n, perSec = 200, 5
	rcfg := responderConfig(t, 1)
	rcfg.ChildRekey = NewSmoothScheduler(50*time.Minute, 10*time.Minute, perSec, newDetRand(5))
	written := t0 // the wall date of the writes
	wall := written.Add(time.Hour)
	mono := time.Date(2001, 1, 1, 0, 0, 0, 0, time.UTC) // the restarted process's
	rcfg.Wall = func(t time.Time) time.Time { return t.Add(wall.Sub(mono)) }
	res, _ := NewEngine(rcfg)
	tmpl := template(t)
	var sas []*IKESA
	for k := 0; k < n; k++ {
		st := fleetState(tmpl, k)
		st.MsgIDSync = false
		st.Children[0].RekeyAt = written.Add(time.Duration(k+1) * time.Hour / n)
		sa, err := res.Restore(mono, st, &Ready{})
		if err != nil {
			t.Fatal(err)
		}
		sas = append(sas, sa)
	}
	rd := R(func(rd *Ready) { res.Tick(mono, rd) })
	if len(rd.Send) != 0 || res.Stats().ChildRekeys != 0 {
		t.Fatalf("the first Tick after the restore sent %d messages", len(rd.Send))
	}
	perSecond := map[int64]int{}
	for _, sa := range sas {
		got := sa.children[0].RekeyAt()
		if !got.After(mono) || got.After(mono.Add(10*time.Minute/4+time.Second)) {
			t.Fatalf("passed rekey time placed %v after the restore", got.Sub(mono))
		}
		perSecond[got.Unix()]++
	}
	for sec, k := range perSecond {
		if k > perSec {
			t.Fatalf("%d rekeys in second %d, cap %d", k, sec, perSec)
		}
	}
	t.Logf("%d overdue rekeys after a +1h step spread over %d seconds (cap %d/s)", n, len(perSecond), perSec)
}
