package loadtest

import (
	"encoding/json"
	"fmt"
	"html"
	"io"
	"math"
	"sort"
	"strings"
)

// WriteHTML writes a self-contained HTML report of one run, or of several
// runs side by side (their plots overlaid): inline SVG plots, tables, and
// the reports themselves as JSON in a <script type="application/json"
// id="ikeload-data"> element. Nothing is loaded from elsewhere.
func WriteHTML(w io.Writer, reps ...Report) error {
	if len(reps) == 0 {
		return fmt.Errorf("no report")
	}
	data, err := json.Marshal(reps) // escapes <, > and &: safe inside <script>
	if err != nil {
		return err
	}
	var b strings.Builder
	title := "ikeload report"
	if len(reps) > 1 {
		title = "ikeload comparison"
	}
	fmt.Fprintf(&b, `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>%s</title>
<style>
body{font-family:sans-serif;margin:20px;max-width:1600px;color:#222}
table{border-collapse:collapse;margin:8px 0 18px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.plots{display:flex;flex-wrap:wrap;gap:12px}.bad{color:#b00;font-weight:bold}.small{font-size:12px;color:#555}
</style></head><body>
<h1>%s</h1>
`, title, title)
	if len(reps) > 1 {
		writeComparisonHTML(&b, Compare(reps, ""))
	}
	writeSummaryTable(&b, reps)
	// Runs of the same scenario, authentication and size are plotted
	// together, each group on its own.
	groups, keys := map[string][]Report{}, []string(nil)
	for _, r := range reps {
		k := groupKey(r)
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], r)
	}
	for _, k := range keys {
		if len(keys) > 1 {
			g := groups[k][0]
			fmt.Fprintf(&b, "<h2>%s, %s, %d gateways</h2>\n", esc(g.Scenario), esc(g.Params.Auth), g.Params.Count)
		}
		b.WriteString(`<div class="plots">`)
		for _, p := range plotsFor(groups[k]) {
			b.WriteString(p.svg())
		}
		b.WriteString("</div>\n")
	}
	writeReasons(&b, reps)
	writeCluster(&b, reps)
	fmt.Fprintf(&b, `<p class="small">Raw data (JSON) is embedded in this page: element #ikeload-data.</p>
<script type="application/json" id="ikeload-data">%s</script>
</body></html>
`, data)
	_, err = io.WriteString(w, b.String())
	return err
}

func groupKey(r Report) string {
	return fmt.Sprintf("%s|%s|%d", r.Scenario, r.Params.Auth, r.Params.Count)
}

func name(r Report, i int) string {
	if r.Label != "" {
		return r.Label
	}
	if r.Scenario != "" {
		return fmt.Sprintf("%s #%d", r.Scenario, i+1)
	}
	return fmt.Sprintf("run %d", i+1)
}

func writeSummaryTable(b *strings.Builder, reps []Report) {
	b.WriteString("<h2>Runs</h2><table><tr><th>run</th><th>scenario</th><th>auth</th><th>proposal</th><th>attempted</th><th>established</th><th>failed</th><th>timed out</th>" +
		"<th>setups/s</th><th>peak/s</th><th>p50 ms</th><th>p99 ms</th><th>max ms</th><th>peak SAs</th><th>child SAs</th><th>lost</th><th>rekeys</th><th>responder CPU %</th><th>setups per responder CPU-s</th><th>responder max RSS MiB</th><th>source ports</th><th>run s</th></tr>\n")
	for i, r := range reps {
		cls := ""
		if !r.Consistent {
			cls = ` class="bad"`
		}
		cpu, per, rss := "–", "–", "–"
		if t := r.Target; t != nil {
			cpu, per, rss = fmt.Sprintf("%.0f", t.CPUMeanPct), fmt.Sprintf("%.1f", t.SetupsPerCPU), fmt.Sprintf("%.1f", t.RSSMaxMiB)
		}
		fmt.Fprintf(b, "<tr%s><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%d</td><td>%d</td><td>%d</td><td>%d</td><td>%.1f</td><td>%d</td><td>%.2f</td><td>%.2f</td><td>%.2f</td><td>%d</td><td>%d</td><td>%d</td><td>%d</td><td>%s</td><td>%s</td><td>%s</td><td>%d</td><td>%.1f</td></tr>\n",
			cls, esc(name(r, i)), esc(r.Scenario), esc(r.Params.Auth), esc(r.Proposal), r.Attempted, r.Established, r.Failed, r.TimedOut,
			r.RatePerS, r.PeakRatePerS, r.LatencyMS.P50, r.LatencyMS.P99, r.LatencyMS.Max, r.PeakSAs, r.Children, r.Lost, r.Rekeys.Done+r.Rekeys.ByPeer,
			cpu, per, rss, r.SourcePorts, r.DurationS)
	}
	b.WriteString("</table>\n")
}

