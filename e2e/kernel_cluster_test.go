//go:build linux

package e2e

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The kernel tier's cluster: two concentratord nodes with the xfrm data
// plane share the gateway-facing address (ike.listen, as anycast nodes
// do) and one etcd; a router namespace sends that address to one node or
// the other (the route an ECMP router or BGP would change):
//
//	[gw] -- [nat] nat-conc 192.168.100.1 --- conc0 192.168.100.3 [rtr: the topology's conc namespace]
//	                                          ra 10.99.1.1 --- a0 10.99.1.2 + 192.168.100.2/32 [node a]
//	                                          rb 10.99.2.1 --- b0 10.99.2.2 + 192.168.100.2/32 [node b]
//	                                          etcd https://10.99.1.1:2379 (in rtr)
//
// The NAT reaches 192.168.100.2 through the router. Each node has the
// inner address ConcLANAddr on its own core0.
const (
	clusterRtrAddr  = "192.168.100.3"
	clusterEtcdAddr = "10.99.1.1"
)

// clusterNode is one node's namespace and link.
type clusterNode struct {
	name, ns, link, addr, gw string
}

// kernelCluster builds the two node namespaces and the router (the
// topology's conc namespace) and registers their removal.
func kernelCluster(t *testing.T, ctx context.Context, tp *Topology) (a, b clusterNode) {
	t.Helper()
	a = clusterNode{name: "a", ns: tp.Conc[:len(tp.Conc)-len("conc")] + "na", link: "a0", addr: "10.99.1.2", gw: "10.99.1.1"}
	b = clusterNode{name: "b", ns: tp.Conc[:len(tp.Conc)-len("conc")] + "nb", link: "b0", addr: "10.99.2.2", gw: "10.99.2.1"}
	t.Cleanup(func() {
		for _, n := range []clusterNode{a, b} {
			if _, err := os.Stat(filepath.Join("/run/netns", n.ns)); err != nil {
				continue
			}
			if pids := nsPids(n.ns); len(pids) > 0 {
				t.Logf("cluster teardown: killing leftover processes in %s: %v", n.ns, pids)
				killPids(pids)
			}
			cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if _, err := run(cctx, nil, "ip", "netns", "del", n.ns); err != nil {
				t.Logf("cluster teardown: %v", err)
			}
			cancel()
		}
	})
	rtr := tp.Conc
	var cmds [][]string
	add := func(args ...string) { cmds = append(cmds, args) }
	// The router gives the shared address up and reaches it through a node.
	add("-n", rtr, "addr", "del", ConcAddr+"/24", "dev", "conc0")
	add("-n", rtr, "addr", "add", clusterRtrAddr+"/24", "dev", "conc0")
	add("-n", tp.NAT, "route", "add", ConcAddr+"/32", "via", clusterRtrAddr)
	for i, n := range []clusterNode{a, b} {
		r := fmt.Sprintf("r%s", n.name)
		add("netns", "add", n.ns)
		add("-n", n.ns, "link", "set", "lo", "up")
		add("-n", rtr, "link", "add", r, "type", "veth", "peer", "name", n.link, "netns", n.ns)
		add("-n", rtr, "addr", "add", fmt.Sprintf("10.99.%d.1/24", i+1), "dev", r)
		add("-n", rtr, "link", "set", r, "up")
		add("-n", n.ns, "addr", "add", n.addr+"/24", "dev", n.link)
		add("-n", n.ns, "addr", "add", ConcAddr+"/32", "dev", n.link)
		add("-n", n.ns, "link", "set", n.link, "up")
		// Towards the gateway from the shared address; towards etcd (the
		// router's links) from the node's own, or the answers would follow
		// the shared address's route to whichever node has it.
		add("-n", n.ns, "route", "add", "default", "via", n.gw, "src", ConcAddr)
		add("-n", n.ns, "route", "replace", "10.99.0.0/16", "via", n.gw, "src", n.addr)
		add("-n", n.ns, "link", "add", "core0", "type", "veth", "peer", "name", "core0-peer")
		add("-n", n.ns, "addr", "add", ConcLANAddr+"/24", "dev", "core0")
		add("-n", n.ns, "link", "set", "core0", "up")
		add("-n", n.ns, "link", "set", "core0-peer", "up")
	}
	add("-n", rtr, "route", "add", ConcAddr+"/32", "via", a.addr)
	for _, c := range cmds {
		if out, err := run(ctx, nil, "ip", c...); err != nil {
			t.Fatalf("cluster topology: ip %s: %v %s", strings.Join(c, " "), err, out)
		}
	}
	if err := tp.Sysctl(ctx, rtr, "net.ipv4.ip_forward=1"); err != nil {
		t.Fatal(err)
	}
	for _, n := range []clusterNode{a, b} {
		if err := tp.Sysctl(ctx, n.ns, "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"); err != nil {
			t.Fatal(err)
		}
	}
	return a, b
}

