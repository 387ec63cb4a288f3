package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/types/known/timestamppb"

	adminv1 "github.com/ikefleet/ikefleet/api/admin/v1"
	"github.com/ikefleet/ikefleet/concentrator"
	"github.com/ikefleet/ikefleet/concentrator/adminserver"
	"github.com/ikefleet/ikefleet/concentrator/dataplane/memory"
	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/loadtest"
)

// node is a concentrator node on loopback with its admin API.
type node struct {
	n    *concentrator.Node
	addr string
	cfg  string
}

func startNode(t *testing.T, gateways int, admin string) *node {
	t.Helper()
	var b strings.Builder
	b.WriteString("node: {id: ctl}\nike:\n  listen: [127.0.0.1]\n  port: 0\n  natt_port: 0\n  shards: 2\n")
	b.WriteString("identity: {id: conc.example}\nauth:\n  psks:\n")
	for i := 1; i <= gateways; i++ {
		fmt.Fprintf(&b, "    - {id: gw%d@iot.example, secret: psk-0123456789ab-%d}\n", i, i)
	}
	// No metrics listener: its default port is fixed, and tests of other
	// packages running at the same time may hold it.
	b.WriteString("children:\n  local_ts: [10.30.0.0/24]\n  pool: 10.99.0.0/16\nstatestore:\n  mode: none\nmetrics:\n  listen: \"\"\n")
	if admin == "" {
		admin = "admin:\n  listen: 127.0.0.1:0\n"
	}
	b.WriteString(admin)
	path := filepath.Join(t.TempDir(), "concentratord.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := concentrator.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	n, err := concentrator.New(cfg, log, memory.New())
	if err != nil {
		t.Fatal(err)
	}
	n.SetConfigLoader(func() (concentrator.Config, error) { return concentrator.LoadConfig(path) })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	select {
	case <-n.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("node did not start: %v", err)
	}
	srv, err := adminserver.Start(cfg.Admin, n, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Stop()
		cancel()
		<-done
	})
	addr := srv.Addr().String()
	if srv.Addr().Network() == "unix" {
		addr = "unix://" + addr
	}
	return &node{n: n, addr: addr, cfg: path}
}

// The admin API on a unix socket: concentratorctl reaches it with --addr
// unix:///path and with --local (no TLS files wanted).
func TestAdminSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "admin.sock")
	nd := startNode(t, 1, "admin:\n  listen: unix://"+sock+"\n")
	if out := nd.mustCtl(t, "status"); !strings.Contains(out, "1 nodes") {
		t.Fatalf("status over the socket:\n%s", out)
	}
	var o, e bytes.Buffer
	if code := run(context.Background(), []string{"--local", "--config", nd.cfg, "status"}, &o, &e); code != 0 || !strings.Contains(o.String(), "1 nodes") {
		t.Fatalf("--local with a socket: exit %d\n%s%s", code, o.String(), e.String())
	}
}

