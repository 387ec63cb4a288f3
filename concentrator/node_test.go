package concentrator

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/dataplane/memory"
	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/loadtest"
)

// nodeConfig is a node on loopback ephemeral ports with n PSK gateways;
// ike adds lines to the ike section, tail whole sections (the state store
// is off unless tail configures it).
func nodeConfig(gateways int, ike, tail string) string {
	var b strings.Builder
	b.WriteString("node: {id: test}\nike:\n  listen: [127.0.0.1]\n  port: 0\n  natt_port: 0\n  shards: 2\n" + ike)
	b.WriteString("identity: {id: conc.example}\nauth:\n  psks:\n")
	for i := 1; i <= gateways; i++ {
		fmt.Fprintf(&b, "    - {id: gw%d@iot.example, secret: psk-0123456789ab-%d}\n", i, i)
	}
	b.WriteString("children:\n  local_ts: [10.30.0.0/24]\n  pool: 10.99.0.0/16\n")
	if !strings.Contains(tail, "statestore:") {
		b.WriteString("statestore:\n  mode: none\n")
	}
	if !strings.Contains(tail, "metrics:") {
		b.WriteString("metrics:\n  listen: 127.0.0.1:0\n")
	}
	b.WriteString(tail)
	return b.String()
}

// runNode starts a node from cfgText; stop ends it (also at cleanup).
func runNode(t *testing.T, cfgText string) (*Node, *memory.DataPlane, func()) {
	t.Helper()
	cfg, err := ParseConfig([]byte(cfgText))
	if err != nil {
		t.Fatal(err)
	}
	dp := memory.New()
	n, err := New(cfg, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})), dp)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	select {
	case <-n.Ready():
	case err := <-done:
		t.Fatalf("node did not start: %v", err)
	}
	return n, dp, stop
}

func startNode(t *testing.T, gateways int, ike string) (*Node, *memory.DataPlane) {
	n, dp, _ := runNode(t, nodeConfig(gateways, ike, ""))
	return n, dp
}

func loadOptions(t *testing.T, n *Node, count int) loadtest.Options {
	esp, _ := ike.ParseProposal("aes256gcm16", true, false)
	ikep, _ := ike.ParseProposal("aes256gcm16-prfsha256-x25519", false, false)
	return loadtest.Options{
		Server: n.IKEAddr(), ServerNATT: n.NATTAddr().Port(), Source: netip.MustParseAddr("127.0.0.1"),
		IDTemplate: "gw{n}@iot.example", RemoteID: "conc.example", PSK: []byte("psk-0123456789ab-{n}"),
		IKEProposals: []ike.ProposalSpec{ikep}, ESPProposals: []ike.ProposalSpec{esp},
		LocalTS:    []ike.TrafficSelector{ike.SelectorFromPrefix(netip.MustParsePrefix("0.0.0.0/0"))},
		RemoteTS:   []ike.TrafficSelector{ike.SelectorFromPrefix(netip.MustParsePrefix("10.30.0.0/24"))},
		RequestVIP: true, Count: count, Timeout: 20 * time.Second,
	}
}

