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

// TestPolicyCertificateAttributes: policies matched on the gateways'
// certificates, not their identities. One strongSwan gateway namespace
// runs three connections with certificates from two intermediate CAs
// under one root (the concentrator trusts the root only; strongSwan sends
// the intermediate). Each proposes all of 10.20.0.0/16: the Fleet A
// gateway is narrowed to GWLAN, the Fleet B gateway to 10.20.2.0/24 (its
// policy also wants a SAN under iot.example), and a Fleet B gateway whose
// SAN is elsewhere matches no policy and gets TS_UNACCEPTABLE.
func TestPolicyCertificateAttributes(t *testing.T) {
	requireNetns(t)
	bin := Binary(t, "concentratord")
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	tp := NewTopology(t)
	dir := t.TempDir()

	root := NewPKI(t)
	interA := root.Intermediate(t, "Fleet A CA")
	interB := root.Intermediate(t, "Fleet B CA")
	concCred := root.Issue(t, ConcID)
	cases := []struct {
		id   string
		ca   *PKI
		want string // the selector the gateway is given; "" = refused
	}{
		{"gwa.iot.example", interA, GWLAN},
		{"gwb.iot.example", interB, "10.20.2.0/24"},
		{"gwc.other.example", interB, ""},
	}
	files := map[string][]byte{"x509ca/ca.crt": root.CAPEM, "x509ca/intera.crt": interA.CAPEM, "x509ca/interb.crt": interB.CAPEM}
	var conns strings.Builder
	for i, c := range cases {
		n := i + 1
		cred := c.ca.Issue(t, c.id)
		files[fmt.Sprintf("x509/gw%d.crt", n)] = cred.CertPEM
		files[fmt.Sprintf("private/gw%d.key", n)] = cred.KeyPEM
		conns.WriteString(certGatewayConn(n, c.id, "10.20.0.0/16"))
	}

	certPath, keyPath, caPath := filepath.Join(dir, "conc.crt"), filepath.Join(dir, "conc.key"), filepath.Join(dir, "ca.crt")
	writeFile(t, certPath, concCred.CertPEM)
	writeFile(t, keyPath, concCred.KeyPEM)
	writeFile(t, caPath, root.CAPEM)
	cfg := ConcentratordConfig(AuthECDSA, certPath, keyPath, caPath)
	cfg += fmt.Sprintf(`policies:
  - name: fleet-a
    cert: {issuer: "C=XX, O=ikefleet e2e, CN=Fleet A CA"}
    remote_ts: [%s]
  - name: fleet-b
    cert: {issuer: "C=XX, O=ikefleet e2e, CN=Fleet B CA", san: ["*.iot.example"]}
    remote_ts: [10.20.2.0/24]
`, GWLAN)
	cfgPath := filepath.Join(dir, "concentratord.yaml")
	writeFile(t, cfgPath, []byte(cfg))

	// strongSwan routes a narrowed selector through an address of its own
	// in it: give gw's LAN one in Fleet B's subnet too.
	if out, err := tp.Exec(ctx, tp.GW, "ip", "addr", "add", "10.20.2.1/24", "dev", "lan0"); err != nil {
		t.Fatalf("address in 10.20.2.0/24: %v %s", err, out)
	}
	gw := NewStrongSwan(t, tp, "gw", tp.GW)
	gw.Start("connections {\n"+conns.String()+"}\n", files)
	conc := tp.StartProcess(t, "concentratord", tp.Conc, bin, "--config", cfgPath)
	lctx, lcancel := context.WithTimeout(ctx, 10*time.Second)
	_, err := conc.WaitLog(lctx, "listening", nil)
	lcancel()
	if err != nil {
		t.Fatal(err)
	}

	for i, c := range cases {
		n := i + 1
		out, err := gw.SwanctlContext(ctx, "--initiate", "--ike", fmt.Sprintf("gw%d", n), "--child", fmt.Sprintf("lan%d", n), "--timeout", "30")
		if c.want == "" {
			if err == nil || !strings.Contains(out, "TS_UNACCEPTABLE") {
				t.Errorf("%s (no policy matches): initiate %v, want TS_UNACCEPTABLE:\n%s", c.id, err, out)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: initiate: %v\n%s", c.id, err, out)
		}
	}
	sas, err := gw.ListSAs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range cases {
		if c.want == "" {
			continue
		}
		sa, ok := FindIKESA(sas, fmt.Sprintf("gw%d", i+1))
		if !ok {
			t.Fatalf("%s: no IKE SA in %v", c.id, sas)
		}
		ch, ok := sa.Child(fmt.Sprintf("lan%d", i+1))
		if !ok || ch.Get("state") != "INSTALLED" || strings.Join(ch.LocalTS, ",") != c.want {
			t.Errorf("%s: CHILD_SA %+v, want INSTALLED with local-ts %s", c.id, ch, c.want)
		}
	}
}
