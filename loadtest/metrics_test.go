package loadtest

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"
)

func TestCollectorAccounting(t *testing.T) {
	start := time.Unix(1000, 0)
	c := newCollector(start)
	at := func(ms int) time.Time { return start.Add(time.Duration(ms) * time.Millisecond) }
	for i := range 10 {
		c.attempt(at(i))
	}
	for i := range 6 {
		c.established(at(100+i*300), time.Duration(10+i)*time.Millisecond, "AES_GCM_16-256")
	}
	c.failed(at(500), "AUTHENTICATION_FAILED")
	c.failed(at(600), "AUTHENTICATION_FAILED")
	c.timedOut(at(2500))
	r := c.report(at(3000))
	if r.Consistent || r.InFlight != 1 {
		t.Fatalf("one attempt still in flight must make the report inconsistent: %+v", r)
	}
	c.timedOut(at(2600))
	c.gone(at(2700), false, "dead peer")
	c.gone(at(2800), true, "")
	r = c.report(at(3000))
	if !r.Consistent || r.Attempted != 10 || r.Established != 6 || r.Failed != 2 || r.TimedOut != 2 || r.InFlight != 0 {
		t.Fatalf("report %+v", r)
	}
	if r.Failures["AUTHENTICATION_FAILED"] != 2 || r.Lost != 1 || r.Losses["dead peer"] != 1 || r.Deleted != 1 {
		t.Fatalf("reasons %+v %+v", r.Failures, r.Losses)
	}
	// Buckets: setups at 100, 400, 700, 1000, 1300, 1600 ms.
	want := []int{3, 3}
	for i, w := range want {
		if r.Timeline[i].Setups != w {
			t.Fatalf("second %d: %d setups, want %d (%+v)", i, r.Timeline[i].Setups, w, r.Timeline)
		}
	}
	if r.Timeline[2].TimedOut != 2 || r.Timeline[2].Active != 4 {
		t.Fatalf("second 2: %+v", r.Timeline[2])
	}
	sum := 0
	for _, s := range r.Timeline {
		sum += s.Setups + s.Failed + s.TimedOut
	}
	if sum != r.Attempted {
		t.Fatalf("timeline outcomes %d != attempted %d", sum, r.Attempted)
	}
	if r.LatencyMS.Count != 6 || r.LatencyMS.P50 < 12 || r.LatencyMS.P50 > 13.1 || r.LatencyMS.Max < 14.9 || r.LatencyMS.Max > 15.1 {
		t.Fatalf("latency %+v", r.LatencyMS)
	}
	// Rate over the setup phase: 6 setups by 1.6 s.
	if r.SetupPhaseS != 1.6 || r.RatePerS != 6/1.6 {
		t.Fatalf("rate %v over %v", r.RatePerS, r.SetupPhaseS)
	}
}

func TestCollectorSetupRateIgnoresLaterSetups(t *testing.T) {
	start := time.Unix(1000, 0)
	c := newCollector(start)
	for i := range 4 {
		c.attempt(start)
		c.established(start.Add(time.Duration(i+1)*250*time.Millisecond), time.Millisecond, "")
	}
	c.endSetup(start.Add(time.Second))
	c.attempt(start.Add(30 * time.Second)) // churn, later
	c.established(start.Add(31*time.Second), time.Millisecond, "")
	r := c.report(start.Add(40 * time.Second))
	if r.RatePerS != 4 || r.Established != 5 || !r.Consistent {
		t.Fatalf("rate %v (want 4/s over the establish phase), %+v", r.RatePerS, r)
	}
}