func writeReasons(b *strings.Builder, reps []Report) {
	any := false
	for _, r := range reps {
		if len(r.Failures)+len(r.Losses)+len(r.Rekeys.Failures)+len(r.ChildFailures) > 0 {
			any = true
		}
	}
	if !any {
		return
	}
	b.WriteString("<h2>Failures by reason</h2><table><tr><th>run</th><th>kind</th><th>reason</th><th>count</th></tr>\n")
	for i, r := range reps {
		for _, kv := range []struct {
			kind string
			m    map[string]int
		}{{"setup failed", r.Failures}, {"CHILD SA refused", r.ChildFailures}, {"SA lost", r.Losses}, {"rekey failed", r.Rekeys.Failures}} {
			keys := make([]string, 0, len(kv.m))
			for k := range kv.m {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				fmt.Fprintf(b, "<tr><td>%s</td><td>%s</td><td>%s</td><td>%d</td></tr>\n", esc(name(r, i)), kv.kind, esc(k), kv.m[k])
			}
		}
	}
	b.WriteString("</table>\n")
}

// writeCluster: a cluster run's route changes with their outages, and
// each node's SAs, hand-offs and takeovers over time.
func writeCluster(b *strings.Builder, reps []Report) {
	for i, r := range reps {
		if len(r.RouteEvents) == 0 && len(r.Nodes) == 0 {
			continue
		}
		fmt.Fprintf(b, "<h2>Cluster: %s</h2><p>Re-authentications (an established gateway had to set up a new SA): <b%s>%d</b></p>\n",
			esc(name(r, i)), map[bool]string{true: ` class="bad"`}[r.Reauthentications > 0], r.Reauthentications)
		if len(r.RouteEvents) > 0 {
			b.WriteString("<table><tr><th>at s</th><th>node</th><th>change</th><th>why</th><th>detected in s</th><th>gateways moved</th><th>answered from the new node</th><th>outage p50 ms</th><th>p99 ms</th><th>max ms</th></tr>\n")
			for _, e := range r.RouteEvents {
				fmt.Fprintf(b, "<tr><td>%.1f</td><td>%s</td><td>%s</td><td>%s</td><td>%.2f</td><td>%d</td><td>%d</td><td>%.0f</td><td>%.0f</td><td>%.0f</td></tr>\n",
					e.AtS, esc(e.Target), esc(e.Change), esc(e.Reason), e.DetectS, e.Moved, e.Recovered, e.OutageMS.P50, e.OutageMS.P99, e.OutageMS.Max)
			}
			b.WriteString("</table>\n")
		}
		if len(r.Nodes) == 0 {
			continue
		}
		sas := plot{title: "Established IKE SAs per node", xlabel: "time (s)", ylabel: "IKE SAs"}
		moves := plot{title: "SAs moved to each node (hand-offs + takeovers, cumulative)", xlabel: "time (s)", ylabel: "SAs"}
		for k, n := range r.Nodes {
			color := palette[k%len(palette)]
			s, m := series{name: n.Target, color: color}, series{name: n.Target, color: color}
			for t, v := range n.SAs {
				if v < 0 {
					continue // no answer: killed, or not up yet
				}
				s.pts = append(s.pts, [2]float64{float64(t) + 1, float64(v)})
				if t < len(n.HandOffs) && t < len(n.TakeOvers) && n.HandOffs[t] >= 0 && n.TakeOvers[t] >= 0 {
					m.pts = append(m.pts, [2]float64{float64(t) + 1, float64(n.HandOffs[t] + n.TakeOvers[t])})
				}
			}
			sas.series, moves.series = append(sas.series, s), append(moves.series, m)
		}
		b.WriteString(`<div class="plots">`)
		b.WriteString(sas.svg())
		b.WriteString(moves.svg())
		b.WriteString("</div>\n")
	}
}

func esc(s string) string { return html.EscapeString(s) }

