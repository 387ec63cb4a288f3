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
func TestFleetLeavesNoKeysBehind(t *testing.T) {
	for _, rekeyIKE := range []bool{false, true} {
		t.Run(map[bool]string{false: "child rekeys", true: "IKE rekeys"}[rekeyIKE], func(t *testing.T) {
			fleetLeaves(t, rekeyIKE)
		})
	}
}

func fleetLeaves(t *testing.T, rekeyIKE bool) {
	dir := t.TempDir()
	n, _, _ := runNode(t, nodeConfig(60, "", fmt.Sprintf("statestore:\n  mode: embedded\n  data_dir: %s/store\n  cluster_key_file: %s/cluster.key\n", dir, dir)))
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	o := loadOptions(t, n, 60)
	o.Rate, o.Hold = 100, 8*time.Second
	o.ChurnPerMin, o.RebindPerMin = 300, 300 // each gateway reconnects and rebinds about once in the hold
	o.KeepaliveInterval, o.DPDDelay = time.Second, 2*time.Second
	o.RekeyStorm, o.RekeyRate, o.RekeyIKE = true, 50, rekeyIKE
	rep, err := loadtest.Run(ctx, o)
	if err != nil {
		t.Fatalf("%v: %+v", err, rep)
	}
	// Churned gateways set up again: more setups than gateways.
	if rep.Established <= 60 || rep.Moves.Rebinds == 0 || rep.Rekeys.Done == 0 || rekeyIKE && rep.Rekeys.IKE == 0 {
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
				t.Logf("left: %+v", sa)
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
	if leased["sa"] > pools || leased["seq"] != leased["sa"] || leased["spi/esp"] > pools {
		t.Errorf("reservations beyond the pools' %d", pools)
	}
	if t.Failed() {
		t.Logf("report %+v", rep)
		t.Fatalf("left in the store: %s; on a lease: %s", formatCounts(kept), formatCounts(leased))
	}
	t.Logf("left in the store: %s; on a lease: %s", formatCounts(kept), formatCounts(leased))
}
