//go:build linux

package e2e

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// Contract with concentratord. Started as `concentratord --config FILE`
// (FILE from ConcentratordConfig) inside the conc namespace, it writes slog
// JSON lines to stdout:
//
//	{"msg":"listening", ...}                                        once its sockets are bound (within 10 s)
//	{"msg":"IKE_SA established", "peer_id":"gw1@iot.example", ...}  (gw1.iot.example with certificates)
//	{"msg":"CHILD_SA installed", "peer_id":"gw1@iot.example", ...}
//	{"msg":"IKE_SA deleted", ...}                                   within 10 s of the peer's Delete
//
// peer_id may also sit inside a slog group. It claims NAT in its NAT-D
// payloads (ike.force_encap), and exits with status 0 within 5 s of SIGTERM.

func TestInteropStrongSwanInitiatorPSK(t *testing.T) {
	testStrongSwanInitiator(t, AuthPSK)
}

func TestInteropStrongSwanInitiatorECDSA(t *testing.T) {
	testStrongSwanInitiator(t, AuthECDSA)
}

// strongSwan authenticates gw1 by its raw public key and the concentrator
// by the concentrator's (RFC 7670; no certificates, no CA).
func TestInteropStrongSwanInitiatorRawKey(t *testing.T) {
	testStrongSwanInitiator(t, AuthRawKey)
}