func TestNodeServesGatewaysOnLoopback(t *testing.T) {
	n, dp := startNode(t, 20, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	o := loadOptions(t, n, 20)
	o.Hold = 3 * time.Second // long enough for all 20 to be up at once under load
	// Check the node's view while the gateways hold their SAs.
	seen := make(chan []SAInfo, 1)
	go func() {
		for ctx.Err() == nil {
			// All 20 established at once (under load the first gateways
			// may finish their hold and leave while the last are still
			// half-open: a count alone can mix the two).
			sas, err := n.SAs(ctx)
			up := 0
			for _, sa := range sas {
				if sa.State == "ESTABLISHED" && len(sa.Children) == 1 {
					up++
				}
			}
			if err == nil && len(sas) == 20 && up == 20 && dp.Len() == 20 {
				seen <- sas
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	rep, err := loadtest.Run(ctx, o)
	if err != nil {
		t.Fatalf("%v: %+v", err, rep)
	}
	if rep.Established != 20 || rep.Children != 20 {
		t.Fatalf("report %+v", rep)
	}
	select {
	case sas := <-seen:
		vips := map[netip.Addr]bool{}
		for _, sa := range sas {
			if sa.State != "ESTABLISHED" || len(sa.Children) != 1 || !sa.Children[0].Encap {
				t.Fatalf("SA %+v", sa)
			}
			vips[sa.Children[0].VirtualIP] = true
		}
		if len(vips) != 20 {
			t.Fatalf("%d distinct virtual IPs for 20 gateways", len(vips))
		}
	case <-ctx.Done():
		t.Fatal("the node never showed 20 established SAs")
	}
	// The gateways deleted their SAs when they left.
	deadline := time.Now().Add(5 * time.Second)
	for dp.Len() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if dp.Len() != 0 {
		t.Fatalf("%d CHILD SAs left in the data plane after the gateways left", dp.Len())
	}
	st, _ := n.Stats(ctx)
	if st.Established != 20 || st.HalfOpen != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestNodeRefusesUnknownGateway(t *testing.T) {
	n, dp := startNode(t, 1, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	o := loadOptions(t, n, 2) // gw2 has no PSK on the node
	rep, err := loadtest.Run(ctx, o)
	if err == nil || rep.Established != 1 || rep.Failures["AUTHENTICATION_FAILED"] != 1 {
		t.Fatalf("want gw1 in and gw2 refused with AUTHENTICATION_FAILED: %v %+v", err, rep)
	}
	// The node answers the Delete before it empties the data plane.
	deadline := time.Now().Add(5 * time.Second)
	for dp.Len() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if dp.Len() != 0 {
		t.Fatalf("%d CHILD SAs left", dp.Len())
	}
}

func TestNodeCookiesUnderLoad(t *testing.T) {
	n, _ := startNode(t, 10, "  cookie_threshold: 0\n")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rep, err := loadtest.Run(ctx, loadOptions(t, n, 10))
	if err != nil || rep.Established != 10 {
		t.Fatalf("with cookies demanded: %v %+v", err, rep)
	}
	st, _ := n.Stats(ctx)
	if st.CookiesSent != 10 {
		t.Fatalf("cookies sent %d, want 10", st.CookiesSent)
	}
}

func freeUDPPorts(t *testing.T, n int) []int {
	var ports []int
	var conns []*net.UDPConn
	for len(ports) < n {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		ports = append(ports, c.LocalAddr().(*net.UDPAddr).Port)
	}
	for _, c := range conns {
		c.Close()
	}
	return ports
}

// A node restarts with its state store (embedded etcd in a data
// directory): the SAs come back with their SPIs and keys, and the
// gateways, which never noticed, delete them over the restored SAs.
func TestNodeRestartRestoresSAs(t *testing.T) {
	ports := freeUDPPorts(t, 2)
	dir := t.TempDir()
	cfgText := nodeConfig(5, "", fmt.Sprintf("statestore:\n  mode: embedded\n  data_dir: %s\n  cluster_key_file: %s.key\n", dir, dir))
	cfgText = strings.Replace(cfgText, "  port: 0\n  natt_port: 0\n", fmt.Sprintf("  port: %d\n  natt_port: %d\n", ports[0], ports[1]), 1)
	n1, dp1, stop1 := runNode(t, cfgText)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	o := loadOptions(t, n1, 5)
	o.Hold = 8 * time.Second
	type result struct {
		rep loadtest.Report
		err error
	}
	res := make(chan result, 1)
	go func() { r, err := loadtest.Run(ctx, o); res <- result{r, err} }()
	var before []SAInfo
	for ctx.Err() == nil {
		sas, _ := n1.SAs(ctx)
		if len(sas) == 5 && dp1.Len() == 5 {
			before = sas
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if before == nil {
		t.Fatal("the gateways never came up")
	}
	// Responses leave once their SA is persisted: let the last ones go
	// before the node stops (a node that dies in between has persisted an
	// SA whose gateway never heard back; it re-authenticates).
	if err := n1.persist.store.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ := n1.Stats(ctx); st.UnreservedSPIs != 0 {
		t.Fatalf("%d SPIs allocated without a reservation", st.UnreservedSPIs)
	}
	for _, sa := range before {
		if sa.SPIr>>slotShift != 0 || (sa.SPIr&spiShardMask)>>spiShardShift > 1 {
			// slot 0 (the only node) and shard 0 or 1
			t.Fatalf("SPI %016x does not carry slot 0 and a shard", sa.SPIr)
		}
	}
	time.Sleep(200 * time.Millisecond)
	stop1()

	n2, dp2, _ := runNode(t, cfgText)
	after, err := n2.SAs(ctx)
	if err != nil || len(after) != 5 || dp2.Len() != 5 {
		t.Fatalf("after restart: %d SAs, %d CHILD SAs in the data plane (%v)", len(after), dp2.Len(), err)
	}
	spis := map[uint64]bool{}
	for _, sa := range before {
		spis[sa.SPIr] = true
	}
	for _, sa := range after {
		if !spis[sa.SPIr] || sa.State != "ESTABLISHED" || len(sa.Children) != 1 {
			t.Fatalf("restored SA %+v is not one of before", sa)
		}
	}
	r := <-res
	if r.err != nil || r.rep.Established != 5 || r.rep.Deleted != 5 {
		t.Fatalf("gateways: %+v %v (want 5 established and 5 deleted over the restored SAs)", r.rep, r.err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for dp2.Len() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if dp2.Len() != 0 {
		t.Fatalf("%d CHILD SAs left after the gateways deleted theirs", dp2.Len())
	}
}
