package lb

// Front ties the pieces together: every health.interval it probes the
// node, applies the hysteresis, and announces the prefixes while the node
// is healthy and not draining, withdrawing them otherwise.

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// Source is what the front needs from the node.
type Source interface {
	// Probe looks at the node now (cheap: called every health.interval).
	Probe() Probe
	// VirtualIPs lists the virtual IPs of the SAs the node holds (only
	// with announce_virtual_ips).
	VirtualIPs(ctx context.Context) ([]netip.Addr, error)
}

// Status is the front as operators see it.
type Status struct {
	Mode          string
	Healthy       bool      // after hysteresis
	HealthSince   time.Time // last change (zero: never healthy yet)
	Failing       []string  // checks failing in the last probe
	Detail        []string
	Draining      bool
	Announced     []netip.Prefix // what the announcer announces now
	AnnounceError string         // the last Set failed with it
	SessionsUp    int            // BGP sessions established
	Sessions      int            // BGP sessions configured
	Withdrawals   uint64         // times everything was withdrawn
	Downs         uint64         // times health went down
	LastWithdraw  time.Time
	Members       []Member // membership (nil without members.listen)
}

// Front announces the node while it is healthy.
type Front struct {
	cfg     Config
	prefix  []netip.Prefix
	src     Source
	ann     Announcer
	members *Members
	log     *slog.Logger
	now     func() time.Time

	kick chan struct{}

	mu          sync.Mutex
	chk         *Checker
	announced   []netip.Prefix
	annErr      string
	withdrawals uint64
	lastWd      time.Time
	draining    bool
	closed      bool
}

// New returns the front for cfg (validated; mode not off); listen are
// ike.listen's addresses. ann nil: the announcer of cfg.Mode.
func New(cfg Config, listen []netip.Addr, src Source, ann Announcer, log *slog.Logger) (*Front, error) {
	ps, err := cfg.Prefixes(listen)
	if err != nil {
		return nil, err
	}
	if ann == nil {
		switch cfg.Mode {
		case ModeBGP:
			v6 := false
			for _, p := range ps {
				v6 = v6 || p.Addr().Is6()
			}
			ann = NewBGPSpeaker(cfg.BGP, v6 || cfg.AnnounceVirtualIPs, log.With("component", "bgp"))
		case ModeKernel:
			ann = NewKernelRoutes(cfg.Kernel.Interface, log)
		default:
			return nil, fieldErr("mode", "no announcer for mode %q", cfg.Mode)
		}
	}
	return &Front{cfg: cfg, prefix: ps, src: src, ann: ann, log: log, now: time.Now,
		kick: make(chan struct{}, 1), chk: NewChecker(cfg.Health)}, nil
}

// SetMembers attaches membership: its health and load gossip follow the
// front's (before Run).
func (f *Front) SetMembers(m *Members) { f.members = m }

// Members returns the attached membership (nil: none).
func (f *Front) Members() *Members { return f.members }

// Kick makes Run probe again at once (a drain began or ended).
func (f *Front) Kick() {
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// Run starts the announcer and keeps the announcement in line with the
// node's health until ctx ends; then it withdraws and stops the
// announcer.
func (f *Front) Run(ctx context.Context) error {
	if err := f.ann.Start(ctx); err != nil {
		return err
	}
	defer f.Close()
	t := time.NewTicker(f.cfg.Health.Interval)
	defer t.Stop()
	for {
		f.step(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-f.kick:
		}
	}
}

// step probes once and updates the announcement.
func (f *Front) step(ctx context.Context) {
	p := f.src.Probe()
	now := f.now()
	f.mu.Lock()
	healthy, changed := f.chk.Observe(p, now)
	v := f.chk.Last()
	wasDraining := f.draining
	f.draining = p.Draining
	f.mu.Unlock()
	if changed {
		if healthy {
			f.log.Info("anycast: healthy", "rise", f.cfg.Health.Rise)
		} else {
			f.log.Warn("anycast: unhealthy, withdrawing", "failing", strings.Join(v.Detail, "; "))
		}
	}
	if p.Draining != wasDraining {
		f.log.Info("anycast: draining changed", "draining", p.Draining)
	}
	var want []netip.Prefix
	if healthy && !p.Draining {
		want = append(want, f.prefix...)
		if f.cfg.AnnounceVirtualIPs {
			vips, err := f.src.VirtualIPs(ctx)
			if err != nil {
				f.log.Warn("anycast: virtual IPs not listed", "err", err)
			}
			for _, a := range vips {
				want = append(want, netip.PrefixFrom(a, a.BitLen()))
			}
		}
	}
	f.apply(ctx, want)
	if f.members != nil {
		f.members.SetLocal(Meta{Healthy: healthy, Draining: p.Draining, SAs: p.SAs})
	}
}

// apply announces exactly want.
func (f *Front) apply(ctx context.Context, want []netip.Prefix) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return
	}
	have := map[netip.Prefix]bool{}
	for _, p := range f.announced {
		have[p] = true
	}
	add, del := diff(have, want)
	if len(add) == 0 && len(del) == 0 && f.annErr == "" {
		return
	}
	if err := f.ann.Set(ctx, want); err != nil {
		if f.annErr != err.Error() {
			f.log.Error("anycast: announcement not updated", "err", err)
		}
		f.annErr = err.Error()
		return
	}
	f.annErr = ""
	if len(want) == 0 && len(f.announced) > 0 {
		f.withdrawals++
		f.lastWd = f.now()
		f.log.Info("anycast: withdrawn", "prefixes", fmt.Sprint(f.announced))
	} else if len(add) > 0 {
		f.log.Info("anycast: announced", "prefixes", fmt.Sprint(add))
	}
	f.announced = append(f.announced[:0], want...)
}

// Withdraw withdraws everything now (a drain), whatever the health;
// Run keeps it withdrawn while the node drains.
func (f *Front) Withdraw(ctx context.Context) {
	f.mu.Lock()
	f.draining = true
	f.mu.Unlock()
	f.apply(ctx, nil)
}

// Status reports the front's state.
func (f *Front) Status(ctx context.Context) Status {
	f.mu.Lock()
	v := f.chk.Last()
	st := Status{Mode: f.cfg.Mode, Healthy: f.chk.Healthy(), HealthSince: f.chk.Since(), Failing: v.Failing,
		Detail: v.Detail, Draining: f.draining, Announced: append([]netip.Prefix(nil), f.announced...),
		AnnounceError: f.annErr, Withdrawals: f.withdrawals, Downs: f.chk.Downs(), LastWithdraw: f.lastWd}
	f.mu.Unlock()
	st.SessionsUp, st.Sessions = f.ann.Sessions(ctx)
	if f.members != nil {
		st.Members = f.members.List()
	}
	return st
}

// Close withdraws and stops the announcer.
func (f *Front) Close() error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	had := len(f.announced) > 0
	f.announced = nil
	f.mu.Unlock()
	if had {
		f.log.Info("anycast: withdrawn (stopping)")
	}
	return f.ann.Close()
}
