package concentrator

import (
	"context"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/clock"
	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/statestore"
)

// Fault tests at the node level, in process: a node of the in-memory
// cluster rig (real etcd, real gRPC to it over loopback through a TCP
// proxy that can cut the connection) serving gateways of the engine's
// initiator. Outcomes are asserted; times are reported, never asserted.

// etcdProxy forwards TCP to etcd until cut: a node-local network
// partition (connections are closed, new ones refused).
type etcdProxy struct {
	l     net.Listener
	mu    sync.Mutex
	cut   bool
	conns []net.Conn
}

func newEtcdProxy(t *testing.T, to string) *etcdProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &etcdProxy{l: l}
	t.Cleanup(func() { l.Close(); p.setCut(true) })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.cut {
				p.mu.Unlock()
				c.Close()
				continue
			}
			u, err := net.DialTimeout("tcp", to, time.Second)
			if err != nil {
				p.mu.Unlock()
				c.Close()
				continue
			}
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { io.Copy(u, c); u.Close() }()
			go func() { io.Copy(c, u); c.Close() }()
		}
	}()
	return p
}

func (p *etcdProxy) endpoint() string { return "http://" + p.l.Addr().String() }

func (p *etcdProxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for _, c := range p.conns {
			c.Close()
		}
		p.conns = nil
	}
}

// faultRig is one node (external etcd behind a proxy, lease TTL 3 s)
// serving G gateways that check its liveness every faultDPD (the node
// checks none); gateway G+1 is configured but not connected (a new
// gateway for the outage).
type faultRig struct {
	c     *testCluster
	proxy *etcdProxy
	node  *clusterNode
	gws   []*memGateway
	spis  []uint64
	// sent counts IKE messages the node sent (NAT-T keepalives apart).
	sent  atomic.Int64
	added int // gateways added by newGateway
}

const faultDPD = 30 * time.Second

// faultNewGateways: the credentials a rig holds beyond its G established
// gateways, for gateways that connect during and after a fault.
const faultNewGateways = 6

func newFaultRig(t *testing.T, ctx context.Context, G int, opts ...func(*testCluster)) *faultRig {
	c := newTestCluster(t, G+faultNewGateways)
	c.ikeExtra = "  dpd_delay: 0s\n"
	p := newEtcdProxy(t, strings.TrimPrefix(c.etcd.Endpoints()[0], "http://"))
	c.edit = func(s string) string { return replaceOnce(t, s, c.etcd.Endpoints()[0], p.endpoint()) }
	for _, o := range opts {
		o(c)
	}
	r := &faultRig{c: c, proxy: p}
	c.netw.Filter = func(from, to netip.AddrPort, b []byte) bool {
		if from.Addr() == c.vip && len(b) > 1 {
			r.sent.Add(1)
		}
		return true
	}
	r.node = c.start(ctx, "a")
	c.setRoute("a")
	r.gws = make([]*memGateway, G)
	for i := range r.gws {
		a := netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i + 1)})
		r.gws[i] = startMemGateway(t, ctx, c.netw, c.clk, a, func(cfg *ike.Config) { cfg.DPDDelay = faultDPD })
	}
	// The fake clock follows real time while the gateways connect (a
	// lost answer on a busy machine is retransmitted).
	stop := r.tick()
	var wg sync.WaitGroup
	errs := make(chan error, G)
	for i, g := range r.gws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := g.dial(ctx, c.vip, i+1); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	stop()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	r.spis = make([]uint64, G)
	for i, g := range r.gws {
		_, r.spis[i], _ = gatewaySA(g)
	}
	if err := r.node.n.persist.store.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if k := r.established(ctx); k != G {
		t.Fatalf("node holds %d established SAs, want %d", k, G)
	}
	return r
}

// established counts the node's established IKE SAs.
func (r *faultRig) established(ctx context.Context) int {
	sas, err := r.node.n.SAs(ctx)
	if err != nil {
		r.c.t.Fatal(err)
	}
	k := 0
	for _, sa := range sas {
		if sa.State == "ESTABLISHED" {
			k++
		}
	}
	return k
}

