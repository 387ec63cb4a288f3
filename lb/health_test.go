package lb

import (
	"slices"
	"testing"
	"time"
)

func good() Probe {
	return Probe{StoreConfigured: true, StoreReachable: true, LeaseAlive: true, Listening: true}
}

func TestCheckerHysteresis(t *testing.T) {
	c := NewChecker(HealthConfig{Interval: time.Second, Fall: 3, Rise: 2, InstallErrorAge: 30 * time.Second, QueueFill: 0.9, QueueDrops: 10})
	now := time.Unix(1000, 0)
	step := func(p Probe) (bool, bool) {
		now = now.Add(time.Second)
		return c.Observe(p, now)
	}
	// Starts unhealthy; Rise good checks bring it up.
	if h, ch := step(good()); h || ch {
		t.Fatalf("after 1 good check: healthy=%v changed=%v, want false false", h, ch)
	}
	if h, ch := step(good()); !h || !ch {
		t.Fatalf("after 2 good checks: healthy=%v changed=%v, want true true", h, ch)
	}
	bad := good()
	bad.StoreReachable = false
	// Two bad checks, a good one: the count starts over.
	step(bad)
	step(bad)
	if h, _ := step(good()); !h {
		t.Fatal("went down before Fall consecutive bad checks")
	}
	step(bad)
	step(bad)
	if h, ch := step(bad); h || !ch {
		t.Fatalf("after 3 bad checks: healthy=%v changed=%v, want false true", h, ch)
	}
	if v := c.Last(); !slices.Equal(v.Failing, []string{CheckStore}) {
		t.Fatalf("failing %v, want [statestore]", v.Failing)
	}
	if c.Downs() != 1 {
		t.Fatalf("downs %d, want 1", c.Downs())
	}
	step(good())
	if h, ch := step(good()); !h || !ch {
		t.Fatalf("back after Rise good checks: healthy=%v changed=%v", h, ch)
	}
}

func TestCheckerChecks(t *testing.T) {
	cfg := HealthConfig{Interval: time.Second, Fall: 1, Rise: 1, InstallErrorAge: 30 * time.Second, QueueFill: 0.9, QueueDrops: 10}
	now := time.Unix(1000, 0)
	cases := []struct {
		name string
		mod  func(*Probe)
		want []string
	}{
		{"good", func(*Probe) {}, nil},
		{"not listening", func(p *Probe) { p.Listening = false }, []string{CheckListening}},
		{"fenced, lease lost", func(p *Probe) { p.Fenced, p.LeaseAlive = true, false }, []string{CheckLease, CheckFenced}},
		{"no store: store checks off", func(p *Probe) { *p = Probe{Listening: true} }, nil},
		{"fresh install error", func(p *Probe) { p.InstallError, p.InstallErrorAt = "ENOMEM", now.Add(-time.Second) }, []string{CheckInstall}},
		{"old install error", func(p *Probe) { p.InstallError, p.InstallErrorAt = "ENOMEM", now.Add(-time.Minute) }, nil},
		{"queue full", func(p *Probe) { p.QueueFill = 0.95 }, []string{CheckQueueFill}},
		{"drops", func(p *Probe) { p.QueueDrops = 1011 }, []string{CheckDrops}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := NewChecker(cfg)
			p := good()
			p.QueueDrops = 1000
			c.Observe(p, now.Add(-time.Second)) // the drops baseline
			tc.mod(&p)
			v := c.Evaluate(p, now)
			if !slices.Equal(v.Failing, tc.want) || v.Good != (len(tc.want) == 0) {
				t.Fatalf("failing %v good %v, want %v", v.Failing, v.Good, tc.want)
			}
		})
	}
}
