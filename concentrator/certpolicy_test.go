package concentrator

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike/sig"
	"github.com/ikefleet/ikefleet/loadtest"
)

func TestCertPolicyConfig(t *testing.T) {
	base := strings.Replace(nodeConfig(1, "", ""), "auth:\n", "auth:\n  cas: [/nonexistent/ca.crt]\n", 1)
	for _, tc := range []struct {
		yaml, field, msg string
	}{
		{"policies:\n  - {cert: {issuer: 'C=CH, O=Fleet, CN=Fleet A CA'}, pool: 10.98.0.0/24}\n", "", ""},
		{"policies:\n  - {id: '*.iot.example', cert: {subject: 'C=CH, O=Fleet, OU=site-*, CN=*', san: ['*.meters.example', 10.77.0.0/16], eku: [clientAuth, 1.3.6.1.5.5.7.3.17], policy_oids: [1.3.6.1.4.1.99999.1.2]}, remote_ts: [10.1.0.0/24]}\n", "", ""},
		{"policies:\n  - {remote_ts: [10.1.0.0/24]}\n", "policies[0].id", "unless cert"},
		{"policies:\n  - {cert: {}, remote_ts: [10.1.0.0/24]}\n", "policies[0].cert", "at least one of"},
		{"policies:\n  - {id: a@b.c, remote_ts: [10.1.0.0/24]}\n  - {cert: {issuer: 'Fleet A CA'}, remote_ts: [10.2.0.0/24]}\n", "policies[1].cert.issuer", "not a DN"},
		{"policies:\n  - {cert: {subject: 'C=CH, XX=y'}, remote_ts: [10.1.0.0/24]}\n", "policies[0].cert.subject", "XX"},
		{"policies:\n  - {cert: {san: [ok.example, 10.0.0.0/33]}, remote_ts: [10.1.0.0/24]}\n", "policies[0].cert.san[1]", "subnet"},
		{"policies:\n  - {cert: {eku: [clientauth]}, remote_ts: [10.1.0.0/24]}\n", "policies[0].cert.eku[0]", "OID"},
		{"policies:\n  - {cert: {policy_oids: [clientAuth]}, remote_ts: [10.1.0.0/24]}\n", "policies[0].cert.policy_oids[0]", "OID"},
		{"policies:\n  - {cert: {issuer: 'CN=x', ca: 'CN=y'}, remote_ts: [10.1.0.0/24]}\n", "", "ca"},
	} {
		_, err := ParseConfig([]byte(base + tc.yaml))
		if tc.field == "" && tc.msg == "" {
			if err != nil {
				t.Errorf("%q: %v", tc.yaml, err)
			}
			continue
		}
		if tc.field == "" { // an unknown key
			if err == nil || !strings.Contains(err.Error(), tc.msg) {
				t.Errorf("%q: error %v, want one naming %s", tc.yaml, err, tc.msg)
			}
			continue
		}
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%q: error %v, want field %s (%s)", tc.yaml, err, tc.field, tc.msg)
		}
	}
	// Certificate conditions without certificate authentication match no one.
	_, err := ParseConfig([]byte(nodeConfig(1, "", "") + "policies:\n  - {cert: {issuer: 'CN=x'}, remote_ts: [10.1.0.0/24]}\n"))
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "policies[0].cert" || !strings.Contains(err.Error(), "auth.cas") {
		t.Errorf("cert policy without auth.cas: %v", err)
	}
}