// startEtcd runs Debian's etcd (etcd-server) in the router namespace,
// clients over mutual TLS on clusterEtcdAddr, and returns the client
// credential files (CA, certificate, key).
func startEtcd(t *testing.T, ctx context.Context, tp *Topology, dir string) (ca, cert, key string) {
	t.Helper()
	bin := "/usr/bin/etcd"
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("kernel cluster tier needs etcd (Debian etcd-server): %v", err)
	}
	pki := NewPKI(t)
	srv := pki.IssueIP(t, "etcd.e2e", net.ParseIP(clusterEtcdAddr))
	cli := pki.Issue(t, "concentratord.e2e")
	files := map[string][]byte{"ca.pem": pki.CAPEM, "etcd.pem": srv.CertPEM, "etcd-key.pem": srv.KeyPEM,
		"client.pem": cli.CertPEM, "client-key.pem": cli.KeyPEM}
	for n, b := range files {
		writeFile(t, filepath.Join(dir, n), b)
	}
	url := "https://" + clusterEtcdAddr + ":2379"
	p := tp.StartProcess(t, "etcd", tp.Conc, bin, "--name", "e2e", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", url, "--advertise-client-urls", url,
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "e2e=http://127.0.0.1:2380",
		"--cert-file", filepath.Join(dir, "etcd.pem"), "--key-file", filepath.Join(dir, "etcd-key.pem"),
		"--trusted-ca-file", filepath.Join(dir, "ca.pem"), "--client-cert-auth",
		// As the embedded etcd: the nodes' SPI reservations take more than
		// etcd's default 128 operations in one transaction.
		"--max-txn-ops", "1024",
		// One member on an emulated CPU: fewer heartbeats, no elections
		// from a slow tick.
		"--heartbeat-interval", "500", "--election-timeout", "5000",
		"--logger", "zap", "--log-level", "warn")
	deadline := time.Now().Add(time.Minute)
	for {
		out, _ := tp.Exec(ctx, tp.Conc, "ss", "-Hltn", "sport = :2379")
		if strings.Contains(out, "2379") {
			break
		}
		if p.Exited() || time.Now().After(deadline) {
			t.Fatalf("etcd did not start listening: %s", tail(p.Stderr(), 4096))
		}
		time.Sleep(200 * time.Millisecond)
	}
	return filepath.Join(dir, "ca.pem"), filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem")
}

// gwPinger pings ConcLANAddr from the gateway's LAN every interval and
// records when replies come.
type gwPinger struct {
	mu      sync.Mutex
	replies []time.Time
	sent    int
	stop    func()
}

func startGWPinger(t *testing.T, tp *Topology, interval time.Duration) *gwPinger {
	t.Helper()
	c, err := tp.ListenPacket(tp.GW, "ip4:icmp", GWLANAddr)
	if err != nil {
		t.Fatal(err)
	}
	g := &gwPinger{}
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			if n >= 8 && buf[0] == 0 && binary.BigEndian.Uint16(buf[4:]) == 0x2e2e && from.String() == ConcLANAddr {
				g.mu.Lock()
				g.replies = append(g.replies, time.Now())
				g.mu.Unlock()
			}
		}
	}()
	go func() {
		defer wg.Done()
		to := &net.IPAddr{IP: net.ParseIP(ConcLANAddr)}
		tick := time.NewTicker(interval)
		defer tick.Stop()
		msg := make([]byte, 8+56)
		for seq := uint16(1); ; seq++ {
			select {
			case <-quit:
				return
			case <-tick.C:
			}
			msg[0], msg[2], msg[3] = 8, 0, 0
			binary.BigEndian.PutUint16(msg[4:], 0x2e2e)
			binary.BigEndian.PutUint16(msg[6:], seq)
			binary.BigEndian.PutUint16(msg[2:], icmpChecksum(msg))
			if _, err := c.WriteTo(msg, to); err == nil {
				g.mu.Lock()
				g.sent++
				g.mu.Unlock()
			}
		}
	}()
	var once sync.Once
	g.stop = func() {
		once.Do(func() {
			close(quit)
			c.Close()
			wg.Wait()
		})
	}
	t.Cleanup(g.stop)
	return g
}

