//go:build linux

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// clusterPingInterval is how often every gateway pings the nodes' inner
// address through its tunnel.
const clusterPingInterval = 100 * time.Millisecond

// clusterRecoverBound is how long a gateway may take to get its pings
// answered again after an event before the test fails.
const clusterRecoverBound = 30 * time.Second

// saSnapshot is what must not change on a gateway while its flow moves:
// its IKE SA (SPIs, unique id: no new IKE_SA_INIT), its CHILD SA's SPIs,
// and how many IKE_SAs charon has initiated.
type saSnapshot struct {
	ispi, rspi, uniqueid, state string
	childIn, childOut, child    string
	initiated                   int
}

func (s saSnapshot) String() string {
	return fmt.Sprintf("IKE %s %s_i %s_r #%s, CHILD %s in %s out %s, initiated %d",
		s.state, s.ispi, s.rspi, s.uniqueid, s.child, s.childIn, s.childOut, s.initiated)
}

func snapshotGateway(ctx context.Context, g *ClusterGateway) (saSnapshot, error) {
	sas, err := g.SS.ListSAs(ctx)
	if err != nil {
		return saSnapshot{}, err
	}
	s := saSnapshot{initiated: strings.Count(g.SS.Log(), "initiating IKE_SA")}
	if len(sas) != 1 {
		return s, fmt.Errorf("%s: %d IKE_SAs, want 1: %v", g.Name, len(sas), sas)
	}
	sa := sas[0]
	s.ispi, s.rspi, s.uniqueid, s.state = sa.Get("initiator-spi"), sa.Get("responder-spi"), sa.Get("uniqueid"), sa.Get("state")
	if c, ok := sa.Child("lan"); ok {
		s.child, s.childIn, s.childOut = c.Get("state"), c.Get("spi-in"), c.Get("spi-out")
	}
	return s, nil
}

func snapshotAll(t *testing.T, ctx context.Context, c *Cluster) map[string]saSnapshot {
	t.Helper()
	m := map[string]saSnapshot{}
	for _, g := range c.Gateways {
		s, err := snapshotGateway(ctx, g)
		if err != nil {
			t.Fatal(err)
		}
		if s.state != "ESTABLISHED" || s.child != "INSTALLED" {
			t.Fatalf("%s: %v", g.Name, s)
		}
		m[g.Name] = s
	}
	return m
}

// compareSnapshots fails the test for every gateway whose IKE SA is gone
// or was replaced (other SPIs, another unique id, one more IKE_SA_INIT) or
// whose CHILD SA is gone, and returns how many differ.
func compareSnapshots(t *testing.T, ctx context.Context, c *Cluster, before map[string]saSnapshot, event string) (changed int) {
	t.Helper()
	for _, g := range c.Gateways {
		s, err := snapshotGateway(ctx, g)
		b := before[g.Name]
		if err != nil || s.state != "ESTABLISHED" || s.child != "INSTALLED" || s.ispi != b.ispi || s.rspi != b.rspi ||
			s.uniqueid != b.uniqueid || s.initiated != b.initiated {
			changed++
			t.Errorf("%s: %s: gateway %s: before %v, now %v (%v)", t.Name(), event, g.Name, b, s, err)
		} else if s.childIn != b.childIn || s.childOut != b.childOut {
			t.Logf("%s: %s: gateway %s: CHILD SA rekeyed (%s/%s -> %s/%s)", t.Name(), event, g.Name, b.childIn, b.childOut, s.childIn, s.childOut)
		}
	}
	return changed
}

// waitRecovered waits until every stream has an answered request sent at
// or after since, and fails the test naming the gateways that never did.
// gatewaysOn lists the gateways whose flows the router sends to n.
func gatewaysOn(c *Cluster, n *ClusterNode) []*ClusterGateway {
	var on []*ClusterGateway
	for _, g := range c.Gateways {
		if c.NodeOf(g) == n {
			on = append(on, g)
		}
	}
	return on
}

// moveLoss is what the ping streams show about a move in a window; a
// moved gateway's outage is its window's Down (late answers included).
type moveLoss struct {
	lost, otherLost int             // pings lost by the moved gateways, by the others
	worst           time.Duration   // the longest outage of a moved gateway
	outages         []time.Duration // per moved gateway
	per             []string        // "gateway:outage-ms" per moved gateway
}

