//go:build linux

package e2e

import (
	"context"
	"net/netip"
	"path/filepath"
	"strconv"
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
func TestUserspaceDataPlaneIPv6(t *testing.T) { testIPv6Tunnel(t, ipv6Case{}) }

// TestUserspaceDataPlaneIPv6VirtualIPs: the same over IPv6, strongSwan
// asking for a virtual address of each family (vips = 0.0.0.0,::) from
// children.pool and children.pool6; pings from both virtual addresses.
func TestUserspaceDataPlaneIPv6VirtualIPs(t *testing.T) { testIPv6Tunnel(t, ipv6Case{vips: true}) }

// TestKernelIPv6: the dual-stack tunnel of TestUserspaceDataPlaneIPv6 with
// kernel ESP on both ends (VM tier): concentratord with dataplane.mode
// xfrm, strongSwan without kernel-libipsec. ESP-in-UDP over IPv6
// (force_encap); the concentrator's states are IPv6, its policies one
// triple per inner family, both templates naming the IPv6 outer addresses.
func TestKernelIPv6(t *testing.T) { testIPv6Tunnel(t, ipv6Case{kernel: true}) }

// TestKernelIPv6PlainESP: the same without a NAT, real or claimed
// (force_encap: false, strongSwan encap = no): plain ESP (next header 50)
// over IPv6 both ways, no ESP-in-UDP on the wire.
func TestKernelIPv6PlainESP(t *testing.T) { testIPv6Tunnel(t, ipv6Case{kernel: true, plainESP: true}) }

// TestKernelIPv6VirtualIPs: kernel ESP over IPv6 (plain ESP) with a
// virtual address of each family; the pools are routed once each.
func TestKernelIPv6VirtualIPs(t *testing.T) {
	testIPv6Tunnel(t, ipv6Case{kernel: true, plainESP: true, vips: true})
}

// ipv6Case is one variant of the IPv6 tunnel test.
type ipv6Case struct {
	kernel   bool // dataplane.mode xfrm and strongSwan with kernel ESP (VM tier); else user space
	plainESP bool // no NAT claimed (force_encap: false, encap = no): ESP without UDP
	vips     bool // virtual addresses of both families instead of the gateway's LAN
}

// espCount6Rules counts IPv6 ESP and ESP-in-UDP crossing nat (which
// routes IPv6) in each direction.
const espCount6Rules = `table inet ikfesp6 {
  counter esp_to_conc { }
  counter esp_to_gw { }
  counter udp_to_conc { }
  counter udp_to_gw { }
  chain espcount {
    type filter hook forward priority -10; policy accept;
    iifname "nat-gw" meta nfproto ipv6 meta l4proto esp counter name "esp_to_conc"
    iifname "nat-conc" meta nfproto ipv6 meta l4proto esp counter name "esp_to_gw"
    iifname "nat-gw" meta nfproto ipv6 udp dport 4500 @th,64,32 != 0 counter name "udp_to_conc"
    iifname "nat-conc" meta nfproto ipv6 udp sport 4500 @th,64,32 != 0 counter name "udp_to_gw"
  }
}
`

// nftCounter reads the packets of named counter name in table inet table.
func nftCounter(ctx context.Context, t *testing.T, tp *Topology, ns, table, name string) uint64 {
	t.Helper()
	out, err := tp.Exec(ctx, ns, "nft", "list", "counter", "inet", table, name)
	i := strings.Index(out, "packets")
	if err != nil || i < 0 {
		t.Fatalf("%s: nft list counter %s %s: %v %s", ns, table, name, err, out)
	}
	n, _ := strconv.ParseUint(strings.Fields(out[i+len("packets"):])[0], 10, 64)
	return n
}

func testIPv6Tunnel(t *testing.T, tc ipv6Case) {
	if tc.kernel {
		requireKernelESP(t)
	} else {
		requireNetns(t)
	}
	bin := Binary(t, "concentratord")
	// A bound for a hung run, not a measure: the VM tier under TCG on a
	// loaded host takes minutes for what takes seconds elsewhere.
	ctx, cancel := context.WithTimeout(t.Context(), 6*time.Minute)
	defer cancel()
	tp := NewTopology(t)
	addIPv6(t, ctx, tp)
	rules := filepath.Join(t.TempDir(), "esp6-count.nft")
	writeFile(t, rules, []byte(espCount6Rules))
	if out, err := tp.Exec(ctx, tp.NAT, "nft", "-f", rules); err != nil {
		t.Fatalf("nat: IPv6 ESP counters: %v %s", err, out)
	}

	c, dataplaneMode := "", "userspace"
	if tc.kernel {
		c, dataplaneMode = xfrmConfig(t), "xfrm"
	} else {
		c = userspaceConfig(t, ESPProp)
	}
	repl := [][2]string{
		{"listen: [" + ConcAddr + "]", "listen: [\"" + ConcAddr6 + "\"]"},
		{"local_ts: [" + ConcLAN + "]", "local_ts: [" + ConcLAN + ", \"" + ConcLAN6 + "\"]"},
		{"remote_ts: [10.20.0.0/16]", "remote_ts: [10.20.0.0/16, \"fd00:20::/48\"]"},
	}
	if tc.plainESP {
		repl = append(repl, [2]string{"force_encap: true", "force_encap: false"})
	}
	for _, r := range repl {
		if tc.vips && strings.HasPrefix(r[0], "remote_ts") {
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
		{"local_ts = " + GWLAN, map[bool]string{false: "local_ts = " + GWLAN + "," + GWLAN6, true: "local_ts = dynamic"}[tc.vips]},
		{"remote_ts = " + ConcLAN, "remote_ts = " + ConcLAN + "," + ConcLAN6},
	} {
		if !strings.Contains(gwConf, r[0]) {
			t.Fatalf("gateway configuration has no %q", r[0])
		}
		gwConf = strings.Replace(gwConf, r[0], r[1], 1)
	}
	if tc.plainESP {
		gwConf = strings.Replace(gwConf, "    encap = yes\n", "    encap = no\n", 1)
	}
	if tc.vips {
		gwConf = strings.Replace(gwConf, "    encap = ", "    vips = 0.0.0.0,::\n    encap = ", 1)
	}
	gw := NewStrongSwan(t, tp, "gw", tp.GW)
	if tc.kernel {
		gw.Plugins = KernelCharonPlugins
	}
	gw.ExtraConf = "plugins {\n    socket-default {\n      use_ipv6 = yes\n    }\n  }"
	gw.Start(gwConf, nil)
	conc := tp.StartProcess(t, "concentratord", tp.Conc, bin, "--config", cfg)
	// The first process started in the VM reads its binary over 9p under
	// TCG: 20 s were not always enough there.
	conc.mustWaitLog(t, ctx, time.Minute, "listening", map[string]string{"dataplane": dataplaneMode})

	if out, err := gw.SwanctlContext(ctx, "--initiate", "--child", "lan", "--timeout", "20"); err != nil {
		t.Fatalf("strongSwan gw initiate to concentratord over IPv6: %v\n%s\n%s", err, out, tail(conc.Stdout(), 3000))
	}
	sas, err := gw.ListSAs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sa, ok := FindIKESA(sas, "conc")
	wantNAT := map[bool]string{false: "yes", true: ""}[tc.plainESP]
	if !ok || sa.Get("remote-host") != ConcAddr6 || sa.Get("local-host") != GWAddr6 || sa.Get("nat-remote") != wantNAT {
		t.Fatalf("gw: IKE_SA %v (want %s -> %s, nat-remote %q)", sa, GWAddr6, ConcAddr6, wantNAT)
	}
	gc, _ := sa.Child("lan")
	if gc.Get("state") != "INSTALLED" || gc.Get("encap") != wantNAT {
		t.Fatalf("gw: CHILD_SA %v (want encap %q)", gc, wantNAT)
	}
	gwSrc, gwSrc6 := GWLANAddr, GWLANAddr6
	if tc.vips {
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
	for _, want := range map[bool][]string{false: {GWLAN, GWLAN6}, true: {gwSrc + "/32", gwSrc6 + "/128"}}[tc.vips] {
		if !strings.Contains(strings.Join(gc.LocalTS, ","), want) {
			t.Errorf("gw: CHILD_SA local TS %v lacks %s", gc.LocalTS, want)
		}
	}
	for _, want := range []string{ConcLAN, ConcLAN6} {
		if !strings.Contains(strings.Join(gc.RemoteTS, ","), want) {
			t.Errorf("gw: CHILD_SA remote TS %v lacks %s", gc.RemoteTS, want)
		}
	}
	conc.mustWaitLog(t, ctx, 10*time.Second, "CHILD_SA installed", map[string]string{"peer_id": GWPSKID})
	if tc.kernel {
		remote4, remote6 := GWLAN, GWLAN6
		if tc.vips {
			remote4, remote6 = gwSrc+"/32", gwSrc6+"/128"
		}
		checkKernelIPv6(ctx, t, tp, tc, gc.Get("spi-in"), gc.Get("spi-out"), remote4, remote6)
	}

	// 4 echo requests per direction and family: each kernel state carries
	// 16 packets (requests one way, replies the other, both families).
	const perState = 16
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
	// The wire between gw and conc: ESP over IPv6, in UDP unless plain.
	esp := map[bool]string{false: "udp", true: "esp"}[tc.plainESP]
	other := map[bool]string{false: "esp", true: "udp"}[tc.plainESP]
	for _, dir := range []string{"_to_conc", "_to_gw"} {
		n, o := nftCounter(ctx, t, tp, tp.NAT, "ikfesp6", esp+dir), nftCounter(ctx, t, tp, tp.NAT, "ikfesp6", other+dir)
		t.Logf("nat: IPv6 %s%s %d packets, %s%s %d", esp, dir, n, other, dir, o)
		if n < perState || o != 0 {
			t.Errorf("nat: IPv6 %s%s %d packets (want >= %d), %s%s %d (want 0)", esp, dir, n, perState, other, dir, o)
		}
	}
	if tc.kernel {
		for _, s := range xfrmStates(ctx, t, tp, tp.Conc) {
			t.Logf("conc SA %s %s -> %s: %d packets, %d bytes", s.spi, s.src, s.dst, s.packets, s.bytes)
			if s.packets < perState {
				t.Errorf("conc: state %s: %d packets, want >= %d", s.spi, s.packets, perState)
			}
		}
	}
	if out, err := gw.SwanctlContext(ctx, "--terminate", "--ike", "conc", "--timeout", "10"); err != nil {
		t.Errorf("strongSwan gw terminate: %v\n%s", err, out)
	}
	conc.mustWaitLog(t, ctx, 10*time.Second, "IKE_SA deleted", nil)
	if tc.kernel {
		// The delete took the states, policies and per-SA routes; the
		// pools' routes stay while the node runs.
		if n := len(xfrmStates(ctx, t, tp, tp.Conc)); n != 0 {
			t.Errorf("conc after delete: %d XFRM states left", n)
		}
		if out, _ := tp.Exec(ctx, tp.Conc, "ip", "xfrm", "policy"); strings.TrimSpace(out) != "" {
			t.Errorf("conc after delete: policies left:\n%s", out)
		}
		for _, fam := range []string{"-4", "-6"} {
			out, _ := tp.Exec(ctx, tp.Conc, "ip", fam, "-o", "route", "show", "proto", "225")
			if (strings.TrimSpace(out) != "") != tc.vips {
				t.Errorf("conc after delete: ikefleet %s routes %q (pool routes only, and only with pools)", fam, out)
			}
		}
	}
	if err := conc.Stop(); err != nil {
		t.Errorf("concentratord on SIGTERM: %v", err)
	}
}

// checkKernelIPv6 checks what the xfrm data plane put in the
// concentrator's kernel for the dual-stack CHILD SA over IPv6: two IPv6
// ESP states under ikefleet reqids with the gateway's SPIs, in UDP unless
// plain; out/in/fwd policies for each inner family whose templates name
// the IPv6 outer addresses; a route for each inner family (the pool's
// with virtual addresses) out of the interface towards the gateway.
func checkKernelIPv6(ctx context.Context, t *testing.T, tp *Topology, tc ipv6Case, gwIn, gwOut, remote4, remote6 string) {
	t.Helper()
	states := xfrmStates(ctx, t, tp, tp.Conc)
	if len(states) != 2 {
		t.Fatalf("conc: %d XFRM states, want 2: %+v", len(states), states)
	}
	for _, s := range states {
		if !ikefleetReqID(s.reqid) || s.encap == tc.plainESP {
			t.Errorf("conc: state %+v: want an ikefleet reqid and espinudp %v", s, !tc.plainESP)
		}
		if !(s.src == ConcAddr6 && s.dst == GWAddr6 || s.src == GWAddr6 && s.dst == ConcAddr6) {
			t.Errorf("conc: state %s %s -> %s, want between %s and %s", s.spi, s.src, s.dst, ConcAddr6, GWAddr6)
		}
		if s.spi != "0x"+gwIn && s.spi != "0x"+gwOut {
			t.Errorf("conc: state spi %s is neither of the gateway's %s/%s", s.spi, gwIn, gwOut)
		}
	}
	if out, _ := tp.Exec(ctx, tp.Conc, "ip", "-6", "xfrm", "state"); len(xfrmHeadRE.FindAllString(out, -1)) != 2 {
		t.Errorf("conc: ip -6 xfrm state, want the 2 states:\n%s", out)
	}
	if out, _ := tp.Exec(ctx, tp.Conc, "ip", "-4", "xfrm", "state"); strings.TrimSpace(out) != "" {
		t.Errorf("conc: IPv4 XFRM states on an IPv6-only path:\n%s", out)
	}
	for _, fam := range []struct{ flag, local, remote string }{{"-4", ConcLAN, remote4}, {"-6", ConcLAN6, remote6}} {
		out, _ := tp.Exec(ctx, tp.Conc, "ip", fam.flag, "xfrm", "policy")
		if strings.Count(out, "dir ") != 3 || !strings.Contains(out, "src "+fam.local+" dst "+fam.remote) ||
			strings.Count(out, "tmpl src "+ConcAddr6+" dst "+GWAddr6) != 1 || strings.Count(out, "tmpl src "+GWAddr6+" dst "+ConcAddr6) != 2 {
			t.Errorf("conc: ip %s xfrm policy, want out/in/fwd %s <-> %s with IPv6 templates:\n%s", fam.flag, fam.local, fam.remote, out)
		}
	}
	routes := map[string]string{"-4": GWLAN, "-6": GWLAN6}
	if tc.vips {
		routes = map[string]string{"-4": "10.99.0.0/24", "-6": "fd00:99::/112"}
	}
	for fam, pfx := range routes {
		out, err := tp.Exec(ctx, tp.Conc, "ip", fam, "-o", "route", "show", "proto", "225")
		if err != nil || !strings.Contains(out, pfx+" ") || !strings.Contains(out, "dev conc0") {
			t.Errorf("conc: ikefleet %s routes %q (%v), want %s out of conc0", fam, out, err, pfx)
		}
	}
}
