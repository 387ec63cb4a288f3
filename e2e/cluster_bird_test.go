//go:build linux

package e2e

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// birdSpreader is the cluster router's spreading done by BIRD: the nodes
// announce the service address over eBGP, BIRD installs one ECMP route and
// the kernel hashes each flow's 5-tuple onto a next hop. Flows cannot be
// steered one by one (Move); SetNodes does not set anything, it waits
// until BIRD's route has exactly those nodes as next hops.
type birdSpreader struct {
	c    *Cluster
	bird *Bird
}

func nodeHop(k int) string { return fmt.Sprintf("172.16.%d.2", k) }

func (s *birdSpreader) SetNodes(ctx context.Context, nodes []int) error {
	var want []string
	for _, k := range nodes {
		want = append(want, nodeHop(k))
	}
	_, err := WaitNextHops(ctx, s.c.Router, ClusterVIP+"/32", want, 30*time.Second)
	return err
}

func (s *birdSpreader) Move(context.Context, Flow, int) error {
	return errors.New("ECMP over BGP: flows follow the kernel's hash, they cannot be moved one by one")
}

// NodeOf asks the router's kernel where the flow's next packet goes.
func (s *birdSpreader) NodeOf(f Flow) int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := run(ctx, nil, "ip", "-n", s.c.Router, "route", "get", ClusterVIP, "from", f.Src.Addr().String(), "iif", "rtr-nat",
		"ipproto", "udp", "sport", strconv.Itoa(int(f.Src.Port())), "dport", strconv.Itoa(int(f.DPort)))
	if err != nil {
		return 1
	}
	m := nexthopVia.FindStringSubmatch(out)
	if m == nil {
		return 1
	}
	var k int
	if _, err := fmt.Sscanf(m[1], "172.16.%d.2", &k); err != nil || k < 1 || k > len(s.c.Nodes) {
		return 1
	}
	return k
}

// birdGateways is how many strongSwan gateways TestClusterBIRD runs.
const birdGateways = 30

