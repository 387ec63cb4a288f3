package concentrator

// The anycast front (package lb) wired into the node: the node is lb's
// Source (health facts, SA counts, virtual IPs); the front announces the
// anycast prefixes while the node is healthy and not draining. A drain
// with hand-off withdraws the route, waits while the other nodes claim the
// SAs as their packets arrive there (claim.go), and persists what remains.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/concentrator/metrics"
	"github.com/ikefleet/ikefleet/concentrator/transport"
	"github.com/ikefleet/ikefleet/lb"
)

// front is the node's share of the anycast front.
type front struct {
	f       atomic.Pointer[lb.Front]
	members atomic.Pointer[lb.Members]

	mu        sync.Mutex
	errPtr    *string   // the install error last seen
	errAt     time.Time // when it was first seen
	sas       atomic.Int64
	redirects atomic.Uint64

	// drain progress (metrics, admin)
	draining     atomic.Bool
	drainStart   atomic.Int64 // unix nanos
	drainInitial atomic.Int64 // IKE SAs when the drain began
	drainLeft    atomic.Int64
	drainDur     atomic.Int64 // nanos the last drain took
}

// nodeSource is lb.Source over a node.
type nodeSource struct{ n *Node }

// Probe implements lb.Source.
func (s nodeSource) Probe() lb.Probe {
	n := s.n
	p := lb.Probe{Listening: n.listening(), Draining: n.ops.draining.Load(), QueueDrops: n.prioDrops.Load()}
	if n.persist != nil {
		h := n.persist.store.Health()
		p.StoreConfigured, p.StoreReachable, p.LeaseAlive = true, h.Reachable, h.Registered
		p.Fenced = !n.persist.store.CanSend()
	}
	n.front.mu.Lock()
	if e := n.obs.installErr.Load(); e != nil {
		if e != n.front.errPtr {
			n.front.errPtr, n.front.errAt = e, time.Now()
		}
		p.InstallError, p.InstallErrorAt = *e, n.front.errAt
	} else {
		n.front.errPtr = nil
	}
	n.front.mu.Unlock()
	for _, sh := range n.shards {
		if f := sh.q.fill(); f > p.QueueFill {
			p.QueueFill = f
		}
	}
	// The SA count goes through the shards: bounded, the last one stays
	// when they are too busy to answer.
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	if c, err := n.CountSAs(ctx); err == nil {
		n.front.sas.Store(int64(c.IKE))
	}
	cancel()
	p.SAs = int(n.front.sas.Load())
	return p
}