// tick advances the fake clock with real time until stopped.
func (r *faultRig) tick() (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-done:
				return
			case <-tk.C:
				r.c.clk.Advance(50 * time.Millisecond)
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

func (r *faultRig) store() *statestore.Store { return r.node.n.persist.store.(*statestore.Store) }

// waitRecovered waits until the node is registered, reachable and
// allowed to send again, and returns how long that took from since.
func (r *faultRig) waitRecovered(t *testing.T, ctx context.Context, since time.Time) time.Duration {
	t.Helper()
	waitFor(t, ctx, "the node registered and sending again", func() bool {
		h := r.node.n.Health()
		return !h.Fenced && h.StateStore.Registered && h.StateStore.Reachable
	})
	return time.Since(since)
}

// checkNoneLost: every gateway checks liveness and hears back under the
// IKE SA it started with (no re-authentication); the node holds each SA
// once and owns it in etcd under its current registration. It returns
// how long until the last gateway heard back.
func (r *faultRig) checkNoneLost(t *testing.T, ctx context.Context) time.Duration {
	t.Helper()
	start := time.Now()
	r.c.clk.Advance(faultDPD + time.Second) // every gateway sends a liveness check now
	for {
		left := 0
		for _, g := range r.gws {
			if g.lastRecv.Load() <= start.UnixNano() {
				left++
			}
		}
		if left == 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("%d of %d gateways never heard back after the fault; node %+v", left, len(r.gws), r.node.n.Health())
		}
		// Real time for the retransmissions (2 s, doubling).
		time.Sleep(50 * time.Millisecond)
		r.c.clk.Advance(50 * time.Millisecond)
	}
	answered := time.Since(start)
	sas, err := r.node.n.SAs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	held := map[uint64]int{}
	for _, sa := range sas {
		if sa.State == "ESTABLISHED" {
			held[sa.SPIr]++
		}
	}
	me, _ := r.store().Registration()
	lost := 0
	for i, g := range r.gws {
		_, spir, _ := gatewaySA(g)
		if spir != r.spis[i] || held[r.spis[i]] != 1 || g.established.Load() != 1 {
			lost++
			t.Errorf("gateway %d: IKE SA %016x now %016x, held %d times, established %d times", i+1, r.spis[i], spir, held[r.spis[i]], g.established.Load())
			continue
		}
		o, _, err := r.store().Owner(ctx, r.spis[i])
		// A later registration may own it (a starved machine can miss a
		// lease renewal: the node fences and reclaims again meanwhile).
		if err != nil || o.Node != me.Node || o.Epoch < me.Epoch {
			t.Errorf("gateway %d: SA %016x owned by %v in etcd (%v), want %v or later", i+1, r.spis[i], o, err, me)
		}
	}
	if lost != 0 {
		t.Fatalf("%d of %d SAs lost", lost, len(r.gws))
	}
	return answered
}

// newGateway is gateway G+1 on a fake clock of its own that follows real
// time (its retransmissions must not move the node's clock, nor the
// established gateways' liveness checks).
func (r *faultRig) newGateway(t *testing.T, ctx context.Context) (*memGateway, func(context.Context) error) {
	r.added++
	clk := clock.NewFake(r.c.clk.Now())
	n := len(r.gws) + r.added
	g := startMemGateway(t, ctx, r.c.netw, clk, netip.AddrFrom4([4]byte{100, 65, 0, byte(r.added)}))
	go func() {
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
				clk.Advance(100 * time.Millisecond) // twice real time: its retries run out sooner
			}
		}
	}()
	return g, func(dctx context.Context) error { return g.dial(dctx, r.c.vip, n) }
}

