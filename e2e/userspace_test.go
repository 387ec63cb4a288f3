//go:build linux

package e2e

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// userspaceTUN is the TUN device concentratord creates in the conc namespace.
const userspaceTUN = "ikfus0"

// espCountRules counts ESP-in-UDP crossing the NAT in each direction.
const espCountRules = `table inet ikfesp {
  counter esp_to_conc { }
  counter esp_to_gw { }
  chain espcount {
    type filter hook forward priority -10; policy accept;
    iifname "nat-gw" udp dport 4500 @th,64,32 != 0 counter name "esp_to_conc"
    iifname "nat-conc" udp sport 4500 @th,64,32 != 0 counter name "esp_to_gw"
  }
}
`

// userspaceConfig is ConcentratordConfig (PSK) with the user-space data
// plane and ESP proposal esp.
func userspaceConfig(t *testing.T, esp string) string {
	t.Helper()
	c := strings.Replace(ConcentratordConfig(AuthPSK, "", "", ""), "esp_proposals: ["+ESPProp+"]", "esp_proposals: ["+esp+"]", 1)
	const memory = "dataplane:\n  mode: memory\n"
	if !strings.Contains(c, memory) {
		t.Fatalf("ConcentratordConfig no longer ends with %q", memory)
	}
	return strings.Replace(c, memory, "dataplane:\n  mode: userspace\n  userspace:\n    tun: "+userspaceTUN+
		"\n    mtu: 1400\n    workers: 2\n    queue_len: 1024\n    replay_window: 1024\n", 1)
}

// TestUserspaceDataPlane is the user-space tier of the data plane: strongSwan
// gw1 (kernel-libipsec, behind the NAT) brings up a tunnel to concentratord
// running dataplane.mode userspace, and pings cross it both ways — gw LAN
// 10.20.0.1 → conc LAN 10.30.0.1 and back — as ESP-in-UDP on port 4500.
// strongSwan's CHILD_SA counters and concentratord's (logged when the SA is
// removed) must agree packet for packet.
func TestUserspaceDataPlane(t *testing.T) {
	testUserspaceTunnel(t, ESPProp, 3, 0)
}

// TestUserspaceDataPlaneTCP: 8 MiB of TCP from the gateway's LAN to ours
// through the user-space tunnel, as fast as the two ends go on this host's
// cores. Everything arrives; the only drops allowed are full queues (TCP
// recovers), never replay, integrity or selector failures.
func TestUserspaceDataPlaneTCP(t *testing.T) {
	testUserspaceTunnel(t, ESPProp, 1, 8<<20)
}

// TestUserspaceDataPlaneSuites: the same tunnel with every other ESP
// suite the data plane implements, strongSwan's crypto on the other end.
func TestUserspaceDataPlaneSuites(t *testing.T) {
	for _, c := range []struct{ esp, alg, keysize, integ string }{
		{"aes128gcm16", "AES_GCM_16", "128", ""},
		{"chacha20poly1305", "CHACHA20_POLY1305", "", ""},
		{"aes256-sha256", "AES_CBC", "256", "HMAC_SHA2_256_128"},
		{"aes128-sha384", "AES_CBC", "128", "HMAC_SHA2_384_192"},
		{"aes256-sha512", "AES_CBC", "256", "HMAC_SHA2_512_256"},
		// No ESN: strongSwan's kernel-libipsec refuses it ("IPsec SA: ESN
		// not supported"); ESN is covered by concentrator/esp's tests.
	} {
		t.Run(c.esp, func(t *testing.T) {
			gc := testUserspaceTunnel(t, c.esp, 1, 0)
			if gc.Get("encr-alg") != c.alg || gc.Get("encr-keysize") != c.keysize || gc.Get("integ-alg") != c.integ {
				t.Errorf("gw: CHILD_SA %s-%s/%s, want %s-%s/%s", gc.Get("encr-alg"), gc.Get("encr-keysize"), gc.Get("integ-alg"),
					c.alg, c.keysize, c.integ)
			}
		})
	}
}