// VirtualIPs implements lb.Source.
func (s nodeSource) VirtualIPs(ctx context.Context) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, sh := range s.n.shards {
		err := s.n.do(ctx, sh, func() {
			sh.eng.Each(func(sa *ike.IKESA) bool {
				for _, c := range sa.Children() {
					if c.VirtualIP.IsValid() {
						out = append(out, c.VirtualIP)
					}
				}
				return true
			})
		})
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// listenAddrs are ike.listen's addresses.
func (n *Node) listenAddrs() []netip.Addr {
	var out []netip.Addr
	for _, a := range n.cfg.IKE.Listen {
		out = append(out, netip.MustParseAddr(a).Unmap())
	}
	return out
}

// runFront runs the anycast front (anycast.mode) and the membership
// (anycast.members.listen) until ctx ends; then it withdraws.
func (n *Node) runFront(ctx context.Context) {
	c := n.cfg.Anycast
	var members *lb.Members
	if c.Members.Listen != "" {
		m, err := lb.NewMembers(c.Members, n.nodeID, lb.Meta{PeerAddr: n.PeerAddr(), Unicast: c.Redirect.Unicast},
			n.log.With("component", "members"))
		if err != nil {
			n.log.Error("anycast: membership not started", "err", err)
		} else {
			members = m
			n.front.members.Store(m)
			defer m.Close()
			n.log.Info("anycast: membership", "gossip", m.Addr())
		}
	}
	if c.Mode == lb.ModeOff {
		if members == nil {
			return
		}
		// Membership alone: gossip health and load every interval.
		t := time.NewTicker(c.Health.Interval)
		defer t.Stop()
		src := nodeSource{n}
		for {
			p := src.Probe()
			members.SetLocal(lb.Meta{Healthy: p.Listening && !p.Fenced, Draining: p.Draining, SAs: p.SAs})
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}
	f, err := lb.New(c, n.listenAddrs(), nodeSource{n}, nil, n.log.With("component", "anycast"))
	if err != nil {
		n.log.Error("anycast: not started", "err", err)
		return
	}
	if members != nil {
		f.SetMembers(members)
	}
	n.front.f.Store(f)
	n.log.Info("anycast: front", "mode", c.Mode)
	if err := f.Run(ctx); err != nil {
		n.log.Error("anycast: stopped", "err", err)
	}
}

// AnycastStatus is the front's state; ok false without anycast.mode.
func (n *Node) AnycastStatus(ctx context.Context) (lb.Status, bool) {
	f := n.front.f.Load()
	if f == nil {
		if m := n.front.members.Load(); m != nil {
			return lb.Status{Members: m.List()}, true
		}
		return lb.Status{}, false
	}
	return f.Status(ctx), true
}

// kickFront makes the front look at the node again at once.
func (n *Node) kickFront() {
	if f := n.front.f.Load(); f != nil {
		f.Kick()
	}
}

// HandOffProgress is one step of a drain with hand-off.
type HandOffProgress struct {
	Initial  int // IKE SAs when the drain began
	Left     int // IKE SAs still here
	HalfOpen int
	Elapsed  time.Duration
	Phase    string // withdrawn | handing_off | flushing | drained
}

// ErrDrainTimeout: the grace period ended with SAs still here (they are
// persisted: whoever sees their traffic takes them over).
var ErrDrainTimeout = errors.New("grace period over with SAs left on this node")

// DrainHandOff drains the node for good: new IKE SAs refused (redirected
// when anycast.redirect is on), the anycast route withdrawn at once, then
// it waits while other nodes claim the SAs as their traffic reaches them
// (until none is left, none left for anycast.drain.settle, or ctx ends:
// the grace period), and writes what remains to the state store. progress
// is called every half second.
func (n *Node) DrainHandOff(ctx context.Context, progress func(HandOffProgress)) (HandOffProgress, error) {
	start := time.Now()
	n.Drain(false)
	if f := n.front.f.Load(); f != nil {
		f.Withdraw(ctx)
	}
	count := func() (int, int) {
		c, err := n.CountSAs(ctx)
		if err != nil {
			return int(n.front.drainLeft.Load()), 0
		}
		return c.IKE, c.IKE - c.Established
	}
	initial, _ := count()
	fr := &n.front
	fr.draining.Store(true)
	fr.drainStart.Store(start.UnixNano())
	fr.drainInitial.Store(int64(initial))
	fr.drainLeft.Store(int64(initial))
	defer fr.draining.Store(false)
	p := HandOffProgress{Initial: initial, Left: initial, Phase: "withdrawn"}
	if progress != nil {
		progress(p)
	}
	n.log.Info("drain: route withdrawn, waiting for the SAs to move", "sas", initial)
	settle := n.cfg.Anycast.Drain.Settle
	lastChange, last := time.Now(), initial
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	p.Phase = "handing_off"
	for p.Left > 0 {
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		if ctx.Err() != nil {
			break
		}
		p.Left, p.HalfOpen = count()
		p.Elapsed = time.Since(start)
		fr.drainLeft.Store(int64(p.Left))
		if p.Left != last {
			last, lastChange = p.Left, time.Now()
		}
		if progress != nil {
			progress(p)
		}
		if settle > 0 && p.HalfOpen == 0 && time.Since(lastChange) >= settle {
			n.log.Info("drain: no SA moved for the settle time", "left", p.Left, "settle", settle)
			break
		}
	}
	p.Phase = "flushing"
	if progress != nil {
		progress(p)
	}
	// The flush gets its own few seconds: the grace period may be over,
	// and what remains must reach the state store.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	_, ferr := n.FlushState(fctx)
	cancel()
	p.Elapsed = time.Since(start)
	fr.drainDur.Store(int64(p.Elapsed))
	p.Phase = "drained"
	if progress != nil {
		progress(p)
	}
	n.log.Info("drain: done", "initial", p.Initial, "left", p.Left, "moved", p.Initial-p.Left,
		"elapsed", p.Elapsed.Round(time.Millisecond).String())
	switch {
	case ferr != nil:
		return p, fmt.Errorf("drain: state store flush: %w", ferr)
	case p.Left > 0 && ctx.Err() != nil:
		return p, ErrDrainTimeout
	}
	return p, nil
}

// anycastMetrics is the front's share of a metrics snapshot.
func (n *Node) anycastMetrics(ctx context.Context) *metrics.Anycast {
	fr := &n.front
	a := &metrics.Anycast{DrainActive: fr.draining.Load(), DrainInitial: fr.drainInitial.Load(),
		DrainRemaining: fr.drainLeft.Load(), DrainDurationSec: time.Duration(fr.drainDur.Load()).Seconds(),
		Redirects: fr.redirects.Load()}
	if f := fr.f.Load(); f != nil {
		st := f.Status(ctx)
		a.Front, a.Healthy, a.Announced = true, st.Healthy, len(st.Announced)
		a.Withdrawals, a.Downs, a.SessionsUp, a.Sessions = st.Withdrawals, st.Downs, st.SessionsUp, st.Sessions
		a.Failing = map[string]bool{}
		for _, c := range lb.Checks {
			a.Failing[c] = false
		}
		for _, c := range st.Failing {
			a.Failing[c] = true
		}
	}
	if m := fr.members.Load(); m != nil {
		a.Members = true
		for _, mb := range m.List() {
			if mb.Alive {
				a.MembersAlive++
			} else {
				a.MembersDead++
			}
		}
	}
	return a
}

// redirectInit answers an IKE_SA_INIT request with an RFC 5685 REDIRECT
// to the least loaded live member while this node drains or holds more
// than anycast.redirect.max_sas IKE SAs, if the initiator supports it. It
// reports whether it answered (from the socket loop: b is the IKE message
// without the non-ESP marker).
func (n *Node) redirectInit(c transport.Conn, natt bool, b []byte, remote netip.AddrPort) bool {
	max := n.cfg.Anycast.Redirect.MaxSAs
	if !n.ops.draining.Load() && (max == 0 || n.front.sas.Load() < int64(max)) {
		return false
	}
	m := n.front.members.Load()
	if m == nil {
		return false
	}
	target, ok := m.RedirectTarget()
	if !ok {
		return false
	}
	resp, ok := ike.RedirectInit(b, target)
	if !ok {
		return false
	}
	if natt {
		resp = append([]byte{0, 0, 0, 0}, resp...)
	}
	// Counted before it leaves: whoever sees the answer sees the count.
	n.front.redirects.Add(1)
	if err := c.WriteTo(resp, remote); err != nil {
		n.front.redirects.Add(^uint64(0))
		n.log.Debug("REDIRECT not sent", "remote", remote.String(), "err", err)
		return true
	}
	n.plog.Log(context.Background(), slog.LevelInfo, "redirect", "IKE_SA_INIT redirected (RFC 5685)", "remote", remote.String(), "to", target.String(),
		"draining", n.ops.draining.Load())
	return true
}
