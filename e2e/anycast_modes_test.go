//go:build linux

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// startAnycastNode writes node k's configuration (the common part and
// section, its anycast: section) and starts it in its namespace.
func startAnycastNode(t *testing.T, ctx context.Context, a *anycastTopo, ae anycastEtcd, dir string, k int, section string) *Process {
	t.Helper()
	return startAnycastNodeConf(t, ctx, a, dir, k, anycastNodeBase(k, filepath.Join(dir, fmt.Sprintf("n%d", k)), ae.CA, ae.Cert, ae.Key, ae.ClusterKey)+section)
}

func startAnycastNodeConf(t *testing.T, ctx context.Context, a *anycastTopo, dir string, k int, conf string) *Process {
	t.Helper()
	ndir := filepath.Join(dir, fmt.Sprintf("n%d", k))
	if err := os.MkdirAll(ndir, 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(ndir, "concentratord.yaml")
	writeFile(t, cfg, []byte(conf))
	p := a.tp.StartProcess(t, fmt.Sprintf("n%d", k), a.Nodes[k-1], Binary(t, "concentratord"), "--config", cfg)
	p.mustWaitLog(t, ctx, 60*time.Second, "listening", nil)
	return p
}

// blockEtcd drops node ns's packets to etcd (on) or lets them through again.
func blockEtcd(t *testing.T, ctx context.Context, a *anycastTopo, ns string, on bool) {
	t.Helper()
	if !on {
		if _, err := a.tp.Exec(ctx, ns, "nft", "delete", "table", "inet", "anycast_block"); err != nil {
			t.Fatal(err)
		}
		return
	}
	block := "table inet anycast_block {\n chain out {\n  type filter hook output priority 0; policy accept;\n  ip daddr " + etcdAddr + " tcp dport 2379 drop\n }\n}\n"
	if _, err := run(ctx, strings.NewReader(block), "ip", "netns", "exec", ns, "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
}

// TestKernelAnycastRoutes: anycast.mode kernel. A healthy node puts the
// anycast /32 on its dummy interface and routes its inner prefix through
// it (what a routing daemon on the host announces); when its etcd is
// blocked (unhealthy) both disappear, and they come back once it is
// healthy again. Draining (SIGTERM) removes them before the node exits.
// The build hosts' kernel has no dummy interfaces: this runs in the VM
// tier (make test-vm) with the kernel ESP tests.
func TestKernelAnycastRoutes(t *testing.T) {
	requireKernelESP(t)
	a := newAnycastTopo(t, 1)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	ae := startAnycastEtcd(t, a, dir)
	const dummy, inner = "ikf-any0", "10.30.0.0/16"
	ns := a.Nodes[0]
	p := startAnycastNode(t, ctx, a, ae, dir, 1, fmt.Sprintf(`anycast:
  mode: kernel
  inner_prefixes: [%s]
  kernel:
    interface: %s
%s`, inner, dummy, anycastHealthDrain))

	// state is what the dummy interface carries now: the anycast address,
	// the inner prefix's route.
	state := func() (addr, route bool, err error) {
		out, err := a.tp.Exec(ctx, ns, "ip", "-4", "-o", "addr", "show", "dev", dummy)
		if err != nil {
			return false, false, err
		}
		addr = strings.Contains(out, anycastNet)
		out, err = a.tp.Exec(ctx, ns, "ip", "-4", "route", "show", "dev", dummy)
		if err != nil {
			return false, false, err
		}
		return addr, strings.Contains(out, inner), nil
	}
	wait := func(want bool, what string) time.Duration {
		t.Helper()
		t0 := time.Now()
		var last error
		for {
			addr, route, err := state()
			if err == nil && addr == want && route == want {
				return time.Since(t0)
			}
			last = err
			if ctx.Err() != nil {
				out, _ := a.tp.Exec(context.Background(), ns, "ip", "addr", "show", "dev", dummy)
				t.Fatalf("%s: %s on %s: address %v, route %v (want %v), err %v\n%s", what, anycastNet, dummy, addr, route, want, last, out)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	dUp := wait(true, "healthy node")
	blockEtcd(t, ctx, a, ns, true)
	dDown := wait(false, "etcd blocked")
	p.mustWaitLog(t, ctx, 5*time.Second, "anycast: unhealthy, withdrawing", nil)
	blockEtcd(t, ctx, a, ns, false)
	dBack := wait(true, "etcd back")
	if err := syscall.Kill(p.PID(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	dDrain := wait(false, "drain")
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	err := p.Wait(wctx)
	wcancel()
	if err != nil {
		t.Fatalf("after SIGTERM: %v", err)
	}
	t.Logf("anycast-kernel: up-ms=%d unhealthy-removed-ms=%d back-ms=%d drain-removed-ms=%d",
		dUp.Milliseconds(), dDown.Milliseconds(), dBack.Milliseconds(), dDrain.Milliseconds())
}

// TestAnycastBIRDMD5: BGP sessions with TCP MD5 (RFC 2385). BIRD expects
// a password from both nodes; n1 has it and its route is installed, n2
// has another one and gets no session (its TCP segments fail the MD5
// check), until it is restarted with the right one.
func TestAnycastBIRDMD5(t *testing.T) {
	requireBird(t)
	a := newAnycastTopo(t, 2)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	ae := startAnycastEtcd(t, a, dir)
	const password = "md5-session-secret-2385"
	bc := BirdConfig{RouterID: "10.60.0.1", ASN: routerASN, HoldTime: 3}
	for k := 1; k <= 2; k++ {
		bc.Neighbors = append(bc.Neighbors, BirdNeighbor{Name: fmt.Sprintf("n%d", k), Local: fmt.Sprintf("10.50.%d.1", k),
			Addr: fmt.Sprintf("10.50.%d.2", k), ASN: nodeASN, Password: password})
	}
	bird := StartBird(t, a.tp, a.Rtr, dir, bc)
	startAnycastNode(t, ctx, a, ae, dir, 1, anycastBGPSection(1, password))
	n2 := startAnycastNode(t, ctx, a, ae, dir, 2, anycastBGPSection(2, "not-the-md5-secret-2385"))
	if _, err := WaitNextHops(ctx, a.Rtr, anycastNet, []string{"10.50.1.2"}, 60*time.Second); err != nil {
		out, _ := bird.Birdc(ctx, "show", "protocols", "all")
		t.Fatalf("%v\n%s", err, out)
	}
	// n2 has had as long as n1 to connect (both retry every second).
	// Wait for a few more of its attempts before looking at its session.
	n2.mustWaitLog(t, ctx, 30*time.Second, "anycast: healthy", nil)
	time.Sleep(3 * time.Second)
	up, err := bird.Established(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hops, err := NextHops(ctx, a.Rtr, anycastNet)
	if err != nil {
		t.Fatal(err)
	}
	if !up["n1"] || up["n2"] || strings.Join(hops, ",") != "10.50.1.2" {
		out, _ := bird.Birdc(ctx, "show", "protocols")
		t.Fatalf("sessions up %v, next hops %v; want only n1 (n2's password is wrong)\n%s", up, hops, out)
	}
	// With the right password n2 joins.
	if err := n2.Stop(); err != nil {
		t.Fatalf("n2 stop: %v", err)
	}
	startAnycastNode(t, ctx, a, ae, dir, 2, anycastBGPSection(2, password))
	d, err := WaitNextHops(ctx, a.Rtr, anycastNet, []string{"10.50.1.2", "10.50.2.2"}, 60*time.Second)
	if err != nil {
		out, _ := bird.Birdc(ctx, "show", "protocols", "all")
		t.Fatalf("%v\n%s", err, out)
	}
	out, _ := bird.Birdc(ctx, "show", "protocols", "all", "n2")
	t.Logf("anycast-md5: n2 with the right password announced after %v\n%s", d.Round(time.Millisecond), out)
}

// anycast6 is the IPv6 anycast address of TestAnycastBIRDIPv6.
const anycast6 = "2001:db8:100::10"

// TestAnycastBIRDIPv6: a node listening on an IPv6 anycast address too
// announces its /128 over an IPv6 BGP session (IPv6 unicast) to BIRD,
// which installs the route; a drain (SIGTERM) withdraws it.
func TestAnycastBIRDIPv6(t *testing.T) {
	requireBird(t)
	a := newAnycastTopo(t, 1)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	ae := startAnycastEtcd(t, a, dir)
	ns := a.Nodes[0]
	for _, c := range [][]string{
		{"-n", a.Rtr, "addr", "add", "fd00:50:1::1/64", "dev", "n1", "nodad"},
		{"-n", ns, "addr", "add", "fd00:50:1::2/64", "dev", "eth0", "nodad"},
		{"-n", ns, "addr", "add", anycast6 + "/128", "dev", "lo", "nodad"},
	} {
		if _, err := run(ctx, nil, "ip", c...); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.tp.Sysctl(ctx, a.Rtr, "net.ipv6.conf.all.forwarding=1"); err != nil {
		t.Fatal(err)
	}
	bird := StartBird(t, a.tp, a.Rtr, dir, BirdConfig{RouterID: "10.60.0.1", ASN: routerASN, HoldTime: 3,
		Neighbors: []BirdNeighbor{{Name: "n1v6", Local: "fd00:50:1::1", Addr: "fd00:50:1::2", ASN: nodeASN, IPv6: true}}})
	conf := anycastNodeBase(1, filepath.Join(dir, "n1"), ae.CA, ae.Cert, ae.Key, ae.ClusterKey) +
		strings.Replace(anycastBGPSection(1, ""), "address: 10.50.1.1", "address: fd00:50:1::1", 1)
	conf = strings.Replace(conf, "listen: ["+anycastAddr+"]", "listen: ["+anycastAddr+", "+anycast6+"]", 1)
	if !strings.Contains(conf, anycast6) || !strings.Contains(conf, "fd00:50:1::1") {
		t.Fatal("node configuration not as meant")
	}
	p := startAnycastNodeConf(t, ctx, a, dir, 1, conf)
	t0 := time.Now()
	var hops []string
	for {
		var err error
		hops, err = NextHops(ctx, a.Rtr, anycast6+"/128")
		if err == nil && len(hops) > 0 {
			break
		}
		if ctx.Err() != nil || time.Since(t0) > 60*time.Second {
			out, _ := bird.Birdc(context.Background(), "show", "protocols", "all")
			t.Fatalf("no route to %s/128 in the router: %v\n%s", anycast6, err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	up, err := bird.Established(ctx)
	if err != nil || !up["n1v6"] {
		t.Fatalf("IPv6 session: %v %v", up, err)
	}
	out, _ := bird.Birdc(ctx, "show", "route", "for", anycast6, "all")
	t.Logf("anycast-ipv6: %s/128 via %v after %v\n%s", anycast6, hops, time.Since(t0).Round(time.Millisecond), out)
	if err := syscall.Kill(p.PID(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	d, err := WaitNextHops(ctx, a.Rtr, anycast6+"/128", nil, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("anycast-ipv6: withdrawn %v after SIGTERM", d.Round(time.Millisecond))
}
