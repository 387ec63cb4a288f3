//go:build linux

package e2e

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Addresses of the cluster topology (NewCluster):
//
//	[gwNN] wan0 10.10.s.2 --- nat-gwNN 10.10.s.1 [nat] nat-rtr 192.168.100.1 --- rtr-nat 192.168.100.254 [rtr]
//	[gwNN] lan0 10.20.s.1/24 (s = NN+1)                   (masquerade)
//	[rtr]  rtr-nK 172.16.K.1 --- n0 172.16.K.2 [nK]  lo: 192.168.200.1/32 (the service address, on every node)
//	                                                core0 10.30.0.1/24 (the same on every node)
//	[nK]   etcd0 10.41.K.2 --- nK 10.41.K.1 [etcd]  mem0: 10.40.0.11, .12, .13 (the members)
//
// The router marks each packet to the service address with the node its
// flow goes to (FlowSpreader) and policy routing sends it there; the nodes
// answer from the service address straight back through the router. The
// nodes reach each other's peer API (172.16.K.2) through the router and
// etcd through their own link into the etcd namespace.
const (
	ClusterVIP       = "192.168.200.1"   // the service address every node has
	ClusterNATPublic = "192.168.100.1"   // the gateways' NAT, seen by the nodes
	clusterRtrPublic = "192.168.100.254" // the router on the NAT's side
	ClusterCoreAddr  = "10.30.0.1"       // every node's inner address: what gateways ping
	clusterPeerPort  = 7100
	clusterTUN       = "ikfus0"
)

// ClusterOptions sizes a cluster topology.
type ClusterOptions struct {
	Nodes    int           // concentratord nodes (default 3)
	Standby  int           // of those, the last Standby are configured but not started (StartNode joins them later)
	Members  int           // etcd members (default 3)
	Gateways int           // strongSwan gateways (default 20, at most 200)
	LeaseTTL time.Duration // statestore.lease_ttl of the nodes (default 3s)
	LogLevel string        // the nodes' log.level (default debug: claims and hand-offs are logged at debug)
	// NewSpreader makes the router's spreading of flows over the nodes
	// once the namespaces exist (default: the nftables flow map, see
	// nftSpreader). A BGP router announcing the nodes' routes can stand in.
	NewSpreader func(ctx context.Context, c *Cluster, flows []Flow) (FlowSpreader, error)
	// NodeConfig, if set, is appended to each node's configuration (e.g.
	// an anycast: section announcing the service address over BGP).
	NodeConfig func(n *ClusterNode) string
}

// Cluster is N concentratord nodes sharing one service address behind a
// router that spreads the gateways' flows over them, a real etcd cluster
// as their state store, and strongSwan gateways behind a NAT.
type Cluster struct {
	TP                *Topology
	Router, NAT, Etcd string // namespaces
	Nodes             []*ClusterNode
	Members           []*EtcdMember
	Gateways          []*ClusterGateway
	Spread            FlowSpreader
	PKI               *PKI

	opts        ClusterOptions
	dir         string
	bin         string
	etcdBin     string
	etcdCA      string // files every node uses
	clusterKey  string
	etcdClient  Credential
	etcdClientF [2]string // cert, key
	httpOnce    sync.Once
	http        *http.Client // to the members, from their namespace
}

// ClusterNode is one concentratord of the cluster.
type ClusterNode struct {
	Index  int    // 1-based
	ID     string // node.id: n1, n2...
	NS     string
	Addr   string // on the router's link; the peer API listens here
	Config string // path of its YAML
	Proc   *Process
}

// EtcdMember is one member of the cluster's etcd.
type EtcdMember struct {
	Name    string // e1, e2...
	Addr    string
	DataDir string
	Proc    *Process
	args    []string
}

// ClientURL is the member's client endpoint.
func (m *EtcdMember) ClientURL() string { return "https://" + m.Addr + ":2379" }

