//go:build linux

package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestInteropKillRestart: concentratord (user-space data plane, state in
// its embedded etcd) is killed with SIGKILL while a strongSwan gateway has
// a tunnel through it, and started again. The SA comes back from the state
// store: no re-authentication (strongSwan keeps its IKE SPIs), we rekey the
// restored CHILD SA soon, and traffic and IKE carry on — in strongSwan's
// view as well as ours.
func TestInteropKillRestart(t *testing.T) {
	requireNetns(t)
	bin := Binary(t, "concentratord")
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	tp := NewTopology(t)
	c := strings.Replace(userspaceConfig(t, ESPProp), "children:\n", "children:\n  restore_rekey_window: 2s\n", 1)
	if !strings.Contains(c, "restore_rekey_window") {
		t.Fatal("config has no children section")
	}
	dir := t.TempDir()
	cfg := filepath.Join(dir, "concentratord.yaml")
	writeFile(t, cfg, []byte(c))
	gw := NewStrongSwan(t, tp, "gw", tp.GW)
	gw.Start(GatewaySwanctlConf(AuthPSK), nil)

	start := func(name string) *Process { return startConcentratord(t, ctx, tp, bin, name, cfg) }
	pingBoth := func(step string) {
		t.Helper()
		for _, p := range []struct{ ns, src, dst string }{{tp.GW, GWLANAddr, ConcLANAddr}, {tp.Conc, ConcLANAddr, GWLANAddr}} {
			if err := tp.Ping(ctx, p.ns, p.src, p.dst, 3, 56); err != nil {
				t.Fatalf("%s: %v", step, err)
			}
		}
	}
	conc := start("concentratord")
	if out, err := gw.SwanctlContext(ctx, "--initiate", "--child", "lan", "--timeout", "20"); err != nil {
		t.Fatalf("initiate: %v\n%s", err, out)
	}
	pingBoth("before the kill")
	sas, _ := gw.ListSAs(ctx)
	before, _ := FindIKESA(sas, "conc")
	in0, _ := childSPIs(t, ctx, gw)

	if err := conc.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-conc.done
	t0 := time.Now()
	conc2 := start("concentratord (restarted)")
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	r, err := conc2.WaitLog(wctx, "SAs restored", map[string]string{"count": "1"})
	if err != nil {
		t.Fatalf("restarted concentratord: %v", err)
	}
	t.Logf("restarted and restored in %v: %v", time.Since(t0).Round(time.Millisecond), r)

	// We rekey the restored CHILD SA (its outbound sequence was not
	// persisted), over the restored IKE SA.
	if _, err := conc2.WaitLog(wctx, "CHILD_SA rekeyed", map[string]string{"reason": "rekeyed by us"}); err != nil {
		t.Fatal(err)
	}
	in1, _ := waitChildChange(t, ctx, gw, in0)
	pingBoth("after the restart")

	// strongSwan never re-authenticated: same IKE SA, same SPIs.
	sas, err = gw.ListSAs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	after, ok := FindIKESA(sas, "conc")
	if !ok || after.Get("state") != "ESTABLISHED" || after.Get("initiator-spi") != before.Get("initiator-spi") ||
		after.Get("responder-spi") != before.Get("responder-spi") {
		t.Fatalf("gw: IKE SA after the restart %v, before %v", after, before)
	}
	if n := strings.Count(gw.Log(), "IKE_SA conc[1] established"); n != 1 {
		t.Errorf("gw: IKE_SA established %d times, want once (no re-authentication)", n)
	}
	// And IKE goes on: strongSwan rekeys the CHILD SA through the restored SA.
	if out, err := gw.SwanctlContext(ctx, "--rekey", "--child", "lan"); err != nil {
		t.Fatalf("rekey child after the restart: %v\n%s", err, out)
	}
	waitChildChange(t, ctx, gw, in1)
	pingBoth("after strongSwan's rekey")
	if err := conc2.Stop(); err != nil {
		t.Errorf("concentratord on SIGTERM: %v", err)
	}
}
