package clock

import (
	"testing"
	"time"
)

func recv(c <-chan time.Time) (time.Time, bool) {
	select {
	case t := <-c:
		return t, true
	default:
		return time.Time{}, false
	}
}

func TestFakeTimersFireInOrderAtTheirDeadlines(t *testing.T) {
	start := time.Unix(1_000_000, 0)
	f := NewFake(start)
	a := f.NewTimer(3 * time.Second)
	b := f.NewTimer(time.Second)
	tk := f.NewTicker(2 * time.Second)
	if f.Waiting() != 3 {
		t.Fatalf("waiting %d", f.Waiting())
	}
	f.Advance(500 * time.Millisecond)
	if _, ok := recv(b.C()); ok {
		t.Fatal("fired early")
	}
	f.Advance(time.Hour)
	if got, ok := recv(b.C()); !ok || !got.Equal(start.Add(time.Second)) {
		t.Fatalf("b fired at %v (%v)", got, ok)
	}
	if got, ok := recv(a.C()); !ok || !got.Equal(start.Add(3*time.Second)) {
		t.Fatalf("a fired at %v (%v)", got, ok)
	}
	// The ticker's channel holds its first tick; later ones were dropped.
	if got, ok := recv(tk.C()); !ok || !got.Equal(start.Add(2*time.Second)) {
		t.Fatalf("ticker fired at %v (%v)", got, ok)
	}
	if !f.Now().Equal(start.Add(time.Hour + 500*time.Millisecond)) {
		t.Fatalf("now %v", f.Now())
	}
	if f.Waiting() != 1 { // only the ticker
		t.Fatalf("waiting %d", f.Waiting())
	}
	f.Advance(2 * time.Second)
	if got, ok := recv(tk.C()); !ok || !got.Equal(start.Add(time.Hour+2*time.Second)) {
		t.Fatalf("ticker after the jump: %v (%v)", got, ok)
	}
	tk.Stop()
	f.Advance(time.Minute)
	if _, ok := recv(tk.C()); ok || f.Waiting() != 0 {
		t.Fatal("stopped ticker ticked")
	}
}

func TestFakeTimerStopAndReset(t *testing.T) {
	f := NewFake(time.Unix(0, 0))
	tm := f.NewTimer(time.Second)
	if !tm.Stop() || tm.Stop() {
		t.Fatal("Stop results")
	}
	f.Advance(2 * time.Second)
	if _, ok := recv(tm.C()); ok {
		t.Fatal("stopped timer fired")
	}
	tm.Reset(time.Second)
	f.Advance(time.Second)
	// Reset drains a value nobody read: no stale tick.
	tm.Reset(time.Minute)
	if _, ok := recv(tm.C()); ok {
		t.Fatal("stale value after Reset")
	}
	tm.Reset(0) // due at once
	if _, ok := recv(tm.C()); !ok {
		t.Fatal("Reset(0) did not fire")
	}
	f.Set(time.Unix(-5, 0)) // never backwards
	if !f.Now().Equal(time.Unix(3, 0)) {
		t.Fatalf("now %v", f.Now())
	}
}

// The real clock's Mono carries no monotonic reading of its own (it is
// compared and converted as a plain instant), starts at the process's
// wall date and never goes back.
// A loop that read the clock, then armed its timer after another
// goroutine advanced the clock past the deadline, still fires: ResetAt
// takes the deadline, not a duration counted from a stale reading.
func TestFakeTimerResetAtDeadline(t *testing.T) {
	f := NewFake(time.Unix(0, 0))
	tm := f.NewTimer(time.Hour)
	read := f.Mono()
	deadline := read.Add(50 * time.Minute)
	f.Advance(time.Hour) // fires tm; the loop has not re-armed yet
	if _, ok := recv(tm.C()); !ok {
		t.Fatal("timer did not fire")
	}
	tm.ResetAt(deadline)
	if got, ok := recv(tm.C()); !ok || !got.Equal(time.Unix(3600, 0)) {
		t.Fatalf("past deadline: fired %v at %v", ok, got)
	}
	tm.ResetAt(f.Mono().Add(time.Second))
	f.Advance(999 * time.Millisecond)
	if _, ok := recv(tm.C()); ok {
		t.Fatal("fired early")
	}
	f.Advance(time.Millisecond)
	if got, ok := recv(tm.C()); !ok || !got.Equal(time.Unix(3601, 0)) {
		t.Fatalf("future deadline: fired %v at %v", ok, got)
	}
	r := Real().NewTimer(time.Hour)
	r.ResetAt(Real().Mono())
	select {
	case <-r.C():
	case <-time.After(10 * time.Second):
		t.Fatal("real timer armed for now did not fire")
	}
}

func TestRealMono(t *testing.T) {
	c := Real()
	a := c.Mono()
	if a != a.Round(0) {
		t.Fatalf("Mono %v carries a monotonic reading", a)
	}
	if a.Before(monoBase) {
		t.Fatalf("Mono %v before its base %v", a, monoBase)
	}
	for i := 0; i < 1000; i++ {
		b := c.Mono()
		if b.Before(a) {
			t.Fatalf("Mono went back from %v to %v", a, b)
		}
		a = b
	}
}
