package loadtest

import (
	"errors"
	"math"
	"time"
)

// Merge combines the reports of several processes that loaded one
// responder at the same time (a fleet larger than one process's open file
// limit, each process with its own range of gateways): the counts add up;
// the timelines are summed second by second on the wall clock (a part that
// ended early keeps its last number of SAs); the setup rate against the
// fleet size is measured again on the summed timeline, interpolating
// within a second. Latency percentiles do not add up: each latency figure
// is the worst of the parts'. The responder's CPU and memory are the first
// part's (every part watched the same process), its setups per CPU-second
// counted against all setups.
func Merge(reps []Report, label string) (Report, error) {
	if len(reps) == 0 {
		return Report{}, errors.New("merge: no report")
	}
	start := reps[0].Started
	for _, r := range reps {
		if r.Started.Before(start) {
			start = r.Started
		}
	}
	m := Report{Version: reps[0].Version, Scenario: reps[0].Scenario, Label: label, Started: start, Params: reps[0].Params,
		Failures: map[string]int{}, ChildFailures: map[string]int{}, Losses: map[string]int{}, Consistent: true,
		Proposal: reps[0].Proposal, Self: reps[0].Self}
	if label == "" {
		m.Label = reps[0].Label
	}
	m.Params.Count, m.Params.First = 0, reps[0].Params.First
	var end time.Time
	var setupCPU float64 // the responder's CPU-seconds over the longest setup phase
	for _, r := range reps {
		m.Params.Count += r.Params.Count
		m.Params.First = min(m.Params.First, r.Params.First)
		m.Attempted += r.Attempted
		m.Established += r.Established
		m.Failed += r.Failed
		m.TimedOut += r.TimedOut
		m.InFlight += r.InFlight
		m.Consistent = m.Consistent && r.Consistent
		m.Children += r.Children
		m.Abandoned += r.Abandoned
		m.Deleted += r.Deleted
		m.Lost += r.Lost
		m.Reauthentications += r.Reauthentications
		m.Retransmits += r.Retransmits
		m.SourcePorts += r.SourcePorts
		m.Keepalives += r.Keepalives
		addCounts(m.Failures, r.Failures)
		addCounts(m.ChildFailures, r.ChildFailures)
		addCounts(m.Losses, r.Losses)
		m.LatencyMS = worst(m.LatencyMS, r.LatencyMS)
		m.RekeyLatencyMS = worst(m.RekeyLatencyMS, r.RekeyLatencyMS)
		if r.LatencyMS.P99 >= m.LatencyMS.P99 {
			m.Percentiles, m.LatencyBars = r.Percentiles, r.LatencyBars
		}
		if e := r.Started.Add(time.Duration(r.DurationS * float64(time.Second))); e.After(end) {
			end = e
		}
		off := r.Started.Sub(start).Seconds()
		m.SetupPhaseS = max(m.SetupPhaseS, off+r.SetupPhaseS)
		if t := r.Target; t != nil && t.SetupsPerCPU > 0 {
			setupCPU = max(setupCPU, float64(r.Established)/t.SetupsPerCPU)
		}
	}
	m.DurationS = end.Sub(start).Seconds()
	if m.SetupPhaseS > 0 {
		m.RatePerS = float64(m.Established) / m.SetupPhaseS
	}
	if t := reps[0].Target; t != nil {
		tc := *t
		if setupCPU > 0 {
			tc.SetupsPerCPU = round1(float64(m.Established) / setupCPU)
		}
		m.Target = &tc
	}

	// The timelines, on the wall clock.
	n := int(math.Ceil(m.DurationS)) + 1
	m.Timeline = make([]second, n)
	for _, r := range reps {
		off := int(r.Started.Sub(start).Round(time.Second) / time.Second)
		last := second{}
		for i := off; i < n; i++ {
			k := i - off
			s := last
			if k < len(r.Timeline) {
				s = r.Timeline[k]
				last = second{Active: s.Active}
			}
			t := &m.Timeline[i]
			t.Attempts += s.Attempts
			t.Setups += s.Setups
			t.Failed += s.Failed
			t.TimedOut += s.TimedOut
			t.Rekeys += s.Rekeys
			t.Lost += s.Lost
			t.Active += s.Active
			t.InFlight += s.InFlight
			t.ESPSent += s.ESPSent
			t.SelfCPU += s.SelfCPU
			if k < len(r.Timeline) && t.TargetRSS == 0 {
				t.TargetCPU, t.TargetRSS = s.TargetCPU, s.TargetRSS
			}
		}
	}
	prevActive := 0
	prev := FleetRate{}
	for i, s := range m.Timeline {
		m.PeakRatePerS = max(m.PeakRatePerS, s.Setups)
		m.PeakSAs = max(m.PeakSAs, s.Active)
		for _, mark := range fleetMarks {
			if mark <= prev.Fleet || prevActive >= mark || s.Active < mark {
				continue
			}
			// Crossed within second i: interpolate.
			at := float64(i) + float64(mark-prevActive)/float64(s.Active-prevActive)
			fr := FleetRate{Fleet: mark, AtS: round3(at)}
			if d := at - prev.AtS; d > 0 {
				fr.RatePerS = math.Round(float64(mark-prev.Fleet)/d*10) / 10
			}
			m.FleetRates = append(m.FleetRates, fr)
			prev = fr
		}
		prevActive = s.Active
	}
	return m, nil
}

func addCounts(dst, src map[string]int) {
	for k, v := range src {
		dst[k] += v
	}
}

func worst(a, b Latency) Latency {
	return Latency{Count: a.Count + b.Count, Mean: max(a.Mean, b.Mean), P50: max(a.P50, b.P50), P90: max(a.P90, b.P90),
		P99: max(a.P99, b.P99), P999: max(a.P999, b.P999), Max: max(a.Max, b.Max)}
}
