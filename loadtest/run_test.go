package loadtest_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator"
	"github.com/ikefleet/ikefleet/concentrator/dataplane"
	"github.com/ikefleet/ikefleet/concentrator/dataplane/memory"
	"github.com/ikefleet/ikefleet/concentrator/dataplane/userspace"
	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/loadtest"
)

// startNode runs a concentrator node on loopback (ephemeral ports, no
// state store, memory data plane) that knows the PSKs of gateways 1..psks.
func startNode(t *testing.T, psks int, extraIKE string) (*concentrator.Node, *memory.DataPlane) {
	t.Helper()
	dp := memory.New()
	return startNodeWith(t, psks, extraIKE, dp), dp
}

func startNodeWith(t *testing.T, psks int, extraIKE string, dp dataplane.DataPlane) *concentrator.Node {
	t.Helper()
	var b strings.Builder
	b.WriteString("node: {id: lt}\nike:\n  listen: [127.0.0.1]\n  port: 0\n  natt_port: 0\n  shards: 2\n" + extraIKE)
	b.WriteString("identity: {id: conc.example}\nauth:\n  psks:\n")
	for i := 1; i <= psks; i++ {
		fmt.Fprintf(&b, "    - {id: gw%d@iot.example, secret: psk-0123456789ab-%d}\n", i, i)
	}
	b.WriteString("children:\n  local_ts: [10.30.0.0/24]\n  pool: 10.99.0.0/16\nstatestore:\n  mode: none\nmetrics:\n  listen: off\n")
	cfg, err := concentrator.ParseConfig([]byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	n, err := concentrator.New(cfg, slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})), dp)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("node: %v", err)
		}
	})
	select {
	case <-n.Ready():
	case err := <-done:
		t.Fatalf("node did not start: %v", err)
	}
	return n
}

// allUp: n IKE SAs, all established with their CHILD SA.
func allUp(sas []concentrator.SAInfo, n int) bool {
	if len(sas) != n {
		return false
	}
	for _, sa := range sas {
		if sa.State != "ESTABLISHED" || len(sa.Children) == 0 {
			return false
		}
	}
	return true
}