// gateways brings up count simulated gateways that hold their SAs until
// the test ends, and waits until the node has them.
func (nd *node) gateways(t *testing.T, count int) {
	t.Helper()
	esp, _ := ike.ParseProposal("aes256gcm16", true, false)
	ikep, _ := ike.ParseProposal("aes256gcm16-prfsha256-x25519", false, false)
	o := loadtest.Options{
		Server: nd.n.IKEAddr(), ServerNATT: nd.n.NATTAddr().Port(), Source: netip.MustParseAddr("127.0.0.1"),
		IDTemplate: "gw{n}@iot.example", RemoteID: "conc.example", PSK: []byte("psk-0123456789ab-{n}"),
		IKEProposals: []ike.ProposalSpec{ikep}, ESPProposals: []ike.ProposalSpec{esp},
		LocalTS:    []ike.TrafficSelector{ike.SelectorFromPrefix(netip.MustParsePrefix("0.0.0.0/0"))},
		RemoteTS:   []ike.TrafficSelector{ike.SelectorFromPrefix(netip.MustParsePrefix("10.30.0.0/24"))},
		RequestVIP: true, Count: count, Timeout: 20 * time.Second, Hold: time.Minute,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); loadtest.Run(ctx, o) }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := nd.n.CountSAs(ctx)
		if err == nil && c.Established == count {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d gateways up", c.Established, count)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ctl runs concentratorctl against the node and returns its exit code,
// stdout and stderr.
func (nd *node) ctl(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), append([]string{"--addr", nd.addr}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func (nd *node) mustCtl(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errs := nd.ctl(t, args...)
	if code != 0 {
		t.Fatalf("concentratorctl %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errs)
	}
	return out
}

var (
	spi64 = regexp.MustCompile(`^[0-9a-f]{16}$`)
	spi32 = regexp.MustCompile(`^[0-9a-f]{8}$`)
)

func TestOutputFormats(t *testing.T) {
	nd := startNode(t, 3, "")
	nd.gateways(t, 3)

	// JSON: proto field names, SPIs in hex, every SA.
	var list struct {
		Sas []struct {
			Spi, SpiI, SpiR, State, PeerID, Remote string
			Children                               []struct{ InSpi string }
		}
		Total         int
		NextPageToken string `json:"next_page_token"`
	}
	out := nd.mustCtl(t, "sas", "list", "-o", "json")
	// encoding/json matches keys case-insensitively but not across
	// underscores: map the snake_case keys first.
	var raw map[string]any
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatalf("sas list -o json: %v\n%s", err, out)
	}
	fixed := strings.NewReplacer(`"spi_i"`, `"spii"`, `"spi_r"`, `"spir"`, `"peer_id"`, `"peerid"`, `"in_spi"`, `"inspi"`).Replace(out)
	if err := json.Unmarshal([]byte(fixed), &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Sas) != 3 || raw["total"] != float64(3) || list.NextPageToken != "" {
		t.Fatalf("sas list -o json:\n%s", out)
	}
	for _, sa := range list.Sas {
		if !spi64.MatchString(sa.Spi) || !spi64.MatchString(sa.SpiI) || sa.State != "ESTABLISHED" ||
			!strings.HasPrefix(sa.PeerID, "gw") || len(sa.Children) != 1 || !spi32.MatchString(sa.Children[0].InSpi) {
			t.Fatalf("SA in JSON: %+v\n%s", sa, out)
		}
	}
	first := list.Sas[0].Spi
	// Field order follows the proto: spi_i first.
	if !strings.HasPrefix(strings.TrimSpace(strings.SplitN(out, "\n", 4)[3]), `"spi_i"`) {
		t.Errorf("JSON fields out of order:\n%s", out)
	}

	// YAML: the same document.
	out = nd.mustCtl(t, "sas", "list", "-o", "yaml")
	var y struct {
		Sas []struct {
			Spi   string `yaml:"spi"`
			State string `yaml:"state"`
		} `yaml:"sas"`
		Total int `yaml:"total"`
	}
	if err := yaml.Unmarshal([]byte(out), &y); err != nil || len(y.Sas) != 3 || y.Total != 3 || y.Sas[0].Spi != first {
		t.Fatalf("sas list -o yaml: %v\n%s", err, out)
	}

	// Table: a header, one row per SA, a count.
	out = nd.mustCtl(t, "sas", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 5 || !strings.HasPrefix(lines[0], "SPI ") || !strings.HasPrefix(lines[1], first) ||
		lines[4] != "(3 of 3 IKE SAs)" {
		t.Fatalf("sas list:\n%s", out)
	}
	// Paging through the CLI.
	out = nd.mustCtl(t, "sas", "list", "--limit", "2", "--page-size", "1", "-o", "json")
	var page struct {
		Sas   []json.RawMessage
		Token string `json:"next_page_token"`
	}
	json.Unmarshal([]byte(out), &page)
	if len(page.Sas) != 2 || page.Token == "" {
		t.Fatalf("sas list --limit 2:\n%s", out)
	}
	out = nd.mustCtl(t, "sas", "list", "--page-token", page.Token)
	if !strings.Contains(out, "(1 of 3 IKE SAs)") {
		t.Fatalf("sas list --page-token:\n%s", out)
	}
	out = nd.mustCtl(t, "sas", "list", "--identity", "gw2*")
	if !strings.Contains(out, "gw2@iot.example") || !strings.Contains(out, "(1 of 1 IKE SAs)") {
		t.Fatalf("sas list --identity gw2*:\n%s", out)
	}

	// show: the CHILD SA with its counters.
	out = nd.mustCtl(t, "sas", "show", first)
	for _, want := range []string{"IKE SA:", first, "ESTABLISHED", "CHILD SAs: 1", "IN_SPI", "BYTES_IN", "10.30.0.0/24"} {
		if !strings.Contains(out, want) {
			t.Errorf("sas show lacks %q:\n%s", want, out)
		}
	}
	out = nd.mustCtl(t, "sas", "show", "0x"+first, "-o", "json")
	var sa map[string]any
	if err := json.Unmarshal([]byte(out), &sa); err != nil || sa["spi"] != first {
		t.Fatalf("sas show -o json: %v\n%s", err, out)
	}
	child := sa["children"].([]any)[0].(map[string]any)
	if child["has_counters"] != true || child["in_bytes"] == nil || !spi32.MatchString(child["out_spi"].(string)) {
		t.Fatalf("CHILD SA in JSON: %v", child)
	}

	// status and nodes.
	out = nd.mustCtl(t, "status")
	if !strings.Contains(out, "1 nodes, 3 IKE SAs") || !strings.Contains(out, "ctl *") || !strings.Contains(out, "SERVING") {
		t.Fatalf("status:\n%s", out)
	}

	out = nd.mustCtl(t, "nodes", "-o", "yaml")
	var nodes struct {
		Nodes []struct {
			ID   string `yaml:"id"`
			Self bool   `yaml:"self"`
			Load struct {
				Established int `yaml:"established"`
			} `yaml:"load"`
		} `yaml:"nodes"`
	}
	if err := yaml.Unmarshal([]byte(out), &nodes); err != nil || len(nodes.Nodes) != 1 || !nodes.Nodes[0].Self ||
		nodes.Nodes[0].Load.Established != 3 {
		t.Fatalf("nodes -o yaml: %v\n%s", err, out)
	}
}

func TestExitCodes(t *testing.T) {
	nd := startNode(t, 1, "")
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"--version"}, 0, ""},
		{[]string{"status"}, 0, ""},
		{[]string{"nosuch"}, 2, "unknown command"},
		{[]string{"status", "--nosuch"}, 2, "unknown flag"},
		{[]string{"status", "extra"}, 2, "takes no arguments"},
		{[]string{"status", "-o", "xml"}, 2, "table, json or yaml"},
		{[]string{"sas"}, 2, "list or show"},
		{[]string{"sas", "show"}, 2, "want one argument"},
		{[]string{"sas", "show", "xyz"}, 2, "not an IKE SPI"},
		{[]string{"sas", "show", "00000000000000001"}, 2, "not an IKE SPI"},
		{[]string{"sas", "show", "1234"}, 1, "NotFound"},
		{[]string{"sas", "list", "--state", "sleeping"}, 2, "filter.state"}, // refused by the node
		{[]string{"sas", "list", "--node", "other"}, 1, "filter.node"},
		{[]string{"terminate"}, 2, "name an SPI"},
		{[]string{"terminate", "12", "--identity", "*"}, 2, "not both"},
		{[]string{"terminate", "1234"}, 1, "NotFound"},
		{[]string{"rekey", "12", "--ike", "--child", "1"}, 2, "not both"},
		{[]string{"rekey", "12", "--child", "nothex"}, 2, "not an ESP SPI"},
		{[]string{"events", "--kind", "nosuch"}, 2, "unknown event kind"},
		{[]string{"--ca", "x.pem", "status"}, 2, "go together"},
		{[]string{"drain", "--node", "other"}, 1, "this is node ctl"},
	} {
		code, out, errs := nd.ctl(t, tc.args...)
		if code != tc.code || !strings.Contains(errs, tc.msg) {
			t.Errorf("concentratorctl %s: exit %d (want %d), stderr %q (want %q), stdout %q", strings.Join(tc.args, " "),
				code, tc.code, errs, tc.msg, out)
		}
	}
	code, out, _ := nd.ctl(t, "--version")
	if code != 0 || !strings.HasPrefix(out, "concentratorctl ") {
		t.Errorf("--version: %d %q", code, out)
	}
	// Nothing listening: a failure, not a usage error.
	var o, e bytes.Buffer
	if code := run(context.Background(), []string{"--addr", "127.0.0.1:1", "--timeout", "2s", "status"}, &o, &e); code != 1 {
		t.Errorf("no node: exit %d: %s", code, e.String())
	}
	if strings.Contains(e.String(), "sudo") {
		t.Errorf("no node: the hint for another account: %s", e.String())
	}
	// A node that closes the connection at once, as a plaintext admin API
	// does to a client of another account: the message says why.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	o.Reset()
	e.Reset()
	if code := run(context.Background(), []string{"--addr", l.Addr().String(), "--timeout", "2s", "status"}, &o, &e); code != 1 ||
		!strings.Contains(e.String(), "serves only the node's account and root") {
		t.Errorf("connection closed at once: exit %d: %s", code, e.String())
	}
	// Completion scripts.
	for _, sh := range []string{"bash", "zsh", "fish"} {
		code, out, errs := nd.ctl(t, "completion", sh)
		if code != 0 || !strings.Contains(out, "concentratorctl") {
			t.Errorf("completion %s: exit %d %s", sh, code, errs)
		}
	}
	// Dynamic completion of SPIs (what the shell scripts call).
	nd.gateways(t, 1)
	code, out, _ = nd.ctl(t, "__complete", "sas", "show", "")
	if code != 0 || !spi64.MatchString(strings.SplitN(out, "\t", 2)[0]) || !strings.Contains(out, "gw1@iot.example") {
		t.Errorf("SPI completion: %d %q", code, out)
	}
}

