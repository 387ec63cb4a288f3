package ike

import (
	"math"
	"time"
)

// timerWheel is a hashed timing wheel: one per engine shard, driven by
// the injected clock. Each IKE SA has at most one live entry (its earliest
// deadline); an entry whose SA has since moved its deadline is stale and
// dropped when its slot comes round. Adding, moving and expiring a timer
// are O(1); a million SAs cost a million 16-byte entries and no
// goroutines or runtime timers.
type timerWheel struct {
	slots   [][]wheelEntry
	tick    time.Duration
	current int64 // absolute tick number of the slot processed last
	started bool
	first   int64 // earliest tick added before the first advance
	count   int
	// soonest is the earliest deadline in the slot of tick current+1 (the
	// tick advance scanned last, partly, or the next one): an entry there
	// may be due before that tick is over, so nextTick must not wait for
	// the boundary. math.MaxInt64 when the slot holds nothing due in it.
	soonest int64
}

type wheelEntry struct {
	at  int64 // deadline, UnixNano
	spi uint64
}

const (
	wheelSlots = 4096
	wheelTick  = 100 * time.Millisecond
)

func newTimerWheel() *timerWheel {
	return &timerWheel{slots: make([][]wheelEntry, wheelSlots), tick: wheelTick, soonest: math.MaxInt64}
}

func (w *timerWheel) tickOf(t int64) int64 { return t / int64(w.tick) }

// add schedules spi at t.
func (w *timerWheel) add(t time.Time, spi uint64) {
	at := t.UnixNano()
	tk := w.tickOf(at)
	if w.started && tk <= w.current {
		tk = w.current + 1 // already due: fire on the next advance
	}
	if !w.started && (w.count == 0 || tk < w.first) {
		w.first = tk
	}
	if w.started && tk == w.current+1 && at < w.soonest {
		w.soonest = at
	}
	s := int(tk % wheelSlots)
	w.slots[s] = append(w.slots[s], wheelEntry{at: at, spi: spi})
	w.count++
}

// advance calls fire for every entry due at or before now. Ticks before
// now's are completed; now's own slot is scanned for what is already due
// and revisited on the next call.
func (w *timerWheel) advance(now time.Time, fire func(spi uint64, at time.Time)) {
	nowNano := now.UnixNano()
	nowTick := w.tickOf(nowNano)
	if !w.started {
		w.started = true
		w.current = nowTick - 1
		if w.count > 0 && w.first-1 < w.current {
			w.current = w.first - 1 // entries added before the first advance
		}
	}
	// A long gap needs at most one pass over the wheel.
	if nowTick-1-w.current > wheelSlots {
		w.current = nowTick - 1 - wheelSlots
	}
	var due []wheelEntry
	scan := func(tick int64) {
		s := int(tick % wheelSlots)
		entries := w.slots[s]
		keep := entries[:0]
		for _, e := range entries {
			if e.at <= nowNano {
				due = append(due, e)
			} else {
				keep = append(keep, e)
			}
		}
		clear(entries[len(keep):])
		w.slots[s] = keep
	}
	for w.current < nowTick-1 {
		w.current++
		scan(w.current)
	}
	scan(nowTick)
	w.soonest = math.MaxInt64
	for _, e := range w.slots[int(nowTick%wheelSlots)] {
		if w.tickOf(e.at) <= nowTick && e.at < w.soonest {
			w.soonest = e.at
		}
	}
	w.count -= len(due)
	for _, e := range due {
		fire(e.spi, time.Unix(0, e.at))
	}
}

// nextTick returns when advance next has work to look at: now when an
// entry may already be due (ticks have gone by since the last advance, or
// the current tick holds an entry due by now), else the next tick
// boundary while any entry is pending. It never assumes an advance
// happened at now: a caller whose timer did not fire (it was stopped and
// re-armed around other work while a boundary passed, or a test clock
// jumped) is told to advance at once instead of at the next boundary,
// which a test clock might never reach.
func (w *timerWheel) nextTick(now time.Time) (time.Time, bool) {
	if w.count == 0 {
		return time.Time{}, false
	}
	nowNano := now.UnixNano()
	nowTick := w.tickOf(nowNano)
	switch {
	case !w.started && w.first <= nowTick,
		w.started && w.current < nowTick-1,
		w.started && w.current == nowTick-1 && w.soonest <= nowNano:
		return now, true
	}
	return time.Unix(0, (nowTick+1)*int64(w.tick)), true
}
