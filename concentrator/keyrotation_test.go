package concentrator

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// A cluster key rotation without a restart, one node at a time
// (concentratorctl reload): a node given the new key keeps sealing under
// the old one while another lacks it; once both hold it, both seal under
// it and rewrite the records; after the old key is removed everywhere, a
// takeover still reads every SA.
func TestClusterKeyRotationByReload(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := newTestCluster(t, 2)
	shared, err := os.ReadFile(c.keyFile)
	if err != nil {
		t.Fatal(err)
	}
	key1 := "1:" + strings.TrimSpace(string(shared)) + "\n"
	key2 := "2:" + strings.Repeat("5a", 32) + "\n"
	dir := filepath.Dir(c.keyFile)
	keyFile := func(id string) string { return filepath.Join(dir, id+".key") }
	writeKeys := func(id, text string) {
		t.Helper()
		if err := os.WriteFile(keyFile(id), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeKeys("a", key1)
	writeKeys("b", key1)
	nodeID := regexp.MustCompile(`node: \{id: ([a-z]+)\}`)
	c.edit = func(text string) string {
		id := nodeID.FindStringSubmatch(text)[1]
		return replaceOnce(t, text, "cluster_key_file: "+c.keyFile, "cluster_key_file: "+keyFile(id))
	}
	a, b := c.start(ctx, "a"), c.start(ctx, "b")
	c.setRoute("a")
	g1 := startMemGateway(t, ctx, c.netw, c.clk, netip.MustParseAddr("192.0.2.11"))
	g1.connect(ctx, c.vip, 1)
	g2 := startMemGateway(t, ctx, c.netw, c.clk, netip.MustParseAddr("192.0.2.12"))
	c.pin(g2.ike.LocalAddr().Addr(), "b")
	g2.connect(ctx, c.vip, 2)
	_, spi1, _ := gatewaySA(g1)
	if h := c.holders(ctx, spi1); len(h) != 1 || h[0] != "a" {
		t.Fatalf("gateway 1's SA held by %v", h)
	}

	sealing := func(n *Node) (held []uint32, cur uint32) {
		held, cur, ok := n.ClusterKeys()
		if !ok {
			t.Fatal("no cluster keys")
		}
		return held, cur
	}
	// a first: it holds key 2 and still seals under key 1 (b lacks it).
	writeKeys("a", key1+key2)
	res, err := a.n.ReloadCredentials(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.ClusterKeys, []uint32{1, 2}) || res.SealingKey != 1 || !slices.Contains(res.Changed, "cluster_keys") {
		t.Fatalf("a's reload: keys %v, sealing %d, changed %v", res.ClusterKeys, res.SealingKey, res.Changed)
	}
	rekeyChild(t, ctx, g1, 1) // a writes gateway 1's SA under key 1
	time.Sleep(2 * time.Second)
	if held, cur := sealing(a.n); cur != 1 {
		t.Fatalf("a seals under key %d (holding %v) while b lacks key 2", cur, held)
	}
	// Then b: both seal under key 2 and rewrite the records.
	writeKeys("b", key1+key2)
	if _, err := b.n.ReloadCredentials(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "both nodes seal under key 2 and rewrote the records", func() bool {
		_, ca := sealing(a.n)
		_, cb := sealing(b.n)
		sa, sb := a.n.ClusterStats(), b.n.ClusterStats()
		return ca == 2 && cb == 2 && sa.Rewraps > 0 && sb.Rewraps > 0 && sa.Rewrapped+sb.Rewrapped > 0
	})
	sa, sb := a.n.ClusterStats(), b.n.ClusterStats()
	t.Logf("rewrap: a rewrote %d records, b %d (unreadable %d, %d)", sa.Rewrapped, sb.Rewrapped, sa.RewrapUnreadable, sb.RewrapUnreadable)
	if sa.RewrapUnreadable+sb.RewrapUnreadable != 0 {
		t.Fatalf("unreadable records: a %d, b %d", sa.RewrapUnreadable, sb.RewrapUnreadable)
	}
	// What the admin API shows of each node's pass.
	rewritten := 0
	for _, cn := range []*clusterNode{a, b} {
		r, ok := cn.n.KeyRotation()
		if !ok || r.Running || r.SealingKey != 2 || r.Err != "" || r.Finished.Before(r.Started) || r.Scanned < r.Rewritten+r.Raced || r.Unreadable != 0 {
			t.Fatalf("%s's key rotation: %+v (ok %v)", cn.id, r, ok)
		}
		rewritten += r.Rewritten
	}
	if rewritten == 0 {
		t.Fatal("the key rotation passes rewrote nothing")
	}
	// What /metrics shows.
	if m, err := b.n.metricsSnapshot(ctx); err != nil || m.StateStore == nil || m.StateStore.SealingKey != 2 || m.StateStore.Keys != 2 ||
		m.StateStore.Rewrapped != sb.Rewrapped {
		t.Fatalf("b's metrics: %+v (%v)", m.StateStore, err)
	}
	// Key 1 goes from both files.
	for _, cn := range []*clusterNode{a, b} {
		writeKeys(cn.id, key2)
		res, err := cn.n.ReloadCredentials(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(res.ClusterKeys, []uint32{2}) || res.SealingKey != 2 {
			t.Fatalf("%s after removing key 1: keys %v, sealing %d", cn.id, res.ClusterKeys, res.SealingKey)
		}
	}
	// b takes gateway 1's SA over from the dead a, reading it under key 2.
	c.kill("a")
	c.setRoute("b")
	c.pin(g1.ike.LocalAddr().Addr(), "b")
	rekeyChild(t, ctx, g1, 1)
	if h := c.holders(ctx, spi1); len(h) != 1 || h[0] != "b" {
		t.Fatalf("gateway 1's SA held by %v after a's death", h)
	}
	rekeyChild(t, ctx, g2, 2)
}
