package ike

import (
	"testing"
	"time"
)

func TestTimerWheel(t *testing.T) {
	w := newTimerWheel()
	var fired []uint64
	fire := func(spi uint64, _ time.Time) { fired = append(fired, spi) }
	w.advance(t0, fire)
	w.add(t0.Add(50*time.Millisecond), 1) // later in the current tick
	w.add(t0.Add(time.Hour), 2)           // many rotations ahead
	w.add(t0.Add(-time.Second), 3)        // already past: next advance
	w.add(t0.Add(250*time.Millisecond), 4)
	w.advance(t0.Add(10*time.Millisecond), fire)
	if len(fired) != 1 || fired[0] != 3 {
		t.Fatalf("fired %v, want [3]", fired)
	}
	w.advance(t0.Add(60*time.Millisecond), fire) // same tick, now due
	if len(fired) != 2 || fired[1] != 1 {
		t.Fatalf("fired %v, want 1 next", fired)
	}
	w.advance(t0.Add(59*time.Minute), fire) // a long gap: one pass
	if len(fired) != 3 || fired[2] != 4 {
		t.Fatalf("fired %v, want 4 next", fired)
	}
	w.advance(t0.Add(time.Hour), fire)
	if len(fired) != 4 || fired[3] != 2 || w.count != 0 {
		t.Fatalf("fired %v (count %d), want 2 last", fired, w.count)
	}
	if _, ok := w.nextTick(t0); ok {
		t.Fatal("empty wheel has a next tick")
	}
}

// Entries added before the wheel's first advance fire even when that
// advance comes long after them.
func TestTimerWheelFirstAdvanceLate(t *testing.T) {
	w := newTimerWheel()
	w.add(t0.Add(5*time.Minute), 7)
	w.add(t0.Add(time.Second), 8)
	var fired []uint64
	w.advance(t0.Add(10*time.Minute), func(spi uint64, _ time.Time) { fired = append(fired, spi) })
	if len(fired) != 2 {
		t.Fatalf("fired %v, want both", fired)
	}
}
