package concentrator

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike"
)

// Exclusive selectors hold cluster-wide: a gateway on one node holds its
// LAN; another identity proposing part of it to another node gets
// TS_UNACCEPTABLE there; once the first gateway's SA is gone, the range is
// free on every node.
func TestClusterSelectorsExclusive(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := newTestCluster(t, 3)
	c.edit = func(text string) string {
		return text + "policies:\n  - {id: '*@iot.example', remote_ts: [10.20.0.0/16]}\n"
	}
	a, b := c.start(ctx, "a"), c.start(ctx, "b")
	lan := func(g *memGateway, n int, prefix string) ike.Initiation {
		ini := gatewayInitiation(g, c.vip, n)
		ini.RequestVIP = false
		ini.TSi = []ike.TrafficSelector{ike.SelectorFromPrefix(netip.MustParsePrefix(prefix))}
		return ini
	}
	// connect starts gateway n and waits for its IKE SA; it reports
	// whether a CHILD SA came with it.
	connect := func(g *memGateway, ini ike.Initiation) (child bool) {
		t.Helper()
		g.initiate(ini)
		established := false
		for {
			select {
			case ev := <-g.events:
				switch ev.Kind {
				case ike.EventIKEEstablished:
					established = true
				case ike.EventChildInstalled:
					return true
				case ike.EventChildFailed:
					return false
				case ike.EventIKEFailed:
					t.Fatalf("%v: %v %s", ini.Creds.ID, ev.Notify, ev.Reason)
				}
			case <-time.After(5 * time.Second):
				if established {
					return false
				}
				t.Fatalf("%v: no IKE SA", ini.Creds.ID)
			case <-ctx.Done():
				t.Fatal(ctx.Err())
			}
		}
	}
	g1 := startMemGateway(t, ctx, c.netw, c.clk, netip.MustParseAddr("192.0.2.11"))
	g2 := startMemGateway(t, ctx, c.netw, c.clk, netip.MustParseAddr("192.0.2.12"))
	g3 := startMemGateway(t, ctx, c.netw, c.clk, netip.MustParseAddr("192.0.2.13"))
	c.pin(g1.ike.LocalAddr().Addr(), "a")
	c.pin(g2.ike.LocalAddr().Addr(), "b")
	c.pin(g3.ike.LocalAddr().Addr(), "b")
	if !connect(g1, lan(g1, 1, "10.20.1.0/24")) {
		t.Fatal("gateway 1's CHILD SA refused")
	}
	waitFor(t, ctx, "b knows gateway 1's selectors held on a", func() bool { return b.n.ecfg.Selectors.Remote() > 0 })
	if connect(g2, lan(g2, 2, "10.20.1.128/25")) {
		t.Fatal("gateway 2 on b took part of gateway 1's LAN held on a")
	}
	st, err := b.n.Stats(ctx)
	if err != nil || st.SelectorsRefused != 1 {
		t.Fatalf("b: %d selectors refused (%v), want 1", st.SelectorsRefused, err)
	}
	// Its own LAN is its own.
	if !connect(g3, lan(g3, 3, "10.20.3.0/24")) {
		t.Fatal("gateway 3's own LAN refused")
	}
	// Gateway 1's SA goes (a deletes it): the range is free on b too.
	sas, err := a.n.SAs(ctx)
	if err != nil || len(sas) != 1 {
		t.Fatalf("a holds %d SAs (%v)", len(sas), err)
	}
	if err := a.n.Terminate(ctx, sas[0].SPIr); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "b forgets gateway 1's selectors", func() bool { return b.n.ecfg.Selectors.Remote() == 1 }) // gateway 3's own
	g4 := startMemGateway(t, ctx, c.netw, c.clk, netip.MustParseAddr("192.0.2.14"))
	c.pin(g4.ike.LocalAddr().Addr(), "b")
	if !connect(g4, lan(g4, 2, "10.20.1.128/25")) {
		t.Fatal("gateway 2's identity refused after gateway 1 left")
	}
}
