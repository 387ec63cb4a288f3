//go:build linux

package e2e

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Kernel ESP tier (docs/architecture.md, "Tests", tier 3). The build hosts' kernel has no
// ESP, so these tests run inside the VM that `make test-vm`
// (e2e/vm/kernel-tier.sh) boots with Debian's stock kernel; it sets
// IKEFLEET_VM=1. Anywhere else they skip: the VM tier is where they run,
// and there a missing prerequisite fails like every namespace test under
// CI=true.
func requireKernelESP(t *testing.T) {
	t.Helper()
	if os.Getenv("IKEFLEET_VM") != "1" {
		t.Skip("kernel ESP tier: runs inside the VM (make test-vm, e2e/vm/kernel-tier.sh)")
	}
	requireNetns(t)
}

// KernelCharonPlugins is DefaultCharonPlugins without kernel-libipsec:
// strongSwan then installs its SAs in the kernel (XFRM) like a real
// gateway.
const KernelCharonPlugins = "random nonce openssl pem pkcs1 pkcs8 x509 pubkey revocation constraints " +
	"sha2 sha1 hmac aes gcm kdf curve25519 counters kernel-netlink socket-default vici"

// xfrmConfig is ConcentratordConfig (PSK) with the kernel data plane.
func xfrmConfig(t *testing.T) string {
	t.Helper()
	c := ConcentratordConfig(AuthPSK, "", "", "")
	const memory = "dataplane:\n  mode: memory\n"
	if !strings.Contains(c, memory) {
		t.Fatalf("ConcentratordConfig no longer ends with %q", memory)
	}
	// No state store: the restart below shows how a node that knows no SAs
	// cleans the kernel (TestKernelRestartKeepsSAs restores them instead).
	return strings.Replace(c, memory, "dataplane:\n  mode: xfrm\n  xfrm:\n    socket_recv_buffer: 1048576\n", 1) +
		"statestore:\n  mode: none\n"
}

// kernelSA is one XFRM state as `ip -s xfrm state` shows it.
type kernelSA struct {
	src, dst, spi  string
	reqid          uint64
	bytes, packets uint64
	encap          bool
}

var (
	xfrmHeadRE = regexp.MustCompile(`(?m)^src (\S+) dst (\S+)$`)
	xfrmSPIRE  = regexp.MustCompile(`proto esp spi (0x[0-9a-f]+)\S* reqid (\d+)`) // -s adds (decimal) forms
	xfrmCurRE  = regexp.MustCompile(`lifetime current:\s*\n\s*(\d+)\(bytes\), (\d+)\(packets\)`)
)

func xfrmStates(ctx context.Context, t *testing.T, tp *Topology, ns string) []kernelSA {
	t.Helper()
	out, err := tp.Exec(ctx, ns, "ip", "-s", "xfrm", "state")
	if err != nil {
		t.Fatalf("ip xfrm state in %s: %v", ns, err)
	}
	var sas []kernelSA
	idx := xfrmHeadRE.FindAllStringSubmatchIndex(out, -1)
	for i, m := range idx {
		end := len(out)
		if i+1 < len(idx) {
			end = idx[i+1][0]
		}
		block := out[m[0]:end]
		sa := kernelSA{src: out[m[2]:m[3]], dst: out[m[4]:m[5]], encap: strings.Contains(block, "encap type espinudp")}
		if s := xfrmSPIRE.FindStringSubmatch(block); s != nil {
			sa.spi = s[1]
			sa.reqid, _ = strconv.ParseUint(s[2], 10, 64)
		}
		if c := xfrmCurRE.FindStringSubmatch(block); c != nil {
			sa.bytes, _ = strconv.ParseUint(c[1], 10, 64)
			sa.packets, _ = strconv.ParseUint(c[2], 10, 64)
		}
		sas = append(sas, sa)
	}
	return sas
}

// ikefleetReqID reports whether reqid is in the xfrm data plane's default
// range (xfrm.DefaultOptions: base 0x49460000, 2^20 slots of two).
func ikefleetReqID(r uint64) bool { return r >= 0x49460000 && r < 0x49460000+2<<20 }

