package concentrator

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/ikefleet/ikefleet/loadtest"
	"github.com/ikefleet/ikefleet/statestore"
)

// storeKeys counts the keys under the node's prefix by kind (the first
// path element; spi/ and pool/ by their second too), apart from those on
// a lease (reservations and the registration).
func storeKeys(t *testing.T, ctx context.Context, cli *clientv3.Client) (kept, leased map[string]int) {
	t.Helper()
	resp, err := cli.Get(ctx, statestore.DefaultPrefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	kept, leased = map[string]int{}, map[string]int{}
	for _, kv := range resp.Kvs {
		parts := strings.SplitN(strings.TrimPrefix(string(kv.Key), statestore.DefaultPrefix), "/", 3)
		kind := parts[0]
		if (kind == "spi" || kind == "pool") && len(parts) > 1 {
			kind += "/" + parts[1]
		}
		if kv.Lease != 0 {
			leased[kind]++
		} else {
			kept[kind]++
		}
	}
	return kept, leased
}

// noSAKeys fails t for keys of SAs among those kept off any lease: only
// the cluster's own keys and the identities' address leases may remain.
func noSAKeys(t *testing.T, kept map[string]int) {
	t.Helper()
	for kind, k := range kept {
		switch kind {
		case "layout", "pool/id", "pool/addr", "creds", "tickets", "keys":
		default:
			t.Errorf("%d keys %s/ left off any lease", k, kind)
		}
	}
}

func formatCounts(m map[string]int) string {
	var ks []string
	for k, v := range m {
		ks = append(ks, fmt.Sprintf("%s=%d", k, v))
	}
	sort.Strings(ks)
	return strings.Join(ks, " ")
}

// A fleet that reconnects, moves behind its NATs and rekeys (its CHILD
// SAs, or its IKE SAs), then leaves, must leave nothing of its SAs in the
// store: no record, owner, index entry, ESP SPI or selector key, and no
// more reservations than the pools hold. Only the cluster's own keys, the
// identities' address leases (kept for their next connection) and the
// pools' reservations remain.
//
// Gateways that vanish without a word (NoDelete: a power cut) are found
// dead by the node's liveness checks, and their SAs go the same way.
func TestFleetLeavesNoKeysBehind(t *testing.T) {
	for _, c := range []struct {
		name               string
		rekeyIKE, vanishes bool
	}{{"child rekeys", false, false}, {"IKE rekeys", true, false}, {"gateways vanish", false, true}} {
		t.Run(c.name, func(t *testing.T) { fleetLeaves(t, c.rekeyIKE, c.vanishes) })
	}
}

func fleetLeaves(t *testing.T, rekeyIKE, vanishes bool) {
	dir := t.TempDir()
	ikeExtra := ""
	if vanishes {
		// Dead within about three seconds of silence.
		ikeExtra = "  dpd_delay: 1s\n  retransmit_timeout: 250ms\n  retransmit_tries: 2\n"
	}
	n, _, _ := runNode(t, nodeConfig(60, ikeExtra, fmt.Sprintf("statestore:\n  mode: embedded\n  data_dir: %s/store\n  cluster_key_file: %s/cluster.key\n", dir, dir)))
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	o := loadOptions(t, n, 60)
	o.Rate, o.Hold = 100, 8*time.Second
	o.ChurnPerMin, o.RebindPerMin = 300, 300 // each gateway reconnects and rebinds about once in the hold
	o.KeepaliveInterval, o.DPDDelay = time.Second, 2*time.Second
	o.RekeyStorm, o.RekeyRate, o.RekeyIKE = true, 50, rekeyIKE
	o.NoDelete = vanishes
	if vanishes {
		// Only the going: churn, rebindings and rekeys are the other
		// cases' (with liveness checks this eager, a rebinding the node
		// has not seen yet ends the SA as dead, and the gateway's rekey
		// waits out its timeout).
		o.ChurnPerMin, o.RebindPerMin, o.RekeyStorm, o.Hold = 0, 0, false, 3*time.Second
	}
	rep, err := loadtest.Run(ctx, o)
	if err != nil {
		t.Fatalf("%v: %+v", err, rep)
	}
	// Churned gateways set up again: more setups than gateways.
	switch {
	case vanishes && (rep.Established != 60 || rep.Abandoned != 60):
		t.Fatalf("the fleet did not vanish: %+v", rep)
	case !vanishes && (rep.Established <= 60 || rep.Moves.Rebinds == 0 || rep.Rekeys.Done == 0 || rekeyIKE && rep.Rekeys.IKE == 0):
		t.Fatalf("the fleet did not churn, rebind and rekey: %+v", rep)
	}
	var left []SAInfo
	for end := time.Now().Add(15 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if left, err = n.SAs(ctx); err == nil && len(left) == 0 {
			break
		}
	}
	if len(left) > 0 {
		for i, sa := range left {
			if i < 5 {
				t.Logf("left: %016x %s %s from %v, %d CHILD SAs", sa.SPIr, sa.State, sa.PeerID, sa.Remote, len(sa.Children))
			}
		}
		t.Fatalf("%d SAs left on the node after the fleet left; report %+v", len(left), rep)
	}
	if err := n.persist.store.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	kept, leased := storeKeys(t, ctx, n.persist.cli)
	noSAKeys(t, kept)
	pools := len(n.shards) * spiPoolLen
	if leased["sa"] > pools || leased["spi/esp"] > pools {
		t.Errorf("reservations beyond the pools' %d", pools)
	}
	// An IKE SPI's reservation is its record keys created empty: sa/ and,
	// before store layout 5, seq/.
	wantSeq, layout := leased["sa"], n.persist.store.Health().Layout
	if layout >= 5 {
		wantSeq = 0
	}
	if leased["seq"] != wantSeq {
		t.Errorf("%d reservations keys (seq/) on the lease with %d record keys at store layout %d", leased["seq"], leased["sa"], layout)
	}
	if t.Failed() {
		t.Logf("report %+v", rep)
		t.Fatalf("left in the store: %s; on a lease: %s", formatCounts(kept), formatCounts(leased))
	}
	t.Logf("left in the store: %s; on a lease: %s", formatCounts(kept), formatCounts(leased))
}
