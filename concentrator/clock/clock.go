// Package clock is a node's time: the real clock, or a fake one that tests
// advance by hand, so that an hour of rekeys and liveness checks runs in
// milliseconds. The IKE engine takes the time as an argument; this is for
// the node's timers around it.
package clock

import (
	"sort"
	"sync"
	"time"
)

// Clock tells the time and makes timers.
//
// Now is the wall date: for what is compared with dates from outside the
// process (certificates, CRLs and OCSP answers, session tickets, anything
// written to the state store). Mono is the node's monotonic-derived time:
// it advances with the monotonic clock only, so a step of the system clock
// (an NTP correction, an operator's date command) does not move it. Timers,
// lifetimes, liveness checks and the rekey schedule run on Mono. A Mono
// reading is meaningful only within the process that took it: never
// persist one, never compare one with a wall date (convert with
// Now().Add(t.Sub(Mono())) at the moment of writing).
type Clock interface {
	Now() time.Time
	Mono() time.Time
	NewTimer(d time.Duration) Timer
	NewTicker(d time.Duration) Ticker
}

// Timer is a one-shot timer, as time.Timer (Go 1.23 semantics: Stop and
// Reset leave no stale value in C).
type Timer interface {
	C() <-chan time.Time
	Stop() bool
	Reset(d time.Duration) bool
	// ResetAt arms the timer for the Mono time at: at once if at is not
	// after Mono now. A loop that computes its next deadline should arm
	// with the deadline itself, not with a duration from a reading of
	// the clock it took earlier: with a fake clock advanced by another
	// goroutine in between, that duration would count from the new time.
	ResetAt(at time.Time) bool
}

// Ticker ticks every period, dropping ticks for a slow reader.
type Ticker interface {
	C() <-chan time.Time
	Stop()
}

// Real is the system clock.
func Real() Clock { return realClock{} }

type realClock struct{}

// monoStart is the process's first reading; Mono counts from its wall
// reading by the monotonic clock.
var (
	monoStart = time.Now()
	monoBase  = monoStart.Round(0) // the wall reading alone
)

func (realClock) Now() time.Time                   { return time.Now() }
func (realClock) Mono() time.Time                  { return monoBase.Add(time.Since(monoStart)) }
func (realClock) NewTimer(d time.Duration) Timer   { return realTimer{time.NewTimer(d)} }
func (realClock) NewTicker(d time.Duration) Ticker { return realTicker{time.NewTicker(d)} }

type realTimer struct{ t *time.Timer }

func (t realTimer) C() <-chan time.Time        { return t.t.C }
func (t realTimer) Stop() bool                 { return t.t.Stop() }
func (t realTimer) Reset(d time.Duration) bool { return t.t.Reset(d) }
func (t realTimer) ResetAt(at time.Time) bool {
	return t.t.Reset(at.Sub(realClock{}.Mono()))
}

type realTicker struct{ t *time.Ticker }

func (t realTicker) C() <-chan time.Time { return t.t.C }
func (t realTicker) Stop()               { t.t.Stop() }

// Fake is a clock that moves only when told to. Timers and tickers fire
// during Advance and Set, in the order of their deadlines; a ticker fires
// once per call however many periods pass (the goroutines reading it run
// concurrently and would see the time jump anyway). Safe for concurrent
// use.
type Fake struct {
	mu     sync.Mutex
	now    time.Time
	timers map[*fakeTimer]struct{}
}

// NewFake returns a fake clock showing start.
func NewFake(start time.Time) *Fake {
	return &Fake{now: start, timers: map[*fakeTimer]struct{}{}}
}

// Now implements Clock.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// Mono implements Clock: a fake clock is never stepped, so its monotonic
// and wall readings are the same. (A test that steps the wall reading
// wraps the fake and changes Now alone.)
func (f *Fake) Mono() time.Time { return f.Now() }

// Advance moves the clock forward by d, firing what falls due.
func (f *Fake) Advance(d time.Duration) { f.Set(f.Now().Add(d)) }

// Set moves the clock to t (never backwards), firing what falls due on
// the way: timers whose deadlines come first fire first, and the clock
// shows each deadline while its timer fires.
func (f *Fake) Set(t time.Time) {
	for {
		f.mu.Lock()
		if t.Before(f.now) {
			f.mu.Unlock()
			return
		}
		var due []*fakeTimer
		for ft := range f.timers {
			if !ft.at.After(t) {
				due = append(due, ft)
			}
		}
		if len(due) == 0 {
			f.now = t
			f.mu.Unlock()
			return
		}
		sort.Slice(due, func(i, j int) bool { return due[i].at.Before(due[j].at) })
		ft := due[0]
		if ft.at.After(f.now) {
			f.now = ft.at
		}
		if ft.period > 0 {
			// Next tick after t: one tick per call, the rest dropped as a
			// real ticker drops them for a reader that is behind.
			ft.at = ft.at.Add((t.Sub(ft.at)/ft.period + 1) * ft.period)
		} else {
			delete(f.timers, ft)
		}
		now := f.now
		f.mu.Unlock()
		select {
		case ft.c <- now:
		default:
		}
	}
}

// Waiting is the number of timers and tickers armed: a test waits for it
// to know that a goroutine went back to sleep before it advances.
func (f *Fake) Waiting() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.timers)
}

// NewTimer implements Clock.
func (f *Fake) NewTimer(d time.Duration) Timer {
	ft := &fakeTimer{f: f, c: make(chan time.Time, 1)}
	ft.Reset(d)
	return ft
}

// NewTicker implements Clock.
func (f *Fake) NewTicker(d time.Duration) Ticker {
	if d <= 0 {
		panic("clock: non-positive interval for NewTicker")
	}
	ft := &fakeTimer{f: f, c: make(chan time.Time, 1), period: d}
	f.mu.Lock()
	ft.at = f.now.Add(d)
	f.timers[ft] = struct{}{}
	f.mu.Unlock()
	return fakeTicker{ft}
}

type fakeTicker struct{ t *fakeTimer }

func (t fakeTicker) C() <-chan time.Time { return t.t.c }
func (t fakeTicker) Stop()               { t.t.Stop() }

type fakeTimer struct {
	f      *Fake
	c      chan time.Time
	at     time.Time
	period time.Duration // tickers
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }

func (t *fakeTimer) Stop() bool {
	t.f.mu.Lock()
	_, armed := t.f.timers[t]
	delete(t.f.timers, t)
	t.f.mu.Unlock()
	select { // no stale value after Stop
	case <-t.c:
	default:
	}
	return armed
}

func (t *fakeTimer) Reset(d time.Duration) bool {
	armed := t.Stop()
	t.f.mu.Lock()
	t.at = t.f.now.Add(d)
	t.f.timers[t] = struct{}{}
	t.f.mu.Unlock()
	if d <= 0 {
		t.f.Set(t.f.Now()) // due now
	}
	return armed
}

func (t *fakeTimer) ResetAt(at time.Time) bool {
	armed := t.Stop()
	t.f.mu.Lock()
	t.at = at
	t.f.timers[t] = struct{}{}
	due := !at.After(t.f.now)
	t.f.mu.Unlock()
	if due {
		t.f.Set(t.f.Now())
	}
	return armed
}