func TestOperations(t *testing.T) {
	nd := startNode(t, 4, "")
	nd.gateways(t, 4)
	var sas struct {
		Sas []struct {
			Spi      string `json:"spi"`
			Children []struct {
				InSpi string `json:"in_spi"`
			} `json:"children"`
		} `json:"sas"`
	}
	json.Unmarshal([]byte(nd.mustCtl(t, "sas", "list", "-o", "json")), &sas)
	if len(sas.Sas) != 4 {
		t.Fatalf("%+v", sas)
	}

	// Events, followed while the rest happens.
	events := make(chan string, 1)
	go func() {
		_, out, errs := nd.ctl(t, "events", "--kind", "child-rekeyed,ike-deleted", "--count", "2", "-o", "json")
		events <- out + errs
	}()
	for i := 0; nd.n.EventWatchers() == 0 && i < 2000; i++ { // the watch subscribes
		time.Sleep(10 * time.Millisecond)
	}

	// rekey: the new CHILD SA in the answer.
	spi, oldChild := sas.Sas[0].Spi, sas.Sas[0].Children[0].InSpi
	out := nd.mustCtl(t, "rekey", spi)
	if !strings.Contains(out, "CHILD SA "+oldChild+" of IKE SA "+spi+" rekeyed: now ") {
		t.Fatalf("rekey:\n%s", out)
	}
	var rk map[string]any
	json.Unmarshal([]byte(nd.mustCtl(t, "rekey", sas.Sas[1].Spi, "-o", "json")), &rk)
	if rk["old_in_spi"] != sas.Sas[1].Children[0].InSpi || rk["child"] == nil {
		t.Fatalf("rekey -o json: %v", rk)
	}

	// terminate one, with progress on stderr (not a terminal: plain lines).
	code, out, errs := nd.ctl(t, "terminate", sas.Sas[2].Spi)
	if code != 0 || out != "terminated 1 of 1 IKE SAs\n" || !strings.Contains(errs, "terminating [") || !strings.Contains(errs, "1/1") {
		t.Fatalf("terminate: %d\n%s%s", code, out, errs)
	}
	select {
	case ev := <-events:
		lines := strings.Split(strings.TrimSpace(ev), "\n")
		if len(lines) != 2 || !strings.Contains(lines[0], `"kind":"CHILD_REKEYED"`) {
			t.Fatalf("events:\n%s", ev)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("events never came")
	}

	// Bulk: dry run, then all that is left.
	out = nd.mustCtl(t, "terminate", "--identity", "*", "--dry-run")
	if !strings.HasPrefix(out, "would terminate 3 IKE SAs:\n") {
		t.Fatalf("dry run:\n%s", out)
	}
	code, out, errs = nd.ctl(t, "terminate", "--identity", "*", "-o", "yaml")
	var p struct {
		Matched, Started, Gone, Failed int
		Done                           bool
	}
	if err := yaml.Unmarshal([]byte(out), &p); code != 0 || err != nil || p.Matched != 3 || p.Gone != 3 || !p.Done {
		t.Fatalf("terminate --identity '*': %d %v\n%s%s", code, err, out, errs)
	}
	if !strings.Contains(errs, "3/3") {
		t.Fatalf("no progress on stderr:\n%s", errs)
	}

	// drain and resume.
	code, out, errs = nd.ctl(t, "drain")
	if code != 0 || !strings.Contains(out, "drained: new IKE SAs refused") || !strings.Contains(errs, "refusing new SAs") {
		t.Fatalf("drain: %d\n%s%s", code, out, errs)
	}
	if out := nd.mustCtl(t, "status"); !strings.Contains(out, "DRAINING") {
		t.Fatalf("status while draining:\n%s", out)
	}
	nd.mustCtl(t, "drain", "--resume")
	if out := nd.mustCtl(t, "status"); !strings.Contains(out, "SERVING") {
		t.Fatalf("status after resume:\n%s", out)
	}

	// reload: a PSK added to the file.
	text, _ := os.ReadFile(nd.cfg)
	os.WriteFile(nd.cfg, []byte(strings.Replace(string(text), "  psks:\n", "  psks:\n    - {id: new@iot.example, secret: s3cret-0123456789ab}\n", 1)), 0o600)
	out = nd.mustCtl(t, "reload")
	if !strings.Contains(out, "5 (1 added, 0 removed, 0 changed)") || !strings.Contains(out, "changed:      psks") {
		t.Fatalf("reload:\n%s", out)
	}
}

func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := newCA(t, dir)
	issue(t, dir, "server", ca, caKey, true)
	issue(t, dir, "client", ca, caKey, false)
	other, otherKey := newCA(t, filepath.Join(dir, "other"))
	issue(t, filepath.Join(dir, "other"), "client", other, otherKey, false)
	p := func(n string) string { return filepath.Join(dir, n) }
	nd := startNode(t, 1, fmt.Sprintf("admin:\n  listen: 127.0.0.1:0\n  ca_file: %s\n  cert_file: %s\n  key_file: %s\n",
		p("ca.pem"), p("server.pem"), p("server.key")))
	tlsArgs := []string{"--ca", p("ca.pem"), "--cert", p("client.pem"), "--key", p("client.key")}
	if out := nd.mustCtl(t, append(tlsArgs, "status")...); !strings.Contains(out, "1 nodes") {
		t.Fatalf("status over mutual TLS:\n%s", out)
	}
	// Plaintext, and a client certificate from another CA, are refused.
	if code, _, errs := nd.ctl(t, "--timeout", "3s", "status"); code != 1 {
		t.Fatalf("plaintext to a TLS node: exit %d %s", code, errs)
	}
	bad := []string{"--ca", p("ca.pem"), "--cert", p("other/client.pem"), "--key", p("other/client.key"), "--timeout", "3s"}
	if code, _, errs := nd.ctl(t, append(bad, "status")...); code != 1 {
		t.Fatalf("a client certificate of another CA: exit %d %s", code, errs)
	}

	// --local: the address and TLS files from the node's configuration,
	// its own certificate as the client's; a wildcard listener is reached
	// over loopback.
	text, err := os.ReadFile(nd.cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(nd.addr)
	local := filepath.Join(dir, "local.yaml")
	os.WriteFile(local, []byte(strings.Replace(string(text), "listen: 127.0.0.1:0", "listen: 0.0.0.0:"+port, 1)), 0o600)
	var o, e bytes.Buffer
	if code := run(context.Background(), []string{"--local", "--config", local, "status"}, &o, &e); code != 0 || !strings.Contains(o.String(), "1 nodes") {
		t.Fatalf("--local: exit %d\n%s%s", code, o.String(), e.String())
	}
	off := filepath.Join(dir, "off.yaml")
	os.WriteFile(off, []byte("admin:\n  listen: \"off\"\n"), 0o600)
	o.Reset()
	e.Reset()
	if code := run(context.Background(), []string{"--local", "--config", off, "status"}, &o, &e); code != 1 || !strings.Contains(e.String(), "admin API is off") {
		t.Fatalf("--local with the admin API off: exit %d %s", code, e.String())
	}
}

func newCA(t *testing.T, dir string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	os.MkdirAll(dir, 0o700)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "admin CA " + dir},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, "ca.pem"), "CERTIFICATE", der)
	c, _ := x509.ParseCertificate(der)
	return c, key
}

