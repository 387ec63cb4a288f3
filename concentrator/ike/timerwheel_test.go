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

// nextTick never waits for a boundary when work is already due: after
// ticks went by without an advance (a caller's timer was re-armed around
// other work, or a test clock jumped and stopped), or when an entry of the
// current tick, or one added already past, is due by now.
func TestTimerWheelNextTickWhenDue(t *testing.T) {
	w := newTimerWheel()
	nop := func(uint64, time.Time) {}
	now := t0.Add(10 * time.Millisecond)
	w.add(t0.Add(10*time.Second), 1)
	if got, _ := w.nextTick(now); !got.Equal(t0.Add(100 * time.Millisecond)) {
		t.Fatalf("before the first advance, nothing due: %v", got)
	}
	if got, _ := w.nextTick(t0.Add(time.Minute)); !got.Equal(t0.Add(time.Minute)) {
		t.Fatalf("before the first advance, due: %v", got)
	}
	w.advance(now, nop)
	if got, _ := w.nextTick(now); !got.Equal(t0.Add(100 * time.Millisecond)) {
		t.Fatalf("nothing due: %v, want the boundary", got)
	}
	later := t0.Add(time.Minute)
	if got, _ := w.nextTick(later); !got.Equal(later) {
		t.Fatalf("an entry due a minute ago and no advance since: %v, want now", got)
	}
	w.add(t0.Add(50*time.Millisecond), 2) // later in the advanced tick
	if got, _ := w.nextTick(t0.Add(20 * time.Millisecond)); !got.Equal(t0.Add(100 * time.Millisecond)) {
		t.Fatalf("an entry not yet due: %v, want the boundary", got)
	}
	if got, _ := w.nextTick(t0.Add(60 * time.Millisecond)); !got.Equal(t0.Add(60 * time.Millisecond)) {
		t.Fatalf("an entry of this tick due: %v, want now", got)
	}
	var fired []uint64
	w.advance(t0.Add(60*time.Millisecond), func(spi uint64, _ time.Time) { fired = append(fired, spi) })
	if len(fired) != 1 || fired[0] != 2 {
		t.Fatalf("fired %v, want [2]", fired)
	}
	if got, _ := w.nextTick(t0.Add(70 * time.Millisecond)); !got.Equal(t0.Add(100 * time.Millisecond)) {
		t.Fatalf("after the advance: %v, want the boundary", got)
	}
	w.add(t0.Add(-time.Second), 3) // already past
	if got, _ := w.nextTick(t0.Add(70 * time.Millisecond)); !got.Equal(t0.Add(70 * time.Millisecond)) {
		t.Fatalf("an entry added already past: %v, want now", got)
	}
}
