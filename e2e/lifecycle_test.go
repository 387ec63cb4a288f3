//go:build linux

package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// lifecycleConfig is ConcentratordConfig with short timers: CHILD rekeys
// by us 15-20 s after creation, liveness checks after 2 s of silence and
// quick retransmissions, so a vanished gateway is noticed within seconds.
func lifecycleConfig(auth Auth, certPath, keyPath, caPath string) string {
	c := ConcentratordConfig(auth, certPath, keyPath, caPath)
	c = strings.Replace(c, "  force_encap: true\n", "  force_encap: true\n  dpd_delay: 2s\n  retransmit_timeout: 500ms\n  retransmit_tries: 2\n", 1)
	c = strings.Replace(c, "children:\n", "children:\n  rekey_after: 20s\n  rekey_window: 5s\n  rekey_overlap: 1s\n", 1)
	return c
}

func childSPIs(t *testing.T, ctx context.Context, gw *StrongSwan) (in, out string) {
	t.Helper()
	sas, err := gw.ListSAs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sa, ok := FindIKESA(sas, "conc")
	if !ok {
		t.Fatalf("gw: no IKE_SA conc: %v", sas)
	}
	var installed []ChildSA
	for _, c := range sa.Children {
		if c.Get("state") == "INSTALLED" {
			installed = append(installed, c)
		}
	}
	if len(installed) != 1 {
		t.Fatalf("gw: %d INSTALLED CHILD_SAs, want 1: %v", len(installed), sa)
	}
	return installed[0].Get("spi-in"), installed[0].Get("spi-out")
}

// waitChildChange waits until strongSwan shows one INSTALLED CHILD_SA whose
// SPIs differ from before.
func waitChildChange(t *testing.T, ctx context.Context, gw *StrongSwan, oldIn string) (string, string) {
	t.Helper()
	var in, out string
	_, err := gw.WaitSAs(ctx, func(sas []IKESA) bool {
		sa, ok := FindIKESA(sas, "conc")
		if !ok {
			return false
		}
		n := 0
		for _, c := range sa.Children {
			if c.Get("state") == "INSTALLED" {
				n++
				in, out = c.Get("spi-in"), c.Get("spi-out")
			}
		}
		return n == 1 && in != oldIn
	})
	if err != nil {
		t.Fatalf("gw: CHILD_SA was not replaced: %v", err)
	}
	return in, out
}