// tallyMove counts the pings lost between from and to.
func tallyMove(c *Cluster, streams map[string]*PingStream, moved []*ClusterGateway, from, to time.Time) moveLoss {
	var m moveLoss
	for _, g := range c.Gateways {
		w := streams[g.Name].Window(from, to)
		if slices.Contains(moved, g) {
			m.lost += w.Lost
			out := w.Down()
			m.worst = max(m.worst, out)
			m.outages = append(m.outages, out)
			m.per = append(m.per, fmt.Sprintf("%s:%d", g.Name, out.Milliseconds()))
		} else {
			m.otherLost += w.Lost
		}
	}
	return m
}

// lossAfterMove waits until every gateway recovers from a route change
// made at at, then counts the pings lost since (tallyMove).
func lossAfterMove(t *testing.T, ctx context.Context, c *Cluster, streams map[string]*PingStream, moved []*ClusterGateway, at time.Time) moveLoss {
	t.Helper()
	waitRecovered(t, ctx, c, streams, at.Add(time.Second), clusterRecoverBound)
	time.Sleep(2 * time.Second)
	return tallyMove(c, streams, moved, at.Add(-time.Second), time.Now().Add(-time.Second))
}

func waitRecovered(t *testing.T, ctx context.Context, c *Cluster, streams map[string]*PingStream, since time.Time, bound time.Duration) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for {
		var missing []string
		for _, g := range c.Gateways {
			if !streams[g.Name].AnsweredSince(since) {
				missing = append(missing, g.Name+"@"+c.NodeOf(g).ID)
			}
		}
		if len(missing) == 0 {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("%d gateways without an answered ping %v after the event: %v", len(missing), bound, missing)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// clusterMetrics is Cluster.ClusterMetrics failing the test.
func clusterMetrics(t *testing.T, ctx context.Context, c *Cluster, nodes ...*ClusterNode) map[string]float64 {
	t.Helper()
	m, err := c.ClusterMetrics(ctx, nodes...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// countNodeLogs counts the JSON log records with message msg of every
// node so far.
func countNodeLogs(c *Cluster, msg string) int {
	n := 0
	for _, node := range c.Nodes {
		if node.Proc == nil {
			continue // a standby node never started
		}
		for _, r := range node.Proc.LogRecords() {
			if r.Msg() == msg {
				n++
			}
		}
	}
	return n
}

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func perNode(c *Cluster) string {
	count := map[string]int{}
	for _, g := range c.Gateways {
		count[c.NodeOf(g).ID]++
	}
	var parts []string
	for _, n := range c.Nodes {
		parts = append(parts, fmt.Sprintf("%s:%d", n.ID, count[n.ID]))
	}
	return strings.Join(parts, ",")
}

// TestCluster is the cluster tier: three concentratord nodes (user-space
// data plane, state in a three-member etcd over mutual TLS, the peer API
// over mutual TLS) share one service address behind a router that spreads
// the flows of 20 strongSwan gateways (each its own identity and PSK,
// behind one masquerading NAT) over them. Every gateway establishes and
// pings through its tunnel continuously; then, in order: three gateways'
// flows move between two live nodes (hand-off), an etcd follower and then
// the leader are killed (and restarted), a node is killed with SIGKILL
// (takeover of its SAs by the others after the router re-spreads its
// flows), and it comes back and gets its flows again (hand-offs); last,
// another node is cut off from etcd for longer than its lease (it fences
// itself, the router withdraws it, the others take its SAs over, and it
// comes back once the partition heals). After each, every gateway must
// still have its IKE SA (same SPIs, no new IKE_SA_INIT) and its pings
// must get through again; losses and outages are reported, one line per
// figure, beginning "cluster-".
func TestCluster(t *testing.T) {
	requireCluster(t)
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	start := time.Now()
	c := NewCluster(t, ctx, ClusterOptions{})
	t.Logf("cluster: router spreads (ESP flows) %s", perNode(c))

	t0 := time.Now()
	if err := c.InitiateAll(ctx); err != nil {
		t.Fatalf("initiate: %v", err)
	}
	setup := time.Since(t0)

	streams := map[string]*PingStream{}
	for _, g := range c.Gateways {
		p, err := StartPingStream(c.TP, g.NS, g.LANAddr, ClusterCoreAddr, clusterPingInterval)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Stop)
		streams[g.Name] = p
	}
	t1 := time.Now()
	waitRecovered(t, ctx, c, streams, t1, clusterRecoverBound)
	firstPing := time.Since(t1)
	// A gateway whose IKE_SA_INIT flow (port 500) and NAT-T flow (4500)
	// go to different nodes has its IKE_AUTH forwarded to the first node,
	// and its SA then handed to the second one by its first ESP packet.
	split := 0
	for _, g := range c.Gateways {
		if f := g.Flows(); c.Spread.NodeOf(f[0]) != c.Spread.NodeOf(f[1]) {
			split++
		}
	}
	m0 := clusterMetrics(t, ctx, c)
	// etcd transactions while nothing moves (ESP sequence-number
	// reservations of the pinging tunnels...): the background under the
	// figures per move below.
	time.Sleep(3 * time.Second)
	idle := clusterMetrics(t, ctx, c)["ikefleet_statestore_txns_total"] - m0["ikefleet_statestore_txns_total"]
	t.Logf("cluster-idle: etcd-txns-per-s=%.1f", idle/3)
	t.Logf("cluster-setup: nodes=%d etcd-members=%d gateways=%d initiate-ms=%d first-pings-ms=%d spread=%s split-flows=%d claims=%d handed-off=%d etcd-txns=%.0f",
		len(c.Nodes), len(c.Members), len(c.Gateways), setup.Milliseconds(), firstPing.Milliseconds(), perNode(c), split,
		countNodeLogs(c, "SA claimed"), countNodeLogs(c, "SA handed off"), m0["ikefleet_statestore_txns_total"])
	before := snapshotAll(t, ctx, c)

	outer := t // what a subtest restarts outlives it
	t.Run("MoveLive", func(t *testing.T) {
		for _, g := range c.Gateways[:3] {
			from := c.NodeOf(g)
			to := c.Nodes[from.Index%len(c.Nodes)]
			time.Sleep(time.Second)
			m0 := clusterMetrics(t, ctx, c)
			claims0, handed0 := countNodeLogs(c, "SA claimed"), countNodeLogs(c, "SA handed off")
			at := time.Now()
			if err := c.Spread.Move(ctx, g.ESPFlow(), to.Index); err != nil {
				t.Fatal(err)
			}
			waitRecovered(t, ctx, c, streams, at.Add(time.Second), clusterRecoverBound)
			time.Sleep(2 * time.Second) // late replies
			w := streams[g.Name].Window(at.Add(-time.Second), at.Add(2*time.Second))
			changed := compareSnapshots(t, ctx, c, before, "live move")
			m1 := clusterMetrics(t, ctx, c)
			txns := m1["ikefleet_statestore_txns_total"] - m0["ikefleet_statestore_txns_total"]
			t.Logf("cluster-move: gateway=%s from=%s to=%s pings=%d lost-pings=%d outage-ms=%d max-rtt-ms=%d sa-changed=%d claims=%d handed-off=%d etcd-txns=%.0f",
				g.Name, from.ID, to.ID, w.Sent, w.Lost, w.Outage.Milliseconds(), w.MaxRTT.Milliseconds(), changed,
				countNodeLogs(c, "SA claimed")-claims0, countNodeLogs(c, "SA handed off")-handed0,
				txns)
		}
	})
	if t.Failed() {
		return
	}

	// One etcd member down: a follower first (no election: nothing may be
	// lost), then the leader (an election: the nodes' lease renewals wait
	// for it; losses are reported, SAs must stay and pings come back).
	for _, leader := range []bool{false, true} {
		name := "KillEtcdFollower"
		if leader {
			name = "KillEtcdLeader"
		}
		t.Run(name, func(t *testing.T) {
			l, err := c.EtcdLeader(ctx)
			if err != nil {
				t.Fatal(err)
			}
			m := l
			if !leader {
				m = c.Members[(slices.Index(c.Members, l)+1)%len(c.Members)]
			}
			fenced0 := countNodeLogs(c, "fenced: outbound ESP stopped")
			at := time.Now()
			if err := c.KillEtcdMember(m); err != nil {
				t.Fatal(err)
			}
			time.Sleep(8 * time.Second)
			waitRecovered(t, ctx, c, streams, at.Add(7*time.Second), clusterRecoverBound)
			lost, hit, worst := 0, 0, time.Duration(0)
			for _, g := range c.Gateways {
				w := streams[g.Name].Window(at, at.Add(6*time.Second))
				lost += w.Lost
				if w.Lost > 0 {
					hit++
				}
				worst = max(worst, w.Outage)
			}
			changed := compareSnapshots(t, ctx, c, before, "etcd member kill")
			nl := "none"
			if l2, err := c.EtcdLeader(ctx); err == nil {
				nl = l2.Name
			}
			fenced := countNodeLogs(c, "fenced: outbound ESP stopped") - fenced0
			t.Logf("cluster-etcd-kill: member=%s leader=%v new-leader=%s lost-pings=%d gateways-with-loss=%d outage-ms-max=%d nodes-fenced=%d sa-changed=%d lease-ttl=%v",
				m.Name, leader, nl, lost, hit, worst.Milliseconds(), fenced, changed, c.opts.LeaseTTL)
			for _, n := range c.Nodes {
				if n.Proc.Exited() {
					t.Errorf("node %s exited after the etcd member kill", n.ID)
				}
			}
			if !leader && lost > 0 {
				t.Errorf("%d pings lost while one etcd follower was down", lost)
			}
			// Back to three members for what follows.
			m.Proc = c.TP.StartProcess(outer, "etcd "+m.Name, c.Etcd, m.args...)
			if err := c.waitEtcdHealthy(ctx, m, 30*time.Second); err != nil {
				t.Fatal(err)
			}
		})
		if t.Failed() {
			return
		}
	}

	t.Run("KillNode", func(t *testing.T) {
		victim := c.Nodes[1]
		moved := gatewaysOn(c, victim)
		if len(moved) == 0 {
			t.Fatalf("no gateway on %s: %s", victim.ID, perNode(c))
		}
		var survivors []int
		var alive []*ClusterNode
		for _, n := range c.Nodes {
			if n != victim {
				survivors = append(survivors, n.Index)
				alive = append(alive, n)
			}
		}
		time.Sleep(time.Second)
		m0 := clusterMetrics(t, ctx, c, alive...)
		claims0 := countNodeLogs(c, "SA claimed")
		at := time.Now()
		if err := c.KillNode(ctx, victim); err != nil {
			t.Fatal(err)
		}
		// The routing daemon's part: the node's session dropped.
		if err := c.Spread.SetNodes(ctx, survivors); err != nil {
			t.Fatal(err)
		}
		waitRecovered(t, ctx, c, streams, at.Add(time.Second), clusterRecoverBound)
		recovered := time.Since(at)
		time.Sleep(2 * time.Second)
		m := tallyMove(c, streams, moved, at.Add(-time.Second), time.Now().Add(-time.Second))
		changed := compareSnapshots(t, ctx, c, before, "node kill")
		m1 := clusterMetrics(t, ctx, c, alive...)
		t.Logf("cluster-kill: node=%s gateways-moved=%d outage-ms-median=%d outage-ms-max=%d lost-pings=%d others-lost-pings=%d all-recovered-ms=%d sa-changed=%d lease-ttl=%v claims=%d etcd-txns=%.0f",
			victim.ID, len(moved), median(m.outages).Milliseconds(), m.worst.Milliseconds(), m.lost, m.otherLost,
			recovered.Milliseconds(), changed, c.opts.LeaseTTL,
			countNodeLogs(c, "SA claimed")-claims0,
			m1["ikefleet_statestore_txns_total"]-m0["ikefleet_statestore_txns_total"])
		t.Logf("cluster-kill-outages: %s", strings.Join(m.per, " "))
	})
	if t.Failed() {
		return
	}

	// The killed node comes back (same node.id, same data_dir) and the
	// router gives it its flows again: they move back by hand-off from
	// the live nodes that took them over.
	t.Run("RejoinNode", func(t *testing.T) {
		n := c.Nodes[1]
		var all []int
		for _, m := range c.Nodes {
			all = append(all, m.Index)
		}
		c.StartNode(outer, ctx, n)
		time.Sleep(time.Second)
		claims0, handed0 := countNodeLogs(c, "SA claimed"), countNodeLogs(c, "SA handed off")
		at := time.Now()
		if err := c.Spread.SetNodes(ctx, all); err != nil {
			t.Fatal(err)
		}
		back := gatewaysOn(c, n)
		m := lossAfterMove(t, ctx, c, streams, back, at)
		changed := compareSnapshots(t, ctx, c, before, "node rejoin")
		t.Logf("cluster-rejoin: node=%s gateways-moved=%d lost-pings=%d outage-ms-max=%d others-lost-pings=%d sa-changed=%d claims=%d handed-off=%d",
			n.ID, len(back), m.lost, m.worst.Milliseconds(), m.otherLost, changed,
			countNodeLogs(c, "SA claimed")-claims0, countNodeLogs(c, "SA handed off")-handed0)
	})

	if t.Failed() {
		return
	}

	// One node cut off from etcd for longer than its lease (nftables in
	// its namespace; the router, the other nodes and the gateways still
	// reach it). The router withdraws it when its /readyz fails, as a load
	// balancer's health check (or the node's own BGP withdrawal) does.
	// A wall-clock step cannot be staged here: every namespace shares the
	// host's clock; concentrator's TestFaultWallClockStep covers it.
	t.Run("PartitionNode", func(t *testing.T) {
		partitionNode(t, ctx, c, before, streams)
	})
	if t.Failed() {
		return
	}

	// Every node cut off from etcd at once (etcd itself up): the whole
	// service fences, then comes back with every SA.
	t.Run("PartitionAll", func(t *testing.T) {
		partitionAll(t, ctx, c, before, streams)
	})
	if t.Failed() {
		return
	}

	// Every etcd member killed at once, then started again on its data:
	// the same, with the leases outliving the outage.
	t.Run("EtcdDownAll", func(t *testing.T) {
		etcdDownAll(t, outer, ctx, c, before, streams)
	})

	// What the fleet of charons costs (the machine's budget for this tier).
	var rss, peak int
	var cpu time.Duration
	for _, g := range c.Gateways {
		r, u, err := procUsage(g.SS.proc.PID())
		if err != nil {
			t.Errorf("%s: %v", g.Name, err)
			continue
		}
		rss += r
		peak = max(peak, r)
		cpu += u
	}
	t.Logf("cluster-charons: n=%d rss-mib-total=%.1f rss-mib-max=%.1f cpu-ms-total=%d cpu-ms-mean=%d",
		len(c.Gateways), float64(rss)/1024, float64(peak)/1024, cpu.Milliseconds(), cpu.Milliseconds()/int64(len(c.Gateways)))
	for _, n := range c.Nodes {
		if n.Proc.Exited() {
			continue
		}
		if r, u, err := procUsage(n.Proc.PID()); err == nil {
			t.Logf("cluster-node: node=%s rss-mib=%.1f cpu-ms=%d", n.ID, float64(r)/1024, u.Milliseconds())
		}
	}
	if sp, ok := c.Spread.(*nftSpreader); ok {
		if u, err := sp.Unknown(ctx); err == nil {
			t.Logf("cluster-router: packets-of-unknown-flows=%s", u)
		}
	}
	t.Logf("cluster-time: total-s=%.1f", time.Since(start).Seconds())
	if dir := os.Getenv("E2E_CLUSTER_LOGDIR"); dir != "" {
		for _, n := range c.Nodes {
			if err := os.WriteFile(filepath.Join(dir, n.ID+".log"), []byte(n.Proc.Stdout()+n.Proc.Stderr()), 0o644); err != nil {
				t.Error(err)
			}
		}
		for _, g := range c.Gateways {
			if err := os.WriteFile(filepath.Join(dir, g.Name+".log"), []byte(g.SS.Log()), 0o644); err != nil {
				t.Error(err)
			}
		}
	}
}
