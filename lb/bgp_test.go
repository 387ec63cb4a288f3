package lb

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// router is a second gobgp in the test, in the role of the site's router:
// it accepts the speaker's session on loopback and keeps what it learns.
func router(t *testing.T, asn, peerASN uint32, port int) *server.BgpServer {
	t.Helper()
	s := server.NewBgpServer()
	go s.Serve()
	ctx := context.Background()
	if err := s.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{Asn: asn, RouterId: "127.0.0.2",
		ListenPort: int32(port), ListenAddresses: []string{"127.0.0.1"}}}); err != nil {
		t.Fatal(err)
	}
	if err := s.AddPeer(ctx, &api.AddPeerRequest{Peer: &api.Peer{
		Conf:      &api.PeerConf{NeighborAddress: "127.0.0.1", PeerAsn: peerASN},
		Transport: &api.Transport{PassiveMode: true},
		Timers:    &api.Timers{Config: &api.TimersConfig{HoldTime: 9, KeepaliveInterval: 3}},
	}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// learned lists the IPv4 prefixes s has in its global RIB.
func learned(t *testing.T, s *server.BgpServer) []string {
	var out []string
	err := s.ListPath(apiutil.ListPathRequest{TableType: api.TableType_TABLE_TYPE_GLOBAL, Family: bgp.RF_IPv4_UC},
		func(p bgp.NLRI, _ []*apiutil.Path) { out = append(out, p.String()) })
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// waitFor polls cond (bounded: the test fails after a minute).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestBGPSpeakerAnnouncesAndWithdraws(t *testing.T) {
	port := freePort(t)
	r := router(t, 65000, 65001, port)
	cfg := BGPConfig{ASN: 65001, RouterID: "127.0.0.1", HoldTime: 9 * time.Second, ConnectRetry: time.Second,
		Neighbors: []NeighborConfig{{Address: "127.0.0.1", ASN: 65000, Port: port}}}
	sp := NewBGPSpeaker(cfg, false, slog.New(slog.DiscardHandler))
	ctx := context.Background()
	if err := sp.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	waitFor(t, "the session", func() bool { up, _ := sp.Sessions(ctx); return up == 1 })

	a, inner := netip.MustParsePrefix("198.51.100.10/32"), netip.MustParsePrefix("10.99.0.0/16")
	if err := sp.Set(ctx, []netip.Prefix{a, inner}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both prefixes at the router", func() bool {
		return slices.Equal(learned(t, r), []string{"10.99.0.0/16", "198.51.100.10/32"})
	})
	if err := sp.Set(ctx, []netip.Prefix{a}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the inner prefix withdrawn", func() bool { return slices.Equal(learned(t, r), []string{"198.51.100.10/32"}) })
	if err := sp.Set(ctx, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "everything withdrawn", func() bool { return len(learned(t, r)) == 0 })

	// Close after announcing: the CEASE makes the router drop the route
	// without waiting for its hold timer.
	if err := sp.Set(ctx, []netip.Prefix{a}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "announced again", func() bool { return len(learned(t, r)) == 1 })
	sp.Close()
	waitFor(t, "withdrawn on close", func() bool { return len(learned(t, r)) == 0 })
	if err := sp.Set(ctx, []netip.Prefix{a}); err != ErrClosed {
		t.Fatalf("Set after Close: %v, want ErrClosed", err)
	}
}

// fakeSource is a node whose probe the test sets.
type fakeSource struct {
	mu sync.Mutex
	p  Probe
	n  atomic.Int64
}

func (s *fakeSource) Probe() Probe {
	s.n.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.p
}
func (s *fakeSource) set(f func(*Probe)) { s.mu.Lock(); f(&s.p); s.mu.Unlock() }
func (s *fakeSource) VirtualIPs(context.Context) ([]netip.Addr, error) {
	return []netip.Addr{netip.MustParseAddr("10.99.0.7")}, nil
}

func TestFrontFollowsHealthAndDrain(t *testing.T) {
	port := freePort(t)
	r := router(t, 65000, 65001, port)
	cfg := DefaultConfig()
	cfg.Mode = ModeBGP
	cfg.AnnounceVirtualIPs = true
	cfg.Health.Interval = 20 * time.Millisecond
	cfg.BGP = BGPConfig{ASN: 65001, RouterID: "127.0.0.1", HoldTime: 9 * time.Second, ConnectRetry: time.Second,
		Neighbors: []NeighborConfig{{Address: "127.0.0.1", ASN: 65000, Port: port}}}
	listen := []netip.Addr{netip.MustParseAddr("198.51.100.10")}
	if err := cfg.Validate(listen); err != nil {
		t.Fatal(err)
	}
	src := &fakeSource{p: good()}
	f, err := New(cfg, listen, src, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	both := []string{"10.99.0.7/32", "198.51.100.10/32"}
	waitFor(t, "announced once healthy", func() bool { return slices.Equal(learned(t, r), both) })

	// etcd unreachable: withdrawn after Fall bad checks.
	src.set(func(p *Probe) { p.StoreReachable = false })
	waitFor(t, "withdrawn when unhealthy", func() bool { return len(learned(t, r)) == 0 })
	st := f.Status(ctx)
	if st.Healthy || !slices.Contains(st.Failing, CheckStore) || st.Withdrawals != 1 || st.Downs != 1 {
		t.Fatalf("status %+v", st)
	}
	src.set(func(p *Probe) { p.StoreReachable = true })
	waitFor(t, "announced when healthy again", func() bool { return slices.Equal(learned(t, r), both) })

	// Draining: withdrawn though healthy; back when the drain ends.
	src.set(func(p *Probe) { p.Draining = true })
	f.Kick()
	waitFor(t, "withdrawn while draining", func() bool { return len(learned(t, r)) == 0 })
	if st := f.Status(ctx); !st.Healthy || !st.Draining || len(st.Announced) != 0 {
		t.Fatalf("draining status %+v", st)
	}
	src.set(func(p *Probe) { p.Draining = false })
	f.Kick()
	waitFor(t, "announced after the drain", func() bool { return slices.Equal(learned(t, r), both) })

	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	waitFor(t, "withdrawn when the front stops", func() bool { return len(learned(t, r)) == 0 })
}
