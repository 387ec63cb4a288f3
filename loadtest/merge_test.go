package loadtest

import (
	"testing"
	"time"
)

// Two processes, the second started a second later, each growing its
// share of the fleet by 500 SAs a second: the merged timeline adds them
// on the wall clock and the rate against fleet size is that of the sum.
func TestMergeSumsOnTheWallClock(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	part := func(start time.Time, secs int) Report {
		r := Report{Started: start, Params: Params{Count: 500 * secs, First: 1}, Consistent: true, DurationS: float64(secs),
			Attempted: 500 * secs, Established: 500 * secs, SetupPhaseS: float64(secs),
			LatencyMS: Latency{P50: 10, P99: 40}, Failures: map[string]int{"x": 1}}
		for i := range secs {
			r.Timeline = append(r.Timeline, second{Setups: 500, Attempts: 500, Active: 500 * (i + 1)})
		}
		return r
	}
	a, b := part(t0, 4), part(t0.Add(time.Second), 4)
	b.Params.First = 2001
	b.LatencyMS.P99 = 90
	m, err := Merge([]Report{a, b}, "both")
	if err != nil {
		t.Fatal(err)
	}
	if m.Established != 4000 || m.Params.Count != 4000 || m.Params.First != 1 || m.Failures["x"] != 2 || !m.Consistent || m.Label != "both" {
		t.Fatalf("counts: %+v", m)
	}
	if m.LatencyMS.P99 != 90 || m.LatencyMS.P50 != 10 {
		t.Fatalf("latency: %+v", m.LatencyMS)
	}
	// Seconds: 500, 1500, 2500, 3500, 4000 (the first part done at 4 s).
	want := []int{500, 1500, 2500, 3500, 4000}
	for i, w := range want {
		if m.Timeline[i].Active != w {
			t.Fatalf("second %d: %d SAs, want %d (%+v)", i, m.Timeline[i].Active, w, m.Timeline)
		}
	}
	if m.PeakSAs != 4000 || m.DurationS != 5 {
		t.Fatalf("peak %d, duration %v", m.PeakSAs, m.DurationS)
	}
	// 1000 SAs at 1.5 s (half-way through second 1), 2000 at 2.5 s: 1000/s
	// between them.
	if len(m.FleetRates) < 2 || m.FleetRates[0].Fleet != 1000 || m.FleetRates[0].AtS != 1.5 ||
		m.FleetRates[1].Fleet != 2000 || m.FleetRates[1].RatePerS != 1000 {
		t.Fatalf("fleet rates: %+v", m.FleetRates)
	}
	if _, err := Merge(nil, ""); err == nil {
		t.Fatal("merged nothing")
	}
}