// A node authenticating gateways of two CAs by certificate (and others by
// PSK) gives each CA's gateways their policy's pool, and after a restart
// the restored SAs keep the policy their certificate chose: the
// certificate's attributes are in the state store with the SA.
func TestNodeCertPolicyPoolsSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	caA, err := loadtest.NewCA("Fleet A CA")
	if err != nil {
		t.Fatal(err)
	}
	caB, err := loadtest.NewCA("Fleet B CA")
	if err != nil {
		t.Fatal(err)
	}
	if err := caA.WriteFiles(filepath.Join(dir, "a"), "conc.example"); err != nil {
		t.Fatal(err)
	}
	if err := caB.WriteFiles(filepath.Join(dir, "b"), "conc.example"); err != nil {
		t.Fatal(err)
	}
	ports := freeUDPPorts(t, 2)
	cfgText := nodeConfig(1, "", fmt.Sprintf("statestore:\n  mode: embedded\n  data_dir: %s/store\n  cluster_key_file: %s/cluster.key\n", dir, dir)+
		"policies:\n"+
		"  - {name: fleet-a, cert: {issuer: 'O=ikefleet load test, CN=Fleet A CA'}, pool: 10.98.1.0/24}\n"+
		"  - {name: fleet-b, cert: {issuer: 'O=ikefleet load test, CN=Fleet B CA', san: ['*.iot.example']}, pool: 10.98.2.0/24}\n"+
		"  - {name: others, id: '%any', pool: 10.99.0.0/16}\n")
	cfgText = strings.Replace(cfgText, "  port: 0\n  natt_port: 0\n", fmt.Sprintf("  port: %d\n  natt_port: %d\n", ports[0], ports[1]), 1)
	cfgText = strings.Replace(cfgText, "identity: {id: conc.example}\nauth:\n",
		fmt.Sprintf("identity: {id: conc.example, cert: %[1]s/a/responder.crt, key: %[1]s/a/responder.key}\nauth:\n  cas: [%[1]s/a/ca.crt, %[1]s/b/ca.crt]\n", dir), 1)
	n1, dp1, stop1 := runNode(t, cfgText)

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	roots := x509.NewCertPool()
	roots.AddCert(caA.Cert)
	runs := []struct {
		src  string
		ca   *loadtest.CA
		tmpl string
	}{{"127.0.0.2", caA, "gwa{n}.iot.example"}, {"127.0.0.3", caB, "gwb{n}.iot.example"}, {"127.0.0.4", nil, "gw{n}@iot.example"}}
	type result struct {
		rep loadtest.Report
		err error
	}
	res := make(chan result, len(runs))
	for _, r := range runs {
		o := loadOptions(t, n1, 2)
		if r.ca != nil {
			o.PSK, o.CA = nil, r.ca
			o.Verifier = &sig.Verifier{Roots: roots}
		} else {
			o.Count = 1
		}
		o.Source, o.IDTemplate = netip.MustParseAddr(r.src), r.tmpl
		o.Hold = 10 * time.Second
		go func() { rep, err := loadtest.Run(ctx, o); res <- result{rep, err} }()
	}
	want := map[string]string{ // identity prefix -> policy, pool
		"gwa": "fleet-a 10.98.1.0/24", "gwb": "fleet-b 10.98.2.0/24", "gw1@": "others 10.99.0.0/16",
	}
	check := func(n *Node, what string) {
		t.Helper()
		sas, err := n.SAs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(sas) != 5 {
			t.Fatalf("%s: %d SAs, want 5", what, len(sas))
		}
		for _, sa := range sas {
			var w string
			for p, x := range want {
				if strings.HasPrefix(sa.PeerID, p) {
					w = x
				}
			}
			pol, pool, _ := strings.Cut(w, " ")
			var vips []netip.Addr // not the CHILD SAs: they hold keys
			for _, c := range sa.Children {
				vips = append(vips, c.VirtualIP)
			}
			if sa.Policy != pol || len(vips) != 1 || !netip.MustParsePrefix(pool).Contains(vips[0]) {
				t.Errorf("%s: %s has policy %q, virtual IPs %v; want %s", what, sa.PeerID, sa.Policy, vips, w)
			}
		}
	}
	for ctx.Err() == nil {
		sas, _ := n1.SAs(ctx)
		if len(sas) == 5 && dp1.Len() == 5 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	check(n1, "before restart")
	if err := n1.persist.store.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the last responses leave (TestNodeRestartRestoresSAs)
	stop1()

	n2, dp2, _ := runNode(t, cfgText)
	if dp2.Len() != 5 {
		t.Fatalf("after restart: %d CHILD SAs", dp2.Len())
	}
	check(n2, "after restart")
	for range runs {
		if r := <-res; r.err != nil || r.rep.Established != r.rep.Deleted || r.rep.Established == 0 {
			t.Fatalf("gateways: %+v %v", r.rep, r.err)
		}
	}
}
