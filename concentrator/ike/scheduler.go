package ike

import (
	"encoding/binary"
	"io"
	"sync"
	"time"
)

// RekeyScheduler decides when a CHILD SA created at created is rekeyed.
// renewal says the CHILD SA replaces one that was rekeyed on schedule
// (rather than a new tunnel). Implementations shared by engine shards must
// be safe for concurrent use.
type RekeyScheduler interface {
	Schedule(created time.Time, renewal bool) time.Time
}

// SmoothScheduler spreads CHILD rekeys evenly over a window before the
// gateways' own rekey timers and caps their rate. A new tunnel's first
// rekey goes in [created+After-Window, created+After]; of a few random
// one-second slots in that range it takes the least loaded (power of
// choices), so a mass reconnect turns into a flat rekey load instead of a
// herd. A renewal keeps the spread once made: it goes after a fixed period
// (After-Window/2, within ±Window/40, again least loaded), so the next
// cycle has the shape of this one instead of the blur that independent
// jitter adds cycle after cycle. Never more than MaxPerSecond land in one
// second while the window has room.
type SmoothScheduler struct {
	After        time.Duration // latest rekey, relative to creation
	Window       time.Duration // rekeys spread over [After-Window, After]
	MaxPerSecond int           // 0: no cap
	Choices      int           // random slots compared per SA; 0 = 4

	mu    sync.Mutex
	rand  io.Reader
	load  map[int64]int32 // scheduled rekeys per unix second
	floor int64           // seconds below this have been pruned
}

// NewSmoothScheduler returns a scheduler drawing randomness from rand.
func NewSmoothScheduler(after, window time.Duration, maxPerSecond int, rand io.Reader) *SmoothScheduler {
	if window > after {
		window = after
	}
	return &SmoothScheduler{After: after, Window: window, MaxPerSecond: maxPerSecond, rand: rand, load: map[int64]int32{}}
}

func (s *SmoothScheduler) Schedule(created time.Time, renewal bool) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	latest := created.Add(s.After).Unix()
	earliest := created.Add(s.After - s.Window).Unix()
	if renewal {
		mid := created.Add(s.After - s.Window/2)
		earliest, latest = mid.Add(-s.Window/40).Unix(), mid.Add(s.Window/40).Unix()
	}
	span := latest - earliest + 1
	choices := s.Choices
	if choices == 0 {
		choices = 4
	}
	s.prune(created.Unix())
	best, bestLoad := int64(-1), int32(0)
	var b [8]byte
	for i := 0; i < choices; i++ {
		io.ReadFull(s.rand, b[:])
		sec := earliest + int64(binary.BigEndian.Uint64(b[:])%uint64(span))
		if l := s.load[sec]; best < 0 || l < bestLoad {
			best, bestLoad = sec, l
		}
	}
	if s.MaxPerSecond > 0 && int(bestLoad) >= s.MaxPerSecond {
		// Over the cap: the first second in the window with room.
		for sec := earliest; sec <= latest; sec++ {
			if int(s.load[sec]) < s.MaxPerSecond {
				best = sec
				break
			}
		}
	}
	s.load[best]++
	// A random sub-second offset keeps the second's rekeys apart.
	io.ReadFull(s.rand, b[:])
	return time.Unix(best, int64(binary.BigEndian.Uint64(b[:])%uint64(time.Second)))
}

// SetMaxPerSecond changes the cap (0: none), e.g. to the node's share of
// a fleet-wide rate as nodes join and leave. Rekeys placed already keep
// their times.
func (s *SmoothScheduler) SetMaxPerSecond(n int) {
	s.mu.Lock()
	s.MaxPerSecond = n
	s.mu.Unlock()
}

// Cap returns the current cap (0: none).
func (s *SmoothScheduler) Cap() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.MaxPerSecond
}

// prune forgets seconds that have passed (bounded memory: one counter per
// second of the window ahead).
func (s *SmoothScheduler) prune(now int64) {
	if now-s.floor < 60 {
		return
	}
	for sec := range s.load {
		if sec < now {
			delete(s.load, sec)
		}
	}
	s.floor = now
}

// RestoreScheduler is implemented by schedulers that also place the rekeys
// of restored CHILD SAs (no rekey merely because of a restore): Restored
// accounts for a persisted rekey time that is kept, Overdue gives a CHILD
// SA whose rekey time passed while it was not served a new one, spread
// out and under the rate cap.
type RestoreScheduler interface {
	Restored(at time.Time)
	Overdue(now time.Time) time.Time
}

// Restored counts a restored CHILD SA's kept rekey time, so the seconds
// it loads are known to Schedule and Overdue.
func (s *SmoothScheduler) Restored(at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.load[at.Unix()]++
}

// Overdue places a rekey that is due already: in the next Window/4 (at
// least a second), in the least loaded of a few random seconds; past the
// cap, the first second with room (beyond that range if need be).
func (s *SmoothScheduler) Overdue(now time.Time) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.prune(now.Unix())
	earliest := now.Unix() + 1
	span := max(int64(s.Window/4/time.Second), 1)
	choices := s.Choices
	if choices == 0 {
		choices = 4
	}
	var b [8]byte
	best, bestLoad := int64(-1), int32(0)
	for i := 0; i < choices; i++ {
		io.ReadFull(s.rand, b[:])
		sec := earliest + int64(binary.BigEndian.Uint64(b[:])%uint64(span))
		if l := s.load[sec]; best < 0 || l < bestLoad {
			best, bestLoad = sec, l
		}
	}
	if s.MaxPerSecond > 0 && int(bestLoad) >= s.MaxPerSecond {
		for sec := earliest; ; sec++ {
			if int(s.load[sec]) < s.MaxPerSecond {
				best = sec
				break
			}
		}
	}
	s.load[best]++
	io.ReadFull(s.rand, b[:])
	return time.Unix(best, int64(binary.BigEndian.Uint64(b[:])%uint64(time.Second)))
}

// JitterScheduler is the plain alternative: After ± Fraction, uniformly.
type JitterScheduler struct {
	After    time.Duration
	Fraction float64
	mu       sync.Mutex
	rand     io.Reader
}

// NewJitterScheduler returns a ±fraction jitter scheduler.
func NewJitterScheduler(after time.Duration, fraction float64, rand io.Reader) *JitterScheduler {
	return &JitterScheduler{After: after, Fraction: fraction, rand: rand}
}

func (j *JitterScheduler) Schedule(created time.Time, _ bool) time.Time {
	j.mu.Lock()
	defer j.mu.Unlock()
	var b [8]byte
	io.ReadFull(j.rand, b[:])
	u := float64(binary.BigEndian.Uint64(b[:])>>11) / (1 << 53) // [0,1)
	d := time.Duration(float64(j.After) * (1 + j.Fraction*(2*u-1)))
	return created.Add(d)
}
