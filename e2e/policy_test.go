//go:build linux

package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestPolicySelectorsTaken: per-identity policies. gw1 holds its LAN
// (GWLAN) under its own policy; gw2, authenticated under the catch-all
// policy that allows all of 10.20.0.0/16, proposes gw1's LAN as its own
// and gets TS_UNACCEPTABLE, while gw1's tunnel carries pings both ways
// before, during and after. gw2 then gets its own LAN.
func TestPolicySelectorsTaken(t *testing.T) {
	requireNetns(t)
	bin := Binary(t, "concentratord")
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	tp := NewTopology(t)
	gw2NS, gw2Addr := tp.AddGateway(t, "gw2", 2)

	const gw2PSK = "gw2-policy-secret-0123456789"
	c := userspaceConfig(t, ESPProp)
	c = strings.Replace(c, "children:\n", fmt.Sprintf("    - id: %s\n      secret: %q\nchildren:\n", gw2ID, gw2PSK), 1)
	c += fmt.Sprintf("policies:\n  - {name: gw1, id: %s, remote_ts: [%s]}\n  - {name: fleet, id: '*@iot.example', remote_ts: [10.20.0.0/16]}\n", GWPSKID, GWLAN)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "concentratord.yaml")
	writeFile(t, cfg, []byte(c))
	conc := startConcentratord(t, ctx, tp, bin, "concentratord", cfg)
	conc.mustWaitLog(t, ctx, 10*time.Second, "listening", map[string]string{"dataplane": "userspace"})

	gw1 := NewStrongSwan(t, tp, "gw1", tp.GW)
	gw1.Start(GatewaySwanctlConf(AuthPSK), nil)
	if out, err := gw1.SwanctlContext(ctx, "--initiate", "--child", "lan", "--timeout", "20"); err != nil {
		t.Fatalf("gw1: initiate: %v\n%s", err, out)
	}
	pingGW1 := func(step string) {
		t.Helper()
		for _, p := range []struct{ ns, src, dst string }{{tp.GW, GWLANAddr, ConcLANAddr}, {tp.Conc, ConcLANAddr, GWLANAddr}} {
			if err := tp.Ping(ctx, p.ns, p.src, p.dst, 2, 56); err != nil {
				t.Fatalf("gw1's tunnel %s: %v", step, err)
			}
		}
	}
	pingGW1("before gw2")

	// gw2 claims gw1's LAN while gw1's pings keep going.
	stop := make(chan struct{})
	pingErr := make(chan error, 1)
	go func() {
		defer close(pingErr)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := tp.Ping(ctx, tp.Conc, ConcLANAddr, GWLANAddr, 1, 56); err != nil {
				pingErr <- err
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()
	gw2 := NewStrongSwan(t, tp, "gw2", gw2NS)
	thief := strings.ReplaceAll(gw2Conf(gw2Addr, gw2PSK), "local_ts = "+gw2LAN, "local_ts = "+GWLAN)
	if !strings.Contains(thief, "local_ts = "+GWLAN) {
		t.Fatal("gw2's configuration has no local_ts to replace")
	}
	gw2.Start(thief, nil)
	out, err := gw2.SwanctlContext(ctx, "--initiate", "--child", "lan", "--timeout", "20")
	if err == nil {
		t.Fatalf("gw2 got a CHILD SA for gw1's LAN:\n%s", out)
	}
	if !strings.Contains(out, "TS_UNACCEPTABLE") {
		t.Errorf("gw2's initiate failed without TS_UNACCEPTABLE:\n%s", out)
	}
	time.Sleep(time.Second) // a few more of gw1's pings after the refusal
	close(stop)
	if err := <-pingErr; err != nil {
		t.Fatalf("gw1's tunnel while gw2 claimed its LAN: %v", err)
	}
	pingGW1("after gw2 was refused")
	m := scrape(t, tp, "after the refusal", "ikefleet_selectors_refused_total", "ikefleet_ike_sas", "ikefleet_child_sas")
	if got := sample(m, "ikefleet_selectors_refused_total"); got != 1 {
		t.Errorf("ikefleet_selectors_refused_total = %v, want 1", got)
	}
	route, err := tp.Exec(ctx, tp.Conc, "ip", "-o", "route", "show", GWLAN)
	if err != nil || !strings.Contains(route, "dev "+userspaceTUN) {
		t.Errorf("route to gw1's LAN after the refusal: %q %v", route, err)
	}

	// With its own LAN gw2 gets in, and gw1 still works.
	reloadSwanctl(t, gw2, gw2Conf(gw2Addr, gw2PSK))
	if out, err := gw2.SwanctlContext(ctx, "--initiate", "--child", "lan", "--timeout", "20"); err != nil {
		t.Fatalf("gw2 with its own LAN: %v\n%s", err, out)
	}
	pingGW1("with gw2 up on its own LAN")
	if err := tp.Ping(ctx, gw2NS, "10.20.2.1", ConcLANAddr, 2, 56); err != nil {
		t.Fatalf("gw2's own tunnel: %v", err)
	}
}
