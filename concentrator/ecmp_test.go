package concentrator

import (
	"context"
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof"
	"net/netip"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike"
)

// dial initiates the gateway's IKE SA (as connect) and waits for it,
// returning an error instead of failing the test (for many at once).
func (g *memGateway) dial(ctx context.Context, server netip.Addr, n int) error {
	id, _ := ike.ParseIdentity(fmt.Sprintf("gw%d@iot.example", n))
	esp, _ := ike.ParseProposal("aes256gcm16", true, false)
	prop, _ := ike.ParseProposal("aes256gcm16-prfsha256-x25519", false, false)
	ini := ike.Initiation{Local: g.ike.LocalAddr(), Remote: netip.AddrPortFrom(server, 500),
		Creds: ike.Credentials{ID: id}, PSK: []byte(fmt.Sprintf("psk-0123456789ab-%d", n)),
		IKEProposals: []ike.ProposalSpec{prop}, ESPProposals: []ike.ProposalSpec{esp},
		TSi:        []ike.TrafficSelector{ike.SelectorFromPrefix(netip.MustParsePrefix("0.0.0.0/0"))},
		TSr:        []ike.TrafficSelector{ike.SelectorFromPrefix(netip.MustParsePrefix("10.30.0.0/24"))},
		RequestVIP: true, RemoteNATT: 4500}
	errc := make(chan error, 1)
	select {
	case g.calls <- func() {
		var rd ike.Ready
		_, err := g.eng.Initiate(g.clk.Now(), ini, &rd)
		g.perform(&rd)
		errc <- err
	}:
	case <-ctx.Done():
		return ctx.Err()
	}
	if err := <-errc; err != nil {
		return err
	}
	for {
		select {
		case ev := <-g.events:
			switch ev.Kind {
			case ike.EventIKEEstablished:
				return nil
			case ike.EventIKEFailed:
				return fmt.Errorf("gateway %d: %v %s", n, ev.Notify, ev.Reason)
			}
		case <-ctx.Done():
			return fmt.Errorf("gateway %d: not established: %w", n, ctx.Err())
		}
	}
}