// testStrongSwanInitiator: strongSwan gw1 initiates through the NAT to
// concentratord (memory data plane), both sides report the tunnel, and the
// gateway's Delete is processed.
func testStrongSwanInitiator(t *testing.T, auth Auth) {
	requireNetns(t)
	bin := Binary(t, "concentratord")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	tp := NewTopology(t)

	dir := t.TempDir()
	var gwFiles map[string][]byte
	certPath, keyPath, caPath := filepath.Join(dir, "conc.crt"), filepath.Join(dir, "conc.key"), filepath.Join(dir, "ca.crt")
	gwID := GWPSKID
	if auth == AuthECDSA {
		gwID = GWCertID
		pki := NewPKI(t)
		concCred := pki.Issue(t, ConcID)
		writeFile(t, certPath, concCred.CertPEM)
		writeFile(t, keyPath, concCred.KeyPEM)
		writeFile(t, caPath, pki.CAPEM)
		gwFiles = pki.SwanctlFiles("gw", pki.Issue(t, GWCertID))
	}
	if auth == AuthRawKey {
		// Only the key pairs of the certificates are used.
		gwID = GWCertID
		pki := NewPKI(t)
		concCred, gwCred := pki.Issue(t, ConcID), pki.Issue(t, GWCertID)
		writeFile(t, keyPath, concCred.KeyPEM)
		writeFile(t, caPath, PublicKeyPEM(gwCred))
		gwFiles = RawKeySwanctlFiles(gwCred, PublicKeyPEM(concCred))
	}
	cfg := filepath.Join(dir, "concentratord.yaml")
	writeFile(t, cfg, []byte(ConcentratordConfig(auth, certPath, keyPath, caPath)))

	gw := NewStrongSwan(t, tp, "gw", tp.GW)
	gw.Start(GatewaySwanctlConf(auth), gwFiles)

	conc := tp.StartProcess(t, "concentratord", tp.Conc, bin, "--config", cfg)
	lctx, lcancel := context.WithTimeout(ctx, 10*time.Second)
	_, err := conc.WaitLog(lctx, "listening", nil)
	lcancel()
	if err != nil {
		t.Fatal(err)
	}

	t0 := time.Now()
	out, err := gw.SwanctlContext(ctx, "--initiate", "--child", "lan", "--timeout", "20")
	if err != nil {
		t.Fatalf("strongSwan gw initiate to concentratord: %v\n%s", err, out)
	}
	t.Logf("strongSwan --initiate to concentratord: %v", time.Since(t0).Round(time.Millisecond))

	sas, err := gw.ListSAs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkGatewaySA(t, sas, gwID)
	if auth == AuthRawKey {
		// strongSwan 5.9 sends no CERT(15) of its own (the concentrator
		// uses the configured key); the concentrator answers a peer that
		// authenticated by raw key with its key in CERT(15).
		sawCert := false
		for _, l := range strings.Split(gw.Log(), "\n") {
			if strings.Contains(l, "IKE_AUTH") && strings.Contains(l, "[") {
				t.Logf("gw: %s", l)
				sawCert = sawCert || strings.Contains(l, "parsed IKE_AUTH response") && strings.Contains(l, " CERT ")
			}
		}
		if !sawCert {
			t.Error("gw: the IKE_AUTH response carried no CERT payload (want CERT(15) with the concentrator's key)")
		}
	}
	if sa, ok := FindIKESA(sas, "conc"); ok && sa.Get("nat-remote") != "yes" {
		// ike.force_encap: the concentrator claims NAT in its NAT-D payloads.
		t.Errorf("gw: nat-remote = %q, want yes (concentratord forces UDP encapsulation)", sa.Get("nat-remote"))
	}

	peer := map[string]string{"peer_id": gwID}
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	for _, msg := range []string{"IKE_SA established", "CHILD_SA installed"} {
		if _, err := conc.WaitLog(wctx, msg, peer); err != nil {
			t.Error(err)
		}
	}
	wcancel()
	// The node's own account (metrics.listen, default): one handshake, one
	// established IKE SA with its CHILD SA, ready.
	if code, body, err := HTTPGet(tp.Conc, MetricsAddr, "/metrics"); err != nil || code != 200 {
		t.Errorf("GET /metrics: %d %v", code, err)
	} else {
		for _, l := range []string{"ikefleet_handshakes_total 1", `ikefleet_ike_sas{state="established"} 1`, "ikefleet_child_sas 1"} {
			if !MetricLine(body, l) {
				t.Errorf("/metrics has no %q", l)
			}
		}
	}
	if code, body, err := HTTPGet(tp.Conc, MetricsAddr, "/readyz"); err != nil || code != 200 {
		t.Errorf("GET /readyz: %d %q %v", code, body, err)
	}

	if out, err := gw.SwanctlContext(ctx, "--terminate", "--ike", "conc", "--timeout", "10"); err != nil {
		t.Errorf("strongSwan gw terminate: %v\n%s", err, out)
	}
	dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
	_, err = conc.WaitLog(dctx, "IKE_SA deleted", nil)
	dcancel()
	if err != nil {
		t.Error(err)
	}
	if sas, err := gw.ListSAs(ctx); err != nil || len(sas) != 0 {
		t.Errorf("gw: SAs left after terminate: %v (%v)", sas, err)
	}
	if err := conc.Stop(); err != nil {
		t.Errorf("concentratord on SIGTERM: %v (want exit status 0 within %v)", err, StopGrace)
	}
}

// Contract with ikeload (the flags below): it brings up --count IKE_SAs, each
// with one CHILD_SA, from --source to --server, holds them for --hold, then
// deletes them, prints one JSON summary object on stdout (--json) with at
// least the numeric fields "established" and "failed", and exits 0 if all
// were established. Logs go to stderr.
func TestInteropIkeloadToStrongSwanResponder(t *testing.T) {
	for _, auth := range []Auth{AuthPSK, AuthECDSA} {
		t.Run(auth.String(), func(t *testing.T) { testIkeloadToStrongSwan(t, auth) })
	}
}