// ClusterGateway is one strongSwan gateway behind the NAT: its own
// namespace, identity, PSK and inner LAN, and its own IKE ports, so that
// the NAT's masquerade keeps them and the router's flows are known.
type ClusterGateway struct {
	Index    int    // 1-based
	Name     string // gw01...
	NS       string
	LANAddr  string // 10.20.s.1: source of its pings
	ID       string // gwNN@iot.example
	PSK      string
	IKEPort  int    // charon.port: flow NATPublic:IKEPort -> VIP:500
	NATTPort int    // charon.port_nat_t: flow NATPublic:NATTPort -> VIP:4500
	WAN      string // its address towards the NAT
	SS       *StrongSwan
}

// Conf is the gateway's swanctl.conf.
func (g *ClusterGateway) Conf() string { return clusterGatewayConf(g, g.WAN) }

// Flows returns the gateway's two flows as the router sees them.
func (g *ClusterGateway) Flows() []Flow {
	a := netip.MustParseAddr(ClusterNATPublic)
	return []Flow{{Src: netip.AddrPortFrom(a, uint16(g.IKEPort)), DPort: 500}, {Src: netip.AddrPortFrom(a, uint16(g.NATTPort)), DPort: 4500}}
}

// ESPFlow is the flow carrying the gateway's IKE and ESP once NAT-T has
// started: the one that decides which node serves it.
func (g *ClusterGateway) ESPFlow() Flow { return g.Flows()[1] }

// EtcdPath is Debian's etcd (package etcd-server).
const EtcdPath = "/usr/bin/etcd"

// requireCluster is requireNetns plus etcd: skipped, or failed with CI=true.
func requireCluster(t testing.TB) {
	t.Helper()
	requireNetns(t)
	if fi, err := os.Stat(EtcdPath); err != nil || fi.Mode()&0o111 == 0 {
		missingDependency(t, "cluster test needs "+EtcdPath+" (Debian package etcd-server)")
	}
}

// NewCluster builds the topology, starts etcd and the nodes, and starts
// (does not initiate) the gateways' charons. Everything is stopped and
// removed at cleanup.
func NewCluster(t *testing.T, ctx context.Context, o ClusterOptions) *Cluster {
	t.Helper()
	requireCluster(t)
	if o.Nodes == 0 {
		o.Nodes = 3
	}
	if o.Members == 0 {
		o.Members = 3
	}
	if o.Gateways == 0 {
		o.Gateways = 20
	}
	if o.LogLevel == "" {
		o.LogLevel = "debug"
	}
	if o.LeaseTTL == 0 {
		o.LeaseTTL = 3 * time.Second
		if v := os.Getenv("E2E_CLUSTER_LEASE_TTL"); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				t.Fatalf("E2E_CLUSTER_LEASE_TTL: %v", err)
			}
			o.LeaseTTL = d
		}
	}
	if o.Nodes > 9 || o.Members > 9 || o.Gateways > 200 || o.Standby < 0 || o.Standby >= o.Nodes {
		t.Fatalf("NewCluster: at most 9 nodes, 9 members, 200 gateways: %+v", o)
	}
	c := &Cluster{opts: o, dir: t.TempDir(), bin: Binary(t, "concentratord"), etcdBin: EtcdPath}
	c.TP = newBareTopology(t)
	if err := c.setupNetwork(ctx); err != nil {
		t.Fatalf("cluster topology: %v", err)
	}
	c.PKI = NewPKI(t)
	c.etcdCA = filepath.Join(c.dir, "ca.crt")
	mustWriteFile(t, c.etcdCA, c.PKI.CAPEM)
	c.etcdClient = c.PKI.Issue(t, "ikefleet-node")
	c.etcdClientF = [2]string{filepath.Join(c.dir, "etcd-client.crt"), filepath.Join(c.dir, "etcd-client.key")}
	mustWriteFile(t, c.etcdClientF[0], c.etcdClient.CertPEM)
	mustWriteFile(t, c.etcdClientF[1], c.etcdClient.KeyPEM)
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	c.clusterKey = filepath.Join(c.dir, "cluster.key")
	mustWriteFile(t, c.clusterKey, []byte(hex.EncodeToString(key)+"\n"))

	t0 := time.Now()
	c.startEtcd(t, ctx)
	t.Logf("etcd: %d members healthy in %v", len(c.Members), time.Since(t0).Round(time.Millisecond))

	var flows []Flow
	for i := 1; i <= o.Gateways; i++ {
		g := &ClusterGateway{Index: i, Name: fmt.Sprintf("gw%02d", i), ID: fmt.Sprintf("gw%02d@iot.example", i),
			IKEPort: 30000 + i, NATTPort: 40000 + i, LANAddr: fmt.Sprintf("10.20.%d.1", i+1)}
		g.PSK = fmt.Sprintf("cluster-psk-%02d-%s", i, hex.EncodeToString(key[i%16:i%16+8]))
		c.Gateways = append(c.Gateways, g)
		flows = append(flows, g.Flows()...)
	}
	if o.NewSpreader == nil {
		o.NewSpreader = func(ctx context.Context, c *Cluster, flows []Flow) (FlowSpreader, error) {
			var addrs []string
			for _, n := range c.Nodes {
				addrs = append(addrs, n.Addr)
			}
			return newNftSpreader(ctx, c.TP, c.Router, ClusterVIP, addrs, flows)
		}
	}
	sp, err := o.NewSpreader(ctx, c, flows)
	if err != nil {
		t.Fatal(err)
	}
	c.Spread = sp

	t0 = time.Now()
	for _, n := range c.Nodes {
		c.writeNodeConfig(t, n)
		if n.Index <= o.Nodes-o.Standby {
			c.StartNode(t, ctx, n)
		}
	}
	t.Logf("nodes: %d listening in %v", len(c.Nodes)-o.Standby, time.Since(t0).Round(time.Millisecond))

	t0 = time.Now()
	for _, g := range c.Gateways {
		c.startGateway(t, g)
	}
	t.Logf("gateways: %d charons started in %v", len(c.Gateways), time.Since(t0).Round(time.Millisecond))
	return c
}