// TestClusterBIRD: the cluster tier with BIRD as its router. Three of
// four nodes announce the service address over eBGP; BIRD installs one
// ECMP route, the router's kernel hashes each flow's 5-tuple (L4) onto a
// next hop. 30 gateways behind the NAT ping through their tunnels all the
// time. In turn: a node is drained (SIGTERM: route withdrawn, SAs handed
// off as their packets reach the others, exit), the fourth node joins (its
// share of the flows moves to it), the node with the most gateways is
// killed (SIGKILL: BIRD withdraws it when the session drops, the others
// take its SAs over), and one node is cut off from etcd (unhealthy: it
// withdraws itself, its lease ends, the last node takes over). Every
// scenario reports outage per moved gateway (median, max), lost pings,
// IKE SAs established anew (must be 0, and every gateway keeps its IKE
// SA), the share of SAs that moved and how long the route took to change;
// the drain must lose no ping. The IKE SAs per node are sampled every
// 500 ms throughout and drawn as an SVG in $E2E_ARTIFACTS.
func TestClusterBIRD(t *testing.T) {
	requireCluster(t)
	requireBird(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	tStart := time.Now()
	var bird *Bird
	c := NewCluster(t, ctx, ClusterOptions{Nodes: 4, Standby: 1, Gateways: birdGateways,
		NewSpreader: func(ctx context.Context, c *Cluster, _ []Flow) (FlowSpreader, error) {
			if err := c.TP.Sysctl(ctx, c.Router, "net.ipv4.fib_multipath_hash_policy=1"); err != nil {
				return nil, err
			}
			bc := BirdConfig{RouterID: "192.168.100.254", ASN: routerASN, HoldTime: 3}
			for k := 1; k <= len(c.Nodes); k++ {
				bc.Neighbors = append(bc.Neighbors, BirdNeighbor{Name: fmt.Sprintf("n%d", k), Local: fmt.Sprintf("172.16.%d.1", k),
					Addr: nodeHop(k), ASN: nodeASN})
			}
			dir := t.TempDir()
			bird = StartBird(t, c.TP, c.Router, dir, bc)
			return &birdSpreader{c: c, bird: bird}, nil
		},
		NodeConfig: func(n *ClusterNode) string {
			return fmt.Sprintf(`anycast:
  mode: bgp
  bgp:
    asn: %d
    router_id: %s
    hold_time: 3s
    connect_retry: 1s
    neighbors:
      - address: 172.16.%d.1
        asn: %d
  health:
    interval: 250ms
  drain:
    grace_period: 20s
    settle: 3s
`, nodeASN, n.Addr, n.Index, routerASN)
		},
	})
	t0 := time.Now()
	if err := c.Spread.SetNodes(ctx, []int{1, 2, 3}); err != nil {
		out, _ := bird.Birdc(ctx, "show", "protocols")
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("BIRD: service route with 3 next hops %v after the nodes listened; spread %s", time.Since(t0).Round(time.Millisecond), perNode(c))
	t0 = time.Now()
	if err := c.InitiateAll(ctx); err != nil {
		t.Fatalf("initiate: %v", err)
	}
	t.Logf("gateways: %d IKE SAs established in %v", len(c.Gateways), time.Since(t0).Round(time.Millisecond))
	r := &birdRun{t: t, ctx: ctx, c: c, streams: map[string]*PingStream{}}
	for _, g := range c.Gateways {
		p, err := StartPingStream(c.TP, g.NS, g.LANAddr, ClusterCoreAddr, clusterPingInterval)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Stop)
		r.streams[g.Name] = p
	}
	r.plot = StartSASampler(ctx, c, 500*time.Millisecond)
	defer func() {
		r.plot.Stop()
		path := r.plot.WritePlot(t, "cluster-bird-sas-per-node.svg",
			fmt.Sprintf("TestClusterBIRD: IKE SAs per node (%d gateways, BIRD ECMP)", len(c.Gateways)))
		t.Logf("cluster-bird-plot: %s\n%s", path, r.plot.Table(30))
		t.Logf("cluster-bird-runtime: %v", time.Since(tStart).Round(time.Second))
		dir := artifactsDir(t)
		for _, n := range c.Nodes {
			if n.Proc != nil {
				mustWriteFile(t, filepath.Join(dir, "cluster-bird-"+n.ID+".log"), []byte(n.Proc.Stdout()))
			}
		}
		t.Logf("cluster-bird-logs: the nodes' logs are in %s", dir)
	}()
	r.plot.Mark(time.Now(), "pings start")
	waitRecovered(t, ctx, c, r.streams, time.Now(), clusterRecoverBound)

	// Drain n3 with SIGTERM: it withdraws its route at once; its gateways'
	// packets now reach the others, which claim the SAs from it by
	// hand-off while it still runs; it exits once none is left. Not one
	// ping may be lost.
	drained := c.Nodes[2]
	var drainRec LogRecord
	r.scenario("drain", drained, true, func() {
		if err := drained.Proc.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := c.Spread.SetNodes(ctx, []int{1, 2}); err != nil {
			t.Fatal(err)
		}
	}, func() string {
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		err := drained.Proc.Wait(wctx)
		wcancel()
		if err != nil {
			t.Fatalf("%s after SIGTERM: %v", drained.ID, err)
		}
		rec, err := drained.Proc.WaitLog(ctx, "drain: done", nil)
		if err != nil {
			t.Fatal(err)
		}
		drainRec = rec
		initial, _ := rec.Attr("initial")
		left, _ := rec.Attr("left")
		elapsed, _ := rec.Attr("elapsed")
		return fmt.Sprintf("sas-initial=%s sas-left=%s drain=%s", initial, left, elapsed)
	})
	if left, _ := drainRec.Attr("left"); left != "0" {
		t.Errorf("drain of %s ended with %s SAs left on it", drained.ID, left)
	}

	// The fourth node joins: once it announces the route, the flows the
	// kernel now hashes onto it move there (hand-off from live owners).
	joined := c.Nodes[3]
	r.scenario("join", joined, false, func() {
		c.StartNode(t, ctx, joined)
		if err := c.Spread.SetNodes(ctx, []int{1, 2, 4}); err != nil {
			t.Fatal(err)
		}
	}, nil)

	// Kill the node with the most gateways: BIRD withdraws it when the
	// session drops (its kernel resets the TCP connection), the others
	// take its SAs over once its lease has ended.
	count := map[*ClusterNode]int{}
	for _, g := range c.Gateways {
		count[c.NodeOf(g)]++
	}
	live := []*ClusterNode{c.Nodes[0], c.Nodes[1], c.Nodes[3]}
	victim := live[0]
	for _, n := range live {
		if count[n] > count[victim] {
			victim = n
		}
	}
	var rest []int
	for _, n := range live {
		if n != victim {
			rest = append(rest, n.Index)
		}
	}
	r.scenario("kill", victim, false, func() {
		if err := c.KillNode(ctx, victim); err != nil {
			t.Fatal(err)
		}
		if err := c.Spread.SetNodes(ctx, rest); err != nil {
			t.Fatal(err)
		}
	}, nil)

	// Cut one of the two left off from etcd: its health check fails, it
	// withdraws its route; its SAs go to the last node (hand-off fails
	// without etcd: taken over once its lease has ended).
	sick, last := c.Nodes[rest[0]-1], rest[1]
	r.scenario("unhealthy", sick, false, func() {
		rules := `table inet ikefleet_test_block {
  chain out { type filter hook output priority filter; policy accept; ip daddr 10.40.0.0/24 drop; }
  chain in { type filter hook input priority filter; policy accept; ip saddr 10.40.0.0/24 drop; }
}
`
		if _, err := run(ctx, strings.NewReader(rules), "ip", "netns", "exec", sick.NS, "nft", "-f", "-"); err != nil {
			t.Fatal(err)
		}
		if err := c.Spread.SetNodes(ctx, []int{last}); err != nil {
			t.Fatal(err)
		}
	}, nil)
}

// birdRun is TestClusterBIRD's state across its scenarios.
type birdRun struct {
	t       *testing.T
	ctx     context.Context
	c       *Cluster
	streams map[string]*PingStream
	plot    *SASampler
}

// nodeOfAll is the node each gateway's flow goes to now.
func (r *birdRun) nodeOfAll() map[string]*ClusterNode {
	m := map[string]*ClusterNode{}
	for _, g := range r.c.Gateways {
		m[g.Name] = r.c.NodeOf(g)
	}
	return m
}

// handshakes is each running node's ikefleet_handshakes_total.
func (r *birdRun) handshakes() map[string]float64 {
	m := map[string]float64{}
	for _, n := range r.c.Nodes {
		if n.Proc == nil || n.Proc.Exited() {
			continue
		}
		v, err := r.c.NodeMetrics(r.ctx, n)
		if err != nil {
			r.t.Fatal(err)
		}
		m[n.ID] = v["ikefleet_handshakes_total"]
	}
	return m
}

// scenario runs event (which returns once the router's route has
// changed), waits until every gateway's pings are answered again, and
// reports and checks: outage of the gateways whose flow moved (median,
// max), lost pings, gateways whose IKE SA changed and IKE SAs established
// anew on the nodes (both must be 0), the share of SAs that moved, how
// long the route took to change. zeroLoss: a lost ping fails the test.
// after, if set, runs once the pings are back and adds to the report.
func (r *birdRun) scenario(name string, node *ClusterNode, zeroLoss bool, event func(), after func() string) {
	t, ctx, c := r.t, r.ctx, r.c
	t.Helper()
	before := snapshotAll(t, ctx, c)
	was := r.nodeOfAll()
	hs0 := r.handshakes()
	time.Sleep(time.Second)
	at := time.Now()
	r.plot.Mark(at, name+" "+node.ID)
	event()
	routed := time.Since(at)
	waitRecovered(t, ctx, c, r.streams, at.Add(time.Second), clusterRecoverBound)
	recovered := time.Since(at)
	extra := ""
	if after != nil {
		extra = " " + after()
	}
	time.Sleep(2 * time.Second) // late answers still count
	now := r.nodeOfAll()
	var outages []time.Duration
	var per []string
	lost, moved := 0, 0
	var late time.Duration
	for _, g := range c.Gateways {
		w := r.streams[g.Name].Window(at.Add(-time.Second), time.Now().Add(-time.Second))
		lost += w.Lost
		late = max(late, w.MaxRTT)
		if was[g.Name] != now[g.Name] {
			moved++
			out := w.Down()
			outages = append(outages, out)
			per = append(per, fmt.Sprintf("%s:%s>%s:%d", g.Name, was[g.Name].ID, now[g.Name].ID, out.Milliseconds()))
		} else if w.Lost > 0 {
			per = append(per, fmt.Sprintf("%s:%s(stayed):lost=%d", g.Name, now[g.Name].ID, w.Lost))
		}
	}
	changed := compareSnapshots(t, ctx, c, before, name+" behind BIRD")
	hs1 := r.handshakes()
	fresh := 0.0
	for id, v := range hs1 {
		fresh += v - hs0[id] // a node that joined counts from 0
	}
	md, mx := time.Duration(0), time.Duration(0)
	if len(outages) > 0 {
		md, mx = median(outages), slices.Max(outages)
	}
	t.Logf("cluster-bird-%s: node=%s gateways=%d moved=%d share-moved=%.2f route-changed-ms=%d outage-ms-median=%d outage-ms-max=%d lost-pings=%d rtt-ms-max=%d all-recovered-ms=%d ike-sa-changed=%d new-ike-sas=%.0f spread-after=%s%s",
		name, node.ID, len(c.Gateways), moved, float64(moved)/float64(len(c.Gateways)), routed.Milliseconds(), md.Milliseconds(), mx.Milliseconds(),
		lost, late.Milliseconds(), recovered.Milliseconds(), changed, fresh, perNode(c), extra)
	t.Logf("cluster-bird-%s-outages: %s", name, strings.Join(per, " "))
	if changed != 0 {
		t.Errorf("%s: %d gateways' IKE SAs changed", name, changed)
	}
	if fresh != 0 {
		t.Errorf("%s: %.0f IKE SAs established anew on the nodes (want 0: every gateway keeps its IKE SA)", name, fresh)
	}
	if moved == 0 {
		t.Errorf("%s: no gateway's flow moved (spread %s)", name, perNode(c))
	}
	if zeroLoss && lost != 0 {
		t.Errorf("%s: %d pings lost (want 0)", name, lost)
	}
}
