//go:build linux

package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// clusterPartition is how long PartitionNode keeps a node from etcd: well
// beyond its lease, so that the lease expires and the others take over.
func clusterPartition(c *Cluster) time.Duration { return max(10*time.Second, 3*c.opts.LeaseTTL) }

// partitionNode is TestCluster's PartitionNode step: node n3 loses etcd
// (not the router, not the other nodes) for clusterPartition. It must
// fence itself (stop sending for its SAs) before its lease can expire:
// no packet leaves it from the service address's IKE ports from the
// moment it logs the fence until the partition heals, and it fences
// before any other node claims one of its SAs. Its /readyz fails, the
// router withdraws it, the others take its SAs over once its
// registration ends, and its gateways keep their IKE SAs and get their
// pings through again. When the partition heals it registers again
// under a new epoch, passes /readyz, gets its flows back from the router
// and serves them (hand-off from the nodes that held them).
func partitionNode(t *testing.T, ctx context.Context, c *Cluster, before map[string]saSnapshot, streams map[string]*PingStream) {
	victim := c.Nodes[len(c.Nodes)-1]
	moved := gatewaysOn(c, victim)
	if len(moved) == 0 {
		t.Fatalf("no gateway on %s: %s", victim.ID, perNode(c))
	}
	var survivors, all []int
	var others []*ClusterNode
	for _, n := range c.Nodes {
		all = append(all, n.Index)
		if n != victim {
			survivors = append(survivors, n.Index)
			others = append(others, n)
		}
	}
	if err := c.NodeReady(ctx, victim); err != nil {
		t.Fatalf("before the partition: %v", err)
	}
	if err := c.CountNodeSends(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	m0 := clusterMetrics(t, ctx, c, victim)

	at := time.Now()
	if err := c.PartitionFromEtcd(ctx, victim); err != nil {
		t.Fatal(err)
	}
	healed := false
	defer func() {
		if !healed {
			_ = c.HealPartition(context.WithoutCancel(ctx), victim)
		}
	}()

	// The router's health check and the node's fence, in whichever
	// order they come.
	var withdrawn, fenced, seenFenced time.Time
	var notReady error
	sendsAtFence := 0
	for withdrawn.IsZero() || fenced.IsZero() {
		if withdrawn.IsZero() {
			if err := c.NodeReady(ctx, victim); err != nil {
				withdrawn, notReady = time.Now(), err
				if err := c.Spread.SetNodes(ctx, survivors); err != nil {
					t.Fatal(err)
				}
			}
		}
		if fenced.IsZero() {
			if ts := NodeLogTimes(victim, "fenced: outbound ESP stopped", at); len(ts) > 0 {
				n, err := c.NodeSends(ctx, victim)
				if err != nil {
					t.Fatal(err)
				}
				fenced, seenFenced, sendsAtFence = ts[0], time.Now(), n
			}
		}
		if time.Since(at) > clusterRecoverBound || ctx.Err() != nil {
			t.Fatalf("%v after cutting %s off from etcd: withdrawn=%v fenced=%v", clusterRecoverBound, victim.ID, !withdrawn.IsZero(), !fenced.IsZero())
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("%s not ready: %v", victim.ID, notReady)

	// The others take its SAs over once its registration is gone.
	waitRecovered(t, ctx, c, streams, withdrawn.Add(time.Second), clusterRecoverBound)
	recovered := time.Since(at)
	if d := time.Until(at.Add(clusterPartition(c))); d > 0 {
		time.Sleep(d)
	}
	sendsEnd, err := c.NodeSends(ctx, victim)
	if err != nil {
		t.Fatal(err)
	}
	mEnd := clusterMetrics(t, ctx, c, victim)
	healAt := time.Now()
	if err := c.HealPartition(ctx, victim); err != nil {
		t.Fatal(err)
	}
	healed = true

	var takeover, firstClaim, lastClaim time.Time
	claims := 0
	for _, n := range others {
		if ts := NodeLogTimes(n, "owner's registration ended: taking its SAs over", at); len(ts) > 0 && (takeover.IsZero() || ts[0].Before(takeover)) {
			takeover = ts[0]
		}
		for _, ts := range NodeLogTimes(n, "SA claimed", at) {
			if ts.After(healAt) {
				continue
			}
			claims++
			if firstClaim.IsZero() || ts.Before(firstClaim) {
				firstClaim = ts
			}
			if ts.After(lastClaim) {
				lastClaim = ts
			}
		}
	}
	if firstClaim.IsZero() {
		t.Errorf("no SA of %s claimed by the others during the partition", victim.ID)
	} else if !fenced.Before(firstClaim) {
		t.Errorf("%s fenced at %v, after another node claimed one of its SAs at %v", victim.ID, fenced.Format(time.RFC3339Nano), firstClaim.Format(time.RFC3339Nano))
	}
	if n := sendsEnd - sendsAtFence; n != 0 {
		t.Errorf("%s sent %d packets from %s:500/4500 while fenced (from %v to the heal)", victim.ID, n, ClusterVIP, seenFenced.Sub(at).Round(time.Millisecond))
	}
	m := tallyMove(c, streams, moved, at.Add(-time.Second), healAt)
	changed := compareSnapshots(t, ctx, c, before, "etcd partition")
	ms := func(t time.Time) int64 {
		if t.IsZero() {
			return -1
		}
		return t.Sub(at).Milliseconds()
	}
	t.Logf("cluster-partition: node=%s partition-s=%.0f lease-ttl=%v gateways-moved=%d outage-ms-median=%d outage-ms-max=%d lost-pings=%d others-lost-pings=%d all-recovered-ms=%d sa-changed=%d claims=%d",
		victim.ID, clusterPartition(c).Seconds(), c.opts.LeaseTTL, len(moved), median(m.outages).Milliseconds(), m.worst.Milliseconds(),
		m.lost, m.otherLost, recovered.Milliseconds(), changed, claims)
	t.Logf("cluster-partition-times: ms-from-partition withdrawn=%d fenced=%d registration-ended=%d first-claim=%d last-claim=%d fence-before-first-claim-ms=%d sends-while-fenced=%d ike-fenced-drops=%.0f",
		ms(withdrawn), ms(fenced), ms(takeover), ms(firstClaim), ms(lastClaim), firstClaim.Sub(fenced).Milliseconds(), sendsEnd-sendsAtFence,
		mEnd["ikefleet_fenced_drops_total"]-m0["ikefleet_fenced_drops_total"])
	t.Logf("cluster-partition-outages: %s", strings.Join(m.per, " "))
	if t.Failed() {
		return
	}

	// Healed: it registers again, passes /readyz, gets its flows back.
	var reregistered, ready time.Time
	for reregistered.IsZero() || ready.IsZero() {
		if reregistered.IsZero() {
			if ts := NodeLogTimes(victim, "registered again: outbound ESP resumed", healAt); len(ts) > 0 {
				reregistered = ts[0]
			}
		}
		if ready.IsZero() && c.NodeReady(ctx, victim) == nil {
			ready = time.Now()
		}
		if victim.Proc.Exited() {
			t.Fatalf("%s exited after the partition", victim.ID)
		}
		if time.Since(healAt) > clusterRecoverBound || ctx.Err() != nil {
			t.Fatalf("%s not back %v after the partition healed: registered=%v ready=%v", victim.ID, clusterRecoverBound, !reregistered.IsZero(), !ready.IsZero())
		}
		time.Sleep(100 * time.Millisecond)
	}
	claims0, handed0 := countNodeLogs(c, "SA claimed"), countNodeLogs(c, "SA handed off")
	back0 := time.Now()
	if err := c.Spread.SetNodes(ctx, all); err != nil {
		t.Fatal(err)
	}
	back := gatewaysOn(c, victim)
	if len(back) == 0 {
		t.Fatalf("the router gives %s no flow back: %s", victim.ID, perNode(c))
	}
	mb := lossAfterMove(t, ctx, c, streams, back, back0)
	changed = compareSnapshots(t, ctx, c, before, "rejoin after the partition")
	mv := clusterMetrics(t, ctx, c, victim)
	if mv["ikefleet_child_sas"] < 1 {
		t.Errorf("%s holds no CHILD SA after getting %d flows back", victim.ID, len(back))
	}
	t.Logf("cluster-partition-rejoin: node=%s registered-again-ms=%d ready-ms=%d (from the heal) gateways-moved=%d lost-pings=%d outage-ms-max=%d others-lost-pings=%d child-sas=%.0f sa-changed=%d claims=%d handed-off=%d",
		victim.ID, reregistered.Sub(healAt).Milliseconds(), ready.Sub(healAt).Milliseconds(), len(back), mb.lost, mb.worst.Milliseconds(), mb.otherLost,
		mv["ikefleet_child_sas"], changed, countNodeLogs(c, "SA claimed")-claims0, countNodeLogs(c, "SA handed off")-handed0)
}

// clusterOutage is what TestCluster's PartitionAll and EtcdDownAll steps
// share: cut takes etcd away from every node at once, heal gives it back
// after clusterPartition; the router keeps its flows where they were.
// Every node must fence before its lease can expire, so the whole service
// stops: no packet leaves any node from the service address's IKE ports
// while it is fenced. After the heal each node registers again under a new
// epoch and the SAs come back — their own by the owner's re-registration,
// a neighbour's that it took over first by hand-off when the flow's
// packets reach their node — with the gateways' IKE SAs unchanged and no
// re-authentication. Reported (the line cluster-<name>): each gateway's
// outage (the cut included), when the nodes fenced, when the last one
// registered again and when every gateway answered, from the heal.
func clusterOutage(t *testing.T, ctx context.Context, c *Cluster, before map[string]saSnapshot, streams map[string]*PingStream,
	name string, cut, heal func() error) {
	for _, n := range c.Nodes {
		if err := c.NodeReady(ctx, n); err != nil {
			t.Fatalf("before the outage: %v", err)
		}
	}
	if err := c.CountNodeSends(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	claims0, handed0 := countNodeLogs(c, "SA claimed"), countNodeLogs(c, "SA handed off")
	at := time.Now()
	healed := false
	defer func() {
		if !healed {
			if err := heal(); err != nil {
				t.Error(err)
			}
		}
	}()
	if err := cut(); err != nil {
		t.Fatal(err)
	}

	// Every node fences; from then on none sends.
	fenced := map[*ClusterNode]time.Time{}
	sendsAtFence := map[*ClusterNode]int{}
	for len(fenced) < len(c.Nodes) {
		for _, n := range c.Nodes {
			if _, ok := fenced[n]; ok {
				continue
			}
			if ts := NodeLogTimes(n, "fenced: outbound ESP stopped", at); len(ts) > 0 {
				s, err := c.NodeSends(ctx, n)
				if err != nil {
					t.Fatal(err)
				}
				fenced[n], sendsAtFence[n] = ts[0], s
			}
		}
		if time.Since(at) > clusterRecoverBound || ctx.Err() != nil {
			t.Fatalf("%v after taking etcd away from every node: %d of %d fenced", clusterRecoverBound, len(fenced), len(c.Nodes))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if d := time.Until(at.Add(clusterPartition(c))); d > 0 {
		time.Sleep(d)
	}
	var sentWhileFenced []string
	for _, n := range c.Nodes {
		s, err := c.NodeSends(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		if s != sendsAtFence[n] {
			sentWhileFenced = append(sentWhileFenced, fmt.Sprintf("%s:%d", n.ID, s-sendsAtFence[n]))
		}
	}
	if len(sentWhileFenced) > 0 {
		t.Errorf("packets sent from %s:500/4500 while fenced: %v", ClusterVIP, sentWhileFenced)
	}

	healAt := time.Now()
	healed = true
	if err := heal(); err != nil {
		t.Fatal(err)
	}
	var lastBack time.Time
	for _, n := range c.Nodes {
		for {
			if ts := NodeLogTimes(n, "registered again: outbound ESP resumed", healAt); len(ts) > 0 {
				lastBack = maxTime(lastBack, ts[0])
				break
			}
			if n.Proc.Exited() {
				t.Fatalf("%s exited after the outage", n.ID)
			}
			if time.Since(healAt) > clusterRecoverBound || ctx.Err() != nil {
				t.Fatalf("%s did not register again within %v of the heal", n.ID, clusterRecoverBound)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitRecovered(t, ctx, c, streams, healAt.Add(time.Second), clusterRecoverBound)
	recovered := time.Since(healAt)
	time.Sleep(2 * time.Second)
	m := tallyMove(c, streams, c.Gateways, at.Add(-time.Second), time.Now().Add(-time.Second))
	changed := compareSnapshots(t, ctx, c, before, name)
	var first, last time.Time
	for _, ts := range fenced {
		if first.IsZero() || ts.Before(first) {
			first = ts
		}
		last = maxTime(last, ts)
	}
	t.Logf("cluster-%s: nodes=%d outage-s=%.0f lease-ttl=%v fenced-ms-first=%d fenced-ms-last=%d registered-again-ms-last=%d all-recovered-ms=%d (from the heal) outage-ms-median=%d outage-ms-max=%d lost-pings=%d sa-changed=%d claims=%d handed-off=%d",
		name, len(c.Nodes), clusterPartition(c).Seconds(), c.opts.LeaseTTL, first.Sub(at).Milliseconds(), last.Sub(at).Milliseconds(),
		lastBack.Sub(healAt).Milliseconds(), recovered.Milliseconds(), median(m.outages).Milliseconds(), m.worst.Milliseconds(), m.lost, changed,
		countNodeLogs(c, "SA claimed")-claims0, countNodeLogs(c, "SA handed off")-handed0)
	t.Logf("cluster-%s-outages: %s", name, strings.Join(m.per, " "))
}

// partitionAll is TestCluster's PartitionAll step: every node cut off
// from etcd at once (etcd itself up, so every lease expires).
func partitionAll(t *testing.T, ctx context.Context, c *Cluster, before map[string]saSnapshot, streams map[string]*PingStream) {
	clusterOutage(t, ctx, c, before, streams, "partition-all",
		func() error {
			for _, n := range c.Nodes {
				if err := c.PartitionFromEtcd(ctx, n); err != nil {
					return err
				}
			}
			return nil
		},
		func() error {
			var errs []error
			for _, n := range c.Nodes {
				errs = append(errs, c.HealPartition(context.WithoutCancel(ctx), n))
			}
			return errors.Join(errs...)
		})
}

// etcdDownAll is TestCluster's EtcdDownAll step: every etcd member killed
// (SIGKILL) at once and started again on its data after clusterPartition.
// The members' leases outlive the outage (a new leader extends them), so
// unlike PartitionAll no registration ends: the nodes fence on their own
// clocks and register again. outer owns the restarted members.
func etcdDownAll(t, outer *testing.T, ctx context.Context, c *Cluster, before map[string]saSnapshot, streams map[string]*PingStream) {
	clusterOutage(t, ctx, c, before, streams, "etcd-down-all",
		func() error {
			var errs []error
			for _, m := range c.Members {
				errs = append(errs, c.KillEtcdMember(m))
			}
			return errors.Join(errs...)
		},
		func() error {
			for _, m := range c.Members {
				m.Proc = c.TP.StartProcess(outer, "etcd "+m.Name, c.Etcd, m.args...)
			}
			for _, m := range c.Members {
				if err := c.waitEtcdHealthy(ctx, m, 30*time.Second); err != nil {
					return err
				}
			}
			return nil
		})
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
