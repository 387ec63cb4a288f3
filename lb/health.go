package lb

import (
	"fmt"
	"time"
)

// Probe is one look at the node, taken by its Source.
type Probe struct {
	StoreConfigured bool // the node has a state store
	StoreReachable  bool // its last etcd request succeeded
	LeaseAlive      bool // registered: the node's lease is alive
	Fenced          bool // not allowed to send for its SAs
	Listening       bool // the IKE sockets are bound
	Draining        bool // the node refuses new SAs (admin drain, SIGTERM)

	InstallError   string    // the last CHILD SA install failed with it; "" once one succeeded
	InstallErrorAt time.Time // when

	// The receive queues of IKE_AUTH and established SAs' messages: the
	// fullest one's share in use (0..1), and their drops since start. A
	// node dropping new IKE_SA_INITs is busy, not unhealthy: taking its
	// route away would move its established SAs as well.
	QueueFill  float64
	QueueDrops uint64

	SAs int // IKE SAs on the node
}

// Check names of Verdict.Failing.
const (
	CheckListening = "listening"
	CheckStore     = "statestore"
	CheckLease     = "lease"
	CheckFenced    = "fenced"
	CheckInstall   = "dataplane"
	CheckQueueFill = "queue_fill"
	CheckDrops     = "queue_drops"
)

// Checks lists every check, for metrics.
var Checks = []string{CheckListening, CheckStore, CheckLease, CheckFenced, CheckInstall, CheckQueueFill, CheckDrops}

// Verdict is the outcome of one check of a probe.
type Verdict struct {
	Good    bool
	Failing []string // check names
	Detail  []string // one line per failing check
}

// Checker turns probes into health with hysteresis: Fall consecutive bad
// checks make a healthy node unhealthy, Rise consecutive good ones make an
// unhealthy node healthy again. A node starts unhealthy (not announced
// until it proved itself Rise times). Not safe for concurrent use.
type Checker struct {
	cfg HealthConfig

	healthy   bool
	bad, good int
	lastDrops uint64
	first     bool
	last      Verdict
	changedAt time.Time
	downs     uint64
}

// NewChecker returns a checker that starts unhealthy.
func NewChecker(cfg HealthConfig) *Checker { return &Checker{cfg: cfg, first: true} }

// Evaluate judges one probe taken at now, without hysteresis.
func (c *Checker) Evaluate(p Probe, now time.Time) Verdict {
	var v Verdict
	fail := func(name, format string, args ...any) {
		v.Failing = append(v.Failing, name)
		v.Detail = append(v.Detail, name+": "+fmt.Sprintf(format, args...))
	}
	if !p.Listening {
		fail(CheckListening, "IKE sockets not bound")
	}
	if p.StoreConfigured {
		if !p.StoreReachable {
			fail(CheckStore, "etcd unreachable")
		}
		if !p.LeaseAlive {
			fail(CheckLease, "no live registration (lease)")
		}
		if p.Fenced {
			fail(CheckFenced, "fenced: may not send for its SAs")
		}
	}
	if p.InstallError != "" && (c.cfg.InstallErrorAge == 0 || now.Sub(p.InstallErrorAt) < c.cfg.InstallErrorAge) {
		fail(CheckInstall, "CHILD SA install failed %s ago: %s", now.Sub(p.InstallErrorAt).Round(time.Millisecond), p.InstallError)
	}
	if p.QueueFill >= c.cfg.QueueFill {
		fail(CheckQueueFill, "receive queue %.0f%% full", 100*p.QueueFill)
	}
	if !c.first && p.QueueDrops > c.lastDrops && p.QueueDrops-c.lastDrops > c.cfg.QueueDrops {
		fail(CheckDrops, "%d messages dropped on full queues since the last check", p.QueueDrops-c.lastDrops)
	}
	v.Good = len(v.Failing) == 0
	return v
}

// Observe judges a probe and applies the hysteresis; it reports whether
// the node is healthy now and whether that changed.
func (c *Checker) Observe(p Probe, now time.Time) (healthy, changed bool) {
	v := c.Evaluate(p, now)
	c.first = false
	c.lastDrops = p.QueueDrops
	c.last = v
	if v.Good {
		c.good++
		c.bad = 0
	} else {
		c.bad++
		c.good = 0
	}
	switch {
	case c.healthy && c.bad >= c.cfg.Fall:
		c.healthy, changed = false, true
		c.downs++
	case !c.healthy && c.good >= c.cfg.Rise:
		c.healthy, changed = true, true
	}
	if changed {
		c.changedAt = now
	}
	return c.healthy, changed
}

// Healthy reports the current health (after hysteresis).
func (c *Checker) Healthy() bool { return c.healthy }

// Last is the verdict of the last probe.
func (c *Checker) Last() Verdict { return c.last }

// Since is when the health last changed (zero: never).
func (c *Checker) Since() time.Time { return c.changedAt }

// Downs counts transitions to unhealthy.
func (c *Checker) Downs() uint64 { return c.downs }