// etcd unreachable from the node for longer than the lease TTL (default
// 15 s, FAULT_OUTAGE_S), then back: established SAs keep their state on
// the node (it stops sending once fenced), a new gateway is refused while
// etcd is out of reach and accepted after; the node re-registers under a
// new epoch, reclaims every SA, and every gateway's liveness check is
// answered under its original IKE SA.
func TestFaultEtcdUnreachable(t *testing.T) {
	const G = 50
	outage := time.Duration(envInt("FAULT_OUTAGE_S", 15)) * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second+outage)
	defer cancel()
	r := newFaultRig(t, ctx, G)
	before, _ := r.store().Registration()

	r.proxy.setCut(true)
	cutAt := time.Now()
	waitFor(t, ctx, "the node fenced", func() bool { return r.node.n.Health().Fenced })
	fencedAfter := time.Since(cutAt)
	// A new gateway meanwhile: not established (its requests go
	// unanswered or are refused) until etcd is back.
	_, dial := r.newGateway(t, ctx)
	probe := outage - time.Since(cutAt) - time.Second
	if probe < time.Second {
		probe = time.Second
	}
	pctx, pcancel := context.WithTimeout(ctx, probe)
	err := dial(pctx)
	pcancel()
	if err == nil {
		t.Fatal("a new gateway connected while etcd was unreachable")
	}
	if h := r.node.n.Health(); !h.Fenced || h.StateStore.Reachable {
		t.Fatalf("health during the outage: %+v %+v", h, *h.StateStore)
	}
	if k := r.established(ctx); k != G {
		t.Fatalf("during the outage the node holds %d established SAs, want %d", k, G)
	}
	if d := time.Until(cutAt.Add(outage)); d > 0 {
		time.Sleep(d)
	}
	r.proxy.setCut(false)
	back := time.Now()
	recovered := r.waitRecovered(t, ctx, back)
	after, _ := r.store().Registration()
	if after.Epoch <= before.Epoch {
		t.Fatalf("registration %v after the outage, %v before: not re-registered", after, before)
	}
	answered := r.checkNoneLost(t, ctx)
	// And a new gateway connects now.
	dctx, dcancel := context.WithTimeout(ctx, 30*time.Second)
	defer dcancel()
	var newErr error
	for dctx.Err() == nil { // its earlier attempt may still be failing: dial again until one succeeds
		if newErr = dial(dctx); newErr == nil {
			break
		}
	}
	if newErr != nil {
		t.Fatalf("a new gateway after the outage: %v", newErr)
	}
	// Gateways that never tried before connect at the first attempt: the
	// SPIs and addresses reserved on the lease that expired are not
	// handed out (they failed each new SA's write, one after another).
	fctx, fcancel := context.WithTimeout(ctx, 30*time.Second)
	defer fcancel()
	for range faultNewGateways - 1 {
		_, dial := r.newGateway(t, ctx)
		if err := dial(fctx); err != nil {
			t.Fatalf("a further new gateway after the outage: %v", err)
		}
	}
	t.Logf("etcd unreachable %v: fenced %v after the cut; after it ended: registered and sending in %v (epoch %d -> %d), %d/%d liveness checks answered in %v; new gateway refused during, accepted after; fenced drops %d",
		outage, fencedAfter.Round(time.Millisecond), recovered.Round(time.Millisecond), before.Epoch, after.Epoch, G, G,
		answered.Round(time.Millisecond), r.node.n.fencedDrops.Load())
}

