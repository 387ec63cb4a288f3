package loadtest

import (
	"fmt"
	"io"
	"math"
	"strings"
)

// Comparison puts runs of the same scenario, authentication and fleet
// size side by side, each against a baseline run (by label).
type Comparison struct {
	Baseline string            `json:"baseline"`
	Groups   []ComparisonGroup `json:"groups"`
}

// ComparisonGroup is the runs of one scenario, authentication and count.
type ComparisonGroup struct {
	Scenario string          `json:"scenario"`
	Auth     string          `json:"auth"`
	Count    int             `json:"count"`
	Rows     []ComparisonRow `json:"rows"`
}

// ComparisonRow is one run; the ratios are this run's figure divided by
// the baseline's (0 when there is no baseline in the group).
type ComparisonRow struct {
	Label        string      `json:"label"`
	Established  int         `json:"established"`
	Attempted    int         `json:"attempted"`
	Children     int         `json:"child_sas"`
	RatePerS     float64     `json:"rate_per_s"`
	SetupsPerCPU float64     `json:"setups_per_responder_cpu_s"`
	CPUMeanPct   float64     `json:"responder_cpu_pct"`
	P99MS        float64     `json:"p99_ms"`
	MaxFleet     int         `json:"max_fleet"`
	RateRatio    float64     `json:"rate_ratio,omitempty"`
	PerCoreRatio float64     `json:"per_core_ratio,omitempty"`
	P99Ratio     float64     `json:"p99_ratio,omitempty"`
	FleetRates   []FleetRate `json:"rate_vs_fleet,omitempty"`
	Count        int         `json:"gateways"`   // the fleet the run aimed at
	DurationS    float64     `json:"duration_s"` // the run's length (bounded by its max duration)
}

// Compare groups the reports; baseline "" takes the label of the last
// report.
func Compare(reps []Report, baseline string) Comparison {
	if baseline == "" && len(reps) > 0 {
		baseline = reps[len(reps)-1].Label
	}
	c := Comparison{Baseline: baseline}
	index := map[string]int{}
	for _, r := range reps {
		key := fmt.Sprintf("%s|%s|%d", r.Scenario, r.Params.Auth, r.Params.Count)
		gi, ok := index[key]
		if !ok {
			gi = len(c.Groups)
			index[key] = gi
			c.Groups = append(c.Groups, ComparisonGroup{Scenario: r.Scenario, Auth: r.Params.Auth, Count: r.Params.Count})
		}
		row := ComparisonRow{Label: r.Label, Established: r.Established, Attempted: r.Attempted, Children: r.Children, RatePerS: round1(r.RatePerS),
			P99MS: r.LatencyMS.P99, FleetRates: r.FleetRates, Count: r.Params.Count, DurationS: round1(r.DurationS)}
		if r.Target != nil {
			row.SetupsPerCPU, row.CPUMeanPct = r.Target.SetupsPerCPU, r.Target.CPUMeanPct
		}
		row.MaxFleet = r.PeakSAs
		c.Groups[gi].Rows = append(c.Groups[gi].Rows, row)
	}
	ratio := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return math.Round(a/b*100) / 100
	}
	for gi := range c.Groups {
		g := &c.Groups[gi]
		var base *ComparisonRow
		for i := range g.Rows {
			if g.Rows[i].Label == baseline {
				base = &g.Rows[i]
			}
		}
		if base == nil {
			continue
		}
		for i := range g.Rows {
			r := &g.Rows[i]
			r.RateRatio, r.PerCoreRatio, r.P99Ratio = ratio(r.RatePerS, base.RatePerS), ratio(r.SetupsPerCPU, base.SetupsPerCPU), ratio(r.P99MS, base.P99MS)
		}
	}
	return c
}

// WriteComparison prints the comparison as text tables.
func WriteComparison(w io.Writer, c Comparison) {
	for _, g := range c.Groups {
		fmt.Fprintf(w, "== %s, %s, %d gateways (ratios against %s)\n", g.Scenario, g.Auth, g.Count, c.Baseline)
		fmt.Fprintf(w, "%-16s %11s %9s %14s %9s %9s %9s %11s %10s %10s\n", "responder", "established", "setups/s",
			"per CPU-second", "CPU %", "p99 ms", "max SAs", "rate ratio", "per-core", "p99 ratio")
		for _, r := range g.Rows {
			fmt.Fprintf(w, "%-16s %5d/%-5d %9.1f %14.1f %9.0f %9.2f %9d %11s %10s %10s\n", r.Label, r.Established, r.Attempted,
				r.RatePerS, r.SetupsPerCPU, r.CPUMeanPct, r.P99MS, r.MaxFleet, fmtRatio(r.RateRatio), fmtRatio(r.PerCoreRatio), fmtRatio(r.P99Ratio))
		}
		for _, r := range g.Rows {
			if r.Children < r.Established {
				fmt.Fprintf(w, "  WARNING: %s: %d IKE SAs but %d CHILD SAs: not the same work\n", r.Label, r.Established, r.Children)
			}
		}
		for _, r := range g.Rows {
			if len(r.FleetRates) < 2 {
				continue
			}
			var parts []string
			for _, f := range r.FleetRates {
				parts = append(parts, fmt.Sprintf("%d: %.0f/s", f.Fleet, f.RatePerS))
			}
			fmt.Fprintf(w, "  %s setup rate as the fleet grew: %s\n", r.Label, strings.Join(parts, ", "))
			first, last := r.FleetRates[0], r.FleetRates[len(r.FleetRates)-1]
			stop := "all established"
			if r.MaxFleet < r.Count {
				stop = "stopped by its time bound"
			}
			fmt.Fprintf(w, "  %s: %d of %d SAs in %.0f s (%s); rate at %d SAs = %.0f%% of the rate at %d\n", r.Label, r.MaxFleet, r.Count,
				r.DurationS, stop, last.Fleet, 100*last.RatePerS/max(first.RatePerS, 1e-9), first.Fleet)
		}
	}
}

func fmtRatio(v float64) string {
	if v == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2fx", v)
}

func writeComparisonHTML(b *strings.Builder, c Comparison) {
	b.WriteString("<h2>Comparison</h2>\n")
	for _, g := range c.Groups {
		fmt.Fprintf(b, "<h3>%s, %s, %d gateways</h3><table><tr><th>responder</th><th>established</th><th>setups/s</th><th>setups per responder CPU-second</th><th>responder CPU %%</th><th>p99 ms</th><th>max SAs</th><th>rate ratio</th><th>per-core ratio</th><th>p99 ratio</th></tr>\n",
			esc(g.Scenario), esc(g.Auth), g.Count)
		for _, r := range g.Rows {
			fmt.Fprintf(b, "<tr><td>%s</td><td>%d/%d</td><td>%.1f</td><td>%.1f</td><td>%.0f</td><td>%.2f</td><td>%d</td><td>%s</td><td>%s</td><td>%s</td></tr>\n",
				esc(r.Label), r.Established, r.Attempted, r.RatePerS, r.SetupsPerCPU, r.CPUMeanPct, r.P99MS, r.MaxFleet,
				fmtRatio(r.RateRatio), fmtRatio(r.PerCoreRatio), fmtRatio(r.P99Ratio))
		}
		fmt.Fprintf(b, "</table><p class=\"small\">Ratios: each run divided by %s.</p>\n", esc(c.Baseline))
	}
}