func TestFleetRates(t *testing.T) {
	start := time.Unix(1000, 0)
	c := newCollector(start)
	for i := 1; i <= 5000; i++ {
		c.attempt(start)
		// 1000 per second for the first 1000, then 500 per second.
		d := time.Duration(i) * time.Millisecond
		if i > 1000 {
			d = time.Second + time.Duration(i-1000)*2*time.Millisecond
		}
		c.established(start.Add(d), time.Millisecond, "")
	}
	r := c.report(start.Add(20 * time.Second))
	want := []FleetRate{{1000, 1, 1000}, {2000, 3, 500}, {5000, 9, 500}}
	if len(r.FleetRates) != len(want) {
		t.Fatalf("fleet rates %+v", r.FleetRates)
	}
	for i, w := range want {
		if r.FleetRates[i] != w {
			t.Fatalf("fleet rate %d: %+v, want %+v", i, r.FleetRates[i], w)
		}
	}
}

func TestLatencyBarsCoverEverySample(t *testing.T) {
	c := newCollector(time.Now())
	for _, ms := range []float64{0.3, 1, 1.2, 5, 50, 51, 900, 2500} {
		c.attempt(c.start)
		c.established(c.start, time.Duration(ms*float64(time.Millisecond)), "")
	}
	r := c.report(c.start.Add(time.Second))
	var n int64
	for i, b := range r.LatencyBars {
		n += b.Count
		if b.ToMS <= b.FromMS || (i > 0 && b.FromMS != r.LatencyBars[i-1].ToMS) {
			t.Fatalf("bins not contiguous: %+v", r.LatencyBars)
		}
	}
	if n != 8 {
		t.Fatalf("bars hold %d samples, want 8: %+v", n, r.LatencyBars)
	}
	if r.LatencyBars[0].FromMS > 0.3 || r.LatencyBars[len(r.LatencyBars)-1].ToMS < 2500 {
		t.Fatalf("bars %v..%v do not cover 0.3..2500 ms", r.LatencyBars[0].FromMS, r.LatencyBars[len(r.LatencyBars)-1].ToMS)
	}
	if p := r.Percentiles; len(p) != len(percentilePoints) || p[0].MS > 0.31 || p[len(p)-1].MS < 2499 {
		t.Fatalf("percentiles %+v", p)
	}
}

func sampleReport(label string, n int) Report {
	start := time.Unix(1000, 0)
	c := newCollector(start)
	for i := range n {
		c.attempt(start.Add(time.Duration(i) * 10 * time.Millisecond))
		if i%10 == 9 {
			c.failed(start.Add(time.Duration(i)*10*time.Millisecond+time.Millisecond), "AUTHENTICATION_FAILED")
			continue
		}
		c.established(start.Add(time.Duration(i)*10*time.Millisecond+5*time.Millisecond), time.Duration(1+i%7)*time.Millisecond, "AES_GCM_16-256")
		if i%50 == 0 {
			c.rekeyed(start.Add(time.Duration(i)*10*time.Millisecond), false, 2*time.Millisecond)
		}
	}
	for s := range 3 {
		c.sample(start.Add(time.Duration(s+1)*time.Second), &procSample{cpuPct: 40 + float64(s), rssMiB: 50}, &procSample{cpuPct: 20})
	}
	r := c.report(start.Add(4 * time.Second))
	r.Label, r.Scenario = label, "ramp"
	r.Params.Auth, r.Params.Count = "psk", 1000
	r.Target = &ProcReport{PID: 42, CPUSeconds: 1, SetupsPerCPU: float64(n)}
	return r
}