func (c *Cluster) setupNetwork(ctx context.Context) error {
	tp := c.TP
	var err error
	for _, r := range []struct {
		role string
		dst  *string
	}{{"rtr", &c.Router}, {"nat", &c.NAT}, {"etcd", &c.Etcd}} {
		if *r.dst, err = tp.addNamespace(ctx, r.role); err != nil {
			return err
		}
	}
	tp.NAT = c.NAT // AddGateway puts gateways behind it
	var cmds [][]string
	add := func(args ...string) { cmds = append(cmds, args) }
	add("-n", c.NAT, "link", "add", "nat-rtr", "type", "veth", "peer", "name", "rtr-nat", "netns", c.Router)
	add("-n", c.NAT, "addr", "add", ClusterNATPublic+"/24", "dev", "nat-rtr")
	add("-n", c.Router, "addr", "add", clusterRtrPublic+"/24", "dev", "rtr-nat")
	add("-n", c.NAT, "link", "set", "nat-rtr", "up")
	add("-n", c.Router, "link", "set", "rtr-nat", "up")
	add("-n", c.NAT, "route", "add", "default", "via", clusterRtrPublic)
	// The members' addresses, on a veth pair local to the etcd namespace.
	add("-n", c.Etcd, "link", "add", "mem0", "type", "veth", "peer", "name", "mem0-peer")
	add("-n", c.Etcd, "link", "set", "mem0", "up")
	add("-n", c.Etcd, "link", "set", "mem0-peer", "up")
	for i := 1; i <= c.opts.Members; i++ {
		m := &EtcdMember{Name: fmt.Sprintf("e%d", i), Addr: fmt.Sprintf("10.40.0.%d", 10+i)}
		c.Members = append(c.Members, m)
		add("-n", c.Etcd, "addr", "add", m.Addr+"/24", "dev", "mem0")
	}
	for k := 1; k <= c.opts.Nodes; k++ {
		ns, err := tp.addNamespace(ctx, fmt.Sprintf("n%d", k))
		if err != nil {
			return err
		}
		n := &ClusterNode{Index: k, ID: fmt.Sprintf("n%d", k), NS: ns, Addr: fmt.Sprintf("172.16.%d.2", k)}
		c.Nodes = append(c.Nodes, n)
		rtr := fmt.Sprintf("rtr-n%d", k)
		add("-n", ns, "link", "add", "n0", "type", "veth", "peer", "name", rtr, "netns", c.Router)
		add("-n", ns, "addr", "add", n.Addr+"/24", "dev", "n0")
		add("-n", c.Router, "addr", "add", fmt.Sprintf("172.16.%d.1/24", k), "dev", rtr)
		add("-n", ns, "link", "set", "n0", "up")
		add("-n", c.Router, "link", "set", rtr, "up")
		add("-n", ns, "route", "add", "default", "via", fmt.Sprintf("172.16.%d.1", k))
		add("-n", ns, "addr", "add", ClusterVIP+"/32", "dev", "lo")
		etcdIf := fmt.Sprintf("n%d", k)
		add("-n", ns, "link", "add", "etcd0", "type", "veth", "peer", "name", etcdIf, "netns", c.Etcd)
		add("-n", ns, "addr", "add", fmt.Sprintf("10.41.%d.2/24", k), "dev", "etcd0")
		add("-n", c.Etcd, "addr", "add", fmt.Sprintf("10.41.%d.1/24", k), "dev", etcdIf)
		add("-n", ns, "link", "set", "etcd0", "up")
		add("-n", c.Etcd, "link", "set", etcdIf, "up")
		add("-n", ns, "route", "add", "10.40.0.0/24", "via", fmt.Sprintf("10.41.%d.1", k))
		add("-n", ns, "link", "add", "core0", "type", "veth", "peer", "name", "core0-peer")
		add("-n", ns, "addr", "add", ClusterCoreAddr+"/24", "dev", "core0")
		add("-n", ns, "link", "set", "core0", "up")
		add("-n", ns, "link", "set", "core0-peer", "up")
	}
	for _, cmd := range cmds {
		if _, err := run(ctx, nil, "ip", cmd...); err != nil {
			return err
		}
	}
	if err := tp.Sysctl(ctx, c.Router, "net.ipv4.ip_forward=1"); err != nil {
		return err
	}
	if err := tp.Sysctl(ctx, c.NAT, "net.ipv4.ip_forward=1"); err != nil {
		return err
	}
	rules := `table ip nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "nat-rtr" masquerade
  }
}
table inet filter {
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname "nat-gw*" oifname "nat-rtr" accept
  }
}
`
	_, err = run(ctx, strings.NewReader(rules), "ip", "netns", "exec", c.NAT, "nft", "-f", "-")
	return err
}

