package concentrator

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/loadtest"
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
	// The reserved IKE SPIs: their record keys on the node's lease (an
	// SA's records are written off it).
	placeholders := func() int {
		t.Helper()
		_, leased := storeKeys(t, ctx, n.persist.cli)
		return leased["sa"]
	}
	stats := func() ike.Stats {
		t.Helper()
		st, err := n.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return st
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
	returned := stats().ReturnedSPIs
	if got := placeholders(); got > pools || returned < uint64(rep.Failed) {
		t.Fatalf("after %d failed handshakes: %d reserved IKE SPIs in the store (pools hold %d), %d handed back", rep.Failed, got, pools, returned)
	}

	good := loadOptions(t, n, 50)
	good.Rate = 200
	rep, err := loadtest.Run(ctx, good)
	if err != nil || rep.Established != 50 {
		t.Fatalf("genuine gateways after the failures: %v %+v", err, rep)
	}
	if st := stats(); st.PersistFailures != 0 || st.UnreservedSPIs != 0 {
		t.Fatalf("after reusing handed-back SPIs: %d state writes failed, %d SPIs unreserved", st.PersistFailures, st.UnreservedSPIs)
	}
}
