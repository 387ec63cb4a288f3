//go:build linux

package e2e

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestClusterUniqueIDs: a strongSwan gateway's charon crashes (SIGKILL:
// no Delete) and comes back with the same identity (so INITIAL_CONTACT),
// its flows now going to the other of two nodes. The node it reaches
// asks the first one over the peer API to delete the old IKE SA
// (auth.unique_ids replace, the default): the first node logs the
// replacement and holds no SA, and the gateway lists one IKE SA.
func TestClusterUniqueIDs(t *testing.T) {
	requireCluster(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	c := NewCluster(t, ctx, ClusterOptions{Nodes: 2, Members: 1, Gateways: 1, LogLevel: "info"})
	g := c.Gateways[0]
	if err := c.InitiateAll(ctx); err != nil {
		t.Fatalf("initiate: %v", err)
	}
	// The node holding the SA: the one IKE_AUTH reached (the flows to
	// ports 500 and 4500 may hash to different nodes).
	first := holderOf(t, ctx, c)
	other := c.Nodes[first.Index%len(c.Nodes)]
	sas, err := g.SS.ListSAs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	old, ok := FindIKESA(sas, "conc")
	if !ok {
		t.Fatalf("no IKE SA on the gateway: %v", sas)
	}
	oldSPI := old.Get("responder-spi")

	// The gateway reboots; meanwhile its flows hash to the other node.
	if err := g.SS.Crash(ctx); err != nil {
		t.Fatal(err)
	}
	for _, f := range g.Flows() {
		if err := c.Spread.Move(ctx, f, other.Index); err != nil {
			t.Fatal(err)
		}
	}
	g.SS.Start(g.Conf(), nil)
	if out, err := g.SS.SwanctlContext(ctx, "--initiate", "--child", "lan", "--timeout", "30"); err != nil {
		t.Fatalf("re-initiate: %v\n%s\n--- gw log ---\n%s", err, out, tail(g.SS.Log(), 8<<10))
	}
	if !strings.Contains(g.SS.Log(), "INITIAL_CONTACT") {
		t.Logf("note: the gateway's log does not show INITIAL_CONTACT (log level)")
	}
	if _, err := other.Proc.WaitLog(ctx, "IKE_SA established", map[string]string{"peer_id": g.ID}); err != nil {
		t.Fatalf("%s: %v", other.ID, err)
	}
	if _, err := first.Proc.WaitLog(ctx, "IKE SA replaced by a newer one of its identity", map[string]string{"identity": g.ID}); err != nil {
		t.Fatalf("%s did not delete the old SA: %v", first.ID, err)
	}
	// The old node holds no IKE SA any more; the new one counted a remote
	// replacement.
	deadline := time.Now().Add(20 * time.Second)
	for {
		m1 := clusterMetrics(t, ctx, c, first)
		m2 := clusterMetrics(t, ctx, c, other)
		if m1["ikefleet_child_sas"] == 0 && m2["ikefleet_unique_id_replacements_total"] == 1 && m2["ikefleet_child_sas"] == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: child_sas=%v; %s: child_sas=%v unique_id_replacements_total=%v failures=%v",
				first.ID, m1["ikefleet_child_sas"], other.ID, m2["ikefleet_child_sas"],
				m2["ikefleet_unique_id_replacements_total"], m2["ikefleet_unique_id_replace_failures_total"])
		}
		time.Sleep(200 * time.Millisecond)
	}
	sas, err = g.SS.ListSAs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(sas) != 1 || sas[0].Get("state") != "ESTABLISHED" || sas[0].Get("responder-spi") == oldSPI {
		t.Fatalf("gateway SAs after the reboot: %v, want one new ESTABLISHED IKE SA", sas)
	}
	t.Logf("unique-ids: gateway=%s old-node=%s new-node=%s old-spi=%s new-spi=%s",
		g.Name, first.ID, other.ID, oldSPI, sas[0].Get("responder-spi"))
}

// holderOf is the node of c that holds a CHILD SA (c has one gateway).
func holderOf(t *testing.T, ctx context.Context, c *Cluster) *ClusterNode {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var held []*ClusterNode
		for _, n := range c.Nodes {
			if clusterMetrics(t, ctx, c, n)["ikefleet_child_sas"] > 0 {
				held = append(held, n)
			}
		}
		if len(held) == 1 {
			return held[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d nodes hold the gateway's CHILD SA", len(held))
		}
		time.Sleep(200 * time.Millisecond)
	}
}