// testUserspaceTunnel runs the tunnel with ESP proposal esp, pinging
// count times with 56 bytes and twice with 1372 bytes each way, then (if
// bulk > 0) sending bulk bytes over TCP from the gateway's LAN to ours, and
// returns strongSwan's CHILD_SA as it was afterwards.
func testUserspaceTunnel(t *testing.T, esp string, count, bulk int) ChildSA {
	requireNetns(t)
	start := time.Now()
	bin := Binary(t, "concentratord")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	tp := NewTopology(t)

	// Count ESP-in-UDP where the NAT forwards it (UDP port 4500 whose
	// payload does not start with the zero non-ESP marker): the wire's
	// view, independent of both ends.
	rules := filepath.Join(t.TempDir(), "esp-count.nft")
	writeFile(t, rules, []byte(espCountRules))
	if out, err := tp.Exec(ctx, tp.NAT, "nft", "-f", rules); err != nil {
		t.Fatalf("nat: ESP counters: %v %s", err, out)
	}

	cfg := filepath.Join(t.TempDir(), "concentratord.yaml")
	writeFile(t, cfg, []byte(userspaceConfig(t, esp)))
	gw := NewStrongSwan(t, tp, "gw", tp.GW)
	gwConf := strings.Replace(GatewaySwanctlConf(AuthPSK), "esp_proposals = "+ESPProp, "esp_proposals = "+esp, 1)
	if esp != ESPProp && gwConf == GatewaySwanctlConf(AuthPSK) {
		t.Fatal("GatewaySwanctlConf: esp_proposals not found")
	}
	gw.Start(gwConf, nil)
	conc := tp.StartProcess(t, "concentratord", tp.Conc, bin, "--config", cfg)
	lctx, lcancel := context.WithTimeout(ctx, 10*time.Second)
	_, err := conc.WaitLog(lctx, "listening", map[string]string{"dataplane": "userspace"})
	lcancel()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := tp.Exec(ctx, tp.Conc, "ip", "-o", "link", "show", userspaceTUN); err != nil || !strings.Contains(out, "UP") {
		t.Fatalf("conc: TUN device %s not up: %v %s", userspaceTUN, err, out)
	}

	// No tunnel yet: the inner networks cannot reach each other.
	nctx, ncancel := context.WithTimeout(ctx, 300*time.Millisecond)
	if err := tp.Ping(nctx, tp.GW, GWLANAddr, ConcLANAddr, 1, 56); err == nil {
		t.Fatalf("ping %s -> %s works before any tunnel exists", GWLANAddr, ConcLANAddr)
	}
	ncancel()

	if out, err := gw.SwanctlContext(ctx, "--initiate", "--child", "lan", "--timeout", "20"); err != nil {
		t.Fatalf("strongSwan gw initiate to concentratord: %v\n%s", err, out)
	}
	sas, err := gw.ListSAs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sa, _ := FindIKESA(sas, "conc")
	gc, _ := sa.Child("lan")
	if esp == ESPProp {
		checkGatewaySA(t, sas, GWPSKID)
	} else if gc.Get("state") != "INSTALLED" || gc.Get("encap") != "yes" {
		t.Fatalf("gw: CHILD_SA lan state=%s encap=%s, want INSTALLED and yes: %v", gc.Get("state"), gc.Get("encap"), sa)
	}

	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	inst, err := conc.WaitLog(wctx, "userspace SA installed", map[string]string{"peer_id": GWPSKID})
	wcancel()
	if err != nil {
		t.Fatal(err)
	}
	// Our inbound SPI is strongSwan's outbound one and vice versa.
	if in, _ := inst.Attr("spi_in"); in != gc.Get("spi-out") {
		t.Errorf("conc spi_in %s, gw spi-out %s", in, gc.Get("spi-out"))
	}
	if out, _ := inst.Attr("spi_out"); out != gc.Get("spi-in") {
		t.Errorf("conc spi_out %s, gw spi-in %s", out, gc.Get("spi-in"))
	}
	route, err := tp.Exec(ctx, tp.Conc, "ip", "-o", "route", "show", GWLAN)
	if err != nil || !strings.Contains(route, "dev "+userspaceTUN) {
		t.Fatalf("conc: no route %s into %s: %v %q", GWLAN, userspaceTUN, err, route)
	}
	if !strings.Contains(route, "src "+ConcLANAddr) {
		t.Errorf("conc: route %q has no source hint %s (an address inside our traffic selector)", route, ConcLANAddr)
	}

	t0 := time.Now()
	// 1372 bytes of ICMP payload + 28 = 1400: both TUN devices' MTU.
	for _, p := range []struct {
		ns, src, dst string
	}{{tp.GW, GWLANAddr, ConcLANAddr}, {tp.Conc, ConcLANAddr, GWLANAddr}} {
		if err := tp.Ping(ctx, p.ns, p.src, p.dst, count, 56); err != nil {
			t.Fatal(err)
		}
		if err := tp.Ping(ctx, p.ns, p.src, p.dst, 2, 1372); err != nil {
			t.Error(err)
		}
	}
	t.Logf("%d pings through the user-space tunnel: %v", 2*(count+2), time.Since(t0).Round(time.Millisecond))
	if bulk > 0 {
		tcpThroughTunnel(t, ctx, tp, bulk)
	}

	// strongSwan's view: its CHILD_SA is UDP-encapsulated and carried the
	// echo requests and replies, count+2 each, both ways.
	sas, err = gw.ListSAs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sa, _ = FindIKESA(sas, "conc")
	gc, _ = sa.Child("lan")
	num := func(k string) uint64 { v, _ := strconv.ParseUint(gc.Get(k), 10, 64); return v }
	want := uint64(2 * (count + 2))
	if gc.Get("encap") != "yes" || num("packets-in") < want || num("packets-out") < want ||
		(bulk == 0 && (num("packets-in") != want || num("packets-out") != want)) {
		t.Errorf("gw: CHILD_SA encap=%s packets-in=%s packets-out=%s, want yes and %d each (more with TCP)",
			gc.Get("encap"), gc.Get("packets-in"), gc.Get("packets-out"), want)
	}
	t.Logf("gw CHILD_SA: bytes-in %s packets-in %s bytes-out %s packets-out %s",
		gc.Get("bytes-in"), gc.Get("packets-in"), gc.Get("bytes-out"), gc.Get("packets-out"))

	for _, c := range []struct {
		name string
		want uint64
	}{{"esp_to_conc", num("packets-out")}, {"esp_to_gw", num("packets-in")}} {
		if bulk > 0 && c.name == "esp_to_gw" {
			continue // under load strongSwan's socket may drop what the NAT forwarded
		}
		out, err := tp.Exec(ctx, tp.NAT, "nft", "list", "counter", "inet", "ikfesp", c.name)
		f := strings.Fields(out[strings.Index(out, "packets")+len("packets"):])
		if err != nil || len(f) == 0 {
			t.Fatalf("nat: nft list counter %s: %v %s", c.name, err, out)
		}
		if n, _ := strconv.ParseUint(f[0], 10, 64); n != c.want {
			t.Errorf("nat: %d ESP-in-UDP packets %s, want %d", n, c.name, c.want)
		}
	}

	// The gateway deletes the tunnel; concentratord removes the SA and logs
	// its counters, which must match strongSwan's mirror image.
	if out, err := gw.SwanctlContext(ctx, "--terminate", "--ike", "conc", "--timeout", "10"); err != nil {
		t.Fatalf("strongSwan gw terminate: %v\n%s", err, out)
	}
	dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
	rm, err := conc.WaitLog(dctx, "userspace SA removed", map[string]string{"peer_id": GWPSKID})
	dcancel()
	if err != nil {
		t.Fatal(err)
	}
	attr := func(k string) uint64 { v, _ := rm[k].(float64); return uint64(v) } // JSON numbers
	t.Logf("conc SA: in_packets %d in_bytes %d out_packets %d out_bytes %d",
		attr("in_packets"), attr("in_bytes"), attr("out_packets"), attr("out_bytes"))
	switch {
	case bulk > 0:
		// Under load either end may drop (and count) a packet: what one
		// received cannot exceed what the other sent.
		if attr("in_packets") > num("packets-out") || num("packets-in") > attr("out_packets") {
			t.Errorf("conc in/out packets %d/%d, gw out/in %d/%d: received more than sent",
				attr("in_packets"), attr("out_packets"), num("packets-out"), num("packets-in"))
		}
	case attr("in_packets") != num("packets-out") || attr("out_packets") != num("packets-in"):
		t.Errorf("conc in/out packets %d/%d, gw out/in %d/%d: they must agree",
			attr("in_packets"), attr("out_packets"), num("packets-out"), num("packets-in"))
	case attr("in_bytes") != num("bytes-out") || attr("out_bytes") != num("bytes-in"):
		t.Errorf("conc in/out bytes %d/%d, gw out/in %d/%d: they must agree",
			attr("in_bytes"), attr("out_bytes"), num("bytes-out"), num("bytes-in"))
	}
	if out, _ := tp.Exec(ctx, tp.Conc, "ip", "-o", "route", "show", GWLAN); strings.TrimSpace(out) != "" {
		t.Errorf("conc: route left after the SA was removed: %q", out)
	}

	if err := conc.Stop(); err != nil {
		t.Errorf("concentratord on SIGTERM: %v", err)
	}
	stopped, err := conc.WaitLog(ctx, "userspace data plane stopped", nil)
	if err != nil {
		t.Error(err)
	} else {
		// Only what the host itself sends to the TUN link (IPv6 router
		// solicitations, MLD) may be dropped, and under load what finds
		// a worker's queue full.
		drops, _ := stopped["drops"].(map[string]any)
		for reason, n := range drops {
			if reason == "link_local" || (bulk > 0 && reason == "queue_full") {
				t.Logf("conc: %v packets dropped: %s", n, reason)
				continue
			}
			t.Errorf("conc: %v packets dropped: %s", n, reason)
		}
	}
	t.Logf("user-space tier (%s): %v", esp, time.Since(start).Round(time.Millisecond))
	return gc
}