// startEtcd starts every member (TLS for clients and peers, client
// certificates required) and waits until each one answers /health.
func (c *Cluster) startEtcd(t *testing.T, ctx context.Context) {
	t.Helper()
	var initial []string
	for _, m := range c.Members {
		initial = append(initial, m.Name+"=https://"+m.Addr+":2380")
	}
	// etcd checks a peer's client certificate against the address the
	// connection comes from, and members share one interface (the source
	// address is its first): every member's certificate names them all.
	var ips []net.IP
	for _, m := range c.Members {
		ips = append(ips, net.ParseIP(m.Addr))
	}
	for _, m := range c.Members {
		cred := c.PKI.IssueIP(t, "etcd-"+m.Name, ips...)
		cert, key := filepath.Join(c.dir, m.Name+".crt"), filepath.Join(c.dir, m.Name+".key")
		mustWriteFile(t, cert, cred.CertPEM)
		mustWriteFile(t, key, cred.KeyPEM)
		m.DataDir = filepath.Join(c.dir, m.Name+".etcd")
		m.args = []string{c.etcdBin,
			"--name", m.Name, "--data-dir", m.DataDir,
			"--listen-client-urls", m.ClientURL(), "--advertise-client-urls", m.ClientURL(),
			"--listen-peer-urls", "https://" + m.Addr + ":2380", "--initial-advertise-peer-urls", "https://" + m.Addr + ":2380",
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
			"--initial-cluster-token", filepath.Base(c.dir),
			"--cert-file", cert, "--key-file", key, "--client-cert-auth", "--trusted-ca-file", c.etcdCA,
			"--peer-cert-file", cert, "--peer-key-file", key, "--peer-client-cert-auth", "--peer-trusted-ca-file", c.etcdCA,
			"--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn",
		}
		m.Proc = c.TP.StartProcess(t, "etcd "+m.Name, c.Etcd, m.args...)
	}
	for _, m := range c.Members {
		if err := c.waitEtcdHealthy(ctx, m, 30*time.Second); err != nil {
			t.Fatal(err)
		}
	}
}