// TestKernelESPStrongSwanToConcentratord is the kernel tier end to end:
// strongSwan gw1 with kernel ESP, behind the nftables NAT, brings up a
// tunnel to concentratord running dataplane.mode xfrm; pings cross it both
// ways as ESP-in-UDP (counted on the NAT), the kernel SA counters move;
// then concentratord restarts. It does not persist SAs yet (the state
// store will), so the restarted node knows none: it must remove its strays
// (states, policies, routes), leave a foreign state alone, and take a new
// tunnel from the gateway.
func TestKernelESPStrongSwanToConcentratord(t *testing.T) {
	requireKernelESP(t)
	start := time.Now()
	bin := Binary(t, "concentratord")
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	tp := NewTopology(t)

	rules := filepath.Join(t.TempDir(), "esp-count.nft")
	writeFile(t, rules, []byte(espCountRules))
	if out, err := tp.Exec(ctx, tp.NAT, "nft", "-f", rules); err != nil {
		t.Fatalf("nat: ESP counters: %v %s", err, out)
	}
	espCounter := func(name string) uint64 { return nftCounter(ctx, t, tp, tp.NAT, "ikfesp", name) }

	cfg := filepath.Join(t.TempDir(), "concentratord.yaml")
	writeFile(t, cfg, []byte(xfrmConfig(t)))
	gw := NewStrongSwan(t, tp, "gw", tp.GW)
	gw.Plugins = KernelCharonPlugins
	gw.Start(GatewaySwanctlConf(AuthPSK), nil)

	startConc := func(name string) *Process {
		t.Helper()
		p := tp.StartProcess(t, name, tp.Conc, bin, "--config", cfg)
		lctx, lcancel := context.WithTimeout(ctx, 15*time.Second)
		defer lcancel()
		if _, err := p.WaitLog(lctx, "listening", map[string]string{"dataplane": "xfrm"}); err != nil {
			t.Fatal(err)
		}
		return p
	}
	conc := startConc("concentratord")
	ready, err := conc.WaitLog(ctx, "data plane reconciled", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("concentratord up with the xfrm data plane: %v", ready)

	nctx, ncancel := context.WithTimeout(ctx, 300*time.Millisecond)
	if err := tp.Ping(nctx, tp.GW, GWLANAddr, ConcLANAddr, 1, 56); err == nil {
		t.Fatalf("ping %s -> %s works before any tunnel exists", GWLANAddr, ConcLANAddr)
	}
	ncancel()

	initiate := func() (spiIn, spiOut string) {
		t.Helper()
		t0 := time.Now()
		if out, err := gw.SwanctlContext(ctx, "--initiate", "--child", "lan", "--timeout", "20"); err != nil {
			t.Fatalf("strongSwan gw initiate to concentratord: %v\n%s", err, out)
		}
		sas, err := gw.ListSAs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		checkGatewaySA(t, sas, GWPSKID)
		sa, _ := FindIKESA(sas, "conc")
		gc, _ := sa.Child("lan")
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		defer wcancel()
		if _, err := conc.WaitLog(wctx, "CHILD_SA installed", map[string]string{"peer_id": GWPSKID}); err != nil {
			t.Fatal(err)
		}
		t.Logf("tunnel up (IKE_SA_INIT, IKE_AUTH, kernel SAs on both ends): %v", time.Since(t0).Round(time.Millisecond))
		return gc.Get("spi-in"), gc.Get("spi-out")
	}
	gwIn, gwOut := initiate()

	// The kernel holds the concentrator's pair under ikefleet's reqids,
	// UDP-encapsulated; its inbound SPI is the gateway's outbound one.
	states := xfrmStates(ctx, t, tp, tp.Conc)
	if len(states) != 2 {
		t.Fatalf("conc: %d XFRM states, want 2: %+v", len(states), states)
	}
	for _, s := range states {
		if !ikefleetReqID(s.reqid) || !s.encap {
			t.Errorf("conc: state %+v: want an ikefleet reqid and espinudp", s)
		}
		if s.spi != "0x"+gwIn && s.spi != "0x"+gwOut {
			t.Errorf("conc: state spi %s is neither of the gateway's %s/%s", s.spi, gwIn, gwOut)
		}
	}
	if out, _ := tp.Exec(ctx, tp.Conc, "ip", "xfrm", "policy"); strings.Count(out, "dir ") != 3 {
		t.Errorf("conc: want 3 policies (out, in, fwd):\n%s", out)
	}
	route, err := tp.Exec(ctx, tp.Conc, "ip", "-o", "route", "show", GWLAN)
	if err != nil || !strings.Contains(route, "src "+ConcLANAddr) || !strings.Contains(route, "proto 225") {
		t.Errorf("conc: route to %s: %q (%v), want proto 225 (ikefleet) src %s", GWLAN, route, err, ConcLANAddr)
	}

	t0 := time.Now()
	for _, p := range []struct{ ns, src, dst string }{{tp.GW, GWLANAddr, ConcLANAddr}, {tp.Conc, ConcLANAddr, GWLANAddr}} {
		if err := tp.Ping(ctx, p.ns, p.src, p.dst, 3, 56); err != nil {
			t.Fatal(err)
		}
		// 1400 bytes of ICMP payload: bigger than the user-space tier's
		// TUN MTU; the kernel path has the full 1500 minus ESP-in-UDP.
		if err := tp.Ping(ctx, p.ns, p.src, p.dst, 2, 1400); err != nil {
			t.Error(err)
		}
	}
	t.Logf("20 pings through the kernel tunnel: %v", time.Since(t0).Round(time.Millisecond))

	// The wire: ESP-in-UDP crossed the NAT both ways, 10 packets each.
	toConc, toGW := espCounter("esp_to_conc"), espCounter("esp_to_gw")
	if toConc < 10 || toGW < 10 {
		t.Errorf("nat: ESP-in-UDP packets to conc %d, to gw %d; want >= 10 each", toConc, toGW)
	}
	// The kernel SA counters on the concentrator.
	for _, s := range xfrmStates(ctx, t, tp, tp.Conc) {
		if s.packets < 10 || s.bytes == 0 {
			t.Errorf("conc: state %s (%s -> %s): %d packets %d bytes, want >= 10", s.spi, s.src, s.dst, s.packets, s.bytes)
		}
		t.Logf("conc SA %s %s -> %s: %d packets, %d bytes", s.spi, s.src, s.dst, s.packets, s.bytes)
	}
	t.Logf("nat: ESP-in-UDP to conc %d, to gw %d", toConc, toGW)

	// A foreign SA in the concentrator's namespace: never ikefleet's to touch.
	if out, err := tp.Exec(ctx, tp.Conc, "ip", "xfrm", "state", "add", "src", "192.168.100.9", "dst", ConcAddr,
		"proto", "esp", "spi", "0x7777", "reqid", "7", "mode", "tunnel",
		"aead", "rfc4106(gcm(aes))", "0x0102030405060708090a0b0c0d0e0f1011121314", "128"); err != nil {
		t.Fatalf("foreign state: %v %s", err, out)
	}

	// Restart. SIGTERM leaves the kernel SAs in place (a node that stops
	// is not a peer that left); the new process knows no SA (nothing is
	// persisted yet), so all of ikefleet's are strays.
	if err := conc.Stop(); err != nil {
		t.Errorf("concentratord on SIGTERM: %v", err)
	}
	if n := len(xfrmStates(ctx, t, tp, tp.Conc)); n != 3 {
		t.Errorf("conc after stop: %d states, want ours (2) and the foreign one", n)
	}
	conc = startConc("concentratord (restarted)")
	ready, err = conc.WaitLog(ctx, "data plane reconciled", nil)
	if err != nil {
		t.Fatal(err)
	}
	if r, _ := ready.Attr("removed_strays"); r != "1" {
		t.Errorf("restart: removed_strays=%s, want 1 (the CHILD SA the new process does not know)", r)
	}
	if a, _ := ready.Attr("adopted"); a != "0" {
		t.Errorf("restart: adopted=%s, want 0 (no SAs are persisted yet)", a)
	}
	left := xfrmStates(ctx, t, tp, tp.Conc)
	if len(left) != 1 || left[0].spi != "0x00007777" || left[0].reqid != 7 {
		t.Errorf("conc after restart: states %+v, want only the foreign one", left)
	}
	if out, _ := tp.Exec(ctx, tp.Conc, "ip", "xfrm", "policy"); strings.TrimSpace(out) != "" {
		t.Errorf("conc after restart: policies left:\n%s", out)
	}
	if out, _ := tp.Exec(ctx, tp.Conc, "ip", "-o", "route", "show", "proto", "225"); strings.TrimSpace(out) != "" {
		t.Errorf("conc after restart: ikefleet routes left: %q", out)
	}

	// The gateway's tunnel died with the old process: it starts over and
	// traffic flows through the new node's SAs.
	if out, err := gw.SwanctlContext(ctx, "--terminate", "--ike", "conc", "--force"); err != nil {
		t.Logf("gw terminate (the peer is gone): %v %s", err, out)
	}
	initiate()
	if err := tp.Ping(ctx, tp.GW, GWLANAddr, ConcLANAddr, 3, 56); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, s := range xfrmStates(ctx, t, tp, tp.Conc) {
		if ikefleetReqID(s.reqid) {
			n++
			if s.packets < 3 {
				t.Errorf("conc after restart: state %s: %d packets, want >= 3", s.spi, s.packets)
			}
		}
	}
	if n != 2 {
		t.Errorf("conc after restart and a new tunnel: %d ikefleet states, want 2", n)
	}
	if err := conc.Stop(); err != nil {
		t.Errorf("concentratord on SIGTERM: %v", err)
	}

	// dataplane.mode auto on this kernel: xfrmAvailable says yes, the daemon
	// says which it picked, and (knowing no SA) reconciles the new tunnel's
	// pair away as strays.
	writeFile(t, cfg, []byte(strings.Replace(xfrmConfig(t), "mode: xfrm", "mode: auto", 1)))
	auto := tp.StartProcess(t, "concentratord (auto)", tp.Conc, bin, "--config", cfg)
	actx, acancel := context.WithTimeout(ctx, 15*time.Second)
	if _, err := auto.WaitLog(actx, "dataplane selected", map[string]string{"mode": "auto", "dataplane": "xfrm"}); err != nil {
		t.Error(err)
	} else if rec, err := auto.WaitLog(actx, "data plane reconciled", nil); err != nil {
		t.Error(err)
	} else if r, _ := rec.Attr("removed_strays"); r != "1" {
		t.Errorf("auto restart: removed_strays=%s, want 1", r)
	}
	acancel()
	if err := auto.Stop(); err != nil {
		t.Errorf("concentratord (auto) on SIGTERM: %v", err)
	}
	t.Logf("kernel ESP end to end: %v", time.Since(start).Round(time.Millisecond))
}