func TestHTMLReport(t *testing.T) {
	a, b := sampleReport("concentratord", 300), sampleReport("strongswan", 200)
	var buf bytes.Buffer
	if err := WriteHTML(&buf, a, b); err != nil {
		t.Fatal(err)
	}
	page := buf.String()
	if !strings.HasPrefix(page, "<!DOCTYPE html>") || !strings.HasSuffix(strings.TrimSpace(page), "</html>") {
		t.Fatal("not a whole HTML document")
	}
	for _, title := range []string{"Setups per second", "Established IKE SAs", "Setup latency by percentile",
		"Setup rate vs established SAs", "Setup latency histogram: concentratord", "Setup latency histogram: strongswan",
		"Responder CPU", "Responder resident memory", "Failures and time-outs per second", "Rekeys per second"} {
		if !strings.Contains(page, `aria-label="`+title+`"`) {
			t.Errorf("no plot %q", title)
		}
	}
	// Every plot has data drawn in it (not "no data"), two runs overlaid.
	svgs := regexp.MustCompile(`(?s)<svg .*?</svg>`).FindAllString(page, -1)
	if len(svgs) != 10 {
		t.Fatalf("%d plots, want 10", len(svgs))
	}
	for _, s := range svgs {
		if strings.Contains(s, "no data") || !strings.Contains(s, `class="series"`) {
			t.Errorf("empty plot: %.120s", s)
		}
	}
	if strings.Contains(page, "<script src") || strings.Contains(page, "<link") || strings.Contains(page, "http://") && !strings.Contains(page, `xmlns="http://www.w3.org/2000/svg"`) {
		t.Error("the page refers to external resources")
	}
	// The embedded data is valid JSON and round-trips the reports.
	m := regexp.MustCompile(`(?s)<script type="application/json" id="ikeload-data">(.*?)</script>`).FindStringSubmatch(page)
	if m == nil {
		t.Fatal("no embedded JSON")
	}
	var got []Report
	if err := json.Unmarshal([]byte(m[1]), &got); err != nil {
		t.Fatalf("embedded JSON: %v", err)
	}
	if len(got) != 2 || got[0].Label != "concentratord" || got[0].Attempted != 300 || got[0].Established != 270 ||
		got[0].Failures["AUTHENTICATION_FAILED"] != 30 || len(got[1].Timeline) != len(b.Timeline) {
		t.Fatalf("round trip: %+v", got)
	}
	// The comparison table with the ratios against the baseline.
	if !strings.Contains(page, "<h2>Comparison</h2>") || !strings.Contains(page, "1.50x") {
		t.Error("no comparison with ratio 300/200 setups per CPU-second")
	}
}

func TestHTMLEscapesLabels(t *testing.T) {
	r := sampleReport(`<script>alert(1)</script>`, 20)
	var buf bytes.Buffer
	if err := WriteHTML(&buf, r); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(buf.String(), "<script>alert") {
		t.Fatal("label not escaped")
	}
}

func TestCompareRatios(t *testing.T) {
	a, b := sampleReport("ours", 300), sampleReport("theirs", 100)
	a.LatencyMS.P99, b.LatencyMS.P99 = 5, 20
	c := Compare([]Report{a, b}, "theirs")
	if len(c.Groups) != 1 || len(c.Groups[0].Rows) != 2 {
		t.Fatalf("%+v", c)
	}
	r := c.Groups[0].Rows[0]
	if r.PerCoreRatio != 3 || r.P99Ratio != 0.25 {
		t.Fatalf("ratios %+v", r)
	}
	var buf bytes.Buffer
	WriteComparison(&buf, c)
	if !strings.Contains(buf.String(), "3.00x") {
		t.Fatalf("text comparison:\n%s", buf.String())
	}
}

func TestParseProcStat(t *testing.T) {
	line := []byte("4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 130 0 0 20 0 9 0 100 1000000 2000 18446744073709551615\n")
	cpu, err := parseStatCPU(line)
	if err != nil || cpu != 3800*time.Millisecond {
		t.Fatalf("cpu %v %v, want 3.8s", cpu, err)
	}
	if _, err := parseStatCPU([]byte("garbage")); err == nil {
		t.Fatal("garbage parsed")
	}
	if rss := parseStatusRSS([]byte("Name:\tx\nVmRSS:\t   51200 kB\nThreads: 3\n")); rss != 51200 {
		t.Fatalf("rss %d", rss)
	}
	w, err := newProcWatch(0)
	if err != nil {
		t.Fatal(err)
	}
	if s := w.sample(); s == nil || s.rssMiB <= 0 {
		t.Fatalf("own process: %+v", s)
	}
}
