package statestore

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// Every transaction the store sends with its default batch sizes fits
// etcd's default --max-txn-ops (128), counted as etcd counts it: a
// nested transaction may hold only what the enclosing level leaves over.
// An external etcd started with its defaults must work.
func TestDefaultsFitEtcdDefaultTxnLimit(t *testing.T) {
	e, err := StartEmbedded(EmbedConfig{Dir: t.TempDir(), NoFsync: true, MaxTxnOps: EtcdDefaultMaxTxnOps})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	cli := dial(t, e.Endpoints())
	cfg := testConfig(t, "b")
	b := open(t, cli, cfg)
	c := open(t, dial(t, e.Endpoints()), testConfig(t, "c"))
	ctx := tctx(t, 60*time.Second)

	ike := make([]uint64, 300)
	for i := range ike {
		ike[i] = uint64(1)<<50 | uint64(i)
	}
	if ok, err := b.ReserveIKESPIs(ctx, ike); err != nil || !ok[len(ok)-1] {
		t.Fatalf("ReserveIKESPIs(300): %v", err)
	}
	esp := make([]uint32, 300)
	for i := range esp {
		esp[i] = 0x1000 + uint32(i)
	}
	if _, err := b.ReserveESPSPIs(ctx, esp); err != nil {
		t.Fatalf("ReserveESPSPIs(300): %v", err)
	}
	if err := b.ReleaseSPIs(ctx, ike, esp); err != nil {
		t.Fatalf("ReleaseSPIs(300, 300): %v", err)
	}
	addrs := make([]netip.Addr, 300)
	for i := range addrs {
		addrs[i] = netip.AddrFrom4([4]byte{10, 9, byte(i >> 8), byte(i)})
	}
	if _, err := b.ReserveAddresses(ctx, addrs); err != nil {
		t.Fatalf("ReserveAddresses(300): %v", err)
	}
	if err := b.UnreserveAddresses(ctx, addrs); err != nil {
		t.Fatalf("UnreserveAddresses(300): %v", err)
	}

	const n = 300
	base := uint64(1 << 41)
	putDeadOwned(t, cli, cfg, base, n)
	spis := make([]uint64, n)
	for i := range spis {
		spis[i] = base + uint64(i)
	}
	if _, err := b.Owners(ctx, spis); err != nil {
		t.Fatalf("Owners(300): %v", err)
	}
	moved, err := b.TakeOverMany(ctx, Owner{Node: "dead", Epoch: 1}, spis)
	if err != nil || len(moved) != n || moved[n-1].Err != nil {
		t.Fatalf("TakeOverMany(300): %d moved, %v", len(moved), err)
	}
	if _, _, err := b.LoadMany(ctx, spis); err != nil {
		t.Fatalf("LoadMany(300): %v", err)
	}
	to, _ := c.Registration()
	finals := make([]*SARecord, n)
	for i := range finals {
		finals[i] = moved[i].Record
	}
	hand, err := b.HandOffMany(ctx, finals, to)
	if err != nil || len(hand) != n || hand[n-1].Err != nil {
		t.Fatalf("HandOffMany(300): %d moved, %v", len(hand), err)
	}

	creds := make([]Credential, MaxCredentialBatch)
	for i := range creds {
		creds[i] = Credential{ID: fmt.Sprintf("gw%d@iot.example", i), Kind: CredentialPSK, Secret: []byte("psk-0123456789abcdef")}
	}
	if _, err := b.PutCredentials(ctx, creds); err != nil {
		t.Fatalf("PutCredentials(%d): %v", len(creds), err)
	}
}
