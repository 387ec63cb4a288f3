package concentrator

import (
	"errors"
	"strings"
	"testing"

	"github.com/ikefleet/ikefleet/concentrator/ike"
)

func TestPolicyConfig(t *testing.T) {
	base := nodeConfig(1, "", "")
	for _, tc := range []struct {
		yaml, field, msg string
	}{
		{"policies:\n  - {id: gw1@iot.example, remote_ts: [10.1.0.0/24]}\n  - {id: '%any', pool: 10.99.0.0/16}\n", "", ""},
		{"policies:\n  - {id: '*.branch.example', pool: 10.98.0.0/24, max_virtual_ips: 4}\n", "", ""},
		{"policies:\n  - {remote_ts: [10.1.0.0/24]}\n", "policies[0].id", "required"},
		{"policies:\n  - {id: 'CN=', remote_ts: [10.1.0.0/24]}\n", "policies[0].id", ""},
		{"policies:\n  - {id: gw1@iot.example}\n", "policies[0].remote_ts", "at least one"},
		{"policies:\n  - {id: gw1@iot.example, remote_ts: [10.1.0.0/33]}\n", "policies[0].remote_ts[0]", "not a subnet"},
		{"policies:\n  - {id: gw1@iot.example, pool: 10.99.1.0/24}\n", "policies[0].pool", "overlaps"},
		{"policies:\n  - {id: gw1@iot.example, pool: 10.99.0.0/16, max_virtual_ips: 2}\n", "policies[0].max_virtual_ips", "shares pool"},
		{"policies:\n  - {id: gw1@iot.example, remote_ts: [10.1.0.0/24], max_virtual_ips: 2}\n", "policies[0].max_virtual_ips", "needs pool"},
		{"policies:\n  - {id: gw1@iot.example, pool: 10.98.0.0/24, max_virtual_ips: 65}\n", "policies[0].max_virtual_ips", "0 (one) to 64"},
		{"policies:\n  - {id: gw1@iot.example, pool: '2001:db8::/64'}\n", "policies[0].pool", "IPv4"},
	} {
		_, err := ParseConfig([]byte(base + tc.yaml))
		if tc.field == "" {
			if err != nil {
				t.Errorf("%q: %v", tc.yaml, err)
			}
			continue
		}
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%q: error %v, want field %s (%s)", tc.yaml, err, tc.field, tc.msg)
		}
	}
	// More than one address per identity needs a node-local pool.
	_, err := ParseConfig([]byte(nodeConfig(1, "", "statestore: {mode: embedded, data_dir: /nonexistent}\n") +
		"policies:\n  - {id: '%any', pool: 10.98.0.0/24, max_virtual_ips: 2}\n"))
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "policies[0].max_virtual_ips" {
		t.Errorf("max_virtual_ips 2 with embedded etcd: %v", err)
	}
}

// The engine gets the policies in order, sharing children.pool and one
// selector registry.
func TestPolicyEngineConfig(t *testing.T) {
	cfg, err := ParseConfig([]byte(nodeConfig(1, "", "") +
		"policies:\n  - {name: a, id: gw1@iot.example, remote_ts: [10.1.0.0/24]}\n  - {id: '*@iot.example', pool: 10.99.0.0/16}\n  - {id: '%any', pool: 10.98.0.0/24}\n"))
	if err != nil {
		t.Fatal(err)
	}
	ec, err := cfg.engineConfig()
	if err != nil {
		t.Fatal(err)
	}
	if len(ec.Policies) != 3 || ec.Selectors == nil {
		t.Fatalf("policies %d, registry %v", len(ec.Policies), ec.Selectors)
	}
	if ec.Policies[0].Name != "a" || ec.Policies[1].Name != "policies[1]" || !ec.Policies[0].Exclusive {
		t.Fatalf("names %q %q", ec.Policies[0].Name, ec.Policies[1].Name)
	}
	if ec.Policies[1].Pool != ec.Pool || ec.Policies[2].Pool == ec.Pool {
		t.Fatal("pools not shared by prefix")
	}
	if got := len(clusterPools(&ec)); got != 2 {
		t.Fatalf("%d pools, want 2", got)
	}
	gw2, _ := ike.ParseIdentity("gw2@iot.example")
	other, _ := ike.ParseIdentity("host.example")
	if poolFor(&ec, gw2, nil) != ec.Pool || poolFor(&ec, other, nil) != ec.Policies[2].Pool {
		t.Fatal("poolFor does not follow the policies")
	}
}
