package concentrator

import (
	"context"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ikefleet/ikefleet/loadtest"
	"github.com/ikefleet/ikefleet/statestore"
)

// A fleet of gateways that never authenticate (a wrong PSK, as a
// misconfigured gateway retries forever) must not grow the store: each
// IKE_SA_INIT takes a reserved IKE SPI, whose record keys are created
// empty on the node's lease, and before the SPIs came back from failed
// handshakes every failure left its two keys there for the rest of the
// registration. Afterwards the SPIs handed back serve genuine gateways
// (their reservations are still valid: no write of theirs is refused).
func TestFailedHandshakesKeepNoReservations(t *testing.T) {
	dir := t.TempDir()
	n, _, _ := runNode(t, nodeConfig(50, "", fmt.Sprintf("statestore:\n  mode: embedded\n  data_dir: %s/store\n  cluster_key_file: %s/cluster.key\n", dir, dir)))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	placeholders := func() int {
		t.Helper()
		resp, err := n.persist.cli.Get(ctx, statestore.DefaultPrefix+"sa/", clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		k := 0
		for _, kv := range resp.Kvs {
			if len(kv.Value) == 0 && kv.Lease != 0 {
				k++
			}
		}
		return k
	}
	pools := len(n.shards) * spiPoolLen
	const failing = 800
	o := loadOptions(t, n, failing)
	o.PSK = []byte("not-the-psk-{n}")
	o.Rate, o.Timeout = 400, 5*time.Second
	rep, _ := loadtest.Run(ctx, o)
	if rep.Established != 0 || rep.Failed == 0 {
		t.Fatalf("gateways with a wrong PSK: %+v", rep)
	}
	// The refill loop puts the SPIs handed back into the pools and
	// releases those that do not fit.
	deadline := time.Now().Add(10 * time.Second)
	for placeholders() > pools && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	returned := returnedSPIs(ctx, n)
	if got := placeholders(); got > pools || returned < uint64(rep.Failed) {
		t.Fatalf("after %d failed handshakes: %d reserved IKE SPIs in the store (pools hold %d), %d handed back", rep.Failed, got, pools, returned)
	}

	good := loadOptions(t, n, 50)
	good.Rate = 200
	rep, err := loadtest.Run(ctx, good)
	if err != nil || rep.Established != 50 {
		t.Fatalf("genuine gateways after the failures: %v %+v", err, rep)
	}
	var failed, unreserved uint64
	for _, s := range n.shards {
		n.do(ctx, s, func() {
			st := s.eng.Stats()
			failed += st.PersistFailures
			unreserved += st.UnreservedSPIs
		})
	}
	if failed != 0 || unreserved != 0 {
		t.Fatalf("after reusing handed-back SPIs: %d state writes failed, %d SPIs unreserved", failed, unreserved)
	}
}

// returnedSPIs sums the engines' ReturnedSPIs.
func returnedSPIs(ctx context.Context, n *Node) uint64 {
	k := uint64(0)
	for _, s := range n.shards {
		n.do(ctx, s, func() { k += s.eng.Stats().ReturnedSPIs })
	}
	return k
}
