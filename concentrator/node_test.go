package concentrator

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/dataplane/memory"
	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/loadtest"
)

// startNode runs a node on loopback ephemeral ports with n PSK gateways.
func startNode(t *testing.T, gateways int, extra string) (*Node, *memory.DataPlane) {
	t.Helper()
	var b strings.Builder
	b.WriteString("node: {id: test}\nike:\n  listen: [127.0.0.1]\n  port: 0\n  natt_port: 0\n  shards: 2\n" + extra)
	b.WriteString("identity: {id: conc.example}\nauth:\n  psks:\n")
	for i := 1; i <= gateways; i++ {
		fmt.Fprintf(&b, "    - {id: gw%d@iot.example, secret: psk-%d}\n", i, i)
	}
	b.WriteString("children:\n  local_ts: [10.30.0.0/24]\n  pool: 10.99.0.0/16\n")
	cfg, err := ParseConfig([]byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	dp := memory.New()
	n, err := New(cfg, slog.New(slog.DiscardHandler), dp)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-n.Ready():
	case err := <-done:
		t.Fatalf("node did not start: %v", err)
	}
	return n, dp
}

func loadOptions(t *testing.T, n *Node, count int) loadtest.Options {
	esp, _ := ike.ParseProposal("aes256gcm16", true, false)
	ikep, _ := ike.ParseProposal("aes256gcm16-prfsha256-x25519", false, false)
	return loadtest.Options{
		Server: n.IKEAddr(), ServerNATT: n.NATTAddr().Port(), Source: netip.MustParseAddr("127.0.0.1"),
		IDTemplate: "gw{n}@iot.example", RemoteID: "conc.example", PSK: []byte("psk-{n}"),
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
	o.Hold = 100 * time.Millisecond
	// Check the node's view while the gateways hold their SAs.
	seen := make(chan []SAInfo, 1)
	go func() {
		for ctx.Err() == nil {
			sas, err := n.SAs(ctx)
			if err == nil && len(sas) == 20 && dp.Len() == 20 {
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
