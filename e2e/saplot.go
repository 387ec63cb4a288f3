//go:build linux

package e2e

// SAs per node over a cluster test's run: a sampler scrapes every running
// node's ikefleet_ike_sas every half second; at the end the run is drawn as
// a self-contained SVG (one line per node, the test's events as dashed
// marks) and summed up as a text table for the log.

import (
	"context"
	"fmt"
	"html"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// saSample is one round of scrapes: IKE SAs per node (-1: not running or
// no answer), at Since after the sampler started.
type saSample struct {
	Since time.Duration
	SAs   []int
}

// saEvent marks something the test did.
type saEvent struct {
	Since time.Duration
	Label string
}

// SASampler records each node's IKE SA count every Interval.
type SASampler struct {
	Interval time.Duration

	c     *Cluster
	start time.Time
	quit  chan struct{}
	wg    sync.WaitGroup
	once  sync.Once

	mu      sync.Mutex
	samples []saSample
	events  []saEvent
}

// StartSASampler starts sampling c's nodes every interval until Stop.
func StartSASampler(ctx context.Context, c *Cluster, interval time.Duration) *SASampler {
	s := &SASampler{Interval: interval, c: c, start: time.Now(), quit: make(chan struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			s.sample(ctx)
			select {
			case <-s.quit:
				return
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *SASampler) sample(ctx context.Context) {
	at := time.Since(s.start)
	sas := make([]int, len(s.c.Nodes))
	var wg sync.WaitGroup
	for i, n := range s.c.Nodes {
		sas[i] = -1
		if n.Proc == nil || n.Proc.Exited() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			mctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			if m, err := s.c.NodeMetrics(mctx, n); err == nil {
				sas[i] = int(m["ikefleet_ike_sas"])
			}
		}()
	}
	wg.Wait()
	s.mu.Lock()
	s.samples = append(s.samples, saSample{Since: at, SAs: sas})
	s.mu.Unlock()
}

// Mark records an event at t.
func (s *SASampler) Mark(t time.Time, label string) {
	s.mu.Lock()
	s.events = append(s.events, saEvent{Since: t.Sub(s.start), Label: label})
	s.mu.Unlock()
}

// Stop ends the sampling.
func (s *SASampler) Stop() { s.once.Do(func() { close(s.quit); s.wg.Wait() }) }

// Samples returns the samples so far.
func (s *SASampler) Samples() []saSample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]saSample(nil), s.samples...)
}

// Table is the run as text: one row every stride samples (so that there
// are at most rows of them), each event on its own line where it happened.
func (s *SASampler) Table(rows int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	b.WriteString("   t/s")
	for _, n := range s.c.Nodes {
		fmt.Fprintf(&b, " %5s", n.ID)
	}
	b.WriteString("\n")
	stride := max(1, (len(s.samples)+rows-1)/max(1, rows))
	ev := 0
	for i, sm := range s.samples {
		for ev < len(s.events) && s.events[ev].Since <= sm.Since {
			fmt.Fprintf(&b, "%6.1f  -- %s\n", s.events[ev].Since.Seconds(), s.events[ev].Label)
			ev++
		}
		if i%stride != 0 && i != len(s.samples)-1 {
			continue
		}
		fmt.Fprintf(&b, "%6.1f", sm.Since.Seconds())
		for _, v := range sm.SAs {
			if v < 0 {
				fmt.Fprintf(&b, " %5s", "-")
			} else {
				fmt.Fprintf(&b, " %5d", v)
			}
		}
		b.WriteString("\n")
	}
	for ; ev < len(s.events); ev++ {
		fmt.Fprintf(&b, "%6.1f  -- %s\n", s.events[ev].Since.Seconds(), s.events[ev].Label)
	}
	return b.String()
}

// plotColors are the nodes' lines.
var plotColors = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf"}

// SVG draws the run: IKE SAs per node against time.
func (s *SASampler) SVG(title string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	const w, h, ml, mr, mt, mb = 960, 420, 60, 130, 40, 50
	pw, ph := float64(w-ml-mr), float64(h-mt-mb)
	end := s.Interval
	ymax := 1
	for _, sm := range s.samples {
		end = max(end, sm.Since)
		for _, v := range sm.SAs {
			ymax = max(ymax, v)
		}
	}
	for _, e := range s.events {
		end = max(end, e.Since)
	}
	ymax = (ymax + 4) / 5 * 5
	x := func(d time.Duration) float64 { return ml + pw*d.Seconds()/end.Seconds() }
	y := func(v int) float64 { return mt + ph - ph*float64(v)/float64(ymax) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", w, h, w, h)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="15">%s</text>`+"\n", ml, html.EscapeString(title))
	// Axes and grid.
	fmt.Fprintf(&b, `<g stroke="#ccc">`)
	for i := 0; i <= 5; i++ {
		v := ymax * i / 5
		fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%.1f" y2="%.1f"/>`, ml, y(v), ml+pw, y(v))
	}
	b.WriteString("</g>\n")
	for i := 0; i <= 5; i++ {
		v := ymax * i / 5
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%d</text>`+"\n", ml-6, y(v)+4, v)
	}
	step := max(time.Second, (end / 10).Round(5*time.Second))
	for d := time.Duration(0); d <= end; d += step {
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%.0f</text>`+"\n", x(d), mt+ph+16, d.Seconds())
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">seconds</text>`+"\n", ml+pw/2, h-10)
	fmt.Fprintf(&b, `<text x="14" y="%.1f" transform="rotate(-90 14 %.1f)" text-anchor="middle">IKE SAs</text>`+"\n", mt+ph/2, mt+ph/2)
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.0f" height="%.0f" fill="none" stroke="black"/>`+"\n", ml, mt, pw, ph)
	// Events.
	for i, e := range s.events {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%.1f" stroke="#555" stroke-dasharray="4 3"/>`, x(e.Since), mt, x(e.Since), mt+ph)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" fill="#333">%s</text>`+"\n", x(e.Since)+3, mt+12+14*(i%3), html.EscapeString(e.Label))
	}
	// One line per node; a gap where it did not run or answer.
	for k, n := range s.c.Nodes {
		color := plotColors[k%len(plotColors)]
		var pts []string
		flush := func() {
			if len(pts) > 0 {
				fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", color, strings.Join(pts, " "))
			}
			pts = nil
		}
		for _, sm := range s.samples {
			if k >= len(sm.SAs) || sm.SAs[k] < 0 {
				flush()
				continue
			}
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x(sm.Since), y(sm.SAs[k])))
		}
		flush()
		ly := mt + 10 + 18*k
		fmt.Fprintf(&b, `<line x1="%.0f" y1="%d" x2="%.0f" y2="%d" stroke="%s" stroke-width="3"/><text x="%.0f" y="%d">%s</text>`+"\n",
			ml+pw+12, ly, ml+pw+32, ly, color, ml+pw+38, ly+4, html.EscapeString(n.ID))
	}
	b.WriteString("</svg>\n")
	return b.String()
}

// artifactsDir is $E2E_ARTIFACTS (created if needed), else a temporary
// directory of the test.
func artifactsDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("E2E_ARTIFACTS")
	if dir == "" {
		return t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("E2E_ARTIFACTS: %v", err)
	}
	return dir
}

// WritePlot writes the SVG into the artifacts directory as name and
// returns its path.
func (s *SASampler) WritePlot(t *testing.T, name, title string) string {
	t.Helper()
	p := filepath.Join(artifactsDir(t), name)
	if err := os.WriteFile(p, []byte(s.SVG(title)), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
