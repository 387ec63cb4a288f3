package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"time"
)

// A/B rows (--against): a change of a few percent in the node's CPU per
// SA is below what one row shows on a shared machine, whose speed drifts
// by tens of percent within minutes (the engine's own figure moves with
// it). So each row runs --rounds times with both builds, back to back and
// in alternating order (baseline first in even rounds), and the figure is
// the median of each round's ratio: a drift slower than two runs cancels
// out of a ratio, and the alternation cancels the order's.

// abRound is one round of a row: the baseline's result and this build's.
type abRound struct{ base, this rowResult }

// abSummary is what the rounds of one row show: the medians of the
// per-round ratios (this build over the baseline) of CPU per SA, p99
// setup, RSS per SA and what the node allocated per SA, the spread of
// the CPU ratio, and each build's median CPU per SA.
type abSummary struct {
	cpu, p99, rss, alloc float64
	cpuLo, cpuHi         float64
	baseCPU, thisCPU     time.Duration
	rounds, thisFasterIn int
}

func summarize(rounds []abRound) abSummary {
	var s abSummary
	var cpu, p99, rss, alloc []float64
	var bc, tc []time.Duration
	for _, r := range rounds {
		cpu = append(cpu, ratio(float64(r.this.CPUPerSA), float64(r.base.CPUPerSA)))
		p99 = append(p99, ratio(float64(r.this.P99), float64(r.base.P99)))
		rss = append(rss, ratio(float64(r.this.RSSPerSA), float64(r.base.RSSPerSA)))
		alloc = append(alloc, ratio(r.this.AllocPerSA, r.base.AllocPerSA))
		bc, tc = append(bc, r.base.CPUPerSA), append(tc, r.this.CPUPerSA)
		if r.this.CPUPerSA < r.base.CPUPerSA {
			s.thisFasterIn++
		}
	}
	s.rounds = len(rounds)
	if s.rounds == 0 {
		return s
	}
	s.cpu, s.p99, s.rss, s.alloc = median(cpu), median(p99), median(rss), median(alloc)
	s.cpuLo, s.cpuHi = slices.Min(cpu), slices.Max(cpu)
	s.baseCPU, s.thisCPU = median(bc), median(tc)
	return s
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// median of xs (the mean of the middle two for an even count).
func median[T float64 | time.Duration](xs []T) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// abRows runs every row of o.rows --rounds times with o.against and with
// o.bin, and prints each round and each row's medians.
func (o *options) abRows(ctx context.Context, out io.Writer, nodeCPU int) error {
	fmt.Fprintf(out, "A/B: %s (this) against %s (baseline), %d rounds of %d gateways at %.0f/s per row, alternating which runs first\n",
		o.bin, o.against, o.rounds, o.count, o.rate)
	const roundFmt = "%-20s %5s %14s %14s %9s %12s %12s %9s\n"
	fmt.Fprintf(out, roundFmt, "config", "round", "base CPU/SA ms", "this CPU/SA ms", "ratio", "base p99 ms", "this p99 ms", "ratio")
	this, profile := o.bin, o.cpuprofile
	defer func() { o.bin, o.cpuprofile = this, profile }()
	for _, spec := range o.rows {
		if spec.strongswan {
			fmt.Fprintf(out, "%-20s skipped: A/B compares two builds of the node\n", spec)
			continue
		}
		spec.gateways = o.count
		var rounds []abRound
		lastFailed := false
		for i := range o.rounds {
			var r abRound
			order := []string{o.against, this}
			if i%2 == 1 {
				order = []string{this, o.against}
			}
			var err error
			for _, bin := range order {
				o.bin, o.cpuprofile = bin, abProfile(profile, bin == this)
				var res rowResult
				if res, err = o.row(ctx, spec, nodeCPU); err != nil {
					break
				}
				if res.Failed > 0 {
					err = fmt.Errorf("%s: %d of %d failed", bin, res.Failed, spec.gateways)
					break
				}
				if bin == this {
					r.this = res
				} else {
					r.base = res
				}
			}
			lastFailed = err != nil
			if err != nil {
				fmt.Fprintf(out, "%-20s %5d error: %s\n", spec, i+1, firstLine(err))
				continue
			}
			rounds = append(rounds, r)
			fmt.Fprintf(out, roundFmt, spec, fmt.Sprint(i+1), fmt.Sprintf("%.3f", ms(r.base.CPUPerSA)), fmt.Sprintf("%.3f", ms(r.this.CPUPerSA)),
				fmt.Sprintf("%.3f", ratio(float64(r.this.CPUPerSA), float64(r.base.CPUPerSA))),
				fmt.Sprintf("%.1f", ms(r.base.P99)), fmt.Sprintf("%.1f", ms(r.this.P99)), fmt.Sprintf("%.3f", ratio(float64(r.this.P99), float64(r.base.P99))))
		}
		if len(rounds) == 0 {
			continue
		}
		s := summarize(rounds)
		fmt.Fprintf(out, "%-20s median of %d rounds: CPU/SA %.3f -> %.3f ms, ratio %.3f (%.3f to %.3f; this build cheaper in %d of %d); p99 ratio %.3f; RSS/SA ratio %.3f; allocated/SA ratio %.3f\n",
			spec, s.rounds, ms(s.baseCPU), ms(s.thisCPU), s.cpu, s.cpuLo, s.cpuHi, s.thisFasterIn, s.rounds, s.p99, s.rss, s.alloc)
		if profile != "" && !lastFailed {
			// Both builds' profiles are of their last round (abProfile).
			last := rounds[len(rounds)-1]
			printBreakdownPair(out, "where the node's CPU per SA went in the last round",
				"baseline", o.rowPath(abProfile(profile, false), spec.String()), last.base.CPUPerSA,
				"this build", o.rowPath(abProfile(profile, true), spec.String()), last.this.CPUPerSA)
		}
	}
	return nil
}

// abProfile is where --cpuprofile FILE puts a build's profiles in an A/B
// run: FILE.<row> for this build, FILE.base.<row> for the baseline (the
// last round of each).
func abProfile(file string, this bool) string {
	if file == "" || this {
		return file
	}
	return file + ".base"
}