// The etcd member restarted (down FAULT_RESTART_S, default 2 s): no SA
// lost, the node reachable and registered again, every gateway's liveness
// check answered under its original IKE SA.
func TestFaultEtcdRestart(t *testing.T) {
	const G = 50
	down := time.Duration(envInt("FAULT_RESTART_S", 2)) * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second+down)
	defer cancel()
	r := newFaultRig(t, ctx, G)
	before, _ := r.store().Registration()
	stopAt := time.Now()
	r.c.etcd.Stop()
	stopTook := time.Since(stopAt)
	time.Sleep(down)
	if err := r.c.etcd.Start(); err != nil {
		t.Fatal(err)
	}
	startedAt := time.Now()
	fencedDuring := r.node.n.fencedDrops.Load()
	recovered := r.waitRecovered(t, ctx, startedAt)
	// A write after the restart lands (the node persists again).
	if err := r.node.n.persist.store.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	after, _ := r.store().Registration()
	answered := r.checkNoneLost(t, ctx)
	t.Logf("etcd restarted (down %v, of which its shutdown %v): node registered and sending %v after the start (%v after the stop; epoch %d -> %d); %d/%d liveness checks answered in %v; fenced drops %d",
		startedAt.Sub(stopAt).Round(time.Millisecond), stopTook.Round(time.Millisecond), recovered.Round(time.Millisecond), time.Since(stopAt).Round(time.Millisecond),
		before.Epoch, after.Epoch, G, G, answered.Round(time.Millisecond), fencedDuring)
}

// wallStepClock is the node's clock with its wall reading stepped: Now
// jumps by the step while timers keep running on the monotonic clock
// underneath (as time.Now's wall reading jumps when the system clock is
// set, while Go's timers do not).
type wallStepClock struct {
	*clock.Fake
	step atomic.Int64
}

func (c *wallStepClock) Now() time.Time { return c.Fake.Now().Add(time.Duration(c.step.Load())) }

// The node's wall clock stepped by +1 h, back, and 1 h behind: no SA
// lost, no re-authentication, every liveness check answered, no rekey
// before its time, and the node's own timers still run on time.
//
// The engine's timers, lifetimes, liveness checks and rekey schedule run
// on the clock's monotonic-derived time (clock.Mono), which a step of the
// wall clock does not move; the wall date is read only for certificates,
// tickets and what is persisted. (Before, they ran on the wall reading: a
// +1 h step rekeyed every CHILD SA due within the hour at once, 50 of 50,
// and a backward step postponed every timer of the node by the step.)
//
// The node checks liveness after 10 s of silence (the gateways every
// faultDPD): each minute of monotonic time after a step has each SA
// checked by the node, whatever the wall clock shows. Then the monotonic
// clock runs on to the rekey window (children.rekey_after 50m, window
// 10m): no rekey before the window, exactly one per SA by its end.
func TestFaultWallClockStep(t *testing.T) {
	const G = 50
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second)
	defer cancel()
	var wc *wallStepClock
	var start time.Time
	r := newFaultRig(t, ctx, G, func(c *testCluster) {
		c.ikeExtra = "  dpd_delay: 10s\n"
		wc = &wallStepClock{Fake: c.clk}
		c.nodeClk = wc
		start = c.clk.Now()
	})
	ready := r.c.clk.Now() // every SA was created in [start, ready]
	snap := func() (rekeys, dpd uint64) {
		m, err := r.node.n.metricsSnapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, sh := range m.Shards {
			dpd += sh.Stats.DPDSent
		}
		return m.Events.ChildRekeysByUs + m.Events.IKERekeysByUs, dpd
	}
	rekeys0, _ := snap()
	for _, step := range []time.Duration{time.Hour, -time.Hour, -time.Hour} {
		sent0 := r.sent.Load()
		_, dpd0 := snap()
		wc.step.Add(int64(step))
		// A minute of (monotonic) time: the gateways check liveness and
		// send keepalives, the node's timers run.
		for i := 0; i < 60; i++ {
			r.c.clk.Advance(time.Second)
			time.Sleep(10 * time.Millisecond)
		}
		_, dpd := snap()
		answered := r.checkNoneLost(t, ctx)
		rk, _ := snap()
		sent := r.sent.Load() - sent0
		t.Logf("wall clock stepped %v (now %v off): %d IKE messages from the node, %d liveness checks by the node over 60 s for %d SAs, %d rekeys by the node, liveness answered in %v",
			step, time.Duration(wc.step.Load()), sent, dpd-dpd0, G, rk-rekeys0, answered.Round(time.Millisecond))
		if rk != rekeys0 {
			t.Fatalf("%d rekeys by the node after a step of %v, none is due before %v of monotonic time", rk-rekeys0, step, 40*time.Minute)
		}
		if dpd-dpd0 < G {
			t.Fatalf("the node sent %d liveness checks in 60 s after a step of %v, want at least one per SA (%d): its timers do not run", dpd-dpd0, step, G)
		}
	}
	// On to just before the rekey window of the first SA: still none.
	advanceTo := func(until time.Time) {
		// A second at a time: the liveness checks of both sides are
		// answered well within their retransmission budget.
		for r.c.clk.Now().Before(until) {
			r.c.clk.Advance(time.Second)
			time.Sleep(5 * time.Millisecond)
		}
	}
	advanceTo(start.Add(40*time.Minute - 10*time.Second))
	if rk, _ := snap(); rk != rekeys0 {
		t.Fatalf("%d rekeys before the rekey window (wall clock %v off)", rk-rekeys0, time.Duration(wc.step.Load()))
	}
	// Past the end of the last SA's window: each CHILD SA rekeyed once.
	advanceTo(ready.Add(50*time.Minute + 10*time.Second))
	var rk uint64
	waitFor(t, ctx, "every CHILD SA rekeyed", func() bool {
		r.c.clk.Advance(time.Second) // the exchanges' retransmissions, if any
		rk, _ = snap()
		rk -= rekeys0
		return rk >= G
	})
	answered := r.checkNoneLost(t, ctx)
	if rk2, _ := snap(); rk2-rekeys0 != G {
		t.Fatalf("%d rekeys by the node in the rekey window, want %d (one per CHILD SA)", rk2-rekeys0, G)
	}
	t.Logf("rekey window on monotonic time (wall clock %v off): %d of %d CHILD SAs rekeyed once, liveness answered in %v",
		time.Duration(wc.step.Load()), rk, G, answered.Round(time.Millisecond))
}

