package statestore

import (
	"bytes"
	"testing"
	"time"
)

// Two nodes share the ticket keys: one creates, both read the same key;
// rotation adds the next key once the newest is old enough, and keys past
// the retention go. The keys are sealed in etcd, not in the clear.
func TestTicketKeysSharedAndRotated(t *testing.T) {
	e := startEtcd(t, false)
	cli := dial(t, e.Endpoints())
	a := open(t, cli, testConfig(t, "a"))
	b := open(t, cli, testConfig(t, "b"))
	ctx := tctx(t, 20*time.Second)
	now := time.Unix(1_800_000_000, 0)
	const every, retain = 4 * time.Hour, 12 * time.Hour

	ka, err := a.RotateTicketKeys(ctx, now, every, retain)
	if err != nil || len(ka) != 1 || ka[0].ID != 1 || len(ka[0].Key) != TicketKeyLen {
		t.Fatalf("first key: %+v %v", ka, err)
	}
	// b, a moment later: no new key, the same one.
	kb, err := b.RotateTicketKeys(ctx, now.Add(time.Minute), every, retain)
	if err != nil || len(kb) != 1 || !bytes.Equal(kb[0].Key, ka[0].Key) {
		t.Fatalf("b sees %+v %v", kb, err)
	}
	resp, err := cli.Get(ctx, a.k.ticket(1))
	if err != nil || len(resp.Kvs) != 1 || bytes.Contains(resp.Kvs[0].Value, ka[0].Key) {
		t.Fatal("ticket key stored in the clear")
	}
	// Both past the rotation period at once: one new key, whoever wins.
	later := now.Add(every + time.Second)
	k1, err1 := a.RotateTicketKeys(ctx, later, every, retain)
	k2, err2 := b.RotateTicketKeys(ctx, later, every, retain)
	if err1 != nil || err2 != nil || len(k2) != 2 || k2[1].ID != 2 || !bytes.Equal(k1[len(k1)-1].Key, k2[1].Key) {
		t.Fatalf("rotation: %+v %v / %+v %v", k1, err1, k2, err2)
	}
	// Past the retention of the first: it goes, the second stays.
	end := now.Add(retain + time.Minute)
	k3, err := a.RotateTicketKeys(ctx, end, every, retain)
	if err != nil || len(k3) != 2 || k3[0].ID != 2 || k3[1].ID != 3 {
		t.Fatalf("after retention: %+v %v", k3, err)
	}
	// A node with another cluster key cannot read them.
	cfg := testConfig(t, "c")
	cfg.Keys = testKeyring(t, 1, 7)
	c := open(t, cli, cfg)
	if _, err := c.TicketKeys(ctx); err == nil {
		t.Fatal("ticket keys opened with the wrong cluster key")
	}
}