// TestAutoDataPlane: with dataplane.mode auto concentratord probes the
// kernel for ESP, logs its choice with the reason, and serves with the data
// plane it chose (userspace on a kernel without ESP, such as this build
// host's; xfrm in the VM).
func TestAutoDataPlane(t *testing.T) {
	requireNetns(t)
	bin := Binary(t, "concentratord")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	tp := NewTopology(t)
	c := strings.Replace(userspaceConfig(t, ESPProp), "  mode: userspace\n", "  mode: auto\n", 1)
	cfg := filepath.Join(t.TempDir(), "concentratord.yaml")
	writeFile(t, cfg, []byte(c))
	conc := tp.StartProcess(t, "concentratord", tp.Conc, bin, "--config", cfg)
	sel, err := conc.WaitLog(ctx, "dataplane selected", map[string]string{"mode": "auto"})
	if err != nil {
		t.Fatal(err)
	}
	chosen, _ := sel.Attr("dataplane")
	reason, _ := sel.Attr("reason")
	if (chosen != "userspace" && chosen != "xfrm") || reason == "" {
		t.Fatalf("dataplane selected: %v", sel)
	}
	if _, err := conc.WaitLog(ctx, "listening", map[string]string{"dataplane": chosen}); err != nil {
		t.Fatal(err)
	}
	t.Logf("auto chose %s: %s", chosen, reason)
	if err := conc.Stop(); err != nil {
		t.Errorf("concentratord on SIGTERM: %v", err)
	}
}