// The node runs its own embedded etcd (statestore.mode embedded), which
// lives in its process: the node crashes (its lease not revoked) and
// restarts on the same data directory, its etcd with it. Every SA comes
// back (restored from the data directory under the node's new
// registration) and every gateway's liveness check is answered under
// its original IKE SA.
func TestFaultEmbeddedEtcdRestart(t *testing.T) {
	const G = 50
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	r := newFaultRig(t, ctx, G, func(c *testCluster) {
		c.edit = func(s string) string {
			return replaceOnce(t, s, "mode: external\n  endpoints: ["+c.etcd.Endpoints()[0]+"]\n", "mode: embedded\n")
		}
	})
	if r.node.n.persist.etcd == nil {
		t.Fatal("the node does not run an embedded etcd")
	}
	before, _ := r.store().Registration()
	crashAt := time.Now()
	r.store().Abandon() // a crash: the lease stays until it expires
	r.c.mu.Lock()
	delete(r.c.nodes, "a")
	r.c.mu.Unlock()
	r.node.stop()
	if err := <-r.node.done; err != nil {
		t.Fatalf("the crashed node's Run: %v", err)
	}
	down := time.Since(crashAt)
	restartAt := time.Now()
	r.node = r.c.start(ctx, "a")
	ready := time.Since(restartAt)
	if k := r.established(ctx); k != G {
		t.Fatalf("after the restart the node holds %d established SAs, want %d", k, G)
	}
	recovered := r.waitRecovered(t, ctx, restartAt)
	after, _ := r.store().Registration()
	if after.Epoch <= before.Epoch {
		t.Fatalf("registration %v after the restart, %v before", after, before)
	}
	answered := r.checkNoneLost(t, ctx)
	t.Logf("node and its embedded etcd restarted (stopping took %v): ready with %d SAs restored in %v, registered and sending %v after the start (epoch %d -> %d); %d/%d liveness checks answered in %v",
		down.Round(time.Millisecond), G, ready.Round(time.Millisecond), recovered.Round(time.Millisecond), before.Epoch, after.Epoch, G, G, answered.Round(time.Millisecond))
}