func (c *Cluster) waitEtcdHealthy(ctx context.Context, m *EtcdMember, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var last error
	for {
		var out string
		out, last = c.etcdGet(ctx, m, "/health")
		if last == nil && strings.Contains(out, `"health":"true"`) {
			return nil
		}
		if last == nil {
			last = fmt.Errorf("/health: %s", out)
		}
		if m.Proc.Exited() {
			return fmt.Errorf("etcd %s exited: %v\n%s", m.Name, m.Proc.Wait(ctx), tail(m.Proc.Stderr(), 8<<10))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("etcd %s not healthy: %v\n%s", m.Name, last, tail(m.Proc.Stderr(), 8<<10))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// etcdGet fetches path from the member's client URL (GET; POST {} for
// /v3/ paths, etcd's JSON gateway) with the nodes' client certificate,
// connecting from inside the etcd namespace.
func (c *Cluster) etcdGet(ctx context.Context, m *EtcdMember, path string) (string, error) {
	c.httpOnce.Do(func() {
		pool := x509.NewCertPool()
		pool.AddCert(c.PKI.CA)
		cert, err := tls.X509KeyPair(c.etcdClient.CertPEM, c.etcdClient.KeyPEM)
		if err != nil {
			panic(err) // made by PKI.Issue
		}
		c.http = nsHTTPClient(c.Etcd, &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}})
	})
	method, body := http.MethodGet, io.Reader(nil)
	if strings.HasPrefix(path, "/v3/") {
		method, body = http.MethodPost, strings.NewReader("{}")
	}
	req, err := http.NewRequestWithContext(ctx, method, m.ClientURL()+path, body)
	if err != nil {
		return "", err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return string(b), err
}

// EtcdLeader returns the member that is the raft leader now.
func (c *Cluster) EtcdLeader(ctx context.Context) (*EtcdMember, error) {
	ids := map[string]*EtcdMember{}
	leader := ""
	for _, m := range c.Members {
		if m.Proc.Exited() {
			continue
		}
		out, err := c.etcdGet(ctx, m, "/v3/maintenance/status")
		if err != nil {
			return nil, err
		}
		ids[jsonField(out, "member_id")] = m
		if l := jsonField(out, "leader"); l != "" {
			leader = l
		}
	}
	if m := ids[leader]; m != nil {
		return m, nil
	}
	return nil, fmt.Errorf("etcd: leader %q is none of the live members %v", leader, ids)
}

// jsonField extracts "key":"value" or "key":value from flat JSON text.
func jsonField(s, key string) string {
	i := strings.Index(s, `"`+key+`":`)
	if i < 0 {
		return ""
	}
	v := strings.TrimLeft(s[i+len(key)+3:], `" `)
	if j := strings.IndexAny(v, `",}`); j >= 0 {
		v = v[:j]
	}
	return v
}

// KillEtcdMember kills one member with SIGKILL.
func (c *Cluster) KillEtcdMember(m *EtcdMember) error {
	return m.Proc.cmd.Process.Kill()
}

func (c *Cluster) writeNodeConfig(t *testing.T, n *ClusterNode) {
	t.Helper()
	cred := c.PKI.IssueIP(t, "node-"+n.ID, net.ParseIP(n.Addr))
	cert, key := filepath.Join(c.dir, n.ID+".crt"), filepath.Join(c.dir, n.ID+".key")
	mustWriteFile(t, cert, cred.CertPEM)
	mustWriteFile(t, key, cred.KeyPEM)
	var eps []string
	for _, m := range c.Members {
		eps = append(eps, m.ClientURL())
	}
	var b strings.Builder
	fmt.Fprintf(&b, `node:
  id: %s
log:
  level: %s
  format: json
ike:
  listen: [%s]
  force_encap: true
  proposals: [%s]
  esp_proposals: [%s]
identity:
  id: %s
auth:
  psks:
`, n.ID, c.opts.LogLevel, ClusterVIP, IKEProp, ESPProp, ConcID)
	for _, g := range c.Gateways {
		fmt.Fprintf(&b, "    - id: %s\n      secret: %q\n", g.ID, g.PSK)
	}
	fmt.Fprintf(&b, `children:
  local_ts: [10.30.0.0/24]
  remote_ts: [10.20.0.0/16]
dataplane:
  mode: userspace
  userspace:
    tun: %s
    mtu: 1400
    workers: 2
    queue_len: 1024
    replay_window: 1024
statestore:
  mode: external
  data_dir: %s
  endpoints: [%s]
  ca_file: %s
  cert_file: %s
  key_file: %s
  cluster_key_file: %s
  lease_ttl: %s
cluster:
  peer_listen: %s:%d
  ca_file: %s
  cert_file: %s
  key_file: %s
`, clusterTUN, filepath.Join(c.dir, n.ID+".data"), strings.Join(eps, ", "), c.etcdCA, c.etcdClientF[0], c.etcdClientF[1],
		c.clusterKey, c.opts.LeaseTTL, n.Addr, clusterPeerPort, c.etcdCA, cert, key)
	if c.opts.NodeConfig != nil {
		b.WriteString(c.opts.NodeConfig(n))
	}
	n.Config = filepath.Join(c.dir, n.ID+".yaml")
	mustWriteFile(t, n.Config, []byte(b.String()))
}

// StartNode starts (or restarts) a node's concentratord and waits until it
// listens.
func (c *Cluster) StartNode(t *testing.T, ctx context.Context, n *ClusterNode) {
	t.Helper()
	n.Proc = c.TP.StartProcess(t, "concentratord "+n.ID, n.NS, c.bin, "--config", n.Config)
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, err := n.Proc.WaitLog(wctx, "listening", nil); err != nil {
		t.Fatal(err)
	}
}

// KillNode kills a node's concentratord with SIGKILL and waits until it is
// gone.
func (c *Cluster) KillNode(ctx context.Context, n *ClusterNode) error {
	if err := n.Proc.cmd.Process.Kill(); err != nil {
		return err
	}
	_ = n.Proc.Wait(ctx)
	return nil
}

// clusterGatewayConf is gateway g's swanctl.conf: PSK, NAT-T forced,
// CHILD_SA "lan" from its LAN to the nodes' inner network.
func clusterGatewayConf(g *ClusterGateway, wan string) string {
	return fmt.Sprintf(`connections {
  conc {
    version = 2
    local_addrs = %[1]s
    remote_addrs = %[2]s
    proposals = %[3]s
    encap = yes
    mobike = no
    dpd_delay = 30s
    local {
      auth = psk
      id = %[4]s
    }
    remote {
      auth = psk
      id = %[5]s
    }
    children {
      lan {
        local_ts = 10.20.%[6]d.0/24
        remote_ts = 10.30.0.0/24
        esp_proposals = %[7]s
        start_action = none
      }
    }
  }
}
secrets {
  ike-conc {
    id-1 = %[4]s
    id-2 = %[5]s
    secret = "%[8]s"
  }
}
`, wan, ClusterVIP, IKEProp, g.ID, ConcID, g.Index+1, ESPProp, g.PSK)
}

func (c *Cluster) startGateway(t *testing.T, g *ClusterGateway) {
	t.Helper()
	ns, wan := c.TP.AddGateway(t, g.Name, g.Index+1)
	g.NS, g.WAN = ns, wan
	g.SS = NewStrongSwan(t, c.TP, g.Name, ns)
	// Later keys override earlier ones: each gateway has its own ports,
	// which the masquerade keeps (no other flow uses them).
	g.SS.ExtraConf = fmt.Sprintf("  port = %d\n  port_nat_t = %d\n", g.IKEPort, g.NATTPort)
	g.SS.Start(clusterGatewayConf(g, wan), nil)
}

// InitiateAll initiates every gateway's CHILD_SA (a few at a time) and
// returns the first error.
func (c *Cluster) InitiateAll(ctx context.Context) error {
	var wg sync.WaitGroup
	errs := make(chan error, len(c.Gateways))
	sem := make(chan struct{}, 5)
	for _, g := range c.Gateways {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if out, err := g.SS.SwanctlContext(ctx, "--initiate", "--child", "lan", "--timeout", "30"); err != nil {
				errs <- fmt.Errorf("%s: %v\n%s", g.Name, err, out)
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// NodeOf returns the node serving gateway g's flow now.
func (c *Cluster) NodeOf(g *ClusterGateway) *ClusterNode {
	return c.Nodes[c.Spread.NodeOf(g.ESPFlow())-1]
}

// procUsage returns a process's resident memory (KiB) and CPU time used.
func procUsage(pid int) (rssKiB int, cpu time.Duration, err error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			fmt.Sscan(f[1], &rssKiB)
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	s := string(stat)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("/proc/%d/stat: %q", pid, s)
	}
	var ut, st int64
	fmt.Sscan(f[11], &ut)
	fmt.Sscan(f[12], &st)
	hz := int64(100) // USER_HZ
	if out, err := exec.Command("getconf", "CLK_TCK").Output(); err == nil {
		fmt.Sscan(strings.TrimSpace(string(out)), &hz)
	}
	return rssKiB, time.Duration(ut+st) * time.Second / time.Duration(hz), nil
}

func mustWriteFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// nsHTTPClient is an HTTP client whose connections are made inside
// namespace ns.
func nsHTTPClient(ns string, tc *tls.Config) *http.Client {
	return &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   tc,
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (conn net.Conn, err error) {
			err = InNetns(ns, func() error {
				var d net.Dialer
				conn, err = d.DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		},
	}}
}

// NodeMetrics scrapes a node's /metrics (the default listener, on
// loopback in its namespace) and returns every ikefleet_ sample summed
// over its labels.
func (c *Cluster) NodeMetrics(ctx context.Context, n *ClusterNode) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:9180/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := nsHTTPClient(n.NS, nil).Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s: metrics: %w", n.ID, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, err
	}
	m := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "ikefleet_") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name := f[0]
		if i := strings.IndexByte(name, '{'); i >= 0 {
			name = name[:i]
		}
		var v float64
		if _, err := fmt.Sscan(f[len(f)-1], &v); err == nil {
			m[name] += v
		}
	}
	return m, nil
}