// tcpThroughTunnel sends n bytes over TCP from gw's LAN address to a
// listener on conc's LAN address, through the tunnel, checks they all
// arrive and logs the rate.
func tcpThroughTunnel(t *testing.T, ctx context.Context, tp *Topology, n int) {
	t.Helper()
	var ln net.Listener
	if err := InNetns(tp.Conc, func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(ConcLANAddr, "0"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- -1
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		m, _ := io.Copy(io.Discard, c)
		got <- m
	}()
	var c net.Conn
	if err := InNetns(tp.GW, func() (err error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(GWLANAddr)}, Timeout: 5 * time.Second}
		c, err = d.DialContext(ctx, "tcp", ln.Addr().String())
		return err
	}); err != nil {
		t.Fatalf("TCP %s -> %s through the tunnel: %v", GWLANAddr, ln.Addr(), err)
	}
	t0 := time.Now()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	w, err := c.Write(make([]byte, n))
	c.Close()
	if err != nil {
		t.Fatalf("TCP write after %d bytes: %v", w, err)
	}
	select {
	case m := <-got:
		if m != int64(n) {
			t.Fatalf("TCP through the tunnel: %d of %d bytes arrived", m, n)
		}
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	d := time.Since(t0)
	t.Logf("TCP through the tunnel (strongSwan kernel-libipsec -> concentratord userspace): %d MiB in %v, %.0f Mbit/s",
		n>>20, d.Round(time.Millisecond), float64(n)*8/d.Seconds()/1e6)
}

