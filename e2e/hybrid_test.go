//go:build linux

package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// IKEPropPQ is a hybrid post-quantum proposal: X25519 in IKE_SA_INIT,
// ML-KEM-768 in an IKE_INTERMEDIATE exchange (RFC 9370, RFC 9242).
const IKEPropPQ = "aes256gcm16-prfsha256-x25519-ke1_mlkem768"

// A concentrator that prefers the hybrid proposal still serves strongSwan
// 5.9 (no IKE_INTERMEDIATE, no ML-KEM: it proposes no additional key
// exchange and gets the plain proposal), and gives our initiator (ikeload,
// the same network path) the hybrid one. strongSwan 5.9 cannot be the
// hybrid peer: only our initiator is.
func TestInteropHybridConcentrator(t *testing.T) {
	requireNetns(t)
	bin := Binary(t, "concentratord")
	loadBin := Binary(t, "ikeload")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	tp := NewTopology(t)

	dir := t.TempDir()
	cfgText := ConcentratordConfig(AuthPSK, "", "", "")
	cfgText = strings.Replace(cfgText, "proposals: ["+IKEProp+"]", "proposals: ["+IKEPropPQ+", "+IKEProp+"]", 1)
	if !strings.Contains(cfgText, IKEPropPQ) {
		t.Fatal("the hybrid proposal did not go into the configuration")
	}
	cfg := filepath.Join(dir, "concentratord.yaml")
	writeFile(t, cfg, []byte(cfgText))

	gw := NewStrongSwan(t, tp, "gw", tp.GW)
	gw.Start(GatewaySwanctlConf(AuthPSK), nil)
	conc := startConcentratord(t, ctx, tp, bin, "concentratord", cfg)

	// strongSwan 5.9: the plain proposal.
	if out, err := gw.SwanctlContext(ctx, "--initiate", "--child", "lan", "--timeout", "20"); err != nil {
		t.Fatalf("strongSwan gw initiate to concentratord: %v\n%s", err, out)
	}
	sas, err := gw.ListSAs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sa, ok := FindIKESA(sas, "conc")
	if !ok || sa.Proposal() != IKEPropSS {
		t.Fatalf("strongSwan's IKE SA: %v (want proposal %s)", sa, IKEPropSS)
	}
	rec := conc.mustWaitLog(t, ctx, 5*time.Second, "IKE_SA established", map[string]string{"peer_id": GWPSKID})
	if p, _ := rec.Attr("proposal"); strings.Contains(p, "KE1") {
		t.Errorf("concentratord negotiated %q with strongSwan 5.9", p)
	}
	if out, err := gw.SwanctlContext(ctx, "--terminate", "--ike", "conc", "--timeout", "10"); err != nil {
		t.Fatalf("strongSwan gw terminate: %v\n%s", err, out)
	}
	conc.mustWaitLog(t, ctx, 10*time.Second, "IKE_SA deleted", nil)

	// Our initiator: the hybrid proposal, ML-KEM-768 in IKE_INTERMEDIATE.
	load := tp.StartProcess(t, "ikeload", tp.GW, loadBin, "--server", ConcAddr, "--source", GWAddr,
		"--remote-id", ConcID, "--id", GWPSKID, "--psk", TestPSK, "--proposal", IKEPropPQ, "--esp", ESPProp,
		"--local-ts", GWLAN, "--remote-ts", ConcLAN, "--count", "1", "--hold", "2s", "--json", "--no-html")
	ectx, ecancel := context.WithTimeout(ctx, 30*time.Second)
	err = load.Wait(ectx)
	ecancel()
	if err != nil {
		t.Fatalf("ikeload: %v\n%s", err, tail(load.Stderr(), 2000))
	}
	sum, err := ikeloadSummary(load.Stdout())
	if err != nil {
		t.Fatal(err)
	}
	if sum["established"] != float64(1) || sum["failed"] != float64(0) {
		t.Errorf("ikeload summary: established=%v failed=%v, want 1 and 0 (%v)", sum["established"], sum["failed"], sum)
	}
	hybrid := false
	for _, r := range conc.LogRecords() {
		if p, _ := r.Attr("proposal"); r.Msg() == "IKE_SA established" && strings.Contains(p, "KE1_ML_KEM_768") {
			hybrid = true
		}
	}
	if !hybrid {
		t.Error("concentratord logged no IKE_SA established with KE1_ML_KEM_768")
	}
	if err := conc.Stop(); err != nil {
		t.Errorf("concentratord on SIGTERM: %v", err)
	}
}