func testIkeloadToStrongSwan(t *testing.T, auth Auth) {
	requireNetns(t)
	bin := Binary(t, "ikeload")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	tp := NewTopology(t)

	args := []string{"--server", ConcAddr, "--source", GWAddr, "--remote-id", ConcID,
		"--proposal", IKEProp, "--esp", ESPProp, "--local-ts", GWLAN, "--remote-ts", ConcLAN,
		"--count", "1", "--hold", "5s", "--json", "--no-html"}
	gwID := GWPSKID
	var concFiles map[string][]byte
	if auth == AuthECDSA {
		gwID = GWCertID
		pki := NewPKI(t)
		concFiles = pki.SwanctlFiles("conc", pki.Issue(t, ConcID))
		gwCred := pki.Issue(t, GWCertID)
		dir := t.TempDir()
		certPath, keyPath, caPath := filepath.Join(dir, "gw1.crt"), filepath.Join(dir, "gw1.key"), filepath.Join(dir, "ca.crt")
		writeFile(t, certPath, gwCred.CertPEM)
		writeFile(t, keyPath, gwCred.KeyPEM)
		writeFile(t, caPath, pki.CAPEM)
		args = append(args, "--id", gwID, "--cert", certPath, "--key", keyPath, "--ca", caPath)
	} else {
		args = append(args, "--id", gwID, "--psk", TestPSK)
	}

	conc := NewStrongSwan(t, tp, "conc", tp.Conc)
	conc.Start(ConcSwanctlConf(auth), concFiles)

	load := tp.StartProcess(t, "ikeload", tp.GW, append([]string{bin}, args...)...)

	// While ikeload holds the SA: strongSwan's view.
	hctx, hcancel := context.WithTimeout(ctx, 5*time.Second)
	sas, err := conc.WaitSAs(hctx, func(sas []IKESA) bool {
		sa, ok := FindIKESA(sas, "gw")
		c, _ := sa.Child("lan")
		return ok && c.Get("state") == "INSTALLED"
	})
	hcancel()
	if err != nil {
		t.Fatalf("strongSwan responder never had an ESTABLISHED IKE_SA with CHILD_SA INSTALLED: %v (ikeload exited: %v)",
			err, load.Exited())
	}
	sa, _ := FindIKESA(sas, "gw")
	for k, want := range map[string]string{
		"remote-id":   gwID,
		"local-id":    ConcID,
		"remote-host": NATPublicAddr,
		"nat-remote":  "yes",
		"initiator":   "",
	} {
		if got := sa.Get(k); got != want {
			t.Errorf("conc: IKE_SA %s = %q, want %q", k, got, want)
		}
	}
	if got := sa.Proposal(); got != IKEPropSS {
		t.Errorf("conc: IKE proposal %s, want %s", got, IKEPropSS)
	}
	c, _ := sa.Child("lan")
	for k, want := range map[string]string{"protocol": "ESP", "mode": "TUNNEL", "encap": "yes",
		"encr-alg": "AES_GCM_16", "encr-keysize": "256"} {
		if got := c.Get(k); got != want {
			t.Errorf("conc: CHILD_SA %s = %q, want %q", k, got, want)
		}
	}
	if !slices.Equal(c.LocalTS, []string{ConcLAN}) || !slices.Equal(c.RemoteTS, []string{GWLAN}) {
		t.Errorf("conc: CHILD_SA TS %v === %v, want %s === %s", c.LocalTS, c.RemoteTS, ConcLAN, GWLAN)
	}
	if t.Failed() {
		t.Logf("conc SA: %v", sa)
	}

	// After the hold: ikeload deletes, reports and exits 0.
	ectx, ecancel := context.WithTimeout(ctx, 30*time.Second)
	err = load.Wait(ectx)
	ecancel()
	if err != nil {
		t.Fatalf("ikeload: %v", err)
	}
	sum, err := ikeloadSummary(load.Stdout())
	if err != nil {
		t.Fatal(err)
	}
	if sum["established"] != float64(1) || sum["failed"] != float64(0) {
		t.Errorf("ikeload summary: established=%v failed=%v, want 1 and 0 (%v)", sum["established"], sum["failed"], sum)
	}
	gctx, gcancel := context.WithTimeout(ctx, 5*time.Second)
	if _, err := conc.WaitSAs(gctx, func(sas []IKESA) bool { return len(sas) == 0 }); err != nil {
		t.Errorf("ikeload exited but did not delete its IKE_SA: %v", err)
	}
	gcancel()
}
