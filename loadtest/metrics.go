package loadtest

import (
	"maps"
	"math"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Latencies are recorded in microseconds from 1 µs to 10 minutes with
// three significant digits.
const (
	histMinUS  = 1
	histMaxUS  = int64(10 * time.Minute / time.Microsecond)
	histDigits = 3
)

// fleetMarks are the fleet sizes at which the setup rate is reported
// (rate of the setups since the previous mark).
var fleetMarks = []int{1000, 2000, 5000, 10000, 15000, 20000, 30000, 40000, 50000, 75000, 100000, 150000, 200000, 500000, 1000000}

// second is one 1-s bucket of the timeline.
type second struct {
	Attempts  int     `json:"attempts"`
	Setups    int     `json:"setups"`
	Failed    int     `json:"failed"`
	TimedOut  int     `json:"timed_out"`
	Rekeys    int     `json:"rekeys"`
	Lost      int     `json:"lost"`
	Active    int     `json:"active"`                   // established IKE SAs at the end of the second
	InFlight  int     `json:"in_flight"`                // handshakes under way at the end of the second
	ESPSent   int     `json:"esp_sent"`                 // ESP packets sent
	TargetCPU float64 `json:"target_cpu_pct,omitempty"` // the target's CPU over the second, % of one core
	TargetRSS float64 `json:"target_rss_mib,omitempty"`
	SelfCPU   float64 `json:"self_cpu_pct"`
}

// collector gathers every count of a run. Shards report to it under its
// lock; events are per handshake, not per packet, so the lock is cold.
type collector struct {
	mu    sync.Mutex
	start time.Time

	nAttempted, nEstablished, nTimedOut, inFlight int
	failures                                      map[string]int
	children, deleted, active, peakActive         int
	abandoned                                     int
	losses                                        map[string]int
	childFailures                                 map[string]int
	setup                                         *hdrhistogram.Histogram

	rekey      rekeyCounts
	rekeyLat   *hdrhistogram.Histogram
	moves      moveCounts
	keepalives int
	esp        espCounts
	reauth     int
	retried    map[string]int

	timeline []second
	marks    []markTime // fleet size reached at
	lastEst  time.Time  // when the last setup completed
	// The establish phase: its end, and the setups by then.
	setupEnd         time.Time
	setupEstablished int
	setupLastEst     time.Time
	proposal         string
}

type markTime struct {
	fleet int
	at    time.Duration
}

type rekeyCounts struct {
	Attempted int            `json:"attempted"`
	Done      int            `json:"done"`
	Failed    int            `json:"failed"`
	Failures  map[string]int `json:"failures,omitempty"`
	TimedOut  int            `json:"timed_out"`
	ByPeer    int            `json:"by_peer"` // CHILD rekeys the responder started
	IKE       int            `json:"ike_rekeys"`
}

type moveCounts struct {
	Rebinds          int `json:"nat_rebinds"`           // NAT-T source port changed
	RebindsConfirmed int `json:"nat_rebinds_confirmed"` // the responder then sent to the new port
	MOBIKE           int `json:"mobike_updates"`        // UPDATE_SA_ADDRESSES sent
	MOBIKEConfirmed  int `json:"mobike_confirmed"`      // answered on the new address
	Unconfirmed      int `json:"unconfirmed"`           // neither when the run ended or the SA went
	Skipped          int `json:"skipped"`               // picked, but the SA was busy or had no MOBIKE
}

type espCounts struct {
	Sent     int            `json:"sent"`
	Received int            `json:"received"`
	Errors   map[string]int `json:"errors,omitempty"` // send errors and inbound drops by reason
}

func newCollector(start time.Time) *collector {
	return &collector{
		start: start, failures: map[string]int{}, losses: map[string]int{}, childFailures: map[string]int{},
		setup:    hdrhistogram.New(histMinUS, histMaxUS, histDigits),
		rekeyLat: hdrhistogram.New(histMinUS, histMaxUS, histDigits),
		rekey:    rekeyCounts{Failures: map[string]int{}},
		esp:      espCounts{Errors: map[string]int{}},
		retried:  map[string]int{},
	}
}

// sec returns the bucket of now, growing the timeline.
func (c *collector) sec(now time.Time) *second {
	i := max(0, int(now.Sub(c.start)/time.Second))
	for len(c.timeline) <= i {
		c.timeline = append(c.timeline, second{Active: c.active, InFlight: c.inFlight})
	}
	return &c.timeline[i]
}

func (c *collector) gauges(s *second) { s.Active, s.InFlight = c.active, c.inFlight }

func (c *collector) attempt(now time.Time) {
	c.mu.Lock()
	c.nAttempted++
	c.inFlight++
	s := c.sec(now)
	s.Attempts++
	c.gauges(s)
	c.mu.Unlock()
}

func (c *collector) established(now time.Time, lat time.Duration, proposal string) {
	c.mu.Lock()
	c.nEstablished++
	c.inFlight--
	c.active++
	c.peakActive = max(c.peakActive, c.active)
	_ = c.setup.RecordValue(max(histMinUS, min(histMaxUS, lat.Microseconds())))
	s := c.sec(now)
	s.Setups++
	c.gauges(s)
	c.lastEst = now
	if proposal != "" {
		c.proposal = proposal
	}
	for len(c.marks) < len(fleetMarks) && c.active >= fleetMarks[len(c.marks)] {
		c.marks = append(c.marks, markTime{fleetMarks[len(c.marks)], now.Sub(c.start)})
	}
	c.mu.Unlock()
}

// endSetup marks the end of the establish phase.
func (c *collector) endSetup(now time.Time) {
	c.mu.Lock()
	c.setupEnd, c.setupEstablished, c.setupLastEst = now, c.nEstablished, c.lastEst
	c.mu.Unlock()
}

func (c *collector) failed(now time.Time, reason string) {
	c.mu.Lock()
	c.failures[reason]++
	c.inFlight--
	s := c.sec(now)
	s.Failed++
	c.gauges(s)
	c.mu.Unlock()
}

func (c *collector) timedOut(now time.Time) {
	c.mu.Lock()
	c.nTimedOut++
	c.inFlight--
	s := c.sec(now)
	s.TimedOut++
	c.gauges(s)
	c.mu.Unlock()
}

// gone records the end of an established IKE SA: deleted by us, or lost
// (deleted by the peer, dead peer...) with its reason.
func (c *collector) gone(now time.Time, byUs bool, reason string) {
	c.mu.Lock()
	c.active--
	if byUs {
		c.deleted++
	} else {
		c.losses[reason]++
		c.sec(now).Lost++
	}
	c.gauges(c.sec(now))
	c.mu.Unlock()
}

func (c *collector) child() {
	c.mu.Lock()
	c.children++
	c.mu.Unlock()
}

// rekeyed counts a completed rekey (ours: with its latency; the peer's:
// lat < 0).
func (c *collector) rekeyed(now time.Time, ike bool, lat time.Duration) {
	c.mu.Lock()
	c.sec(now).Rekeys++
	switch {
	case lat >= 0:
		c.rekey.Done++
		_ = c.rekeyLat.RecordValue(max(histMinUS, min(histMaxUS, lat.Microseconds())))
	case !ike:
		c.rekey.ByPeer++
	}
	if ike {
		c.rekey.IKE++
	}
	c.mu.Unlock()
}

func (c *collector) with(f func(c *collector)) {
	c.mu.Lock()
	f(c)
	c.mu.Unlock()
}

// sample stores the once-a-second process measurements.
func (c *collector) sample(now time.Time, target, self *procSample) {
	c.mu.Lock()
	s := c.sec(now.Add(-time.Millisecond)) // the second that just ended
	if target != nil {
		s.TargetCPU, s.TargetRSS = target.cpuPct, target.rssMiB
	}
	if self != nil {
		s.SelfCPU = self.cpuPct
	}
	c.mu.Unlock()
}

// Progress is a snapshot for the live progress line.
type Progress struct {
	Elapsed     time.Duration
	Phase       string
	Attempted   int
	Established int
	Failed      int
	TimedOut    int
	InFlight    int
	Active      int
	Rekeys      int
	LastRate    int     // setups in the last complete second
	P99MS       float64 // setup latency so far
	TargetCPU   float64 // % of one core in the last second (0: no target)
	TargetRSS   float64 // MiB
}

func (c *collector) progress(now time.Time) Progress {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := Progress{Elapsed: now.Sub(c.start), Attempted: c.nAttempted, Established: c.nEstablished, TimedOut: c.nTimedOut,
		InFlight: c.inFlight, Active: c.active, Rekeys: c.rekey.Done + c.rekey.ByPeer,
		P99MS: float64(c.setup.ValueAtQuantile(99)) / 1000}
	for _, n := range c.failures {
		p.Failed += n
	}
	if i := int(now.Sub(c.start)/time.Second) - 1; i >= 0 && i < len(c.timeline) {
		p.LastRate = c.timeline[i].Setups
		p.TargetCPU, p.TargetRSS = c.timeline[i].TargetCPU, c.timeline[i].TargetRSS
	}
	return p
}

// Report is the outcome of a run. Every attempt ends exactly one way:
// Attempted == Established + Failed + TimedOut (Consistent says so).
type Report struct {
	Version  string    `json:"version,omitempty"`
	Scenario string    `json:"scenario"`
	Label    string    `json:"label,omitempty"`
	Started  time.Time `json:"started"`
	Params   Params    `json:"params"`

	Attempted   int            `json:"attempted"`
	Established int            `json:"established"`
	Failed      int            `json:"failed"` // ended with an error (by reason in Failures)
	Failures    map[string]int `json:"failures,omitempty"`
	TimedOut    int            `json:"timed_out"` // no outcome within the setup timeout (or the run's end)
	InFlight    int            `json:"in_flight"` // 0 once a run has ended
	Consistent  bool           `json:"consistent"`

	Children      int            `json:"child_sas"`
	ChildFailures map[string]int `json:"child_sa_failures,omitempty"` // IKE SA up, CHILD SA refused (by reason)
	PeakSAs       int            `json:"peak_established"`            // most IKE SAs up at once
	Abandoned     int            `json:"left_established,omitempty"`  // left up at the end (NoDelete)
	Deleted       int            `json:"deleted"`                     // established SAs we deleted
	Lost          int            `json:"lost"`                        // established SAs that ended without our asking
	// Reauthentications: new setups of gateways whose SA was lost
	// (Options.Reconnect), as opposed to planned ones (churn).
	Reauthentications int `json:"reauthentications"`
	// Retried: setups refused for now (TEMPORARY_FAILURE) and tried
	// again within their attempt (Options.Reconnect), by reason.
	Retried map[string]int `json:"retried,omitempty"`
	Losses  map[string]int `json:"losses,omitempty"`

	DurationS    float64      `json:"duration_s"`
	SetupPhaseS  float64      `json:"setup_phase_s"`       // first attempt to last setup
	RatePerS     float64      `json:"rate_per_s"`          // setups per second over the setup phase
	PeakRatePerS int          `json:"peak_rate_per_s"`     // best 1-s bucket
	LatencyMS    Latency      `json:"latency_ms"`          // setup latency (HDR histogram)
	LatencyBars  []Bar        `json:"latency_histogram"`   // setup latency distribution, log-spaced bins
	Percentiles  []Percentile `json:"latency_percentiles"` // setup latency by percentile
	Retransmits  uint64       `json:"retransmits"`
	Proposal     string       `json:"proposal,omitempty"`

	Rekeys         rekeyCounts `json:"rekeys"`
	RekeyLatencyMS Latency     `json:"rekey_latency_ms"`
	Moves          moveCounts  `json:"moves"`
	Keepalives     int         `json:"keepalives_sent"`
	ESP            *espCounts  `json:"esp,omitempty"`

	FleetRates  []FleetRate `json:"rate_vs_fleet,omitempty"`
	Timeline    []second    `json:"timeline"`
	Target      *ProcReport `json:"target,omitempty"`
	Self        ProcReport  `json:"self"`
	SourcePorts int         `json:"distinct_source_ports"`
	// A cluster (Options.Targets): the route's changes and each node's
	// figures over time.
	RouteEvents []RouteEvent   `json:"route_events,omitempty"`
	Nodes       []NodeTimeline `json:"nodes,omitempty"`
}

// Params echo the knobs of a run in the report.
type Params struct {
	Server          string   `json:"server"`
	Targets         []string `json:"targets,omitempty"`
	Count           int      `json:"count"`
	First           int      `json:"first,omitempty"`
	Rate            float64  `json:"rate"`
	Window          int      `json:"window"`
	HoldS           float64  `json:"hold_s"`
	TimeoutS        float64  `json:"setup_timeout_s"`
	MaxDurationS    float64  `json:"max_duration_s"`
	Auth            string   `json:"auth"`
	IKEProposal     string   `json:"ike_proposal"`
	Workers         int      `json:"workers"`
	PortsPerGateway int      `json:"ports_per_gateway"`
	DPDS            float64  `json:"dpd_s,omitempty"`
	KeepaliveS      float64  `json:"keepalive_s,omitempty"`
	ChurnPerMin     float64  `json:"churn_pct_per_min,omitempty"`
	RebindPerMin    float64  `json:"rebind_pct_per_min,omitempty"`
	MOBIKEPerMin    float64  `json:"mobike_pct_per_min,omitempty"`
	RekeyStorm      bool     `json:"rekey_storm,omitempty"`
	RekeyRate       float64  `json:"rekey_rate,omitempty"`
	ESPRate         float64  `json:"esp_pps_per_gateway,omitempty"`
}

// Latency summarises a latency distribution in milliseconds.
type Latency struct {
	Count int64   `json:"count"`
	Mean  float64 `json:"mean"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p999"`
	Max   float64 `json:"max"`
}

// Percentile is a latency at a percentile, in milliseconds.
type Percentile struct {
	P  float64 `json:"p"`
	MS float64 `json:"ms"`
}

// percentilePoints are the percentiles of the report's latency curve.
var percentilePoints = []float64{0, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.99, 100}

func percentiles(h *hdrhistogram.Histogram) []Percentile {
	if h.TotalCount() == 0 {
		return nil
	}
	out := make([]Percentile, len(percentilePoints))
	for i, p := range percentilePoints {
		v := h.ValueAtQuantile(p)
		if p == 0 {
			v = h.Min()
		}
		out[i] = Percentile{P: p, MS: float64(v) / 1000}
	}
	return out
}

// Bar is one bin of a latency histogram, in milliseconds.
type Bar struct {
	FromMS float64 `json:"from_ms"`
	ToMS   float64 `json:"to_ms"`
	Count  int64   `json:"count"`
}

// FleetRate is the setup rate measured while the fleet grew from the
// previous mark to Fleet established SAs.
type FleetRate struct {
	Fleet    int     `json:"fleet"`
	AtS      float64 `json:"at_s"`
	RatePerS float64 `json:"rate_per_s"`
}

// ProcReport is a process's resource use over the run.
type ProcReport struct {
	PID          int     `json:"pid"`
	CPUSeconds   float64 `json:"cpu_s"`
	CPUMeanPct   float64 `json:"cpu_mean_pct"` // % of one core over the setup phase
	RSSMaxMiB    float64 `json:"rss_max_mib"`
	SetupsPerCPU float64 `json:"setups_per_cpu_s,omitempty"` // setups per CPU-second spent during the setup phase
}

func summarise(h *hdrhistogram.Histogram) Latency {
	if h.TotalCount() == 0 {
		return Latency{}
	}
	ms := func(v int64) float64 { return math.Round(float64(v)) / 1000 }
	return Latency{Count: h.TotalCount(), Mean: math.Round(h.Mean()) / 1000,
		P50: ms(h.ValueAtQuantile(50)), P90: ms(h.ValueAtQuantile(90)), P99: ms(h.ValueAtQuantile(99)),
		P999: ms(h.ValueAtQuantile(99.9)), Max: ms(h.Max())}
}

// bars folds the histogram into log-spaced bins (about 10 per decade).
func bars(h *hdrhistogram.Histogram) []Bar {
	if h.TotalCount() == 0 {
		return nil
	}
	const perDecade = 10
	edge := func(i int) float64 { return math.Pow(10, float64(i)/perDecade) } // µs
	lo := int(math.Floor(math.Log10(float64(max(1, h.Min()))) * perDecade))
	hi := int(math.Ceil(math.Log10(float64(max(1, h.Max()))+1e-9)*perDecade)) + 1
	out := make([]Bar, 0, hi-lo)
	for i := lo; i < hi; i++ {
		out = append(out, Bar{FromMS: edge(i) / 1000, ToMS: edge(i+1) / 1000})
	}
	for _, b := range h.Distribution() {
		if b.Count == 0 {
			continue
		}
		v := float64(b.From+b.To) / 2
		i := int(math.Floor(math.Log10(max(1, v))*perDecade)) - lo
		i = max(0, min(len(out)-1, i))
		out[i].Count += b.Count
	}
	for i := range out {
		out[i].FromMS = math.Round(out[i].FromMS*1000) / 1000
		out[i].ToMS = math.Round(out[i].ToMS*1000) / 1000
	}
	return out
}

// report assembles the Report (the caller fills process and run fields).
func (c *collector) report(end time.Time) Report {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := Report{
		Started: c.start, Attempted: c.nAttempted, Established: c.nEstablished, TimedOut: c.nTimedOut,
		Failures: maps.Clone(c.failures), Children: c.children, ChildFailures: maps.Clone(c.childFailures),
		PeakSAs: c.peakActive, Abandoned: c.abandoned, Deleted: c.deleted, Losses: maps.Clone(c.losses),
		DurationS: end.Sub(c.start).Seconds(), LatencyMS: summarise(c.setup), LatencyBars: bars(c.setup), Percentiles: percentiles(c.setup),
		Rekeys: c.rekey, RekeyLatencyMS: summarise(c.rekeyLat), Moves: c.moves, Keepalives: c.keepalives,
		Timeline: append([]second(nil), c.timeline...), Proposal: c.proposal, Reauthentications: c.reauth, Retried: maps.Clone(c.retried),
	}
	r.Rekeys.Failures = maps.Clone(c.rekey.Failures)
	for _, n := range c.failures {
		r.Failed += n
	}
	for _, n := range c.losses {
		r.Lost += n
	}
	r.InFlight = c.inFlight
	r.Consistent = r.InFlight == 0 && r.Attempted == r.Established+r.Failed+r.TimedOut
	// The setup rate is that of the establish phase (up to its last
	// setup): later setups (churn) come at the scenario's pace.
	est, last := c.nEstablished, c.lastEst
	if !c.setupEnd.IsZero() {
		est = c.setupEstablished
		if c.setupEnd.Before(last) {
			last = c.setupLastEst
		}
	}
	if est > 0 {
		r.SetupPhaseS = last.Sub(c.start).Seconds()
		if r.SetupPhaseS > 0 {
			r.RatePerS = float64(est) / r.SetupPhaseS
		}
	}
	for _, s := range c.timeline {
		r.PeakRatePerS = max(r.PeakRatePerS, s.Setups)
	}
	prev := markTime{}
	for _, m := range c.marks {
		d := (m.at - prev.at).Seconds()
		fr := FleetRate{Fleet: m.fleet, AtS: m.at.Seconds()}
		if d > 0 {
			fr.RatePerS = math.Round(float64(m.fleet-prev.fleet)/d*10) / 10
		}
		r.FleetRates = append(r.FleetRates, fr)
		prev = m
	}
	if c.esp.Sent > 0 || c.esp.Received > 0 || len(c.esp.Errors) > 0 {
		e := c.esp
		e.Errors = maps.Clone(c.esp.Errors)
		r.ESP = &e
	}
	return r
}