// ClusterMetrics sums NodeMetrics over nodes (all of them if none are
// given), skipping those not running.
func (c *Cluster) ClusterMetrics(ctx context.Context, nodes ...*ClusterNode) (map[string]float64, error) {
	if len(nodes) == 0 {
		nodes = c.Nodes
	}
	sum := map[string]float64{}
	for _, n := range nodes {
		if n.Proc == nil || n.Proc.Exited() {
			continue
		}
		m, err := c.NodeMetrics(ctx, n)
		if err != nil {
			return nil, err
		}
		for k, v := range m {
			sum[k] += v
		}
	}
	return sum, nil
}

// etcdPartitionTable is the nftables table that cuts a node off from etcd.
const etcdPartitionTable = "ikfpartition"

// PartitionFromEtcd cuts node n off from every etcd member: an nftables
// table in its namespace drops what it sends to the members' network and
// what comes back from it (no reset, no ICMP: the connections hang, as
// when a link or a switch fails). Its peer API and the router are not
// touched. HealPartition removes the table.
func (c *Cluster) PartitionFromEtcd(ctx context.Context, n *ClusterNode) error {
	rules := fmt.Sprintf(`table inet %[1]s {
  chain out {
    type filter hook output priority filter; policy accept;
    ip daddr 10.40.0.0/24 drop
  }
  chain in {
    type filter hook input priority filter; policy accept;
    ip saddr 10.40.0.0/24 drop
  }
}
`, etcdPartitionTable)
	out, err := run(ctx, strings.NewReader(rules), "ip", "netns", "exec", n.NS, "nft", "-f", "-")
	if err != nil {
		return fmt.Errorf("partition %s: %w\n%s", n.ID, err, out)
	}
	return nil
}

