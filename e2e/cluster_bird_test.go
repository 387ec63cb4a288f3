//go:build linux

package e2e

import (
	"context"
	"errors"
	"fmt"
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

// TestClusterBIRD: the cluster tier with BIRD as its router. Three
// nodes announce the service address; BIRD spreads the gateways by ECMP.
// A node is drained with SIGTERM: its route goes at once, its SAs move to
// the others by hand-off, it exits. Then a node is killed (SIGKILL): BIRD withdraws its next hop, the kernel
// re-hashes, the surviving nodes take the SAs over; the gateways' pings
// come back and their IKE SAs (SPIs) are unchanged.
func TestClusterBIRD(t *testing.T) {
	requireCluster(t)
	requireBird(t)
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	var bird *Bird
	c := NewCluster(t, ctx, ClusterOptions{Gateways: 8,
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
	all := []int{1, 2, 3}
	t0 := time.Now()
	if err := c.Spread.SetNodes(ctx, all); err != nil {
		out, _ := bird.Birdc(ctx, "show", "protocols")
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("BIRD: service route with 3 next hops %v after the nodes listened; spread %s", time.Since(t0).Round(time.Millisecond), perNode(c))
	if err := c.InitiateAll(ctx); err != nil {
		t.Fatalf("initiate: %v", err)
	}
	streams := map[string]*PingStream{}
	for _, g := range c.Gateways {
		p, err := StartPingStream(c.TP, g.NS, g.LANAddr, ClusterCoreAddr, clusterPingInterval)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Stop)
		streams[g.Name] = p
	}
	waitRecovered(t, ctx, c, streams, time.Now(), clusterRecoverBound)
	before := snapshotAll(t, ctx, c)

	// Drain n3 with SIGTERM: it withdraws its route at once; its gateways'
	// packets now reach the others, which claim the SAs from it by
	// hand-off while it still runs; it exits once none is left.
	drained := c.Nodes[2]
	var onDrained []*ClusterGateway
	for _, g := range c.Gateways {
		if c.NodeOf(g) == drained {
			onDrained = append(onDrained, g)
		}
	}
	time.Sleep(time.Second)
	at := time.Now()
	if err := drained.Proc.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := c.Spread.SetNodes(ctx, []int{1, 2}); err != nil {
		t.Fatal(err)
	}
	drainWithdrawn := time.Since(at)
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	err := drained.Proc.Wait(wctx)
	wcancel()
	if err != nil {
		t.Fatalf("%s after SIGTERM: %v", drained.ID, err)
	}
	exited := time.Since(at)
	rec, err := drained.Proc.WaitLog(ctx, "drain: done", nil)
	if err != nil {
		t.Fatal(err)
	}
	waitRecovered(t, ctx, c, streams, at.Add(time.Second), clusterRecoverBound)
	time.Sleep(2 * time.Second)
	drainLost, drainMax := 0, time.Duration(0)
	for _, g := range onDrained {
		w := streams[g.Name].Window(at.Add(-time.Second), time.Now().Add(-time.Second))
		drainLost += w.Lost
		drainMax = max(drainMax, w.Outage)
	}
	if changed := compareSnapshots(t, ctx, c, before, "drain behind BIRD"); changed != 0 {
		t.Errorf("%d gateways' IKE SAs changed by the drain", changed)
	}
	initial, _ := rec.Attr("initial")
	left, _ := rec.Attr("left")
	elapsed, _ := rec.Attr("elapsed")
	t.Logf("cluster-bird-drain: node=%s gateways=%d route-withdrawn-ms=%d sas-initial=%s sas-left=%s drain=%s exit-ms=%d lost-pings=%d outage-ms-max=%d spread-after=%s",
		drained.ID, len(onDrained), drainWithdrawn.Milliseconds(), initial, left, elapsed, exited.Milliseconds(), drainLost,
		drainMax.Milliseconds(), perNode(c))
	before = snapshotAll(t, ctx, c)

	// Kill the node with the most gateways.
	victim := c.Nodes[0]
	count := map[*ClusterNode]int{}
	for _, g := range c.Gateways {
		count[c.NodeOf(g)]++
	}
	for _, n := range c.Nodes[:2] {
		if count[n] > count[victim] {
			victim = n
		}
	}
	var moved []*ClusterGateway
	for _, g := range c.Gateways {
		if c.NodeOf(g) == victim {
			moved = append(moved, g)
		}
	}
	var survivors []int
	for _, n := range c.Nodes[:2] {
		if n != victim {
			survivors = append(survivors, n.Index)
		}
	}
	time.Sleep(time.Second)
	at = time.Now()
	if err := c.KillNode(ctx, victim); err != nil {
		t.Fatal(err)
	}
	if err := c.Spread.SetNodes(ctx, survivors); err != nil {
		t.Fatal(err)
	}
	withdrawn := time.Since(at)
	waitRecovered(t, ctx, c, streams, at.Add(time.Second), clusterRecoverBound)
	recovered := time.Since(at)
	time.Sleep(2 * time.Second)
	var outages []time.Duration
	var per []string
	lost := 0
	for _, g := range c.Gateways {
		w := streams[g.Name].Window(at.Add(-time.Second), time.Now().Add(-time.Second))
		if slices.Contains(moved, g) {
			outages = append(outages, w.Outage)
			per = append(per, fmt.Sprintf("%s:%d", g.Name, w.Outage.Milliseconds()))
		}
		lost += w.Lost
	}
	changed := compareSnapshots(t, ctx, c, before, "node kill behind BIRD")
	if changed != 0 {
		t.Errorf("%d gateways' IKE SAs changed", changed)
	}
	md, mx := time.Duration(0), time.Duration(0)
	if len(outages) > 0 {
		md, mx = median(outages), slices.Max(outages)
	}
	t.Logf("cluster-bird-kill: node=%s gateways-moved=%d route-withdrawn-ms=%d outage-ms-median=%d outage-ms-max=%d lost-pings=%d all-recovered-ms=%d sa-changed=%d spread-after=%s",
		victim.ID, len(moved), withdrawn.Milliseconds(), md.Milliseconds(), mx.Milliseconds(), lost, recovered.Milliseconds(), changed, perNode(c))
	t.Logf("cluster-bird-kill-outages: %s", strings.Join(per, " "))
}
