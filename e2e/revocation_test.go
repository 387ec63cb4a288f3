//go:build linux

package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestInteropRevocation: strongSwan gateways with certificates from an
// intermediate CA (sent by strongSwan in CERT payloads after the leaf)
// authenticate to concentratord, which fetches CRLs from the certificates'
// distribution points and asks the OCSP responder of their AIA, both served
// from the NAT namespace by a Go CA (x/crypto/ocsp):
//
//	gw1: good (CRL DP and OCSP)                   → established
//	gw2: revoked, CRL DP only                     → AUTHENTICATION_FAILED
//	gw3: revoked, OCSP only                       → AUTHENTICATION_FAILED
//	gw4: OCSP responder down, fail_open false     → AUTHENTICATION_FAILED
//	     the same after a reload with fail_open true → established, warning, metric
//
// The first IKE_AUTH of each gateway is parked while the node fetches; the
// gateway's retransmission is answered.
func TestInteropRevocation(t *testing.T) {
	requireNetns(t)
	bin := Binary(t, "concentratord")
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	tp := NewTopology(t)
	dir := t.TempDir()

	root := NewPKI(t)
	concCred := root.Issue(t, ConcID) // no revocation URLs: strongSwan checks nothing
	addr := net.JoinHostPort(NATPublicAddr, "8080")
	inter := root.Intermediate(t, "ikefleet e2e intermediate") // without URLs yet: set below
	rs := StartRevocationServer(t, tp, tp.NAT, addr, map[string]*PKI{"root": root, "inter": inter})
	// The intermediate's own status comes from the root's CRL (and OCSP).
	root.CRLURL, root.OCSPURL = rs.CRLURL("root"), rs.OCSPURL("root")
	inter = root.Intermediate(t, "ikefleet e2e intermediate")
	rs.cas["inter"] = inter

	type gwCase struct {
		id        string
		crl, ocsp string
		revoke    bool
	}
	down := "http://" + net.JoinHostPort(NATPublicAddr, "8081") + "/ocsp/inter" // nothing listens
	cases := []gwCase{
		{id: "gw1.iot.example", crl: rs.CRLURL("inter"), ocsp: rs.OCSPURL("inter")},
		{id: "gw2.iot.example", crl: rs.CRLURL("inter"), revoke: true},
		{id: "gw3.iot.example", ocsp: rs.OCSPURL("inter"), revoke: true},
		{id: "gw4.iot.example", ocsp: down},
	}
	files := map[string][]byte{"x509ca/ca.crt": root.CAPEM, "x509ca/inter.crt": inter.CAPEM}
	var conns strings.Builder
	for i, c := range cases {
		inter.CRLURL, inter.OCSPURL = c.crl, c.ocsp
		cred := inter.Issue(t, c.id)
		if c.revoke {
			inter.Revoke(cred.Cert)
		}
		n := i + 1
		files[fmt.Sprintf("x509/gw%d.crt", n)] = cred.CertPEM
		files[fmt.Sprintf("private/gw%d.key", n)] = cred.KeyPEM
		conns.WriteString(certGatewayConn(n, c.id, GWLAN))
	}

	certPath, keyPath, caPath := filepath.Join(dir, "conc.crt"), filepath.Join(dir, "conc.key"), filepath.Join(dir, "ca.crt")
	writeFile(t, certPath, concCred.CertPEM)
	writeFile(t, keyPath, concCred.KeyPEM)
	writeFile(t, caPath, root.CAPEM)
	cfgPath := filepath.Join(dir, "concentratord.yaml")
	writeConf := func(failOpen bool) {
		base := ConcentratordConfig(AuthECDSA, certPath, keyPath, caPath)
		cas := fmt.Sprintf("  cas: [%s]\n", caPath)
		if !strings.Contains(base, cas) {
			t.Fatalf("configuration without %q:\n%s", cas, base)
		}
		rev := fmt.Sprintf("  revocation:\n    ocsp: prefer\n    crl: fetch\n    fail_open: %v\n    timeout: 2s\n    retries: 2\n", failOpen)
		writeFile(t, cfgPath, []byte(strings.Replace(base, cas, cas+rev, 1)))
	}
	writeConf(false)

	gw := NewStrongSwan(t, tp, "gw", tp.GW)
	gw.Start("connections {\n"+conns.String()+"}\n", files)
	conc := tp.StartProcess(t, "concentratord", tp.Conc, bin, "--config", cfgPath)
	lctx, lcancel := context.WithTimeout(ctx, 10*time.Second)
	_, err := conc.WaitLog(lctx, "listening", nil)
	lcancel()
	if err != nil {
		t.Fatal(err)
	}

	initiate := func(n int) (string, error) {
		t0 := time.Now()
		out, err := gw.SwanctlContext(ctx, "--initiate", "--ike", fmt.Sprintf("gw%d", n), "--child", fmt.Sprintf("lan%d", n), "--timeout", "30")
		t.Logf("gw%d: --initiate %v after %v", n, err, time.Since(t0).Round(time.Millisecond))
		return out, err
	}
	terminate := func(n int) {
		if out, err := gw.SwanctlContext(ctx, "--terminate", "--ike", fmt.Sprintf("gw%d", n), "--timeout", "10"); err != nil {
			t.Errorf("gw%d terminate: %v\n%s", n, err, out)
		}
	}
	refused := func(n int, what string) {
		t.Helper()
		out, err := initiate(n)
		if err == nil {
			t.Errorf("gw%d (%s): established, want AUTHENTICATION_FAILED\n%s", n, what, out)
			terminate(n)
			return
		}
		if !strings.Contains(out+gw.Log(), "received AUTHENTICATION_FAILED notify error") {
			t.Errorf("gw%d (%s): strongSwan did not log AUTHENTICATION_FAILED:\n%s", n, what, out)
		}
	}

	// (a) good: established; the chain (leaf, intermediate) was checked.
	if out, err := initiate(1); err != nil {
		t.Fatalf("gw1 (good): %v\n%s\nconcentratord:\n%s", err, out, conc.Stdout())
	}
	if sas, err := gw.ListSAs(ctx); err != nil {
		t.Fatal(err)
	} else if sa, ok := FindIKESA(sas, "gw1"); !ok || sa.Get("local-id") != cases[0].id {
		t.Fatalf("gw: no ESTABLISHED IKE_SA gw1 as %s in %v", cases[0].id, sas)
	} else if _, ok := sa.Child("lan1"); !ok {
		t.Errorf("gw: no CHILD_SA lan1: %v", sa)
	}
	terminate(1)
	// Reconnecting is answered from the cache: no fetch, no parking.
	fetched := rs.CRLs.Load() + rs.OCSPs.Load()
	if out, err := initiate(1); err != nil {
		t.Fatalf("gw1 (good, again): %v\n%s", err, out)
	}
	terminate(1)
	if n := rs.CRLs.Load() + rs.OCSPs.Load(); n != fetched {
		t.Errorf("reconnect fetched again: %d requests to the revocation server, %d before", n, fetched)
	}
	// (b) revoked, CRL distribution point; (c) revoked, OCSP.
	refused(2, "revoked via CRL DP")
	refused(3, "revoked via OCSP")
	// (d) the responder is down, fail closed.
	refused(4, "OCSP responder down, fail_open false")

	// The node's account of why.
	for _, want := range []string{"according to crl", "according to ocsp", "revocation status unavailable"} {
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		if _, err := conc.WaitLine(wctx, func(l string) bool { return strings.Contains(l, want) }); err != nil {
			t.Errorf("concentratord log has no %q: %v", want, err)
		}
		wcancel()
	}

	// Fail open: reload (SIGHUP) and the same gateway is accepted with a
	// warning and a metric.
	writeConf(true)
	if err := conc.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	conc.mustWaitLog(t, ctx, 10*time.Second, "SIGHUP: credentials reloaded", nil)
	if out, err := initiate(4); err != nil {
		t.Errorf("gw4 (responder down, fail_open true): %v\n%s", err, out)
	} else {
		terminate(4)
	}
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	if _, err := conc.WaitLine(wctx, func(l string) bool {
		return strings.Contains(l, "accepting the certificate (auth.revocation.fail_open)")
	}); err != nil {
		t.Errorf("concentratord did not warn about accepting without a revocation answer: %v", err)
	}
	wcancel()

	code, body, err := HTTPGet(tp.Conc, MetricsAddr, "/metrics")
	if err != nil || code != 200 {
		t.Fatalf("GET /metrics: %d %v", code, err)
	}
	for _, l := range []string{`ikefleet_revocation_unavailable_total{outcome="accepted"} 1`, `ikefleet_revocation_revoked_total{source="crl"} 1`,
		`ikefleet_revocation_revoked_total{source="ocsp"} 1`, "ikefleet_handshakes_total 3"} {
		if !MetricLine(body, l) {
			t.Errorf("/metrics has no %q", l)
		}
	}
	m := func(name string) float64 {
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` ([0-9.e+-]+)$`)
		if s := re.FindStringSubmatch(body); s != nil {
			v, _ := strconv.ParseFloat(s[1], 64)
			return v
		}
		return 0
	}
	for _, src := range []string{"ocsp", "crl"} {
		hit := m(`ikefleet_revocation_lookups_total{result="hit",source="` + src + `"}`)
		miss := m(`ikefleet_revocation_lookups_total{result="miss",source="` + src + `"}`)
		ok := m(`ikefleet_revocation_fetches_total{result="ok",source="` + src + `"}`)
		ko := m(`ikefleet_revocation_fetches_total{result="error",source="` + src + `"}`)
		secs := m(`ikefleet_revocation_fetch_seconds_total{source="` + src + `"}`)
		t.Logf("%s: lookups %v hit / %v miss (hit ratio %.2f), fetches %v ok / %v failed, mean fetch %.1f ms",
			src, hit, miss, hit/max(hit+miss, 1), ok, ko, 1000*secs/max(ok+ko, 1))
	}
	t.Logf("revocation server: %d CRL and %d OCSP requests; pending lookups (parked IKE_AUTH): %v",
		rs.CRLs.Load(), rs.OCSPs.Load(), m("ikefleet_revocation_pending_total"))
	if rs.CRLs.Load() == 0 || rs.OCSPs.Load() == 0 {
		t.Error("the node fetched no CRL or asked no OCSP responder")
	}
	if t.Failed() {
		os.Stderr.WriteString(conc.Stdout())
	}
	if err := conc.Stop(); err != nil {
		t.Errorf("concentratord on SIGTERM: %v", err)
	}
}
