package statestore

import (
	"errors"
	"testing"
	"time"
)

// waitSealing waits until every keyring seals under key id (the stores
// read the registry every KeepAliveInterval).
func waitSealing(t *testing.T, id uint32, rings ...*Keyring) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for _, k := range rings {
		for k.Current() != id {
			if time.Now().After(deadline) {
				t.Fatalf("sealing under key %d, want %d (holding %v)", k.Current(), id, k.IDs())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func TestSealingKey(t *testing.T) {
	n := func(ids ...uint32) NodeInfo { return NodeInfo{KeyIDs: ids} }
	for _, c := range []struct {
		name  string
		held  []uint32
		nodes []NodeInfo
		want  uint32
		ok    bool
	}{
		{"alone", []uint32{1, 2}, nil, 2, true},
		{"unsorted", []uint32{3, 1, 2}, nil, 3, true},
		{"one node lacks the newest", []uint32{1, 2}, []NodeInfo{n(1, 2), n(1)}, 1, true},
		{"every node holds it", []uint32{1, 2}, []NodeInfo{n(1, 2), n(2, 1)}, 2, true},
		{"old key removed elsewhere", []uint32{1, 2}, []NodeInfo{n(2)}, 2, true},
		{"we lack the newest", []uint32{1}, []NodeInfo{n(1, 2)}, 1, true},
		{"an older release publishes nothing", []uint32{1, 2}, []NodeInfo{n()}, 2, true},
		{"none in common", []uint32{1}, []NodeInfo{n(2)}, 0, false},
	} {
		if got, ok := SealingKey(c.held, c.nodes); got != c.want || ok != c.ok {
			t.Errorf("%s: SealingKey(%v, %v) = %d, %v; want %d, %v", c.name, c.held, c.nodes, got, ok, c.want, c.ok)
		}
	}
}

// A rotation one node at a time: a node given the new key keeps sealing
// under the old one while another node lacks it, so every node can open
// every record at every step (a takeover in the middle of the rotation
// finds nothing it cannot read); once the last node holds the key, all
// seal under it, each tells OnSealingKey, a rewrap moves the records, and
// the old key can go.
func TestRotationOneNodeAtATime(t *testing.T) {
	e := startEtcd(t, false)
	ctx := tctx(t, 60*time.Second)
	type node struct {
		s       *Store
		keys    *Keyring
		changes chan [2]uint32
	}
	var nodes []*node
	for _, id := range []string{"a", "b", "c"} {
		nd := &node{keys: testKeyring(t, 1, 9), changes: make(chan [2]uint32, 8)}
		cfg := testConfig(t, id)
		cfg.Keys = nd.keys
		cfg.OnSealingKey = func(old, cur uint32) { nd.changes <- [2]uint32{old, cur} }
		nd.s = open(t, dial(t, e.Endpoints()), cfg)
		nodes = append(nodes, nd)
	}
	a, b, c := nodes[0], nodes[1], nodes[2]
	key2 := make([]byte, ClusterKeyLen)
	key2[0] = 2
	// Each node writes an SA at each step; every node must read them all.
	var spis []uint64
	write := func(step int) {
		t.Helper()
		for i, nd := range nodes {
			spi := uint64(0x9000 + 16*step + i)
			r := sampleRecord(spi)
			if err := nd.s.Persist(ctx, Change{Kind: Established, Record: r}); err != nil {
				t.Fatalf("step %d: %s persists: %v", step, nd.s.NodeID(), err)
			}
			spis = append(spis, spi)
		}
		for _, nd := range nodes {
			for _, spi := range spis {
				if _, _, err := nd.s.Load(ctx, spi); err != nil {
					t.Fatalf("step %d: %s cannot read %016x: %v", step, nd.s.NodeID(), spi, err)
				}
			}
		}
	}
	write(0)
	for i, nd := range []*node{a, b} {
		if err := nd.keys.Add(2, key2); err != nil {
			t.Fatal(err)
		}
		if err := nd.s.AdvertiseKeys(ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * nd.s.cfg.KeepAliveInterval) // every node has read the registry again
		for _, o := range nodes {
			if o.keys.Current() != 1 {
				t.Fatalf("%s seals under key %d while %s lacks key 2", o.s.NodeID(), o.keys.Current(), c.s.NodeID())
			}
		}
		write(1 + i)
	}
	if err := c.keys.Add(2, key2); err != nil {
		t.Fatal(err)
	}
	if err := c.s.AdvertiseKeys(ctx); err != nil {
		t.Fatal(err)
	}
	waitSealing(t, 2, a.keys, b.keys, c.keys)
	for _, nd := range nodes {
		select {
		case ch := <-nd.changes:
			if ch != [2]uint32{1, 2} {
				t.Errorf("%s: OnSealingKey(%d, %d), want (1, 2)", nd.s.NodeID(), ch[0], ch[1])
			}
		case <-time.After(5 * time.Second):
			t.Errorf("%s: OnSealingKey not called", nd.s.NodeID())
		}
	}
	write(3)
	st, err := a.s.Rewrap(ctx, nil)
	if err != nil || st.Failed != 0 || st.Rewritten == 0 {
		t.Fatalf("rewrap: %+v %v", st, err)
	}
	// Key 1 goes, node by node: everything stays readable.
	for _, nd := range nodes {
		only2, err := NewKeyring(2, key2)
		if err != nil {
			t.Fatal(err)
		}
		nd.keys.Update(only2)
		if err := nd.s.AdvertiseKeys(ctx); err != nil {
			t.Fatal(err)
		}
	}
	write(4)

	// A node that joins without key 2 makes the others seal under a key
	// it holds again, if they still hold one; here none is left in
	// common, so they stay on key 2 (and log it).
	d := testConfig(t, "d")
	d.Keys = testKeyring(t, 1, 9)
	ds := open(t, dial(t, e.Endpoints()), d)
	time.Sleep(2 * ds.cfg.KeepAliveInterval)
	if a.keys.Current() != 2 {
		t.Errorf("a seals under key %d, want 2 (no key in common with d)", a.keys.Current())
	}
	if _, _, err := ds.Load(ctx, spis[0]); !errors.Is(err, ErrUnknownKey) {
		t.Errorf("d reads a record under a key it lacks: %v", err)
	}
}
