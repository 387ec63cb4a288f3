package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A strongSwan gateway authenticates with EAP through concentratord to a
// FreeRADIUS server (pass-through: the method runs between gateway and
// server), once with EAP-MSCHAPv2 and once with EAP-TLS; a wrong password
// is refused and leaves nothing behind.
func TestInteropEAPRADIUS(t *testing.T) {
	requireNetns(t)
	requireFreeRADIUS(t)
	for _, auth := range []Auth{AuthEAPMSCHAPv2, AuthEAPTLS} {
		t.Run(auth.String(), func(t *testing.T) { testEAP(t, auth, false) })
	}
	t.Run("wrong-password", func(t *testing.T) { testEAP(t, AuthEAPMSCHAPv2, true) })
}

func testEAP(t *testing.T, auth Auth, wrongPassword bool) {
	bin := Binary(t, "concentratord")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	tp := NewTopology(t)
	dir := t.TempDir()
	pki := NewPKI(t)
	path := func(name string) string { return filepath.Join(dir, name) }
	conc, rad := pki.Issue(t, ConcID), pki.Issue(t, RADIUSID, ConcID)
	writeFile(t, path("conc.crt"), conc.CertPEM)
	writeFile(t, path("conc.key"), conc.KeyPEM)
	writeFile(t, path("ca.crt"), pki.CAPEM)
	writeFile(t, path("radius.crt"), rad.CertPEM)
	writeFile(t, path("radius.key"), rad.KeyPEM)

	// FreeRADIUS beside the concentrator (its namespace's loopback).
	StartFreeRADIUS(t, tp, tp.Conc, []RADIUSUser{{Name: GWEAPID, Password: GWEAPPassword}},
		path("radius.crt"), path("radius.key"), path("ca.crt"))

	cfg := ConcentratordConfig(AuthECDSA, path("conc.crt"), path("conc.key"), path("ca.crt"))
	eap := fmt.Sprintf("  eap:\n    radius:\n      servers:\n        - address: 127.0.0.1:1812\n          secret: %q\n      timeout: 1s\nchildren:\n", RADIUSSecret)
	cfg = strings.Replace(cfg, "children:\n", eap, 1)
	writeFile(t, path("concentratord.yaml"), []byte(cfg))

	gwID := GWEAPID
	files := map[string][]byte{"x509ca/ca.crt": pki.CAPEM}
	if auth == AuthEAPTLS {
		gwID = GWCertID
		files = pki.SwanctlFiles("gw", pki.Issue(t, GWCertID))
	}
	gw := NewStrongSwan(t, tp, "gw", tp.GW)
	gw.Plugins = DefaultCharonPlugins + " md5 eap-identity eap-mschapv2 eap-tls"
	conf := GatewaySwanctlConf(auth)
	if wrongPassword {
		conf = strings.Replace(conf, GWEAPPassword, "not-the-password", 1)
	}
	gw.Start(conf, files)

	node := tp.StartProcess(t, "concentratord", tp.Conc, bin, "--config", path("concentratord.yaml"))
	lctx, lcancel := context.WithTimeout(ctx, 10*time.Second)
	_, err := node.WaitLog(lctx, "listening", nil)
	lcancel()
	if err != nil {
		t.Fatal(err)
	}

	t0 := time.Now()
	out, err := gw.SwanctlContext(ctx, "--initiate", "--child", "lan", "--timeout", "20")
	took := time.Since(t0).Round(time.Millisecond)
	if wrongPassword {
		if err == nil {
			t.Fatalf("gw established with a wrong EAP password:\n%s", out)
		}
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := node.WaitLog(wctx, "IKE_SA failed", map[string]string{"peer_id": GWEAPID})
		wcancel()
		if err != nil {
			t.Error(err)
		}
		if code, body, err := HTTPGet(tp.Conc, MetricsAddr, "/metrics"); err != nil || code != 200 {
			t.Errorf("GET /metrics: %d %v", code, err)
		} else {
			for _, l := range []string{`ikefleet_eap_radius_answers_total{result="reject"} 1`, `ikefleet_ike_sas{state="established"} 0`, `ikefleet_half_open_sas 0`} {
				if !MetricLine(body, l) {
					t.Errorf("/metrics has no %q", l)
				}
			}
		}
		return
	}
	if err != nil {
		t.Fatalf("strongSwan gw (%s) initiate to concentratord: %v\n%s", auth, err, out)
	}
	t.Logf("eap: method=%s established-in=%v", auth, took)
	sas, err := gw.ListSAs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkGatewaySA(t, sas, gwID)
	// strongSwan's log names the method it ran with the server.
	method := map[Auth]string{AuthEAPMSCHAPv2: "EAP_MSCHAPV2", AuthEAPTLS: "EAP_TLS"}[auth]
	if !strings.Contains(gw.Log(), "EAP method "+method+" succeeded, MSK established") {
		t.Errorf("gw log does not show %s succeeding with an MSK", method)
	}
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	for _, msg := range []string{"IKE_SA established", "CHILD_SA installed"} {
		if _, err := node.WaitLog(wctx, msg, map[string]string{"peer_id": gwID}); err != nil {
			t.Error(err)
		}
	}
	wcancel()
	if code, body, err := HTTPGet(tp.Conc, MetricsAddr, "/metrics"); err != nil || code != 200 {
		t.Errorf("GET /metrics: %d %v", code, err)
	} else {
		for _, l := range []string{`ikefleet_eap_radius_answers_total{result="accept"} 1`, `ikefleet_ike_sas{state="established"} 1`, "ikefleet_child_sas 1"} {
			if !MetricLine(body, l) {
				t.Errorf("/metrics has no %q", l)
			}
		}
	}
	if out, err := gw.SwanctlContext(ctx, "--terminate", "--ike", "conc", "--timeout", "10"); err != nil {
		t.Errorf("strongSwan gw terminate: %v\n%s", err, out)
	}
	if err := node.Stop(); err != nil {
		t.Errorf("concentratord on SIGTERM: %v", err)
	}
}