// repliesAfter counts replies after t0; gap is the longest time without a
// reply between t0 and the last reply.
func (g *gwPinger) repliesAfter(t0 time.Time) (n int, gap time.Duration, first time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	last := t0
	for _, r := range g.replies {
		if r.Before(t0) {
			last = r
			continue
		}
		if n == 0 {
			first = r
		}
		n++
		gap = max(gap, r.Sub(last))
		last = r
	}
	return n, gap, first
}

var (
	xfrmOSeqRE = regexp.MustCompile(`oseq (0x[0-9a-f]+)`)
	xfrmOHiRE  = regexp.MustCompile(`oseq-hi (0x[0-9a-f]+)`)
)

// outState is a node's outbound XFRM state towards the gateway: its SPI,
// last sequence number used and packets sent.
type outState struct {
	spi           string
	oseq, packets uint64
}

func nodeOutState(t *testing.T, ctx context.Context, tp *Topology, ns string) (outState, bool) {
	t.Helper()
	out, err := tp.Exec(ctx, ns, "ip", "-s", "xfrm", "state")
	if err != nil {
		t.Fatalf("ip -s xfrm state in %s: %v", ns, err)
	}
	idx := xfrmHeadRE.FindAllStringSubmatchIndex(out, -1)
	for i, m := range idx {
		end := len(out)
		if i+1 < len(idx) {
			end = idx[i+1][0]
		}
		if out[m[2]:m[3]] != ConcAddr {
			continue // inbound
		}
		block := out[m[0]:end]
		var st outState
		if s := xfrmSPIRE.FindStringSubmatch(block); s != nil {
			st.spi = strings.TrimPrefix(s[1], "0x")
		}
		o := xfrmOSeqRE.FindStringSubmatch(block)
		if o == nil {
			t.Fatalf("%s: no oseq in\n%s", ns, block)
		}
		st.oseq, _ = strconv.ParseUint(strings.TrimPrefix(o[1], "0x"), 16, 64)
		if hi := xfrmOHiRE.FindStringSubmatch(block); hi != nil {
			h, _ := strconv.ParseUint(strings.TrimPrefix(hi[1], "0x"), 16, 64)
			st.oseq |= h << 32
		}
		if c := xfrmCurRE.FindStringSubmatch(block); c != nil {
			st.packets, _ = strconv.ParseUint(c[2], 10, 64)
		}
		return st, true
	}
	return outState{}, false
}

