//go:build linux

package e2e

import (
	"context"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// IPv6 addresses added to the topology (no NAT for IPv6: the nat
// namespace routes it).
const (
	GWAddr6      = "2001:db8:1::2"
	NATGWAddr6   = "2001:db8:1::1"
	NATConcAddr6 = "2001:db8:100::1"
	ConcAddr6    = "2001:db8:100::2"
	GWLAN6       = "fd00:20::/64"
	GWLANAddr6   = "fd00:20::1"
	ConcLAN6     = "fd00:30::/64"
	ConcLANAddr6 = "fd00:30::1"
)

// addIPv6 gives the topology IPv6 outer addresses (gw and conc routed
// through nat) and IPv6 inner networks beside the IPv4 ones.
func addIPv6(t *testing.T, ctx context.Context, tp *Topology) {
	t.Helper()
	for _, ns := range tp.Namespaces() {
		if err := tp.Sysctl(ctx, ns, "net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.default.disable_ipv6=0"); err != nil {
			t.Fatal(err)
		}
	}
	if err := tp.Sysctl(ctx, tp.NAT, "net.ipv6.conf.all.forwarding=1"); err != nil {
		t.Fatal(err)
	}
	for _, c := range [][]string{
		{tp.GW, "addr", "add", GWAddr6 + "/64", "dev", "gw0", "nodad"},
		{tp.NAT, "addr", "add", NATGWAddr6 + "/64", "dev", "nat-gw", "nodad"},
		{tp.NAT, "addr", "add", NATConcAddr6 + "/64", "dev", "nat-conc", "nodad"},
		{tp.Conc, "addr", "add", ConcAddr6 + "/64", "dev", "conc0", "nodad"},
		{tp.GW, "-6", "route", "add", "default", "via", NATGWAddr6},
		{tp.Conc, "-6", "route", "add", "2001:db8:1::/64", "via", NATConcAddr6},
		{tp.GW, "addr", "add", GWLANAddr6 + "/64", "dev", "lan0", "nodad"},
		{tp.Conc, "addr", "add", ConcLANAddr6 + "/64", "dev", "core0", "nodad"},
	} {
		if out, err := tp.Exec(ctx, c[0], append([]string{"ip"}, c[1:]...)...); err != nil {
			t.Fatalf("%s: ip %v: %v %s", c[0], c[1:], err, out)
		}
	}
}

// Ping6 is Ping for IPv6 (ICMPv6 echo; the kernel computes the checksum).
func (tp *Topology) Ping6(ctx context.Context, ns, src, dst string, count, size int) error {
	return tp.ping(ctx, ns, src, dst, count, size, true)
}

// TestUserspaceDataPlaneIPv6: strongSwan 5.9 gw1 reaches concentratord
// over IPv6 (IKE on [2001:db8:100::2]:500, ESP-in-UDP on 4500 over IPv6:
// concentratord claims a NAT, force_encap), with one dual-stack CHILD SA
// (10.20.0.0/24 + fd00:20::/64 === 10.30.0.0/24 + fd00:30::/64) through the
// user-space data plane; pings of both families cross it both ways.
func TestUserspaceDataPlaneIPv6(t *testing.T) { testIPv6Tunnel(t, false) }

// TestUserspaceDataPlaneIPv6VirtualIPs: the same over IPv6, strongSwan
// asking for a virtual address of each family (vips = 0.0.0.0,::) from
// children.pool and children.pool6; pings from both virtual addresses.
func TestUserspaceDataPlaneIPv6VirtualIPs(t *testing.T) { testIPv6Tunnel(t, true) }

func testIPv6Tunnel(t *testing.T, vips bool) {
	requireNetns(t)
	bin := Binary(t, "concentratord")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	tp := NewTopology(t)
	addIPv6(t, ctx, tp)

	c := userspaceConfig(t, ESPProp)
	for _, r := range [][2]string{
		{"listen: [" + ConcAddr + "]", "listen: [\"" + ConcAddr6 + "\"]"},
		{"local_ts: [" + ConcLAN + "]", "local_ts: [" + ConcLAN + ", \"" + ConcLAN6 + "\"]"},
		{"remote_ts: [10.20.0.0/16]", "remote_ts: [10.20.0.0/16, \"fd00:20::/48\"]"},
	} {
		if vips && strings.HasPrefix(r[0], "remote_ts") {
			r[1] = "pool: 10.99.0.0/24\n  pool6: \"fd00:99::/112\""
		}
		if !strings.Contains(c, r[0]) {
			t.Fatalf("concentratord configuration has no %q", r[0])
		}
		c = strings.Replace(c, r[0], r[1], 1)
	}
	cfg := filepath.Join(t.TempDir(), "concentratord.yaml")
	writeFile(t, cfg, []byte(c))

	gwConf := GatewaySwanctlConf(AuthPSK)
	for _, r := range [][2]string{
		{"local_addrs = " + GWAddr, "local_addrs = " + GWAddr6},
		{"remote_addrs = " + ConcAddr, "remote_addrs = " + ConcAddr6},
		{"local_ts = " + GWLAN, map[bool]string{false: "local_ts = " + GWLAN + "," + GWLAN6, true: "local_ts = dynamic"}[vips]},
		{"remote_ts = " + ConcLAN, "remote_ts = " + ConcLAN + "," + ConcLAN6},
	} {
		if !strings.Contains(gwConf, r[0]) {
			t.Fatalf("gateway configuration has no %q", r[0])
		}
		gwConf = strings.Replace(gwConf, r[0], r[1], 1)
	}
	if vips {
		gwConf = strings.Replace(gwConf, "    encap = yes\n", "    encap = yes\n    vips = 0.0.0.0,::\n", 1)
	}
	gw := NewStrongSwan(t, tp, "gw", tp.GW)
	gw.ExtraConf = "plugins {\n    socket-default {\n      use_ipv6 = yes\n    }\n  }"
	gw.Start(gwConf, nil)
	conc := tp.StartProcess(t, "concentratord", tp.Conc, bin, "--config", cfg)
	conc.mustWaitLog(t, ctx, 10*time.Second, "listening", map[string]string{"dataplane": "userspace"})

	if out, err := gw.SwanctlContext(ctx, "--initiate", "--child", "lan", "--timeout", "20"); err != nil {
		t.Fatalf("strongSwan gw initiate to concentratord over IPv6: %v\n%s\n%s", err, out, tail(conc.Stdout(), 3000))
	}
	sas, err := gw.ListSAs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sa, ok := FindIKESA(sas, "conc")
	if !ok || sa.Get("remote-host") != ConcAddr6 || sa.Get("local-host") != GWAddr6 || sa.Get("nat-remote") != "yes" {
		t.Fatalf("gw: IKE_SA %v (want %s -> %s, NAT-T)", sa, GWAddr6, ConcAddr6)
	}
	gc, _ := sa.Child("lan")
	if gc.Get("state") != "INSTALLED" || gc.Get("encap") != "yes" {
		t.Fatalf("gw: CHILD_SA %v", gc)
	}
	gwSrc, gwSrc6 := GWLANAddr, GWLANAddr6
	if vips {
		// One address of each of the concentrator's pools (which one is
		// the pool's business: in cluster mode they come from blocks
		// reserved ahead), as the gateway's side of the CHILD SA.
		gwSrc, gwSrc6 = "", ""
		pool4, pool6 := netip.MustParsePrefix("10.99.0.0/16"), netip.MustParsePrefix("fd00:99::/64")
		for _, ts := range gc.LocalTS {
			p, err := netip.ParsePrefix(ts)
			switch {
			case err != nil:
			case p.Bits() == 32 && pool4.Contains(p.Addr()):
				gwSrc = p.Addr().String()
			case p.Bits() == 128 && pool6.Contains(p.Addr()):
				gwSrc6 = p.Addr().String()
			}
		}
		if gwSrc == "" || gwSrc6 == "" {
			t.Fatalf("gw: CHILD_SA local TS %v lacks a /32 of %s or a /128 of %s", gc.LocalTS, pool4, pool6)
		}
	}
	for _, want := range map[bool][]string{false: {GWLAN, GWLAN6}, true: {gwSrc + "/32", gwSrc6 + "/128"}}[vips] {
		if !strings.Contains(strings.Join(gc.LocalTS, ","), want) {
			t.Errorf("gw: CHILD_SA local TS %v lacks %s", gc.LocalTS, want)
		}
	}
	for _, want := range []string{ConcLAN, ConcLAN6} {
		if !strings.Contains(strings.Join(gc.RemoteTS, ","), want) {
			t.Errorf("gw: CHILD_SA remote TS %v lacks %s", gc.RemoteTS, want)
		}
	}
	conc.mustWaitLog(t, ctx, 5*time.Second, "userspace SA installed", map[string]string{"peer_id": GWPSKID})
	for _, p := range []struct {
		ns, src, dst string
		v6           bool
	}{
		{tp.GW, gwSrc, ConcLANAddr, false}, {tp.Conc, ConcLANAddr, gwSrc, false},
		{tp.GW, gwSrc6, ConcLANAddr6, true}, {tp.Conc, ConcLANAddr6, gwSrc6, true},
	} {
		ping := tp.Ping
		if p.v6 {
			ping = tp.Ping6
		}
		if err := ping(ctx, p.ns, p.src, p.dst, 3, 56); err != nil {
			t.Error(err)
		}
		if err := ping(ctx, p.ns, p.src, p.dst, 1, 1300); err != nil {
			t.Error(err)
		}
	}
	if t.Failed() {
		r, _ := tp.Exec(ctx, tp.Conc, "ip", "-6", "route")
		t.Logf("conc IPv6 routes:\n%s", r)
	}
	if out, err := gw.SwanctlContext(ctx, "--terminate", "--ike", "conc", "--timeout", "10"); err != nil {
		t.Errorf("strongSwan gw terminate: %v\n%s", err, out)
	}
	conc.mustWaitLog(t, ctx, 10*time.Second, "IKE_SA deleted", nil)
	if err := conc.Stop(); err != nil {
		t.Errorf("concentratord on SIGTERM: %v", err)
	}
}