// quantileMs is the q-quantile of sorted d in milliseconds (0 if empty).
func quantileMs(d []time.Duration, q float64) float64 {
	if len(d) == 0 {
		return 0
	}
	return float64(d[int(q*float64(len(d)-1))].Microseconds()) / 1000
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// clusterFigures are what TestClusterECMP measures.
type clusterFigures struct {
	nodes, gateways, lost, reauth, dualOwner, moved int
	outages                                         []time.Duration // per moved gateway and event
	events                                          []string        // one figures line per event
}

// Gateways behind one anycast address served by three nodes, flows
// re-hashed as ECMP does when a node joins, when one leaves the route,
// and when one is killed. After each event every gateway sends a
// liveness check, which reaches the node its flow now hashes to; that
// node claims the SA (hand-off from a live owner, takeover from a dead
// one). Asserts: no SA lost (each gateway's IKE SA answers, with its
// SPIs, held by exactly one node, the owner in etcd), no
// re-authentication, and never an SA held by two nodes in any sample.
// CLUSTER_GATEWAYS sets the fleet (default 500, 60 with -short, as make
// test-race runs it); CLUSTER_BENCH=1 prints
// the figures as one line (make bench-cluster); CLUSTER_CPUPROFILE=file
// writes a CPU profile of the events (join, leave, kill).
func TestClusterECMP(t *testing.T) {
	G := envInt("CLUSTER_GATEWAYS", 500)
	if testing.Short() {
		G = 60 // 20 a node: every path (hand-off, takeover, re-hash) still taken
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(envInt("CLUSTER_TIMEOUT_S", 540))*time.Second)
	defer cancel()
	if addr := os.Getenv("CLUSTER_PPROF"); addr != "" { // e.g. 127.0.0.1:6060: profile a phase while it runs
		lis, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		srv := &http.Server{Handler: http.DefaultServeMux}
		go srv.Serve(lis)
		t.Cleanup(func() { srv.Close() })
	}
	c := newTestCluster(t, G)
	c.ikeExtra = "  dpd_delay: 0s\n" // the gateways check liveness, the nodes do not
	if G > 60000 {
		c.edit = func(s string) string { return replaceOnce(t, s, "pool: 10.99.0.0/16", "pool: 10.96.0.0/13") }
	}
	// Leases outlast a busy moment of a shared 2-core machine (a node
	// that misses its renewals is fenced, and its SAs are taken over).
	c.leaseTTL = os.Getenv("CLUSTER_LEASE_TTL") // default 3s (the product's default)
	ids := []string{"n1", "n2", "n3"}
	for _, id := range ids {
		c.start(ctx, id)
	}
	c.setRoute("n1", "n2")

	// The gateways' liveness checks: an event's clock step sets them all
	// off. A large fleet checks less often, so that while it connects
	// (minutes that the fake clock follows) the ones connected already do
	// not check again and again (each check an exchange on both sides).
	dpd := 30 * time.Second
	if G > 5000 {
		dpd = 5 * time.Minute
	}
	fleet := startFleet(t, ctx, c.netw, c.clk, G, func(cfg *ike.Config) { cfg.DPDDelay = dpd })
	var wg sync.WaitGroup
	errs := make(chan error, G)
	sem := make(chan struct{}, 256)
	// The fake clock follows real time while the gateways connect: one
	// whose IKE_AUTH answer never came (a node that fenced itself on a
	// starved machine drops the batches it could not persist) retransmits,
	// as a real gateway would, instead of waiting forever.
	ticking := make(chan struct{})
	var connected atomic.Int64
	go func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		last, lastAt := int64(-1), time.Now()
		for {
			select {
			case <-ticking:
				return
			case <-tick.C:
				c.clk.Advance(50 * time.Millisecond)
			}
			if k := connected.Load(); k != last {
				last, lastAt = k, time.Now()
			} else if time.Since(lastAt) > 30*time.Second {
				lastAt = time.Now()
				d, dr := c.netw.Stats()
				t.Logf("  no gateway connected for 30 s (%d so far); network: %d delivered, %d dropped", k, d, dr)
				for _, id := range ids {
					if cn := c.node(id); cn != nil {
						sas, _ := cn.n.SAs(ctx)
						t.Logf("  %s: %d SAs %+v %+v", id, len(sas), cn.n.ClusterStats(), cn.n.ReceiveStats())
					}
				}
			}
		}
	}()
	connectStart := time.Now()
	for i := range G {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := fleet.dial(ctx, c.vip, i); err != nil {
				errs <- err
			} else if k := connected.Add(1); G >= 10000 && k%int64(G/10) == 0 {
				t.Logf("  %d connected after %v", k, time.Since(connectStart).Round(time.Millisecond))
			}
		}()
	}
	wg.Wait()
	close(ticking)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d gateways connected in %v", G, time.Since(connectStart).Round(time.Millisecond))
	spis := fleet.sas()
	fig := clusterFigures{nodes: len(ids), gateways: G}

	// held: the IKE SPIs of the SAs established on node id, read on its
	// shards (a plain list: the samples below must cost the nodes little,
	// or the harness would measure itself).
	held := func(id string) []uint64 {
		cn := c.node(id)
		if cn == nil {
			return nil
		}
		var spis []uint64
		for _, s := range cn.n.shards {
			cn.n.do(ctx, s, func() {
				s.eng.Each(func(sa *ike.IKESA) bool {
					if sa.Established() {
						spis = append(spis, sa.SPIr)
					}
					return true
				})
			})
		}
		return spis
	}
	// dupes: the SPIs held by more than one node in one pass over order.
	dupes := func(order []string) []uint64 {
		var all []uint64
		for _, id := range order {
			all = append(all, held(id)...)
		}
		slices.Sort(all)
		var d []uint64
		for i := 1; i < len(all); i++ {
			if all[i] == all[i-1] && (len(d) == 0 || d[len(d)-1] != all[i]) {
				d = append(d, all[i])
			}
		}
		return d
	}
	// sample: every node's table, twice (in opposite orders); an SA held
	// by two nodes in both passes is held twice (a hand-off between two
	// reads of one pass shows in one pass only).
	sampleDual := func() int {
		rev := slices.Clone(ids)
		slices.Reverse(rev)
		a, b := dupes(ids), dupes(rev)
		dual := 0
		for _, spi := range a {
			if _, ok := slices.BinarySearch(b, spi); ok {
				dual++
			}
		}
		return dual
	}
	holder := func() map[uint64]string {
		m := make(map[uint64]string, G)
		for _, id := range ids {
			for _, spi := range held(id) {
				m[spi] = id
			}
		}
		return m
	}

	// Dual ownership is sampled every 0.5 s (2 s for a large fleet, where
	// one sample reads every node's whole table twice).
	sampleEvery := 10
	if G > 5000 {
		sampleEvery = 40
	}
	// event: re-route, then every gateway checks liveness; wait until each
	// has heard back, sampling meanwhile.
	event := func(name string, change func()) {
		before := holder()
		rev0, _ := c.etcdRevision(ctx)
		stats0 := map[string]ClusterStats{}
		for _, id := range ids {
			if cn := c.node(id); cn != nil {
				stats0[id] = cn.n.ClusterStats()
			}
		}
		start := time.Now() // a kill's outage includes the kill
		change()
		c.clk.Advance(dpd + time.Second) // every gateway sends a liveness check now
		done := make([]time.Duration, G)
		left := G
		samples := 0
		for left > 0 {
			if ctx.Err() != nil {
				for i := range G {
					if done[i] == 0 {
						t.Logf("gateway %d (%v) SA %016x: held by %s before", i+1, fleetAddr(i), spis[i], before[spis[i]])
					}
				}
				for _, id := range ids {
					if cn := c.node(id); cn != nil {
						t.Logf("%s: %+v; claims %s", id, cn.n.ClusterStats(), cn.n.claimStates())
					}
				}
				t.Fatalf("%s: %d gateways never heard back", name, left)
			}
			for i := range G {
				if done[i] == 0 {
					if r := fleet.lastRecv[i].Load(); r > start.UnixNano() {
						done[i] = time.Duration(r - start.UnixNano())
						left--
					}
				}
			}
			if samples%sampleEvery == 0 {
				fig.dualOwner += sampleDual()
			}
			samples++
			// The fake clock follows real time meanwhile: the gateways
			// retransmit what a killed node never answered on their own
			// schedule (2 s, doubling, 5 tries).
			time.Sleep(50 * time.Millisecond)
			c.clk.Advance(50 * time.Millisecond)
		}
		took := time.Since(start)
		rev1, _ := c.etcdRevision(ctx)
		after := holder()
		var outages []time.Duration
		for i, spi := range spis {
			if before[spi] != after[spi] {
				outages = append(outages, done[i])
			}
		}
		fig.outages = append(fig.outages, outages...)
		moved := len(outages)
		fig.moved += moved
		var handOffs, takeOvers uint64 // received by the nodes alive after the event
		var given []string
		var topGiver uint64 // SAs the busiest giving node handed off
		for _, id := range ids {
			if cn := c.node(id); cn != nil {
				s := cn.n.ClusterStats()
				handOffs += s.HandOffs - stats0[id].HandOffs
				takeOvers += s.TakeOvers - stats0[id].TakeOvers
				if g := s.HandedOff - stats0[id].HandedOff; g > 0 {
					given = append(given, fmt.Sprintf("%s:%d", id, g))
					topGiver = max(topGiver, g)
				}
			}
		}
		slices.Sort(outages)
		line := fmt.Sprintf("cluster: event=%s took-ms=%d moved=%d hand-offs=%d takeovers=%d etcd-revisions-per-move=%.2f outage-p50-ms=%.0f outage-max-ms=%.0f",
			name, took.Milliseconds(), moved, handOffs, takeOvers, float64(rev1-rev0)/float64(max(moved, 1)),
			quantileMs(outages, 0.5), quantileMs(outages, 1))
		if len(given) > 0 {
			line += fmt.Sprintf(" given=%s busiest-giver-per-second=%.0f", strings.Join(given, ","), float64(topGiver)/took.Seconds())
		}
		fig.events = append(fig.events, line)
		t.Log(line)
		d, dr := c.netw.Stats()
		t.Logf("  network: %d delivered, %d dropped (all events so far)", d, dr)
		for _, id := range ids {
			if cn := c.node(id); cn != nil {
				t.Logf("  %s: %+v %+v", id, cn.n.ClusterStats(), cn.n.ReceiveStats())
			}
		}
	}
	if path := os.Getenv("CLUSTER_CPUPROFILE"); path != "" { // the events' CPU profile (not the connect phase)
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			t.Fatal(err)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	event("join", func() { c.setRoute("n1", "n2", "n3") })
	event("leave", func() { c.setRoute("n2", "n3") })
	event("kill", func() { c.kill("n2"); c.setRoute("n1", "n3") })

	// No SA lost: each gateway's IKE SA is the one it started with, held
	// by exactly one node, which owns it in etcd.
	final := map[uint64][]string{}
	for _, id := range ids {
		if cn := c.node(id); cn != nil {
			sas, _ := cn.n.SAs(ctx)
			for _, sa := range sas {
				if sa.State == "ESTABLISHED" {
					final[sa.SPIr] = append(final[sa.SPIr], id)
				}
			}
		}
	}
	owners, err := c.node("n1").n.persist.store.(batchStore).Owners(ctx, spis)
	if err != nil {
		t.Fatal(err)
	}
	for i, spir := range fleet.sas() {
		h := final[spis[i]]
		o := owners[i].Owner
		switch {
		case spir != spis[i] || len(h) == 0:
			fig.lost++
		case len(h) > 1:
			fig.dualOwner++
		case !owners[i].Found || o.Node != h[0]:
			t.Errorf("gateway %d: SA %016x held by %s, owner in etcd %v", i+1, spis[i], h[0], o)
		}
		fig.reauth += int(fleet.established[i].Load() - 1)
	}
	slices.Sort(fig.outages)
	line := fmt.Sprintf("cluster: nodes=%d gateways=%d lost=%d reauth=%d dual-owner=%d moved=%d outage-p50-ms=%.0f outage-p99-ms=%.0f outage-max-ms=%.0f",
		fig.nodes, fig.gateways, fig.lost, fig.reauth, fig.dualOwner, fig.moved,
		quantileMs(fig.outages, 0.5), quantileMs(fig.outages, 0.99), quantileMs(fig.outages, 1))
	t.Log(line)
	if os.Getenv("CLUSTER_BENCH") != "" {
		fmt.Println(line)
		for _, l := range fig.events {
			fmt.Println(l)
		}
	}
	if fig.lost != 0 || fig.reauth != 0 || fig.dualOwner != 0 || fig.moved == 0 {
		t.Fatal(line)
	}
}
