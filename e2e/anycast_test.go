//go:build linux

package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The anycast address the nodes share, and the router's view of them.
const (
	anycastAddr = "198.51.100.10"
	anycastNet  = anycastAddr + "/32"
	etcdAddr    = "10.55.0.1" // on the router's lo
	routerASN   = 65000
	// anycastEtcdPath is Debian's etcd (package etcd-server).
	anycastEtcdPath = "/usr/bin/etcd"
	nodeASN         = 65001
)

// anycastNet is the topology:
//
//	[cl] cl0 10.60.0.2 --- rtr-cl 10.60.0.1 [rtr: BIRD, etcd on 10.55.0.1]
//	[nK] eth0 10.50.K.2 --- nK 10.50.K.1 [rtr]      K = 1..4; 198.51.100.10/32 on every node's lo
type anycastTopo struct {
	tp     *Topology // process tracking only
	prefix string
	Rtr    string
	Client string
	Nodes  []string
}

func (a *anycastTopo) namespaces() []string {
	return append([]string{a.Rtr, a.Client}, a.Nodes...)
}

func newAnycastTopo(t *testing.T, nodes int) *anycastTopo {
	t.Helper()
	sweepStaleOnce.Do(func() { sweepStale(t) })
	prefix := fmt.Sprintf("%s%d-%d-", nsPrefix, os.Getpid(), nsCounter.Add(1))
	a := &anycastTopo{tp: &Topology{t: t}, prefix: prefix, Rtr: prefix + "rtr", Client: prefix + "cl"}
	for k := 1; k <= nodes; k++ {
		a.Nodes = append(a.Nodes, fmt.Sprintf("%sn%d", prefix, k))
	}
	t.Cleanup(func() {
		for _, ns := range a.namespaces() {
			if _, err := os.Stat(filepath.Join("/run/netns", ns)); err != nil {
				continue
			}
			if pids := nsPids(ns); len(pids) > 0 {
				killPids(pids)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if _, err := run(ctx, nil, "ip", "netns", "del", ns); err != nil {
				t.Logf("anycast teardown: %v", err)
			}
			cancel()
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var cmds [][]string
	add := func(args ...string) { cmds = append(cmds, args) }
	for _, ns := range a.namespaces() {
		add("netns", "add", ns)
		add("-n", ns, "link", "set", "lo", "up")
	}
	add("-n", a.Rtr, "addr", "add", etcdAddr+"/32", "dev", "lo")
	add("-n", a.Client, "link", "add", "cl0", "type", "veth", "peer", "name", "rtr-cl", "netns", a.Rtr)
	add("-n", a.Client, "addr", "add", "10.60.0.2/24", "dev", "cl0")
	add("-n", a.Rtr, "addr", "add", "10.60.0.1/24", "dev", "rtr-cl")
	add("-n", a.Client, "link", "set", "cl0", "up")
	add("-n", a.Rtr, "link", "set", "rtr-cl", "up")
	add("-n", a.Client, "route", "add", "default", "via", "10.60.0.1")
	for i, ns := range a.Nodes {
		k := i + 1
		rif := fmt.Sprintf("n%d", k)
		add("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", rif, "netns", a.Rtr)
		add("-n", ns, "addr", "add", fmt.Sprintf("10.50.%d.2/24", k), "dev", "eth0")
		add("-n", a.Rtr, "addr", "add", fmt.Sprintf("10.50.%d.1/24", k), "dev", rif)
		add("-n", ns, "link", "set", "eth0", "up")
		add("-n", a.Rtr, "link", "set", rif, "up")
		add("-n", ns, "addr", "add", anycastNet, "dev", "lo")
		add("-n", ns, "route", "add", "default", "via", fmt.Sprintf("10.50.%d.1", k))
	}
	for _, c := range cmds {
		if _, err := run(ctx, nil, "ip", c...); err != nil {
			t.Fatalf("anycast topology: %v", err)
		}
	}
	// Forwarding, and ECMP hashing on the 5-tuple (L4), not only addresses.
	if err := a.tp.Sysctl(ctx, a.Rtr, "net.ipv4.ip_forward=1", "net.ipv4.fib_multipath_hash_policy=1"); err != nil {
		t.Fatal(err)
	}
	return a
}

func anycastNodeConfig(k int, dir, ca, cert, key, clusterKey string) string {
	return anycastNodeBase(k, dir, ca, cert, key, clusterKey) + anycastBGPSection(k, "")
}

// anycastEtcd is the one-member etcd of an anycast topology (TLS with
// client certificates, on the router's 10.55.0.1) and the files a node
// needs to use it.
type anycastEtcd struct {
	CA, Cert, Key, ClusterKey string
	Proc                      *Process
}

func startAnycastEtcd(t *testing.T, a *anycastTopo, dir string) anycastEtcd {
	t.Helper()
	if _, err := os.Stat(anycastEtcdPath); err != nil {
		missingDependency(t, "anycast test needs "+anycastEtcdPath+" (Debian package etcd-server)")
	}
	pki := NewPKI(t)
	ae := anycastEtcd{CA: filepath.Join(dir, "ca.crt"), Cert: filepath.Join(dir, "node.crt"), Key: filepath.Join(dir, "node.key"),
		ClusterKey: filepath.Join(dir, "cluster.key")}
	writeFile(t, ae.CA, pki.CAPEM)
	srv := pki.IssueIP(t, "etcd", net.ParseIP(etcdAddr))
	cli := pki.Issue(t, "ikefleet-node")
	files := map[string][]byte{"etcd.crt": srv.CertPEM, "etcd.key": srv.KeyPEM, "node.crt": cli.CertPEM, "node.key": cli.KeyPEM,
		"cluster.key": []byte(strings.Repeat("5a", 32) + "\n")}
	for name, b := range files {
		writeFile(t, filepath.Join(dir, name), b)
	}
	ae.Proc = a.tp.StartProcess(t, "etcd", a.Rtr, anycastEtcdPath, "--name", "e1", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", "https://"+etcdAddr+":2379", "--advertise-client-urls", "https://"+etcdAddr+":2379",
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "e1=http://127.0.0.1:2380", "--cert-file", filepath.Join(dir, "etcd.crt"),
		"--key-file", filepath.Join(dir, "etcd.key"), "--client-cert-auth", "--trusted-ca-file", ae.CA,
		"--listen-metrics-urls", "http://127.0.0.1:2381", "--log-level", "warn")
	return ae
}

// anycastBGPSection announces over eBGP to the router on node k's link
// (TCP MD5 with password, if set).
func anycastBGPSection(k int, password string) string {
	pw := ""
	if password != "" {
		pw = fmt.Sprintf("\n        password: %q", password)
	}
	return fmt.Sprintf(`anycast:
  mode: bgp
  bgp:
    asn: %[2]d
    router_id: 10.50.%[1]d.2
    hold_time: 3s
    connect_retry: 1s
    neighbors:
      - address: 10.50.%[1]d.1
        asn: %[3]d%[4]s
%[5]s`, k, nodeASN, routerASN, pw, anycastHealthDrain)
}

// anycastHealthDrain is the health and drain part of the anycast section.
const anycastHealthDrain = `  health:
    interval: 250ms
    fall: 3
    rise: 2
  drain:
    grace_period: 10s
    settle: 2s
`

// anycastNodeBase is node k's configuration without its anycast section.
func anycastNodeBase(k int, dir, ca, cert, key, clusterKey string) string {
	// In the kernel tier's VM (an emulated CPU) a start's renewals can
	// come later than 5 s allow (the node fenced itself at its start
	// once), as the other VM runs' did with 3 s.
	lease := "5s"
	if os.Getenv("IKEFLEET_VM") == "1" {
		lease = "10s"
	}
	return fmt.Sprintf(`node:
  id: n%[1]d
log:
  level: info
  format: json
ike:
  listen: [%[2]s]
identity:
  id: %[3]s
auth:
  psks:
    - id: %[4]s
      secret: %[5]q
children:
  local_ts: [10.30.0.0/16]
  remote_ts: [10.20.0.0/16]
dataplane:
  mode: memory
statestore:
  mode: external
  data_dir: %[6]s
  endpoints: [https://%[7]s:2379]
  ca_file: %[8]s
  cert_file: %[9]s
  key_file: %[10]s
  cluster_key_file: %[11]s
  lease_ttl: %[12]s
metrics:
  listen: 127.0.0.1:9180
admin:
  listen: 127.0.0.1:9179
`, k, anycastAddr, ConcID, GWPSKID, TestPSK, dir, etcdAddr, ca, cert, key, clusterKey, lease)
}

// TestAnycastBIRD: three concentratord nodes announce the anycast /32 to a
// BIRD 2 router over eBGP; the router installs one ECMP route with three
// next hops and spreads flows by 5-tuple. A node whose etcd is blocked
// withdraws (health checks) and comes back; a node stopped with SIGTERM
// drains (withdraws at once, then exits); a fourth node joins the set; a
// node killed with SIGKILL is withdrawn as soon as its kernel closes the
// session; a node whose host vanishes (every packet dropped) is withdrawn
// when the session's hold timer (3 s) expires.
func TestAnycastBIRD(t *testing.T) {
	requireBird(t)
	bin := Binary(t, "concentratord")
	a := newAnycastTopo(t, 4)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	ae := startAnycastEtcd(t, a, dir)
	ca := ae.CA

	// BIRD: one eBGP session per node, hold time 3 s.
	bc := BirdConfig{RouterID: "10.60.0.1", ASN: routerASN, HoldTime: 3}
	for k := 1; k <= len(a.Nodes); k++ {
		bc.Neighbors = append(bc.Neighbors, BirdNeighbor{Name: fmt.Sprintf("n%d", k), Local: fmt.Sprintf("10.50.%d.1", k),
			Addr: fmt.Sprintf("10.50.%d.2", k), ASN: nodeASN})
	}
	bird := StartBird(t, a.tp, a.Rtr, dir, bc)

	var procs []*Process
	var hops []string
	start := func(i int) {
		ns, k := a.Nodes[i], i+1
		ndir := filepath.Join(dir, fmt.Sprintf("n%d", k))
		if err := os.MkdirAll(ndir, 0o700); err != nil {
			t.Fatal(err)
		}
		cfg := filepath.Join(ndir, "concentratord.yaml")
		writeFile(t, cfg, []byte(anycastNodeConfig(k, ndir, ca, ae.Cert, ae.Key, ae.ClusterKey)))
		p := a.tp.StartProcess(t, fmt.Sprintf("n%d", k), ns, bin, "--config", cfg)
		p.mustWaitLog(t, ctx, 60*time.Second, "listening", nil)
		procs = append(procs, p)
		hops = append(hops, fmt.Sprintf("10.50.%d.2", k))
	}
	for i := range 3 {
		start(i)
	}
	t0 := time.Now()
	if _, err := WaitNextHops(ctx, a.Rtr, anycastNet, hops, 60*time.Second); err != nil {
		out, _ := bird.Birdc(ctx, "show", "protocols", "all")
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("route %s with 3 next hops %v, %v after the last node listened", anycastNet, hops, time.Since(t0).Round(time.Millisecond))
	if out, err := bird.Birdc(ctx, "show", "route", "for", anycastAddr, "all"); err == nil {
		t.Logf("birdc show route:\n%s", out)
	}

	// Per-flow hashing: UDP flows from many source ports to the anycast
	// address go through all three next hops.
	seen := map[string]int{}
	for sport := 1024; sport < 1024+64; sport++ {
		out, err := run(ctx, nil, "ip", "-n", a.Rtr, "route", "get", anycastAddr, "from", "10.60.0.2", "iif", "rtr-cl",
			"ipproto", "udp", "sport", fmt.Sprint(sport), "dport", "4500")
		if err != nil {
			t.Fatal(err)
		}
		if m := nexthopVia.FindStringSubmatch(out); m != nil {
			seen[m[1]]++
		}
	}
	if len(seen) != 3 {
		t.Fatalf("64 flows hashed onto %v, want all three next hops", seen)
	}
	t.Logf("64 UDP flows by next hop: %v", seen)

	// Unhealthy: n3 loses etcd. Withdrawn after the store's request fails
	// and three bad checks; back once etcd is reachable again.
	block := "table inet anycast_block {\n chain out {\n  type filter hook output priority 0; policy accept;\n  ip daddr " + etcdAddr + " tcp dport 2379 drop\n }\n}\n"
	if _, err := run(ctx, strings.NewReader(block), "ip", "netns", "exec", a.Nodes[2], "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	dUnhealthy, err := WaitNextHops(ctx, a.Rtr, anycastNet, hops[:2], 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("n3's etcd blocked: its next hop withdrawn after %v", dUnhealthy.Round(time.Millisecond))
	procs[2].mustWaitLog(t, ctx, 5*time.Second, "anycast: unhealthy, withdrawing", nil)
	if _, err := a.tp.Exec(ctx, a.Nodes[2], "nft", "delete", "table", "inet", "anycast_block"); err != nil {
		t.Fatal(err)
	}
	dBack, err := WaitNextHops(ctx, a.Rtr, anycastNet, hops, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("n3's etcd unblocked: announced again after %v", dBack.Round(time.Millisecond))

	// Drain: SIGTERM to n2 withdraws at once, then it exits.
	tTerm := time.Now()
	if err := syscall.Kill(procs[1].PID(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	dDrain, err := WaitNextHops(ctx, a.Rtr, anycastNet, []string{hops[0], hops[2]}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	err = procs[1].Wait(wctx)
	wcancel()
	if err != nil {
		t.Fatalf("n2 after SIGTERM: %v", err)
	}
	exitAfter := time.Since(tTerm)
	rec := procs[1].mustWaitLog(t, ctx, time.Second, "drain: done", nil)
	elapsed, _ := rec.Attr("elapsed")
	t.Logf("n2 SIGTERM: next hop withdrawn after %v; drain took %s (log), process exited after %v (grace period 10s)",
		dDrain.Round(time.Millisecond), elapsed, exitAfter.Round(time.Millisecond))
	if exitAfter > 10*time.Second+5*time.Second {
		t.Errorf("n2 took %v to exit, more than its grace period", exitAfter)
	}

	// A fourth node joins: its next hop is added once it proved healthy.
	tAdd := time.Now()
	start(3)
	if _, err := WaitNextHops(ctx, a.Rtr, anycastNet, []string{hops[0], hops[2], hops[3]}, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	dJoin := time.Since(tAdd)
	t.Logf("n4 started: its next hop added %v after start", dJoin.Round(time.Millisecond))

	// Kill -9 n1: no withdrawal is sent, but its kernel closes the TCP
	// session, and BIRD drops the route at once.
	if err := syscall.Kill(procs[0].PID(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	dKill, err := WaitNextHops(ctx, a.Rtr, anycastNet, []string{hops[2], hops[3]}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("n1 killed (SIGKILL): next hop withdrawn by BIRD after %v (session closed by n1's kernel)", dKill.Round(time.Millisecond))

	// n4's host vanishes (every packet on its link dropped): nothing
	// closes the session; BIRD withdraws when the hold timer (3 s) expires.
	vanish := "table inet anycast_vanish {\n chain in {\n  type filter hook input priority 0; policy drop;\n }\n chain out {\n  type filter hook output priority 0; policy drop;\n }\n}\n"
	if _, err := run(ctx, strings.NewReader(vanish), "ip", "netns", "exec", a.Nodes[3], "nft", "-f", "-"); err != nil {
		t.Fatal(err)
	}
	dLoss, err := WaitNextHops(ctx, a.Rtr, anycastNet, []string{hops[2]}, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("n4's host gone silent: next hop withdrawn by BIRD after %v (hold time 3s)", dLoss.Round(time.Millisecond))
	up, err := bird.Established(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !up["n3"] || up["n1"] || up["n2"] || up["n4"] {
		t.Fatalf("BGP sessions up: %v, want only n3", up)
	}
	fmt.Printf("anycast: unhealthy-withdraw-ms=%d reannounce-ms=%d drain-withdraw-ms=%d drain-exit-ms=%d join-ms=%d kill-withdraw-ms=%d host-loss-withdraw-ms=%d\n",
		dUnhealthy.Milliseconds(), dBack.Milliseconds(), dDrain.Milliseconds(), exitAfter.Milliseconds(), dJoin.Milliseconds(),
		dKill.Milliseconds(), dLoss.Milliseconds())
}