// plotsFor builds the report's plots, one series per run.
func plotsFor(reps []Report) []plot {
	rate := plot{title: "Setups per second", xlabel: "time (s)", ylabel: "IKE SAs established / s"}
	active := plot{title: "Established IKE SAs", xlabel: "time (s)", ylabel: "IKE SAs"}
	pct := plot{title: "Setup latency by percentile", xlabel: "percentile", ylabel: "ms",
		xTickLabels: map[float64]string{}}
	fleet := plot{title: "Setup rate vs established SAs", xlabel: "established IKE SAs", ylabel: "setups / s"}
	cpu := plot{title: "Responder CPU", xlabel: "time (s)", ylabel: "% of one core"}
	rss := plot{title: "Responder resident memory", xlabel: "time (s)", ylabel: "MiB"}
	errs := plot{title: "Failures and time-outs per second", xlabel: "time (s)", ylabel: "per second"}
	rekeys := plot{title: "Rekeys per second", xlabel: "time (s)", ylabel: "rekeys / s"}
	var hist []plot
	hasTarget, hasErrs, hasRekeys := false, false, false
	for i, r := range reps {
		n := name(r, i)
		color := palette[i%len(palette)]
		var sr, sa, sc, sm, se, sk series
		sr, sa, sc, sm = series{name: n, color: color}, series{name: n, color: color}, series{name: n, color: color}, series{name: n, color: color}
		se, sk = series{name: n, color: color}, series{name: n, color: color}
		for t, s := range r.Timeline {
			x := float64(t) + 1 // the bucket ends at t+1
			sr.pts = append(sr.pts, [2]float64{x, float64(s.Setups)})
			sa.pts = append(sa.pts, [2]float64{x, float64(s.Active)})
			se.pts = append(se.pts, [2]float64{x, float64(s.Failed + s.TimedOut + s.Lost)})
			sk.pts = append(sk.pts, [2]float64{x, float64(s.Rekeys)})
			if s.TargetRSS > 0 {
				hasTarget = true
				sc.pts = append(sc.pts, [2]float64{x, s.TargetCPU})
				sm.pts = append(sm.pts, [2]float64{x, s.TargetRSS})
			}
			hasErrs = hasErrs || s.Failed+s.TimedOut+s.Lost > 0
			hasRekeys = hasRekeys || s.Rekeys > 0
		}
		rate.series, active.series = append(rate.series, sr), append(active.series, sa)
		cpu.series, rss.series = append(cpu.series, sc), append(rss.series, sm)
		errs.series, rekeys.series = append(errs.series, se), append(rekeys.series, sk)

		// Percentiles on a "nines" axis: x = -log10(1 - p/100).
		sp := series{name: n, color: color}
		for _, p := range r.Percentiles {
			x := nines(p.P)
			sp.pts = append(sp.pts, [2]float64{x, p.MS})
			pct.xTickLabels[x] = fmt.Sprintf("p%g", p.P)
		}
		pct.series = append(pct.series, sp)

		// Rate against fleet size: each second's setups at that second's
		// fleet, and the rate between fleet marks.
		pts := series{name: n + " (1-s buckets)", color: color, kind: kindPoints}
		for _, s := range r.Timeline {
			if s.Setups > 0 {
				pts.pts = append(pts.pts, [2]float64{float64(s.Active), float64(s.Setups)})
			}
		}
		fleet.series = append(fleet.series, pts)
		if len(r.FleetRates) > 0 {
			ln := series{name: n + " (between marks)", color: color}
			for _, f := range r.FleetRates {
				ln.pts = append(ln.pts, [2]float64{float64(f.Fleet), f.RatePerS})
			}
			fleet.series = append(fleet.series, ln)
		}

		h := plot{title: "Setup latency histogram: " + n, xlabel: "ms (log scale)", ylabel: "setups", logX: true}
		hb := series{name: n, color: color, kind: kindBars}
		for _, bar := range r.LatencyBars {
			hb.bars = append(hb.bars, [3]float64{bar.FromMS, bar.ToMS, float64(bar.Count)})
		}
		h.series = []series{hb}
		hist = append(hist, h)
	}
	// Keep only the percentile tick labels that do not crowd each other.
	for x := range pct.xTickLabels {
		switch pct.xTickLabels[x] {
		case "p0", "p50", "p90", "p99", "p99.9", "p99.99", "p100":
		default:
			delete(pct.xTickLabels, x)
		}
	}
	out := []plot{rate, active, pct, fleet}
	out = append(out, hist...)
	if hasTarget {
		out = append(out, cpu, rss)
	}
	if hasErrs {
		out = append(out, errs)
	}
	if hasRekeys {
		out = append(out, rekeys)
	}
	return out
}

// nines maps a percentile to its number of nines (p90 → 1, p99 → 2);
// p100 is drawn one step beyond p99.99.
func nines(p float64) float64 {
	if p >= 100 {
		return 5
	}
	return math.Round(-math.Log10(1-p/100)*1000) / 1000
}