// TestUserspaceDataPlaneRekey: CHILD rekeys started by strongSwan and by
// us (on schedule) move the traffic to the new SA in the user-space data
// plane; the old SA goes, the route into the TUN stays, and pings keep
// crossing both ways.
func TestUserspaceDataPlaneRekey(t *testing.T) {
	requireNetns(t)
	bin := Binary(t, "concentratord")
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	tp := NewTopology(t)
	// Our rekey comes 10-12 s after an SA's creation; the SA it replaces
	// goes 2 s later (the gateway sends on it until our delete arrives).
	c := strings.Replace(userspaceConfig(t, ESPProp), "children:\n",
		"children:\n  rekey_after: 12s\n  rekey_window: 2s\n  rekey_overlap: 2s\n", 1)
	cfg := filepath.Join(t.TempDir(), "concentratord.yaml")
	writeFile(t, cfg, []byte(c))
	gw := NewStrongSwan(t, tp, "gw", tp.GW)
	gw.Start(GatewaySwanctlConf(AuthPSK), nil)
	conc := tp.StartProcess(t, "concentratord", tp.Conc, bin, "--config", cfg)
	wait := func(msg string, attrs map[string]string, d time.Duration) LogRecord {
		t.Helper()
		return conc.mustWaitLog(t, ctx, d, msg, attrs)
	}
	wait("listening", map[string]string{"dataplane": "userspace"}, 10*time.Second)
	if out, err := gw.SwanctlContext(ctx, "--initiate", "--child", "lan", "--timeout", "20"); err != nil {
		t.Fatalf("initiate: %v\n%s", err, out)
	}
	pingBoth := func(step string) {
		t.Helper()
		for _, p := range []struct{ ns, src, dst string }{{tp.GW, GWLANAddr, ConcLANAddr}, {tp.Conc, ConcLANAddr, GWLANAddr}} {
			if err := tp.Ping(ctx, p.ns, p.src, p.dst, 2, 56); err != nil {
				t.Fatalf("%s: %v", step, err)
			}
		}
	}
	routed := func(step string) {
		t.Helper()
		if out, err := tp.Exec(ctx, tp.Conc, "ip", "-o", "route", "show", GWLAN); err != nil || !strings.Contains(out, "dev "+userspaceTUN) {
			t.Fatalf("%s: no route %s into %s: %v %q", step, GWLAN, userspaceTUN, err, out)
		}
	}
	in0, out0 := childSPIs(t, ctx, gw)
	pingBoth("first SA")

	// strongSwan rekeys: its new outbound SPI is our new inbound one; our
	// old inbound SA (its old outbound SPI) is removed after the peer's
	// delete.
	if out, err := gw.SwanctlContext(ctx, "--rekey", "--child", "lan"); err != nil {
		t.Fatalf("rekey child: %v\n%s", err, out)
	}
	in1, out1 := waitChildChange(t, ctx, gw, in0)
	wait("userspace SA installed", map[string]string{"spi_in": out1}, 5*time.Second)
	wait("userspace SA removed", map[string]string{"spi_in": out0}, 10*time.Second)
	routed("after strongSwan's rekey")
	pingBoth("after strongSwan's rekey")

	// We rekey on schedule (10-12 s after the SA was created).
	in2, out2 := waitChildChange(t, ctx, gw, in1)
	wait("userspace SA installed", map[string]string{"spi_in": out2}, 5*time.Second)
	wait("userspace SA removed", map[string]string{"spi_in": out1}, 5*time.Second)
	routed("after our rekey")
	pingBoth("after our rekey")
	sas, err := gw.ListSAs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sa, _ := FindIKESA(sas, "conc")
	var gc ChildSA
	for _, c := range sa.Children {
		if c.Get("spi-in") == in2 {
			gc = c
		}
	}
	if gc.Get("state") != "INSTALLED" || gc.Get("packets-in") != "4" || gc.Get("packets-out") != "4" {
		t.Errorf("gw: CHILD_SA %s after our rekey: state %s packets-in %s packets-out %s, want INSTALLED, 4 and 4 (two pings each way): %v",
			in2, gc.Get("state"), gc.Get("packets-in"), gc.Get("packets-out"), sa)
	}

	if out, err := gw.SwanctlContext(ctx, "--terminate", "--ike", "conc", "--timeout", "10"); err != nil {
		t.Fatalf("terminate: %v\n%s", err, out)
	}
	wait("userspace SA removed", map[string]string{"spi_in": out2}, 10*time.Second)
	if out, _ := tp.Exec(ctx, tp.Conc, "ip", "-o", "route", "show", GWLAN); strings.TrimSpace(out) != "" {
		t.Errorf("conc: route left after the last SA was removed: %q", out)
	}
	if err := conc.Stop(); err != nil {
		t.Errorf("concentratord on SIGTERM: %v", err)
	}
}