// TestInteropLifecycle walks one gateway's SA through its life against a
// strongSwan gateway, checking strongSwan's view at each step: a CHILD
// rekey and an IKE rekey started by strongSwan, a CHILD rekey started by
// us on schedule, a CHILD delete by strongSwan, and a gateway that vanishes
// (SIGKILL) found dead by our liveness checks.
func TestInteropLifecycle(t *testing.T) {
	requireNetns(t)
	bin := Binary(t, "concentratord")
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	tp := NewTopology(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "concentratord.yaml")
	writeFile(t, cfg, []byte(lifecycleConfig(AuthPSK, "", "", "")))
	gw := NewStrongSwan(t, tp, "gw", tp.GW)
	gw.Start(GatewaySwanctlConf(AuthPSK), nil)
	conc := startConcentratord(t, ctx, tp, bin, "concentratord", cfg)
	wait := func(msg string, attrs map[string]string, d time.Duration) LogRecord {
		t.Helper()
		return conc.mustWaitLog(t, ctx, d, msg, attrs)
	}
	if out, err := gw.SwanctlContext(ctx, "--initiate", "--child", "lan", "--timeout", "20"); err != nil {
		t.Fatalf("initiate: %v\n%s", err, out)
	}
	wait("CHILD_SA installed", map[string]string{"peer_id": GWPSKID}, 5*time.Second)
	in0, _ := childSPIs(t, ctx, gw)

	// 1. strongSwan rekeys the CHILD SA.
	if out, err := gw.SwanctlContext(ctx, "--rekey", "--child", "lan"); err != nil {
		t.Fatalf("rekey child: %v\n%s", err, out)
	}
	in1, out1 := waitChildChange(t, ctx, gw, in0)
	r := wait("CHILD_SA rekeyed", map[string]string{"reason": "rekeyed by peer"}, 5*time.Second)
	if got, _ := r.Attr("spi_in"); got != out1 {
		t.Errorf("our new inbound SPI %s, strongSwan's outbound %s", got, out1)
	}

	// 2. strongSwan rekeys the IKE SA: new IKE SPIs, the CHILD SA carries on.
	sas, _ := gw.ListSAs(ctx)
	ike0, _ := FindIKESA(sas, "conc")
	if out, err := gw.SwanctlContext(ctx, "--rekey", "--ike", "conc"); err != nil {
		t.Fatalf("rekey ike: %v\n%s", err, out)
	}
	wait("IKE_SA rekeyed", nil, 5*time.Second)
	_, err := gw.WaitSAs(ctx, func(sas []IKESA) bool {
		sa, ok := FindIKESA(sas, "conc")
		return ok && len(sas) == 1 && sa.Get("initiator-spi") != ike0.Get("initiator-spi") && sa.Get("state") == "ESTABLISHED"
	})
	if err != nil {
		t.Fatalf("gw: IKE_SA not rekeyed: %v", err)
	}
	if in, _ := childSPIs(t, ctx, gw); in != in1 {
		t.Errorf("gw: CHILD_SA changed across the IKE rekey: %s -> %s", in1, in)
	}

	// 3. We rekey the CHILD SA on our schedule (15-20 s after its creation).
	r = wait("CHILD_SA rekeyed", map[string]string{"reason": "rekeyed by us"}, 30*time.Second)
	in2, out2 := waitChildChange(t, ctx, gw, in1)
	if got, _ := r.Attr("spi_in"); got != out2 {
		t.Errorf("our rekeyed inbound SPI %s, strongSwan's outbound %s", got, out2)
	}
	wait("CHILD_SA deleted", map[string]string{"reason": "deleted by us"}, 5*time.Second)
	_ = in2

	// 4. strongSwan deletes the CHILD SA; the IKE SA stays.
	if out, err := gw.SwanctlContext(ctx, "--terminate", "--child", "lan"); err != nil {
		t.Fatalf("terminate child: %v\n%s", err, out)
	}
	wait("CHILD_SA deleted", map[string]string{"reason": "deleted by peer"}, 5*time.Second)

	// 5. The gateway vanishes: our liveness checks find it dead.
	if err := gw.Kill(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	wait("IKE_SA deleted", map[string]string{"reason": "dead peer: no answer to liveness checks", "peer_id": GWPSKID}, 20*time.Second)
	t.Logf("vanished gateway found dead after %v", time.Since(start).Round(100*time.Millisecond))
	if err := conc.Stop(); err != nil {
		t.Errorf("concentratord on SIGTERM: %v", err)
	}
}

// TestInteropFragmentedAuth: certificates too large for one datagram make
// both IKE_AUTH messages fragmented (RFC 7383), in each direction; checked
// in strongSwan's log as well as by the tunnel coming up.
func TestInteropFragmentedAuth(t *testing.T) {
	requireNetns(t)
	bin := Binary(t, "concentratord")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	tp := NewTopology(t)
	dir := t.TempDir()
	var sans []string
	for i := 0; i < 60; i++ {
		sans = append(sans, fmt.Sprintf("alt%02d.fragmentation-test.iot.example", i))
	}
	pki := NewPKI(t)
	conc := pki.Issue(t, ConcID, sans...)
	certPath, keyPath, caPath := filepath.Join(dir, "conc.crt"), filepath.Join(dir, "conc.key"), filepath.Join(dir, "ca.crt")
	writeFile(t, certPath, conc.CertPEM)
	writeFile(t, keyPath, conc.KeyPEM)
	writeFile(t, caPath, pki.CAPEM)
	cfg := filepath.Join(dir, "concentratord.yaml")
	writeFile(t, cfg, []byte(ConcentratordConfig(AuthECDSA, certPath, keyPath, caPath)))
	gw := NewStrongSwan(t, tp, "gw", tp.GW)
	gw.Start(GatewaySwanctlConf(AuthECDSA), pki.SwanctlFiles("gw", pki.Issue(t, GWCertID, sans...)))
	p := startConcentratord(t, ctx, tp, bin, "concentratord", cfg)
	if len(conc.Cert.Raw) < 1500 {
		t.Fatalf("test certificate is only %d bytes: it would not need fragmentation", len(conc.Cert.Raw))
	}
	if out, err := gw.SwanctlContext(ctx, "--initiate", "--child", "lan", "--timeout", "20"); err != nil {
		t.Fatalf("initiate: %v\n%s", err, out)
	}
	sas, err := gw.ListSAs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkGatewaySA(t, sas, GWCertID)
	log := gw.Log()
	for _, want := range []string{"splitting IKE message", "reassembled fragmented IKE message"} {
		if !strings.Contains(log, want) {
			t.Errorf("strongSwan's log has no %q: IKE_AUTH was not fragmented in both directions", want)
		}
	}
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	if _, err := p.WaitLog(wctx, "CHILD_SA installed", map[string]string{"peer_id": GWCertID}); err != nil {
		t.Error(err)
	}
}

// Kill ends charon with SIGKILL: a gateway that vanishes without a word.
func (s *StrongSwan) Kill() error {
	if s.proc == nil {
		return nil
	}
	return syscall.Kill(s.proc.PID(), syscall.SIGKILL)
}

// TestInteropMOBIKE: the strongSwan gateway moves to a second address (its
// NAT maps a new port); it announces the move with UPDATE_SA_ADDRESSES and
// the SA survives with the same SPIs, in strongSwan's view and ours.
func TestInteropMOBIKE(t *testing.T) {
	requireNetns(t)
	bin := Binary(t, "concentratord")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	tp := NewTopology(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "concentratord.yaml")
	writeFile(t, cfg, []byte(ConcentratordConfig(AuthPSK, "", "", "")))
	conf := GatewaySwanctlConf(AuthPSK)
	conf = strings.Replace(conf, "mobike = no", "mobike = yes", 1)
	conf = strings.Replace(conf, "local_addrs = "+GWAddr, "local_addrs = "+GWAddr+", 10.10.1.3", 1)
	if err := tp.Sysctl(ctx, tp.GW, "net.ipv4.conf.all.promote_secondaries=1", "net.ipv4.conf.gw0.promote_secondaries=1"); err != nil {
		t.Fatal(err)
	}
	gw := NewStrongSwan(t, tp, "gw", tp.GW)
	gw.Start(conf, nil)
	conc := startConcentratord(t, ctx, tp, bin, "concentratord", cfg)
	if out, err := gw.SwanctlContext(ctx, "--initiate", "--child", "lan", "--timeout", "20"); err != nil {
		t.Fatalf("initiate: %v\n%s", err, out)
	}
	sas, _ := gw.ListSAs(ctx)
	before, ok := FindIKESA(sas, "conc")
	if !ok {
		t.Fatalf("gw: no SA: %v", sas)
	}
	in0, out0 := childSPIs(t, ctx, gw)

	// Move: add the second address, remove the first.
	for _, argv := range [][]string{
		{"ip", "addr", "add", "10.10.1.3/24", "dev", "gw0"},
		{"ip", "addr", "del", GWAddr + "/24", "dev", "gw0"},
	} {
		if out, err := tp.Exec(ctx, tp.GW, argv...); err != nil {
			t.Fatalf("%v: %v\n%s", argv, err, out)
		}
	}
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	defer wcancel()
	sas, err := gw.WaitSAs(wctx, func(sas []IKESA) bool {
		sa, ok := FindIKESA(sas, "conc")
		return ok && sa.Get("local-host") == "10.10.1.3" && sa.Get("state") == "ESTABLISHED"
	})
	if err != nil {
		t.Fatalf("gw: SA did not move to 10.10.1.3: %v", err)
	}
	after, _ := FindIKESA(sas, "conc")
	if after.Get("initiator-spi") != before.Get("initiator-spi") || after.Get("responder-spi") != before.Get("responder-spi") {
		t.Errorf("gw: IKE SPIs changed in the move: %s/%s -> %s/%s", before.Get("initiator-spi"), before.Get("responder-spi"),
			after.Get("initiator-spi"), after.Get("responder-spi"))
	}
	// strongSwan's user-space ESP (kernel-libipsec) cannot move an
	// installed SA, so strongSwan rekeys the CHILD SA after the move; with
	// kernel ESP it keeps the SPIs. Either way one CHILD SA is installed.
	if in, out := childSPIs(t, ctx, gw); in != in0 || out != out0 {
		if !strings.Contains(gw.Log(), "requesting address change using MOBIKE") {
			t.Errorf("gw: CHILD SPIs changed without a MOBIKE address change: %s/%s -> %s/%s", in0, out0, in, out)
		}
		t.Logf("gw rekeyed its CHILD SA after the move (libipsec cannot update SAs): %s/%s -> %s/%s", in0, out0, in, out)
	}
	r, err := conc.WaitLog(wctx, "IKE_SA addresses updated", map[string]string{"peer_id": GWPSKID})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("concentratord: %v", r)
}
