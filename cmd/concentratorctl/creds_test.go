package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator"
	"github.com/ikefleet/ikefleet/concentrator/adminserver"
	"github.com/ikefleet/ikefleet/concentrator/dataplane/memory"
	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/loadtest"
)

// startCredNode runs a node whose only credentials are in the credential
// store (embedded etcd).
func startCredNode(t testing.TB) *node {
	t.Helper()
	dir := t.TempDir()
	key := make([]byte, 32)
	rand.Read(key)
	keyFile := filepath.Join(dir, "cluster.key")
	if err := os.WriteFile(keyFile, []byte(hex.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	doc := fmt.Sprintf(`node: {id: creds}
ike:
  listen: [127.0.0.1]
  port: 0
  natt_port: 0
  shards: 2
identity: {id: conc.example}
auth:
  credential_store: true
children:
  local_ts: [10.30.0.0/24]
  remote_ts: [10.20.0.0/16]
statestore:
  mode: embedded
  data_dir: %s
  cluster_key_file: %s
metrics: {listen: ""}
admin:
  listen: 127.0.0.1:0
`, filepath.Join(dir, "data"), keyFile)
	path := filepath.Join(dir, "concentratord.yaml")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
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
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	select {
	case <-n.Ready():
	case err := <-done:
		t.Fatal(err)
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
	return &node{n: n, addr: srv.Addr().String(), cfg: path}
}

// connect tries one gateway with identity id and psk; it reports whether
// it established.
func (nd *node) connect(t testing.TB, id, psk string) bool {
	t.Helper()
	esp, _ := ike.ParseProposal("aes256gcm16", true, false)
	ikep, _ := ike.ParseProposal("aes256gcm16-prfsha256-x25519", false, false)
	r, err := loadtest.Run(context.Background(), loadtest.Options{
		Server: nd.n.IKEAddr(), ServerNATT: nd.n.NATTAddr().Port(), Source: netip.MustParseAddr("127.0.0.1"),
		IDTemplate: id, RemoteID: "conc.example", PSK: []byte(psk),
		IKEProposals: []ike.ProposalSpec{ikep}, ESPProposals: []ike.ProposalSpec{esp},
		LocalTS:  []ike.TrafficSelector{ike.SelectorFromPrefix(netip.MustParsePrefix("10.20.0.0/24"))},
		RemoteTS: []ike.TrafficSelector{ike.SelectorFromPrefix(netip.MustParsePrefix("10.30.0.0/24"))},
		Count:    1, Timeout: 10 * time.Second,
	})
	if err != nil && r.Attempted == 0 {
		t.Fatal(err) // not a refused authentication: the run did not start
	}
	return r.Established == 1
}

// waitCounts waits until the node's copy of the store holds psks PSKs.
func (nd *node) waitPSKs(t testing.TB, psks int) time.Duration {
	t.Helper()
	t0 := time.Now()
	for {
		if p, _ := nd.n.CredentialCounts(); p == psks {
			return time.Since(t0)
		}
		if time.Since(t0) > 30*time.Second {
			p, _ := nd.n.CredentialCounts()
			t.Fatalf("node holds %d PSKs, want %d", p, psks)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func writeDevicesCSV(t testing.TB, n int) string {
	var b strings.Builder
	b.WriteString("identity,kind,secret\n")
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "gw%d@iot.example,psk,device-psk-0123456789-%d\n", i, i)
	}
	p := filepath.Join(t.TempDir(), "devices.csv")
	if err := os.WriteFile(p, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// Devices imported from CSV authenticate without a restart; a rotation and
// a revocation take effect on the next authentication.
func TestCredentialStoreLifecycle(t *testing.T) {
	nd := startCredNode(t)
	const devices = 2000
	out := nd.mustCtl(t, "creds", "import", "-q", writeDevicesCSV(t, devices))
	if !strings.Contains(out, "imported:  2000 devices") && !strings.Contains(out, "imported:") {
		t.Fatalf("import:\n%s", out)
	}
	nd.waitPSKs(t, devices)
	last := fmt.Sprintf("gw%d@iot.example", devices)
	if !nd.connect(t, last, fmt.Sprintf("device-psk-0123456789-%d", devices)) {
		t.Fatal("the last imported device did not authenticate")
	}
	if nd.connect(t, last, "a-wrong-psk-0123456789") {
		t.Fatal("a wrong PSK authenticated")
	}

	// Rotate: the old key stops working, the new one works.
	keyFile := filepath.Join(t.TempDir(), "psk")
	os.WriteFile(keyFile, []byte("rotated-psk-0123456789abcdef\n"), 0o600)
	nd.mustCtl(t, "creds", "rotate", last, "--psk-file", keyFile)
	deadline := time.Now().Add(10 * time.Second)
	for !nd.connect(t, last, "rotated-psk-0123456789abcdef") {
		if time.Now().After(deadline) {
			t.Fatal("the rotated PSK never authenticated")
		}
	}
	if nd.connect(t, last, fmt.Sprintf("device-psk-0123456789-%d", devices)) {
		t.Fatal("the PSK before rotation still authenticates")
	}

	// Revoke.
	nd.mustCtl(t, "creds", "revoke", last)
	nd.waitPSKs(t, devices-1)
	if nd.connect(t, last, "rotated-psk-0123456789abcdef") {
		t.Fatal("a revoked device authenticated")
	}
	if code, _, errs := nd.ctl(t, "creds", "revoke", last); code == 0 || !strings.Contains(errs, "no stored credential") {
		t.Fatalf("second revoke: exit %d, %s", code, errs)
	}

	// Listing shows identities, never secrets; pages continue.
	out = nd.mustCtl(t, "creds", "list", "--limit", "3")
	if !strings.Contains(out, "gw1000@iot.example") || strings.Contains(out, "device-psk") || !strings.Contains(out, "1999 stored") {
		t.Fatalf("list:\n%s", out)
	}
	// Bad input: a short PSK is refused and names the device.
	os.WriteFile(keyFile, []byte("short\n"), 0o600)
	if code, _, errs := nd.ctl(t, "creds", "add", "gw9@iot.example", "--psk-file", keyFile); code == 0 || !strings.Contains(errs, "too short") {
		t.Fatalf("short PSK: exit %d, %s", code, errs)
	}
}

// BenchmarkCredentialImport100k imports CREDS_BENCH_DEVICES devices
// (default 100,000) through concentratorctl into a node's credential
// store and authenticates as the last one: import rate, time until the
// node holds them all, and that authentication's time
// (BenchmarkCredentialLookup in concentrator measures the lookup).
func BenchmarkCredentialImport100k(b *testing.B) {
	devices := 100000
	if v, err := strconv.Atoi(os.Getenv("CREDS_BENCH_DEVICES")); err == nil && v > 0 {
		devices = v
	}
	for range b.N {
		nd := startCredNode(b)
		csv := writeDevicesCSV(b, devices)
		t0 := time.Now()
		nd.mustCtlB(b, "creds", "import", "-q", csv)
		imp := time.Since(t0)
		held := nd.waitPSKs(b, devices)
		last := fmt.Sprintf("gw%d@iot.example", devices)
		t1 := time.Now()
		if !nd.connect(b, last, fmt.Sprintf("device-psk-0123456789-%d", devices)) {
			b.Fatal("the last device did not authenticate")
		}
		auth := time.Since(t1)
		b.ReportMetric(float64(devices)/imp.Seconds(), "imported/s")
		b.ReportMetric(held.Seconds(), "s-until-held")
		b.ReportMetric(float64(auth.Milliseconds()), "ms-auth-last")
	}
}

func (nd *node) mustCtlB(b testing.TB, args ...string) {
	b.Helper()
	var out, errb strings.Builder
	if code := run(context.Background(), append([]string{"--addr", nd.addr}, args...), &out, &errb); code != 0 {
		b.Fatalf("concentratorctl %s: exit %d\n%s%s", strings.Join(args, " "), code, out.String(), errb.String())
	}
}