func issue(t *testing.T, dir, name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, server bool) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if server { // also the client certificate of concentratorctl --local
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, filepath.Join(dir, name+".pem"), "CERTIFICATE", der)
	kd, _ := x509.MarshalPKCS8PrivateKey(key)
	writePEM(t, filepath.Join(dir, name+".key"), "PRIVATE KEY", kd)
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// status shows a node's key rotation pass: running, done, interrupted.
func TestKeyRotationLine(t *testing.T) {
	ago := timestamppb.New(time.Now().Add(-90 * time.Second))
	for _, c := range []struct {
		r    *adminv1.KeyRotation
		want string
	}{
		{&adminv1.KeyRotation{Running: true, SealingKey: 2, Started: ago, Scanned: 128, Rewritten: 100},
			"rewriting under key 2 for 2m0s: 128 records scanned, 100 rewritten, 0 raced, 0 unreadable so far"},
		{&adminv1.KeyRotation{SealingKey: 2, Started: ago, Finished: ago, Scanned: 300, Rewritten: 250, Raced: 1, Unreadable: 2},
			"done under key 2, 2m0s ago: 300 records scanned, 250 rewritten, 1 raced, 2 unreadable"},
		{&adminv1.KeyRotation{SealingKey: 3, Started: ago, Finished: ago, Error: "context canceled", Scanned: 5},
			"INTERRUPTED (under key 3, 2m0s ago): context canceled; 5 records scanned, 0 rewritten, 0 raced, 0 unreadable"},
	} {
		if got := keyRotation(c.r); got != c.want {
			t.Errorf("got  %q\nwant %q", got, c.want)
		}
	}
}

// The nodes table's LAYOUT column: the store layout a registration
// writes, and those its release supports.
func TestLayoutColumn(t *testing.T) {
	reg := timestamppb.Now()
	for _, tc := range []struct {
		n    *adminv1.Node
		want string
	}{
		{&adminv1.Node{Id: "unregistered"}, "-"},
		{&adminv1.Node{Registered: reg}, "2 (2)"}, // a release before store layouts
		{&adminv1.Node{Registered: reg, Layout: 3, LayoutMin: 3, LayoutMax: 3}, "3 (3)"},
		{&adminv1.Node{Registered: reg, Layout: 2, LayoutMin: 2, LayoutMax: 3}, "2 (2-3)"},
	} {
		if got := layouts(tc.n); got != tc.want {
			t.Errorf("layouts(%v) = %q, want %q", tc.n, got, tc.want)
		}
	}
}
