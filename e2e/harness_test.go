//go:build linux

package e2e

import (
	"context"
	"slices"
	"testing"
	"time"
)

// TestHarnessStrongSwanPair proves the harness without the project's
// binaries: strongSwan gw1 initiates to a strongSwan responder in conc
// through the NAT, both sides report the SAs, and pings cross the tunnel
// (userspace ESP in UDP).
func TestHarnessStrongSwanPair(t *testing.T) {
	for _, auth := range []Auth{AuthPSK, AuthECDSA} {
		t.Run(auth.String(), func(t *testing.T) {
			requireNetns(t)
			ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
			defer cancel()
			start := time.Now()
			tp := NewTopology(t)

			var gwFiles, concFiles map[string][]byte
			if auth == AuthECDSA {
				pki := NewPKI(t)
				gwFiles = pki.SwanctlFiles("gw", pki.Issue(t, GWCertID))
				concFiles = pki.SwanctlFiles("conc", pki.Issue(t, ConcID))
			}
			conc := NewStrongSwan(t, tp, "conc", tp.Conc)
			conc.Start(ConcSwanctlConf(auth), concFiles)
			gw := NewStrongSwan(t, tp, "gw", tp.GW)
			gw.Start(GatewaySwanctlConf(auth), gwFiles)
			t.Logf("topology and two charons up in %v", time.Since(start).Round(time.Millisecond))

			// Without the tunnel the inner networks cannot reach each other
			// (the NAT has no route to 10.30.0.0/24): what the pings below
			// prove, the tunnel does.
			nctx, ncancel := context.WithTimeout(ctx, 300*time.Millisecond)
			if err := tp.Ping(nctx, tp.GW, GWLANAddr, ConcLANAddr, 1, 56); err == nil {
				t.Fatalf("ping %s -> %s works before any tunnel exists", GWLANAddr, ConcLANAddr)
			}
			ncancel()

			t0 := time.Now()
			out, err := gw.SwanctlContext(ctx, "--initiate", "--child", "lan", "--timeout", "20")
			if err != nil {
				t.Fatalf("initiate: %v\n%s", err, out)
			}
			t.Logf("swanctl --initiate (IKE_SA_INIT + IKE_AUTH + CHILD_SA install): %v", time.Since(t0).Round(time.Millisecond))

			gwID, concPeerID := GWPSKID, GWPSKID
			if auth == AuthECDSA {
				gwID, concPeerID = GWCertID, GWCertID
			}
			gwSAs, err := gw.ListSAs(ctx)
			if err != nil {
				t.Fatal(err)
			}
			checkGatewaySA(t, gwSAs, gwID)

			concSAs, err := conc.WaitSAs(ctx, func(sas []IKESA) bool {
				sa, ok := FindIKESA(sas, "gw")
				c, _ := sa.Child("lan")
				return ok && c.Get("state") == "INSTALLED"
			})
			if err != nil {
				t.Fatal(err)
			}
			sa, _ := FindIKESA(concSAs, "gw")
			if got := sa.Get("remote-id"); got != concPeerID {
				t.Errorf("conc: remote-id %q, want %q", got, concPeerID)
			}
			if got := sa.Get("remote-host"); got != NATPublicAddr {
				t.Errorf("conc: remote-host %q, want the NAT's public address %s", got, NATPublicAddr)
			}
			if sa.Get("nat-remote") != "yes" {
				t.Errorf("conc: nat-remote = %q, want yes (peer behind NAT): %v", sa.Get("nat-remote"), sa)
			}
			c, _ := sa.Child("lan")
			if !slices.Equal(c.LocalTS, []string{ConcLAN}) || !slices.Equal(c.RemoteTS, []string{GWLAN}) {
				t.Errorf("conc: child TS %v === %v, want %s === %s (narrowed)", c.LocalTS, c.RemoteTS, ConcLAN, GWLAN)
			}

			t0 = time.Now()
			if err := tp.Ping(ctx, tp.GW, GWLANAddr, ConcLANAddr, 3, 56); err != nil {
				t.Fatal(err)
			}
			// 1372 bytes of payload + 28 = 1400, the TUN device's MTU.
			if err := tp.Ping(ctx, tp.GW, GWLANAddr, ConcLANAddr, 2, 1372); err != nil {
				t.Error(err)
			}
			t.Logf("pings through the tunnel: %v", time.Since(t0).Round(time.Millisecond))

			gwSAs, err = gw.ListSAs(ctx)
			if err != nil {
				t.Fatal(err)
			}
			gsa, _ := FindIKESA(gwSAs, "conc")
			gc, _ := gsa.Child("lan")
			if gc.Get("packets-out") == "0" || gc.Get("packets-in") == "0" {
				t.Errorf("gw: CHILD_SA counters show no traffic: %v", gc.Attrs)
			}

			if out, err := gw.SwanctlContext(ctx, "--terminate", "--ike", "conc", "--timeout", "10"); err != nil {
				t.Fatalf("terminate: %v\n%s", err, out)
			}
			if _, err := conc.WaitSAs(ctx, func(sas []IKESA) bool { return len(sas) == 0 }); err != nil {
				t.Errorf("conc still has SAs after the gateway's delete: %v", err)
			}
		})
	}
}

// checkGatewaySA asserts strongSwan gw1's view of a tunnel to the
// concentrator: IKE_SA "conc" ESTABLISHED with the expected proposal and
// identities, NAT detected and ESP UDP-encapsulated, CHILD_SA "lan"
// INSTALLED with GWLAN === ConcLAN.
func checkGatewaySA(t *testing.T, sas []IKESA, localID string) {
	t.Helper()
	sa, ok := FindIKESA(sas, "conc")
	if !ok {
		t.Fatalf("gw: no ESTABLISHED IKE_SA conc in %v", sas)
	}
	for k, want := range map[string]string{
		"local-id":    localID,
		"remote-id":   ConcID,
		"remote-host": ConcAddr,
		"remote-port": "4500",
		"nat-local":   "yes", // gw really is behind the masquerade
		"nat-any":     "yes",
		"initiator":   "yes",
	} {
		if got := sa.Get(k); got != want {
			t.Errorf("gw: IKE_SA %s = %q, want %q", k, got, want)
		}
	}
	if got := sa.Proposal(); got != IKEPropSS {
		t.Errorf("gw: IKE proposal %s, want %s", got, IKEPropSS)
	}
	c, ok := sa.Child("lan")
	if !ok {
		t.Fatalf("gw: no CHILD_SA lan: %v", sa)
	}
	for k, want := range map[string]string{
		"state":        "INSTALLED",
		"mode":         "TUNNEL",
		"protocol":     "ESP",
		"encap":        "yes",
		"encr-alg":     "AES_GCM_16",
		"encr-keysize": "256",
	} {
		if got := c.Get(k); got != want {
			t.Errorf("gw: CHILD_SA lan %s = %q, want %q", k, got, want)
		}
	}
	if !slices.Equal(c.LocalTS, []string{GWLAN}) || !slices.Equal(c.RemoteTS, []string{ConcLAN}) {
		t.Errorf("gw: CHILD_SA lan TS %v === %v, want %s === %s", c.LocalTS, c.RemoteTS, GWLAN, ConcLAN)
	}
	if t.Failed() {
		t.Logf("gw SA: %v", sa)
	}
}