// options: count PSK gateways (gw{n}@iot.example, X25519, AES-GCM-256,
// a virtual IP each) for a node at server.
func options(t *testing.T, server, natt netip.AddrPort, count int) loadtest.Options {
	t.Helper()
	o, err := gatewayOptions(server, natt.Port(), count)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// gatewayOptions is options without a test (a child process's gateways).
func gatewayOptions(server netip.AddrPort, natt uint16, count int) (loadtest.Options, error) {
	esp, err1 := ike.ParseProposal("aes256gcm16", true, false)
	ikep, err2 := ike.ParseProposal("aes256gcm16-prfsha256-x25519", false, false)
	if err := errors.Join(err1, err2); err != nil {
		return loadtest.Options{}, err
	}
	return loadtest.Options{
		Server: server, ServerNATT: natt, Source: netip.MustParseAddr("127.0.0.1"),
		IDTemplate: "gw{n}@iot.example", RemoteID: "conc.example", PSK: []byte("psk-0123456789ab-{n}"),
		IKEProposals: []ike.ProposalSpec{ikep}, ESPProposals: []ike.ProposalSpec{esp},
		LocalTS:    []ike.TrafficSelector{ike.SelectorFromPrefix(netip.MustParsePrefix("0.0.0.0/0"))},
		RemoteTS:   []ike.TrafficSelector{ike.SelectorFromPrefix(netip.MustParsePrefix("10.30.0.0/24"))},
		RequestVIP: true, Count: count, Window: 16, Timeout: 20 * time.Second, MaxDuration: time.Minute,
	}, nil
}

// A small ramp against a real node: every gateway comes up, from its own
// source port as the node sees it, and the report adds up.
func TestRampAgainstNodeDistinctSourcePorts(t *testing.T) {
	const n = 50
	node, dp := startNode(t, n, "")
	o := options(t, node.IKEAddr(), node.NATTAddr(), n)
	o.Scenario, o.Hold, o.Rate, o.Window = "ramp", 2*time.Second, 200, 0
	o.TargetPID = os.Getpid() // the node runs in this process
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	type seen struct {
		sas []concentrator.SAInfo
		dp  int
	}
	got := make(chan seen, 1)
	go func() {
		for ctx.Err() == nil {
			if sas, err := node.SAs(ctx); err == nil && allUp(sas, n) && dp.Len() == n {
				got <- seen{sas, dp.Len()}
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	rep, err := loadtest.Run(ctx, o)
	if err != nil {
		t.Fatalf("%v: %+v", err, rep)
	}
	if !rep.Consistent || rep.Attempted != n || rep.Established != n || rep.Failed != 0 || rep.TimedOut != 0 || rep.Children != n || rep.Deleted != n {
		t.Fatalf("report %+v", rep)
	}
	if rep.SourcePorts != 2*n {
		t.Errorf("%d distinct source ports, want %d (IKE and NAT-T per gateway)", rep.SourcePorts, 2*n)
	}
	if rep.LatencyMS.Count != n || rep.Target == nil || rep.Target.CPUSeconds <= 0 {
		t.Errorf("latency %+v, target %+v", rep.LatencyMS, rep.Target)
	}
	s := <-got
	ports, peers := map[uint16]bool{}, map[string]bool{}
	for _, sa := range s.sas {
		if sa.State != "ESTABLISHED" || len(sa.Children) != 1 {
			t.Fatalf("SA %+v", sa)
		}
		ports[sa.Remote.Port()] = true
		peers[sa.PeerID] = true
	}
	if len(ports) != n || len(peers) != n || s.dp != n {
		t.Fatalf("the node saw %d distinct source ports and %d identities for %d gateways (%d CHILD SAs)", len(ports), len(peers), n, s.dp)
	}
	for _, sa := range s.sas {
		if sa.Remote.Port() == node.NATTAddr().Port() || sa.Remote.Port() == 4500 {
			t.Fatalf("gateway %s came from port %d, not its own", sa.PeerID, sa.Remote.Port())
		}
	}
}

// Every attempt ends one way: here some authenticate, some are refused,
// and the report says which, by reason.
func TestAccountingMixedOutcomes(t *testing.T) {
	node, _ := startNode(t, 30, "") // gateways 31..40 are unknown to the node
	o := options(t, node.IKEAddr(), node.NATTAddr(), 40)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := loadtest.Run(ctx, o)
	if !errors.Is(err, loadtest.ErrIncomplete) {
		t.Fatalf("err %v, want ErrIncomplete", err)
	}
	if !rep.Consistent || rep.Attempted != 40 || rep.Established != 30 || rep.Failed != 10 ||
		rep.Failures["AUTHENTICATION_FAILED"] != 10 || rep.TimedOut != 0 {
		t.Fatalf("report %+v", rep)
	}
}

// A responder that never answers: every attempt times out, the run ends
// by itself, and the report still adds up.
func TestAccountingTimeouts(t *testing.T) {
	hole, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer hole.Close()
	addr := hole.LocalAddr().(*net.UDPAddr).AddrPort()
	o := options(t, addr, addr, 12)
	o.Timeout, o.Window = 300*time.Millisecond, 5
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := loadtest.Run(ctx, o)
	if !errors.Is(err, loadtest.ErrIncomplete) {
		t.Fatalf("err %v", err)
	}
	if !rep.Consistent || rep.Attempted != 12 || rep.TimedOut != 12 || rep.Established != 0 || rep.Failed != 0 {
		t.Fatalf("report %+v", rep)
	}
}

// The run's own bound: MaxDuration ends it mid-way; what was in flight
// counts as timed out and what had not started was never attempted.
func TestMaxDurationEndsTheRun(t *testing.T) {
	hole, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer hole.Close()
	addr := hole.LocalAddr().(*net.UDPAddr).AddrPort()
	o := options(t, addr, addr, 100)
	o.Window, o.Timeout, o.MaxDuration = 10, time.Minute, 500*time.Millisecond
	rep, err := loadtest.Run(context.Background(), o)
	if !errors.Is(err, loadtest.ErrIncomplete) {
		t.Fatalf("err %v", err)
	}
	if !rep.Consistent || rep.Attempted != 10 || rep.TimedOut != 10 {
		t.Fatalf("report %+v", rep)
	}
}

// Scenarios on a live node: the SAs stay up through churn, NAT
// rebindings, MOBIKE moves and a rekey storm, and the counts agree.
func TestScenariosAgainstNode(t *testing.T) {
	const n = 20
	node, _ := startNode(t, n, "  dpd_delay: 1s\n  mobike: true\n")
	base := func() loadtest.Options {
		o := options(t, node.IKEAddr(), node.NATTAddr(), n)
		o.Hold, o.DPDDelay, o.KeepaliveInterval = 3*time.Second, 500*time.Millisecond, 500*time.Millisecond
		return o
	}
	run := func(t *testing.T, o loadtest.Options) loadtest.Report {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		rep, err := loadtest.Run(ctx, o)
		if err != nil || !rep.Consistent || rep.Lost != 0 {
			t.Fatalf("%v: %+v", err, rep)
		}
		return rep
	}
	t.Run("churn", func(t *testing.T) {
		o := base()
		o.ChurnPerMin = 600 // 2 reconnects a second
		rep := run(t, o)
		if rep.Attempted <= n || rep.Established != rep.Attempted || rep.Deleted != rep.Attempted {
			t.Fatalf("churn: %+v", rep)
		}
		if rep.Keepalives == 0 {
			t.Error("no NAT-T keepalives from gateways behind their NATs")
		}
	})
	t.Run("nat-rebind", func(t *testing.T) {
		o := base()
		o.RebindPerMin = 600
		rep := run(t, o)
		m := rep.Moves
		// Each gateway's last new port is confirmed at the latest by the
		// answer to its Delete.
		if m.Rebinds == 0 || m.RebindsConfirmed == 0 || m.RebindsConfirmed+m.Unconfirmed != m.Rebinds || rep.Deleted != n {
			t.Fatalf("rebinds %+v, deleted %d", m, rep.Deleted)
		}
	})
	t.Run("mobike", func(t *testing.T) {
		o := base()
		o.MOBIKEPerMin = 600
		rep := run(t, o)
		m := rep.Moves
		if m.MOBIKE == 0 || m.MOBIKEConfirmed == 0 || m.MOBIKEConfirmed+m.Unconfirmed != m.MOBIKE || rep.Deleted != n {
			t.Fatalf("MOBIKE %+v, deleted %d", m, rep.Deleted)
		}
	})
	t.Run("rekey-storm", func(t *testing.T) {
		o := base()
		o.Hold, o.RekeyStorm = 0, true
		rep := run(t, o)
		if rep.Rekeys.Attempted != n || rep.Rekeys.Done != n || rep.Children != 2*n || rep.RekeyLatencyMS.Count != n {
			t.Fatalf("rekeys %+v, children %d", rep.Rekeys, rep.Children)
		}
	})
	t.Run("ike-rekey-storm", func(t *testing.T) {
		o := base()
		o.Hold, o.RekeyStorm, o.RekeyIKE = 0, true, true
		rep := run(t, o)
		if rep.Rekeys.Attempted != n || rep.Rekeys.Done != n || rep.Rekeys.IKE != n || rep.Deleted != n {
			t.Fatalf("IKE rekeys %+v, deleted %d", rep.Rekeys, rep.Deleted)
		}
	})
}

// Many gateways spread over loopback addresses, one socket each.
func TestSpreadOverAddresses(t *testing.T) {
	const n = 40
	node, _ := startNode(t, n, "")
	o := options(t, node.IKEAddr(), node.NATTAddr(), n)
	o.Source, o.Sources, o.PerAddress, o.PortsPerGateway = netip.Addr{}, netip.MustParsePrefix("127.3.0.0/24"), 8, 1
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	o.Hold = 500 * time.Millisecond
	got := make(chan []concentrator.SAInfo, 1)
	go func() {
		for ctx.Err() == nil {
			if sas, err := node.SAs(ctx); err == nil && allUp(sas, n) {
				got <- sas
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	rep, err := loadtest.Run(ctx, o)
	if err != nil || rep.Established != n || rep.SourcePorts != n {
		t.Fatalf("%v: %+v", err, rep)
	}
	addrs := map[netip.Addr]int{}
	for _, sa := range <-got {
		addrs[sa.Remote.Addr()]++
	}
	if len(addrs) != n/8 {
		t.Fatalf("gateways came from %d addresses, want %d: %v", len(addrs), n/8, addrs)
	}
}

// echoDevice stands in for the node's TUN device: every packet the data
// plane delivers (decrypted ESP from a gateway) comes back with source and
// destination swapped, for the data plane to encrypt back to the gateway.
type echoDevice struct {
	in     chan []byte
	closed chan struct{}
	once   sync.Once
	mu     sync.Mutex
	seen   []netip.Addr // inner destinations delivered
	srcs   map[netip.Addr]bool
}

func newEchoDevice() *echoDevice {
	return &echoDevice{in: make(chan []byte, 1024), closed: make(chan struct{}), srcs: map[netip.Addr]bool{}}
}

func (d *echoDevice) Name() string { return "echo0" }
func (d *echoDevice) Read(b []byte) (int, error) {
	select {
	case p := <-d.in:
		return copy(b, p), nil
	case <-d.closed:
		return 0, net.ErrClosed
	}
}
func (d *echoDevice) Write(b []byte) (int, error) {
	if len(b) < 28 || b[0]>>4 != 4 {
		return len(b), nil
	}
	p := bytes.Clone(b)
	src, dst := netip.AddrFrom4([4]byte(p[12:16])), netip.AddrFrom4([4]byte(p[16:20]))
	d.mu.Lock()
	d.seen = append(d.seen, dst)
	d.srcs[src] = true
	d.mu.Unlock()
	copy(p[12:16], b[16:20])
	copy(p[16:20], b[12:16])
	copy(p[20:22], b[22:24])
	copy(p[22:24], b[20:22])
	select {
	case d.in <- p:
	default:
	}
	return len(b), nil
}
func (d *echoDevice) Close() error { d.once.Do(func() { close(d.closed) }); return nil }

type noRouter struct{}

func (noRouter) AddRoute(netip.Prefix, []dataplane.Selector) error { return nil }
func (noRouter) DelRoute(netip.Prefix) error                       { return nil }

// ESP from every gateway, sealed by the user-space ESP codec, through a
// node's user-space data plane and back.
func TestESPTrafficThroughUserspaceDataPlane(t *testing.T) {
	const n = 10
	dev := newEchoDevice()
	dp, err := userspace.New(userspace.Config{Device: dev, Router: noRouter{}, Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	node := startNodeWith(t, n, "", dp)
	o := options(t, node.IKEAddr(), node.NATTAddr(), n)
	o.Hold, o.ESPRate, o.ESPSize, o.ESPDest = 2*time.Second, 20, 100, netip.MustParseAddr("10.30.0.7")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := loadtest.Run(ctx, o)
	if err != nil || rep.ESP == nil {
		t.Fatalf("%v: %+v", err, rep)
	}
	if rep.ESP.Sent == 0 || rep.ESP.Received == 0 || len(rep.ESP.Errors) != 0 || rep.ESP.Received > rep.ESP.Sent {
		t.Fatalf("ESP %+v", *rep.ESP)
	}
	dev.mu.Lock()
	defer dev.mu.Unlock()
	if len(dev.seen) == 0 || len(dev.srcs) != n {
		t.Fatalf("the node delivered %d packets from %d virtual IPs, want packets from %d", len(dev.seen), len(dev.srcs), n)
	}
	for _, d := range dev.seen {
		if d != o.ESPDest {
			t.Fatalf("inner destination %v, want %v", d, o.ESPDest)
		}
	}
	for s := range dev.srcs {
		if !netip.MustParsePrefix("10.99.0.0/16").Contains(s) {
			t.Fatalf("inner source %v is not a virtual IP from the pool", s)
		}
	}
	t.Logf("ESP: sent %d, received %d", rep.ESP.Sent, rep.ESP.Received)
}

// A liveness check is needed only for a peer whose ESP stopped (RFC 7296
// §2.4): gateways sending ESP through the node's user-space data plane
// get none, silent ones get theirs every dpd_delay.
func TestLivenessChecksOnlyForSilentPeers(t *testing.T) {
	const n = 10
	for _, tc := range []struct {
		name string
		rate float64
	}{{"esp", 10}, {"silent", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			dp, err := userspace.New(userspace.Config{Device: newEchoDevice(), Router: noRouter{}, Workers: 2})
			if err != nil {
				t.Fatal(err)
			}
			node := startNodeWith(t, n, "  dpd_delay: 1s\n", dp)
			o := options(t, node.IKEAddr(), node.NATTAddr(), n)
			o.Hold, o.ESPRate, o.ESPSize, o.ESPDest = 4*time.Second, tc.rate, 100, netip.MustParseAddr("10.30.0.7")
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if rep, err := loadtest.Run(ctx, o); err != nil || rep.Established != n {
				t.Fatalf("%v: %+v", err, rep)
			}
			st, err := node.Stats(ctx)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("liveness checks sent %d, not needed %d", st.DPDSent, st.DPDTraffic)
			// Over a hold of 4 dpd_delays each gateway is due about 3 times.
			if tc.rate > 0 && (st.DPDSent > n || st.DPDTraffic < n) {
				t.Errorf("gateways sending ESP: %d checks sent, %d not needed; want at most %d sent (before a gateway's first ESP) and at least %d not needed", st.DPDSent, st.DPDTraffic, n, n)
			}
			if tc.rate == 0 && (st.DPDSent < n || st.DPDTraffic != 0) {
				t.Errorf("silent gateways: %d checks sent, %d not needed; want at least %d sent, none skipped", st.DPDSent, st.DPDTraffic, n)
			}
		})
	}
}

// The caller's cancel ends a run in its hold: the gateways delete their
// SAs, and the report of what happened comes back with the context's error.
func TestCancelEndsTheRunWithAReport(t *testing.T) {
	const n = 10
	node, dp := startNode(t, n, "")
	o := options(t, node.IKEAddr(), node.NATTAddr(), n)
	o.Hold = time.Hour
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Cancel once the gateways themselves count every SA established (the
	// node's table can be complete before its last IKE_AUTH answer has
	// reached the gateway).
	o.ProgressEvery = 10 * time.Millisecond
	o.Progress = func(p loadtest.Progress) {
		if p.Established == n {
			cancel()
		}
	}
	rep, err := loadtest.Run(ctx, o)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want context.Canceled", err)
	}
	if !rep.Consistent || rep.Established != n || rep.Deleted != n {
		t.Fatalf("report %+v", rep)
	}
	deadline := time.Now().Add(10 * time.Second)
	for dp.Len() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if dp.Len() != 0 {
		t.Fatalf("%d CHILD SAs left on the node after the gateways left", dp.Len())
	}
}

// Cluster mode with one node behind an anycast address that nothing
// listens on: the gateways (starting on the NAT-T port) reach the node
// through the router, and when its health check starts failing the route
// is withdrawn: every established gateway's flow moved, and none is
// answered (no node is left); no SA is lost within the hold, so nothing
// re-authenticates.
func TestClusterModeRoutesAndWithdraws(t *testing.T) {
	const n = 20
	node, _ := startNode(t, n, "")
	var failing atomic.Bool
	health := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/metrics" {
			fmt.Fprintf(w, "ikefleet_ike_sas{state=\"established\"} %d\n", n)
			return
		}
		if failing.Load() {
			http.Error(w, "draining", http.StatusServiceUnavailable)
		}
	}))
	defer health.Close()
	anycast := netip.MustParseAddr("127.0.0.10")
	o := options(t, netip.AddrPortFrom(anycast, node.IKEAddr().Port()), node.NATTAddr(), n)
	o.Targets, o.TargetHTTP = []netip.Addr{node.IKEAddr().Addr()}, []string{health.URL}
	o.StartNATT, o.Reconnect, o.NoDelete = true, true, true
	o.Hold = 8 * time.Second // the withdrawal comes well within it
	o.Progress = func(p loadtest.Progress) {
		if p.Phase == "hold" {
			failing.Store(true)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := loadtest.Run(ctx, o)
	if err != nil {
		t.Fatalf("%v: %+v", err, rep)
	}
	if rep.Established != n || rep.Lost != 0 || rep.Reauthentications != 0 || rep.SourcePorts != 2*n {
		t.Fatalf("report: established %d, lost %d, re-authentications %d, source ports %d", rep.Established, rep.Lost, rep.Reauthentications, rep.SourcePorts)
	}
	sas, err := node.SAs(ctx)
	if err != nil || len(sas) != n {
		t.Fatalf("node holds %d SAs (%v)", len(sas), err)
	}
	if len(rep.RouteEvents) != 1 {
		t.Fatalf("route events: %+v", rep.RouteEvents)
	}
	e := rep.RouteEvents[0]
	if e.Change != "withdrawn" || e.Reason != "readyz 503" || e.Moved != n || e.Recovered != 0 || e.Target != node.IKEAddr().Addr().String() {
		t.Fatalf("route event: %+v", e)
	}
	if len(rep.Nodes) != 1 || len(rep.Nodes[0].SAs) == 0 || rep.Nodes[0].SAs[len(rep.Nodes[0].SAs)-1] != n {
		t.Fatalf("node timeline: %+v", rep.Nodes)
	}
}