// TestKernelClusterKill is the cluster kill in the kernel tier: two nodes
// with the xfrm data plane and one etcd; strongSwan (kernel ESP) reaches
// node a; a is killed with SIGKILL and the route to the shared address
// moves to node b. b has no state for the gateway's ESP: the nftables
// set of its SPIs does not hold it, so the packets reach it through
// NFQUEUE, it claims the SA and takes it over from etcd once a's lease
// expired, and the pings resume. The gateway keeps its IKE SA and CHILD
// SA; b's outbound sequence numbers start above what a used.
func TestKernelClusterKill(t *testing.T) {
	requireKernelESP(t)
	start := time.Now()
	bin := Binary(t, "concentratord")
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	tp := NewTopology(t)
	a, b := kernelCluster(t, ctx, tp)
	dir := t.TempDir()
	// strongSwan first, while the VM is idle: its start is bounded.
	gw := NewStrongSwan(t, tp, "gw", tp.GW)
	gw.Plugins = KernelCharonPlugins
	gw.Start(GatewaySwanctlConf(AuthPSK), nil)
	ca, cert, key := startEtcd(t, ctx, tp, dir)
	ck := make([]byte, 32)
	rand.Read(ck)
	keyFile := filepath.Join(dir, "cluster.key")
	writeFile(t, keyFile, []byte(hex.EncodeToString(ck)+"\n"))

	base := xfrmConfig(t)
	const none = "statestore:\n  mode: none\n"
	if !strings.Contains(base, none) || !strings.Contains(base, "  id: conc-e2e\n") {
		t.Fatal("xfrmConfig: no statestore none section or node id to replace")
	}
	nodes := map[string]*Process{}
	startNode := func(n clusterNode) *Process {
		t.Helper()
		// No MSS clamp: its nftables commit can stall in the VM. The default
		// lease (10 s): on a loaded host the emulated CPU's etcd round trips
		// take seconds, and shorter leases were fenced right after their
		// grant. The outage after the kill is about one lease.
		c := strings.Replace(base, "  id: conc-e2e\n", "  id: node-"+n.name+"\n", 1)
		c = strings.Replace(c, "  xfrm:\n", "  xfrm:\n    mss_clamp: false\n", 1)
		c = strings.Replace(c, none, fmt.Sprintf(`statestore:
  mode: external
  endpoints: [https://%s:2379]
  ca_file: %s
  cert_file: %s
  key_file: %s
  cluster_key_file: %s
  data_dir: %s
  lease_ttl: 10s
`, clusterEtcdAddr, ca, cert, key, keyFile, filepath.Join(dir, "node-"+n.name)), 1)
		cfg := filepath.Join(dir, "node-"+n.name+".yaml")
		writeFile(t, cfg, []byte(c))
		p := tp.StartProcess(t, "concentratord "+n.name, n.ns, bin, "--config", cfg)
		wctx, wcancel := context.WithTimeout(ctx, 3*time.Minute)
		defer wcancel()
		_, err := p.WaitLog(wctx, "listening", map[string]string{"dataplane": "xfrm"})
		for try := 2; err != nil && p.Exited() && p.ExitCode() == 1 && try <= 4; try++ {
			// A state store request that timed out while starting ends
			// the process (as a supervisor would, start it again): under
			// emulation on a loaded host etcd answers in seconds.
			t.Logf("node %s did not start (%v), start %d:\n%s", n.name, err, try, tail(p.Stderr(), 2048))
			p = tp.StartProcess(t, fmt.Sprintf("concentratord %s (start %d)", n.name, try), n.ns, bin, "--config", cfg)
			_, err = p.WaitLog(wctx, "listening", map[string]string{"dataplane": "xfrm"})
		}
		if err != nil {
			p.cmd.Process.Signal(syscall.SIGQUIT)
			t.Fatalf("node %s: %v", n.name, err)
		}
		if _, err := p.WaitLog(wctx, "xfrm data plane ready", map[string]string{"cluster_esp": "true"}); err != nil {
			t.Fatalf("node %s: %v", n.name, err)
		}
		nodes[n.name] = p
		return p
	}
	pa := startNode(a)
	pb := startNode(b)
	for _, n := range []clusterNode{a, b} {
		if out, err := tp.Exec(ctx, n.ns, "nft", "list", "table", "inet", "ikefleet_esp"); err != nil || !strings.Contains(out, "queue") {
			t.Fatalf("node %s: table inet ikefleet_esp: %v\n%s", n.name, err, out)
		}
	}

	if out, err := gw.SwanctlContext(ctx, "--initiate", "--child", "lan", "--timeout", "30"); err != nil {
		t.Fatalf("initiate: %v\n%s", err, out)
	}
	if err := tp.Ping(ctx, tp.GW, GWLANAddr, ConcLANAddr, 3, 56); err != nil {
		t.Fatalf("through node a: %v", err)
	}
	sas, _ := gw.ListSAs(ctx)
	before, _ := FindIKESA(sas, "conc")
	in0, out0 := childSPIs(t, ctx, gw)
	if st, ok := nodeOutState(t, ctx, tp, b.ns); ok {
		t.Fatalf("node b holds an outbound state before the move: %+v", st)
	}
	// a's set holds the SA's inbound SPI: its ESP never went to the queue.
	if out, _ := tp.Exec(ctx, a.ns, "nft", "list", "set", "inet", "ikefleet_esp", "owned"); !strings.Contains(out, "elements") {
		t.Errorf("node a: owned set without elements:\n%s", out)
	}

	pinger := startGWPinger(t, tp, 100*time.Millisecond)
	time.Sleep(time.Second)
	if n, _, _ := pinger.repliesAfter(start); n == 0 {
		t.Fatal("no replies through node a")
	}

	// Kill a, then steer the shared address to b.
	if err := pa.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-pa.done
	killed := time.Now()
	aOut, ok := nodeOutState(t, ctx, tp, a.ns)
	if !ok {
		t.Fatal("node a: no outbound state left in the kernel after the kill")
	}
	if out, err := tp.Exec(ctx, tp.Conc, "ip", "route", "replace", ConcAddr+"/32", "via", b.addr); err != nil {
		t.Fatalf("steer to b: %v %s", err, out)
	}
	moved := time.Now()

	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	for {
		if n, _, _ := pinger.repliesAfter(moved); n >= 10 {
			break
		}
		select {
		case <-wctx.Done():
			st, _ := nodeOutState(t, ctx, tp, b.ns)
			t.Fatalf("pings did not resume through node b within 30 s (b's outbound state %+v)", st)
		case <-time.After(100 * time.Millisecond):
		}
	}
	n, gap, _ := pinger.repliesAfter(killed.Add(-time.Second))
	_, _, first := pinger.repliesAfter(killed)
	pinger.stop()
	t.Logf("outage: %v from the kill to the first reply through b (longest gap between replies %v; %d replies since)",
		first.Sub(killed).Round(time.Millisecond), gap.Round(time.Millisecond), n)

	bOut, ok := nodeOutState(t, ctx, tp, b.ns)
	if !ok {
		t.Fatal("node b: no outbound state after the takeover")
	}
	bStart := bOut.oseq - bOut.packets
	t.Logf("ESP sequence numbers: a used up to %d (%d packets); b started at %d (oseq %d after %d packets)",
		aOut.oseq, aOut.packets, bStart, bOut.oseq, bOut.packets)
	if bOut.spi != aOut.spi || bOut.spi != in0 {
		t.Errorf("outbound SPI on b %s, on a %s, the gateway's inbound %s", bOut.spi, aOut.spi, in0)
	}
	if bStart <= aOut.oseq {
		t.Errorf("node b started at sequence number %d, not above a's %d", bStart, aOut.oseq)
	}

	// The claim went through the queue and etcd.
	if _, err := pb.WaitLog(wctx, "SA claimed", nil); err != nil {
		t.Errorf("node b: %v", err)
	}
	if out, _ := tp.Exec(ctx, b.ns, "nft", "list", "chain", "inet", "ikefleet_esp", "input"); !regexp.MustCompile(`counter packets [1-9]`).MatchString(out) {
		t.Errorf("node b: no packet went through the queue rule:\n%s", out)
	}

	// strongSwan: same IKE SA, same CHILD SA, no second authentication.
	sas, err := gw.ListSAs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	after, ok := FindIKESA(sas, "conc")
	if !ok || after.Get("state") != "ESTABLISHED" || after.Get("initiator-spi") != before.Get("initiator-spi") ||
		after.Get("responder-spi") != before.Get("responder-spi") {
		t.Fatalf("gw: IKE SA after the move %v, before %v", after, before)
	}
	if in1, out1 := childSPIs(t, ctx, gw); in1 != in0 || out1 != out0 {
		t.Errorf("gw: CHILD SA %s/%s after the move, %s/%s before", in1, out1, in0, out0)
	}
	if c := strings.Count(gw.Log(), "IKE_SA conc[1] established"); c != 1 {
		t.Errorf("gw: IKE_SA established %d times, want once", c)
	}
	if r := gwReplayFailures(t, ctx, tp, gw, true); r != 0 {
		t.Errorf("gw: %d ESP packets refused by the replay window", r)
	}
	// IKE goes on through b.
	if out, err := gw.SwanctlContext(ctx, "--rekey", "--child", "lan"); err != nil {
		t.Fatalf("rekey through b: %v\n%s", err, out)
	}
	waitChildChange(t, ctx, gw, in0)
	if err := tp.Ping(ctx, tp.GW, GWLANAddr, ConcLANAddr, 3, 56); err != nil {
		t.Errorf("after the rekey through b: %v", err)
	}

	// b stops cleanly and takes its table with it.
	if err := pb.Stop(); err != nil {
		t.Errorf("node b on SIGTERM: %v", err)
	}
	if out, err := tp.Exec(ctx, b.ns, "nft", "list", "tables"); err != nil || strings.Contains(out, "ikefleet_esp") {
		t.Errorf("node b after SIGTERM: %v %s", err, out)
	}
	ks := make([]string, 0, len(nodes))
	for k := range nodes {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	t.Logf("kernel cluster kill (nodes %v): %v", ks, time.Since(start).Round(time.Millisecond))
}