// HealPartition ends PartitionFromEtcd.
func (c *Cluster) HealPartition(ctx context.Context, n *ClusterNode) error {
	_, err := c.TP.Exec(ctx, n.NS, "nft", "delete", "table", "inet", etcdPartitionTable)
	return err
}

// NodeReady asks a node's /readyz (in its namespace) as a load balancer's
// health check does: nil when it answers 200, else why not.
func (c *Cluster) NodeReady(ctx context.Context, n *ClusterNode) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:9180/readyz", nil)
	if err != nil {
		return err
	}
	hc := nsHTTPClient(n.NS, nil)
	hc.Timeout = time.Second
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode != http.StatusOK {
		var failed []string // the body has a line a check: "ok name" or "failed name: why"
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "failed ") {
				failed = append(failed, line)
			}
		}
		return fmt.Errorf("%s: /readyz %s: %s", n.ID, resp.Status, strings.Join(failed, "; "))
	}
	return nil
}

// nodeSendsTable counts, in the router, what the nodes send from the
// service address's IKE ports (IKE and ESP-in-UDP towards the gateways).
const nodeSendsTable = "ikfsends"

// CountNodeSends installs (or resets) one counter per node in the router:
// packets from the service address's UDP ports 500 and 4500 arriving from
// that node's link. NodeSends reads them.
func (c *Cluster) CountNodeSends(ctx context.Context) error {
	var b strings.Builder
	fmt.Fprintf(&b, "table ip %s\ndelete table ip %s\ntable ip %s {\n", nodeSendsTable, nodeSendsTable, nodeSendsTable)
	for _, n := range c.Nodes {
		fmt.Fprintf(&b, "  counter %s { }\n", n.ID)
	}
	b.WriteString("  chain sends {\n    type filter hook forward priority filter; policy accept;\n")
	for _, n := range c.Nodes {
		fmt.Fprintf(&b, "    iifname \"rtr-n%d\" ip saddr %s udp sport { 500, 4500 } counter name %q\n", n.Index, ClusterVIP, n.ID)
	}
	b.WriteString("  }\n}\n")
	out, err := run(ctx, strings.NewReader(b.String()), "ip", "netns", "exec", c.Router, "nft", "-f", "-")
	if err != nil {
		return fmt.Errorf("router counters: %w\n%s\n%s", err, out, b.String())
	}
	return nil
}

// NodeSends returns node n's counter of CountNodeSends: packets so far.
func (c *Cluster) NodeSends(ctx context.Context, n *ClusterNode) (int, error) {
	out, err := c.TP.Exec(ctx, c.Router, "nft", "list", "counter", "ip", nodeSendsTable, n.ID)
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "packets" {
			var v int
			_, err := fmt.Sscan(f[1], &v)
			return v, err
		}
	}
	return 0, fmt.Errorf("router counter %s: no packets in %q", n.ID, out)
}

// NodeLogTimes returns the times of node n's JSON log records with message
// msg logged at or after since (the records' own "time").
func NodeLogTimes(n *ClusterNode, msg string, since time.Time) []time.Time {
	var ts []time.Time
	for _, r := range n.Proc.LogRecords() {
		if r.Msg() != msg {
			continue
		}
		s, _ := r["time"].(string)
		at, err := time.Parse(time.RFC3339Nano, s)
		if err == nil && !at.Before(since) {
			ts = append(ts, at)
		}
	}
	return ts
}
