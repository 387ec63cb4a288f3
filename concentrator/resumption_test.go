package concentrator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/clock"
	"github.com/ikefleet/ikefleet/concentrator/dataplane/memory"
	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/concentrator/transport"
	"github.com/ikefleet/ikefleet/statestore"
)

func TestResumptionConfig(t *testing.T) {
	for _, tc := range []struct {
		yaml, field string
	}{
		{"  resumption: {enabled: true, ticket_lifetime: 10s}\n", "ike.resumption.ticket_lifetime"},
		{"  resumption: {enabled: true, ticket_lifetime: 1h, key_rotation: 2h}\n", "ike.resumption.key_rotation"},
		{"  resumption: {enabled: true, ticket_lifetime: 1h, key_rotation: 0s}\n", "ike.resumption.key_rotation"},
	} {
		_, err := ParseConfig([]byte(nodeConfig(1, tc.yaml, "")))
		var fe *FieldError
		if err == nil || !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("%q: %v, want an error naming %s", tc.yaml, err, tc.field)
		}
	}
	cfg, err := ParseConfig([]byte(nodeConfig(1, "  resumption: {enabled: true}\n", "")))
	if err != nil || cfg.IKE.Resumption.TicketLifetime != 8*time.Hour || cfg.IKE.Resumption.KeyRotation != 4*time.Hour {
		t.Fatalf("defaults: %+v %v", cfg.IKE.Resumption, err)
	}
}

// gatewayInitiate starts an initiation on g's engine and waits for its
// outcome: the IKE SA established, or the notify it failed with.
func gatewayInitiate(t *testing.T, ctx context.Context, g *memGateway, ini ike.Initiation) (uint64, ike.NotifyType, bool) {
	t.Helper()
	errc := make(chan error, 1)
	var spi uint64
	g.calls <- func() {
		var rd ike.Ready
		var err error
		spi, err = g.eng.Initiate(g.clk.Now(), ini, &rd)
		g.perform(&rd)
		errc <- err
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case ev := <-g.events:
			if ev.SPIi != spi {
				continue
			}
			switch ev.Kind {
			case ike.EventIKEEstablished:
				return spi, 0, true
			case ike.EventIKEFailed:
				return spi, ev.Notify, false
			}
		case <-ctx.Done():
			t.Fatal("no outcome")
		}
	}
}

// A gateway gets a ticket from node a, loses its SA, and resumes it on
// node b: the ticket keys come from the cluster (sealed in etcd), so b
// opens what a sealed. The ticket is then used up on b.
func TestResumptionAcrossNodes(t *testing.T) {
	etcd, err := statestore.StartEmbedded(statestore.EmbedConfig{Dir: t.TempDir(), NoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(etcd.Close)
	keyDir := t.TempDir()
	if _, err := statestore.LoadKeyFile(filepath.Join(keyDir, "cluster.key"), true); err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(keyDir, "cluster.key")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	netw := transport.NewNetwork()
	clk := clock.NewFake(time.Now().Truncate(time.Millisecond))
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	nodes := map[string]*Node{}
	addrs := map[string]netip.Addr{}
	for i, id := range []string{"a", "b"} {
		addr := netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)})
		text := nodeConfig(2, "  resumption: {enabled: true, ticket_lifetime: 2h, key_rotation: 1h}\n",
			fmt.Sprintf("statestore:\n  mode: external\n  endpoints: [%s]\n  cluster_key_file: %s\n  lease_ttl: 5s\n", etcd.Endpoints()[0], keyFile))
		text = replaceOnce(t, text, "node: {id: test}", "node: {id: "+id+"}")
		text = replaceOnce(t, text, "listen: [127.0.0.1]\n  port: 0\n  natt_port: 0", "listen: ["+addr.String()+"]\n  port: 500\n  natt_port: 4500")
		cfg, err := ParseConfig([]byte(text))
		if err != nil {
			t.Fatal(err)
		}
		n, err := New(cfg, log.With("node", id), memory.New(), WithTransport(netw), WithClock(clk))
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		rctx, stop := context.WithCancel(ctx)
		go func() { done <- n.Run(rctx) }()
		t.Cleanup(func() {
			stop()
			if err := <-done; err != nil {
				t.Errorf("node %s: %v", id, err)
			}
		})
		select {
		case <-n.Ready():
		case err := <-done:
			t.Fatalf("node %s did not start: %v", id, err)
		}
		nodes[id], addrs[id] = n, addr
	}
	idsA, curA, okA := nodes["a"].tickets.IDs()
	idsB, curB, okB := nodes["b"].tickets.IDs()
	if !okA || !okB || curA != curB || len(idsA) != 1 || len(idsB) != 1 {
		t.Fatalf("ticket keys: a %v/%d/%v, b %v/%d/%v", idsA, curA, okA, idsB, curB, okB)
	}

	g := startMemGateway(t, ctx, netw, clk, netip.MustParseAddr("192.0.2.10"))
	id, _ := ike.ParseIdentity("gw1@iot.example")
	esp, _ := ike.ParseProposal("aes256gcm16", true, false)
	prop, _ := ike.ParseProposal("aes256gcm16-prfsha256-x25519", false, false)
	ini := ike.Initiation{Local: g.ike.LocalAddr(), Remote: netip.AddrPortFrom(addrs["a"], 500),
		Creds: ike.Credentials{ID: id}, PSK: []byte("psk-0123456789ab-1"),
		IKEProposals: []ike.ProposalSpec{prop}, ESPProposals: []ike.ProposalSpec{esp},
		TSi:        []ike.TrafficSelector{ike.SelectorFromPrefix(netip.MustParsePrefix("0.0.0.0/0"))},
		TSr:        []ike.TrafficSelector{ike.SelectorFromPrefix(netip.MustParsePrefix("10.30.0.0/24"))},
		RequestVIP: true, RemoteNATT: 4500, RequestTicket: true}
	spi, n, ok := gatewayInitiate(t, ctx, g, ini)
	if !ok {
		t.Fatalf("first connection: %v", n)
	}
	var tk *ike.Ticket
	got := make(chan struct{})
	g.calls <- func() {
		tk = g.eng.SA(spi).Ticket()
		var rd ike.Ready
		g.eng.Forget(spi, &rd) // the gateway reboots: its SA is gone, its ticket kept
		close(got)
	}
	<-got
	if tk == nil {
		t.Fatal("node a issued no ticket")
	}

	// Resume on node b, with no PSK at hand.
	res := ini
	res.Remote = netip.AddrPortFrom(addrs["b"], 500)
	res.PSK, res.Resume = nil, tk
	if _, n, ok := gatewayInitiate(t, ctx, g, res); !ok {
		t.Fatalf("resumption on node b: %v", n)
	}
	waitFor(t, ctx, "the resumed SA on node b", func() bool {
		sas, _ := nodes["b"].SAs(ctx)
		return len(sas) == 1 && sas[0].State == "ESTABLISHED" && sas[0].PeerID == "gw1@iot.example" && len(sas[0].Children) == 1
	})
	st, _ := nodes["b"].Stats(ctx)
	if st.Resumed != 1 {
		t.Fatalf("node b stats: resumed %d", st.Resumed)
	}
	// Used up: the same ticket again is refused.
	if _, n, ok := gatewayInitiate(t, ctx, g, res); ok || n != ike.AUTHENTICATION_FAILED {
		t.Fatalf("the ticket resumed twice on node b (%v)", n)
	}
}
