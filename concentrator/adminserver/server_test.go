package adminserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	adminv1 "github.com/ikefleet/ikefleet/api/admin/v1"
	"github.com/ikefleet/ikefleet/concentrator"
	"github.com/ikefleet/ikefleet/concentrator/dataplane/memory"
	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/internal/localpeer/localpeertest"
	"github.com/ikefleet/ikefleet/internal/syncbuf"
	"github.com/ikefleet/ikefleet/loadtest"
	"github.com/ikefleet/ikefleet/statestore"
)

// testNode is a node on loopback with its admin API and a client.
type testNode struct {
	node    *concentrator.Node
	dp      *memory.DataPlane
	srv     *Server
	cli     adminv1.AdminClient
	conn    *grpc.ClientConn
	cfgPath string
}

// nodeConfig: a node on loopback ephemeral ports whose gateways gw1..gwN
// authenticate with psk-N; tail adds sections (the state store is off
// unless tail configures it).
func nodeConfig(gateways int, tail string) string {
	var b strings.Builder
	b.WriteString("node: {id: adm}\nike:\n  listen: [127.0.0.1]\n  port: 0\n  natt_port: 0\n  shards: 2\n")
	b.WriteString("identity: {id: conc.example}\nauth:\n  psks:\n")
	for i := 1; i <= gateways; i++ {
		fmt.Fprintf(&b, "    - {id: gw%d@iot.example, secret: psk-0123456789ab-%d}\n", i, i)
	}
	b.WriteString("children:\n  local_ts: [10.30.0.0/24]\n  pool: 10.99.0.0/16\n")
	if !strings.Contains(tail, "statestore:") {
		b.WriteString("statestore:\n  mode: none\n")
	}
	if !strings.Contains(tail, "admin:") {
		b.WriteString("admin:\n  listen: 127.0.0.1:0\n")
	}
	if !strings.Contains(tail, "metrics:") {
		// Its default port is fixed; tests of other packages running at
		// the same time may hold it.
		b.WriteString("metrics:\n  listen: \"\"\n")
	}
	b.WriteString(tail)
	return b.String()
}

func quietLog() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// startNode runs a node from cfgText (written to a file, which
// ReloadCredentials re-reads) with its admin API and a plaintext client.
func startNode(t *testing.T, cfgText string) *testNode {
	t.Helper()
	path := filepath.Join(t.TempDir(), "concentratord.yaml")
	if err := os.WriteFile(path, []byte(cfgText), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := concentrator.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	dp := memory.New()
	n, err := concentrator.New(cfg, quietLog(), dp)
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
	srv, err := Start(cfg.Admin, n, quietLog())
	if err != nil {
		cancel()
		<-done
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(srv.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return &testNode{node: n, dp: dp, srv: srv, cli: adminv1.NewAdminClient(conn), conn: conn, cfgPath: path}
}

func gatewayOptions(tn *testNode, idTemplate, pskTemplate string, count int) loadtest.Options {
	esp, _ := ike.ParseProposal("aes256gcm16", true, false)
	ikep, _ := ike.ParseProposal("aes256gcm16-prfsha256-x25519", false, false)
	return loadtest.Options{
		Server: tn.node.IKEAddr(), ServerNATT: tn.node.NATTAddr().Port(), Source: netip.MustParseAddr("127.0.0.1"),
		IDTemplate: idTemplate, RemoteID: "conc.example", PSK: []byte(pskTemplate),
		IKEProposals: []ike.ProposalSpec{ikep}, ESPProposals: []ike.ProposalSpec{esp},
		LocalTS:    []ike.TrafficSelector{ike.SelectorFromPrefix(netip.MustParsePrefix("0.0.0.0/0"))},
		RemoteTS:   []ike.TrafficSelector{ike.SelectorFromPrefix(netip.MustParsePrefix("10.30.0.0/24"))},
		RequestVIP: true, Count: count, Timeout: 20 * time.Second,
	}
}

// runFleet starts gateways that hold their SAs until the test ends.
func runFleet(t *testing.T, o loadtest.Options) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		loadtest.Run(ctx, o)
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// waitSAs waits until ListSAs (filter f) counts want SAs.
func waitSAs(t *testing.T, tn *testNode, f *adminv1.SAFilter, want int) *adminv1.ListSAsResponse {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		r, err := tn.cli.ListSAs(context.Background(), &adminv1.ListSAsRequest{Filter: f, PageSize: 1000})
		if err != nil {
			t.Fatal(err)
		}
		if int(r.Total) == want {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("ListSAs %v: %d SAs, want %d", f, r.Total, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func established() *adminv1.SAFilter { return &adminv1.SAFilter{State: "ESTABLISHED"} }

func code(err error) codes.Code { return status.Code(err) }

func TestListAndShow(t *testing.T) {
	tn := startNode(t, nodeConfig(5, ""))
	o := gatewayOptions(tn, "gw{n}@iot.example", "psk-0123456789ab-{n}", 5)
	o.Hold = time.Minute
	runFleet(t, o)
	waitSAs(t, tn, established(), 5)
	ctx := context.Background()

	// Pages of two, in SPI order, that together hold every SA once.
	var spis []uint64
	token := ""
	pages := 0
	for {
		r, err := tn.cli.ListSAs(ctx, &adminv1.ListSAsRequest{PageSize: 2, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		pages++
		if r.Total != 5 || len(r.Sas) > 2 {
			t.Fatalf("page %d: total %d, %d SAs", pages, r.Total, len(r.Sas))
		}
		for _, sa := range r.Sas {
			if len(spis) > 0 && sa.Spi <= spis[len(spis)-1] {
				t.Fatalf("SPIs out of order: %016x after %016x", sa.Spi, spis[len(spis)-1])
			}
			spis = append(spis, sa.Spi)
			if sa.Node != "adm" || sa.State != "ESTABLISHED" || sa.Spi != sa.SpiR || len(sa.Children) != 1 ||
				!strings.HasSuffix(sa.PeerId, "@iot.example") || sa.VirtualIp == "" || sa.Established == nil || sa.Policy != "default" {
				t.Fatalf("SA %v", sa)
			}
		}
		if token = r.NextPageToken; token == "" {
			break
		}
	}
	if pages != 3 || len(spis) != 5 {
		t.Fatalf("%d pages, %d SAs; want 3 pages of 5 SAs", pages, len(spis))
	}

	// Filters.
	for _, tc := range []struct {
		f    *adminv1.SAFilter
		want int
	}{
		{&adminv1.SAFilter{Identity: "gw3@iot.example"}, 1},
		{&adminv1.SAFilter{Identity: "gw?@*"}, 5},
		{&adminv1.SAFilter{Identity: "gw[1]*"}, 0},
		{&adminv1.SAFilter{Identity: "*@other.example"}, 0},
		{&adminv1.SAFilter{Remote: "127.0.0.1"}, 5},
		{&adminv1.SAFilter{Remote: "127.0.0.0/8"}, 5},
		{&adminv1.SAFilter{Remote: "192.0.2.0/24"}, 0},
		{&adminv1.SAFilter{State: "established", Node: "adm"}, 5},
		{&adminv1.SAFilter{State: "DELETING"}, 0},
	} {
		r, err := tn.cli.ListSAs(ctx, &adminv1.ListSAsRequest{Filter: tc.f})
		if err != nil || int(r.Total) != tc.want || len(r.Sas) != tc.want {
			t.Errorf("filter %v: %v, %v; want %d", tc.f, r, err, tc.want)
		}
	}
	for _, tc := range []struct {
		f    *adminv1.SAFilter
		code codes.Code
		msg  string
	}{
		{&adminv1.SAFilter{State: "SLEEPING"}, codes.InvalidArgument, "filter.state"},
		{&adminv1.SAFilter{Remote: "nowhere"}, codes.InvalidArgument, "filter.remote"},
		{&adminv1.SAFilter{Node: "other"}, codes.FailedPrecondition, "filter.node"},
	} {
		_, err := tn.cli.ListSAs(ctx, &adminv1.ListSAsRequest{Filter: tc.f})
		if code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("filter %v: %v, want %v naming %s", tc.f, err, tc.code, tc.msg)
		}
	}
	if _, err := tn.cli.ListSAs(ctx, &adminv1.ListSAsRequest{PageToken: "garbage!"}); code(err) != codes.InvalidArgument {
		t.Errorf("bad page token: %v", err)
	}

	// GetSA, by our SPI and by the peer's, with the data plane's counters.
	sa, err := tn.cli.GetSA(ctx, &adminv1.GetSARequest{Spi: spis[0]})
	if err != nil {
		t.Fatal(err)
	}
	if sa.Spi != spis[0] || sa.Created == nil || len(sa.Children) != 1 || !sa.Children[0].HasCounters ||
		sa.Children[0].InSpi == 0 || sa.Children[0].Proposal == "" || len(sa.Children[0].LocalTs) != 1 {
		t.Fatalf("GetSA %v", sa)
	}
	byPeer, err := tn.cli.GetSA(ctx, &adminv1.GetSARequest{Spi: sa.SpiI})
	if err != nil || byPeer.Spi != sa.Spi {
		t.Fatalf("GetSA by the peer's SPI: %v %v", byPeer, err)
	}
	if _, err := tn.cli.GetSA(ctx, &adminv1.GetSARequest{Spi: 0x1234}); code(err) != codes.NotFound {
		t.Fatalf("GetSA of no SA: %v", err)
	}

	// Status and nodes: this node alone (no state store), with its load.
	nodes, err := tn.cli.ListNodes(ctx, &adminv1.ListNodesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes.Nodes) != 1 {
		t.Fatalf("nodes %v", nodes)
	}
	me := nodes.Nodes[0]
	if !me.Self || me.Id != "adm" || me.Health.State != "SERVING" || me.Load.Established != 5 || me.Load.ChildSas != 5 ||
		me.Load.EstablishedTotal != 5 || me.Load.Shards != 2 {
		t.Fatalf("node %v", me)
	}
	st, err := tn.cli.GetClusterStatus(ctx, &adminv1.GetClusterStatusRequest{})
	if err != nil || st.TotalSas != 5 || st.NodeId != "adm" || st.StateStore.Mode != "none" {
		t.Fatalf("status %v %v", st, err)
	}
}

func TestTerminateAndEvents(t *testing.T) {
	tn := startNode(t, nodeConfig(6, ""))
	o := gatewayOptions(tn, "gw{n}@iot.example", "psk-0123456789ab-{n}", 6)
	o.Hold = time.Minute
	runFleet(t, o)
	r := waitSAs(t, tn, established(), 6)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	watch, err := tn.cli.WatchEvents(ctx, &adminv1.WatchEventsRequest{Kinds: []adminv1.EventKind{adminv1.EventKind_EVENT_KIND_IKE_DELETED}})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; tn.node.EventWatchers() == 0 && i < 2000; i++ { // the server subscribes
		time.Sleep(10 * time.Millisecond)
	}
	one := r.Sas[0]
	progress := terminate(t, tn, &adminv1.TerminateSARequest{Spi: one.Spi})
	last := progress[len(progress)-1]
	if !last.Done || last.Matched != 1 || last.Started != 1 || last.Gone != 1 || last.Failed != 0 || len(last.Spis) != 1 {
		t.Fatalf("terminate one: %v", progress)
	}
	if _, err := tn.cli.GetSA(ctx, &adminv1.GetSARequest{Spi: one.Spi}); code(err) != codes.NotFound {
		t.Fatalf("terminated SA still there: %v", err)
	}
	ev, err := watch.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if ev.Kind != adminv1.EventKind_EVENT_KIND_IKE_DELETED || ev.SpiR != one.Spi || ev.PeerId != one.PeerId || ev.Node != "adm" {
		t.Fatalf("event %v, want the deletion of %016x", ev, one.Spi)
	}

	// Bulk: a dry run names what a filter would terminate, then it goes.
	dry := terminate(t, tn, &adminv1.TerminateSARequest{Filter: &adminv1.SAFilter{Identity: "gw*"}, DryRun: true})
	if l := dry[len(dry)-1]; !l.Done || l.Matched != 5 || l.Started != 0 || len(l.Spis) != 5 {
		t.Fatalf("dry run: %v", dry)
	}
	waitSAs(t, tn, established(), 5)
	progress = terminate(t, tn, &adminv1.TerminateSARequest{Filter: &adminv1.SAFilter{Identity: "gw*"}, Rate: 4_000_000_000}) // clamped
	last = progress[len(progress)-1]
	if !last.Done || last.Matched != 5 || last.Started != 5 || last.Gone != 5 || last.Failed != 0 {
		t.Fatalf("bulk terminate: %v", progress)
	}
	for i := 1; i < len(progress); i++ {
		if progress[i].Started < progress[i-1].Started || progress[i].Gone < progress[i-1].Gone {
			t.Fatalf("progress goes backwards: %v", progress)
		}
	}
	waitSAs(t, tn, nil, 0)
	deleted := map[uint64]bool{}
	for len(deleted) < 5 {
		ev, err := watch.Recv()
		if err != nil {
			t.Fatalf("after %d deletions: %v", len(deleted), err)
		}
		deleted[ev.SpiR] = true
	}

	// Bad requests.
	for _, req := range []*adminv1.TerminateSARequest{
		{},
		{Spi: 1, Filter: &adminv1.SAFilter{Identity: "*"}},
		{Filter: &adminv1.SAFilter{Remote: "x"}},
	} {
		s, err := tn.cli.TerminateSA(ctx, req)
		if err == nil {
			_, err = s.Recv()
		}
		if code(err) != codes.InvalidArgument {
			t.Errorf("terminate %v: %v, want InvalidArgument", req, err)
		}
	}
	s, err := tn.cli.TerminateSA(ctx, &adminv1.TerminateSARequest{Spi: 0x42})
	if err == nil {
		_, err = s.Recv()
	}
	if code(err) != codes.NotFound {
		t.Errorf("terminate of no SA: %v", err)
	}
}

func terminate(t *testing.T, tn *testNode, req *adminv1.TerminateSARequest) []*adminv1.TerminateProgress {
	t.Helper()
	s, err := tn.cli.TerminateSA(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	var out []*adminv1.TerminateProgress
	for {
		p, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("terminate %v: %v", req, err)
		}
		out = append(out, p)
	}
}

func TestRekey(t *testing.T) {
	tn := startNode(t, nodeConfig(2, ""))
	o := gatewayOptions(tn, "gw{n}@iot.example", "psk-0123456789ab-{n}", 2)
	o.Hold = time.Minute
	runFleet(t, o)
	r := waitSAs(t, tn, established(), 2)
	ctx := context.Background()
	sa := r.Sas[0]
	oldChild := sa.Children[0].InSpi

	// CHILD SA: the answer names the new one, which GetSA shows.
	resp, err := tn.cli.RekeySA(ctx, &adminv1.RekeySARequest{Spi: sa.Spi})
	if err != nil {
		t.Fatal(err)
	}
	if resp.OldInSpi != oldChild || resp.Child == nil || resp.Child.InSpi == 0 || resp.Child.InSpi == oldChild {
		t.Fatalf("rekey: %v", resp)
	}
	got, err := tn.cli.GetSA(ctx, &adminv1.GetSARequest{Spi: sa.Spi})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range got.Children {
		found = found || c.InSpi == resp.Child.InSpi
	}
	if !found {
		t.Fatalf("new CHILD SA %08x not in %v", resp.Child.InSpi, got)
	}
	// Naming a CHILD SA that is not there.
	if _, err := tn.cli.RekeySA(ctx, &adminv1.RekeySARequest{Spi: sa.Spi, Child: 0x999}); code(err) != codes.NotFound {
		t.Fatalf("rekey of no CHILD SA: %v", err)
	}

	// IKE SA: a new one with new SPIs, same peer, and the old one goes.
	other := r.Sas[1]
	resp, err = tn.cli.RekeySA(ctx, &adminv1.RekeySARequest{Spi: other.Spi, Ike: true})
	if err != nil {
		t.Fatal(err)
	}
	if resp.IkeSa == nil || resp.IkeSa.Spi == other.Spi || resp.IkeSa.PeerId != other.PeerId || resp.IkeSa.State != "ESTABLISHED" {
		t.Fatalf("IKE rekey: %v (old %v)", resp, other)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := tn.cli.GetSA(ctx, &adminv1.GetSARequest{Spi: other.Spi})
		if code(err) == codes.NotFound {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the rekeyed IKE SA %016x is still there: %v", other.Spi, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	waitSAs(t, tn, established(), 2)
	if _, err := tn.cli.RekeySA(ctx, &adminv1.RekeySARequest{Spi: 0x77, Ike: true}); code(err) != codes.NotFound {
		t.Fatalf("rekey of no SA: %v", err)
	}
}

func TestDrainRefusesNewSAs(t *testing.T) {
	tn := startNode(t, nodeConfig(3, ""))
	o := gatewayOptions(tn, "gw{n}@iot.example", "psk-0123456789ab-{n}", 1)
	o.Hold = time.Minute
	runFleet(t, o)
	waitSAs(t, tn, established(), 1)
	ctx := context.Background()
	hc := healthpb.NewHealthClient(tn.conn)
	if h, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || h.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health before the drain: %v %v", h, err)
	}

	progress := drain(t, tn, &adminv1.DrainNodeRequest{})
	last := progress[len(progress)-1]
	if progress[0].Phase != adminv1.DrainPhase_DRAIN_PHASE_REFUSING_NEW || !last.Done ||
		last.Phase != adminv1.DrainPhase_DRAIN_PHASE_DRAINED || last.Sas != 1 {
		t.Fatalf("drain: %v", progress)
	}
	if h, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || h.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health while draining: %v %v", h, err)
	}
	if !tn.node.Health().Draining {
		t.Fatal("Health().Draining (/readyz) is false while draining")
	}
	if h, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: ServiceName}); err != nil || h.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("the admin service while draining: %v %v", h, err)
	}
	// A new gateway is told TEMPORARY_FAILURE; the established one stays.
	o2 := gatewayOptions(tn, "gw{n}@iot.example", "psk-0123456789ab-{n}", 1)
	o2.IDTemplate, o2.PSK = "gw2@iot.example", []byte("psk-0123456789ab-2")
	rep, err := loadtest.Run(ctx, o2)
	if err == nil || rep.Failures["TEMPORARY_FAILURE"] != 1 {
		t.Fatalf("a new gateway while draining: %+v %v", rep, err)
	}
	nodes, err := tn.cli.ListNodes(ctx, &adminv1.ListNodesRequest{})
	if err != nil || nodes.Nodes[0].Health.State != "DRAINING" || !nodes.Nodes[0].Health.Draining || nodes.Nodes[0].Load.RefusedDraining != 1 {
		t.Fatalf("nodes while draining: %v %v", nodes, err)
	}
	waitSAs(t, tn, established(), 1)

	// Drop mode: an IKE_SA_INIT is counted and not answered.
	drain(t, tn, &adminv1.DrainNodeRequest{Refuse: adminv1.RefuseMode_REFUSE_MODE_DROP})
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(tn.node.IKEAddr()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	init := ike.Message{SPIi: 0x1122334455667788, Exchange: ike.IKE_SA_INIT, Flags: ike.FlagInitiator}
	if _, err := c.Write(init.Encode()); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		nodes, err := tn.cli.ListNodes(ctx, &adminv1.ListNodesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if nodes.Nodes[0].Load.RefusedDraining == 2 {
			break
		}
		if i == 1000 {
			t.Fatalf("the IKE_SA_INIT was not refused: %v", nodes.Nodes[0].Load)
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond)) // refused already: an answer would be on its way
	if n, err := c.Read(make([]byte, 1500)); err == nil {
		t.Fatalf("drop mode answered an IKE_SA_INIT with %d bytes", n)
	}

	// Resumed: new SAs are welcome again.
	progress = drain(t, tn, &adminv1.DrainNodeRequest{Resume: true})
	if len(progress) != 1 || progress[0].Phase != adminv1.DrainPhase_DRAIN_PHASE_RESUMED {
		t.Fatalf("resume: %v", progress)
	}
	o4 := o2
	o4.IDTemplate, o4.PSK = "gw3@iot.example", []byte("psk-0123456789ab-3")
	o4.Hold = 0
	if rep, err := loadtest.Run(ctx, o4); err != nil || rep.Established != 1 {
		t.Fatalf("a new gateway after the drain: %+v %v", rep, err)
	}
	if h, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || h.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health after the drain: %v %v", h, err)
	}

	ds, err := tn.cli.DrainNode(ctx, &adminv1.DrainNodeRequest{Node: "elsewhere"})
	if err == nil {
		_, err = ds.Recv()
	}
	if code(err) != codes.FailedPrecondition {
		t.Errorf("drain elsewhere: %v, want FailedPrecondition", err)
	}

	// Hand-off with nobody to take the SAs: the wait ends at the timeout,
	// the SAs stay, persisted.
	progress = drain(t, tn, &adminv1.DrainNodeRequest{HandOff: true, Timeout: durationpb.New(time.Second)})
	last = progress[len(progress)-1]
	if !last.Done || last.Phase != adminv1.DrainPhase_DRAIN_PHASE_DRAINED || last.HandedOff != 0 {
		t.Fatalf("hand-off drain: %v", progress)
	}
	if !tn.node.Draining() {
		t.Fatal("not draining after a hand-off drain")
	}
	drain(t, tn, &adminv1.DrainNodeRequest{Resume: true})
}

func drain(t *testing.T, tn *testNode, req *adminv1.DrainNodeRequest) []*adminv1.DrainProgress {
	t.Helper()
	s, err := tn.cli.DrainNode(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	var out []*adminv1.DrainProgress
	for {
		p, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("drain %v: %v", req, err)
		}
		out = append(out, p)
	}
}

func TestReloadCredentials(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "gw9.psk")
	if err := os.WriteFile(secret, []byte("old-secret-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tn := startNode(t, nodeConfig(2, ""))
	// The PSK of gw9 comes from a file; add it to the config.
	text, _ := os.ReadFile(tn.cfgPath)
	withFile := strings.Replace(string(text), "  psks:\n", "  psks:\n    - {id: gw9@iot.example, secret_file: "+secret+"}\n", 1)
	if err := os.WriteFile(tn.cfgPath, []byte(withFile), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	one := func(id, psk string) (loadtest.Report, error) {
		o := gatewayOptions(tn, id, psk, 1)
		return loadtest.Run(ctx, o)
	}
	if rep, err := one("gw9@iot.example", "old-secret-0123456789"); err == nil {
		t.Fatalf("gw9 got in before the reload: %+v", rep)
	}
	r, err := tn.cli.ReloadCredentials(ctx, &adminv1.ReloadCredentialsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Psks != 3 || r.PsksAdded != 1 || r.PsksChanged != 0 || len(r.Changed) != 1 || r.Changed[0] != "psks" ||
		r.Identity != "conc.example" || len(r.Ignored) != 0 {
		t.Fatalf("reload: %v", r)
	}
	if rep, err := one("gw9@iot.example", "old-secret-0123456789"); err != nil || rep.Established != 1 {
		t.Fatalf("gw9 after the reload: %+v %v", rep, err)
	}
	// The file changes: the old secret is refused, the new one works.
	if err := os.WriteFile(secret, []byte("new-secret-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err = tn.cli.ReloadCredentials(ctx, &adminv1.ReloadCredentialsRequest{})
	if err != nil || r.PsksChanged != 1 || r.PsksAdded != 0 {
		t.Fatalf("reload: %v %v", r, err)
	}
	if rep, err := one("gw9@iot.example", "old-secret-0123456789"); err == nil || rep.Failures["AUTHENTICATION_FAILED"] != 1 {
		t.Fatalf("the old secret after the reload: %+v %v", rep, err)
	}
	if rep, err := one("gw9@iot.example", "new-secret-0123456789"); err != nil || rep.Established != 1 {
		t.Fatalf("the new secret: %+v %v", rep, err)
	}
	// A broken file changes nothing and the error names the field; a
	// change outside identity and auth is reported as needing a restart.
	if err := os.WriteFile(secret, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = tn.cli.ReloadCredentials(ctx, &adminv1.ReloadCredentialsRequest{})
	if code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "auth.psks[0].secret") {
		t.Fatalf("reload of an empty secret file: %v", err)
	}
	if rep, err := one("gw9@iot.example", "new-secret-0123456789"); err != nil || rep.Established != 1 {
		t.Fatalf("the new secret after a failed reload: %+v %v", rep, err)
	}
	os.WriteFile(secret, []byte("new-secret-0123456789"), 0o600)
	text, _ = os.ReadFile(tn.cfgPath)
	os.WriteFile(tn.cfgPath, []byte(strings.Replace(string(text), "shards: 2", "shards: 3", 1)), 0o600)
	r, err = tn.cli.ReloadCredentials(ctx, &adminv1.ReloadCredentialsRequest{})
	if err != nil || len(r.Ignored) != 1 || r.Ignored[0] != "ike" || len(r.Changed) != 0 {
		t.Fatalf("reload with a changed ike section: %v %v", r, err)
	}
}

func TestReflectionListsTheServices(t *testing.T) {
	tn := startNode(t, nodeConfig(1, ""))
	s, err := reflectionpb.NewServerReflectionClient(tn.conn).ServerReflectionInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	r, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, svc := range r.GetListServicesResponse().GetService() {
		names = append(names, svc.Name)
	}
	all := strings.Join(names, " ")
	for _, want := range []string{ServiceName, "grpc.health.v1.Health"} {
		if !strings.Contains(all, want) {
			t.Errorf("reflection lists %v, not %s", names, want)
		}
	}
}

func TestGlob(t *testing.T) {
	for _, tc := range []struct {
		p, s string
		ok   bool
	}{
		{"*", "", true}, {"*", "anything", true}, {"gw?@x", "gw1@x", true}, {"gw?@x", "gw10@x", false},
		{"gw*@x", "gw10@x", true}, {"*@x", "gw@y", false}, {"a*b*c", "aXbYc", true}, {"a*b*c", "aXbY", false},
		{"C=DE, O=*", "C=DE, O=Fleet", true}, {"[1]", "[1]", true}, {"", "", true}, {"", "a", false},
	} {
		if got := glob(tc.p, tc.s); got != tc.ok {
			t.Errorf("glob(%q, %q) = %v", tc.p, tc.s, got)
		}
	}
}

// With the state store (embedded etcd): the node registry, SAs owned per
// node, and a drain that flushes SA state.
func TestClusterViewWithStateStore(t *testing.T) {
	dir := t.TempDir()
	tn := startNode(t, nodeConfig(3, fmt.Sprintf("statestore:\n  mode: embedded\n  data_dir: %s\n  cluster_key_file: %s.key\n", dir, dir)))
	o := gatewayOptions(tn, "gw{n}@iot.example", "psk-0123456789ab-{n}", 3)
	o.Hold = time.Minute
	runFleet(t, o)
	waitSAs(t, tn, established(), 3)
	ctx := context.Background()

	progress := drain(t, tn, &adminv1.DrainNodeRequest{})
	last := progress[len(progress)-1]
	var flushed bool
	for _, p := range progress {
		flushed = flushed || p.Phase == adminv1.DrainPhase_DRAIN_PHASE_FLUSHING
	}
	if !flushed || last.Phase != adminv1.DrainPhase_DRAIN_PHASE_DRAINED || last.Queued != 0 || last.Sas != 3 ||
		!strings.Contains(last.Message, "persisted") {
		t.Fatalf("drain: %v", progress)
	}
	// Flushed: the registry counts every SA under this node.
	st, err := tn.cli.GetClusterStatus(ctx, &adminv1.GetClusterStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Nodes) != 1 || st.TotalSas != 3 || st.StateStore.Mode != "embedded" || !st.StateStore.Reachable || st.StateStore.Txns == 0 ||
		st.StateStore.Layout != statestore.LayoutMax {
		t.Fatalf("status %v", st)
	}
	me := st.Nodes[0]
	if me.Id != "adm" || !me.Self || me.Registered == nil || me.OwnedSas != 3 || !me.Health.Registered || me.Health.Fenced ||
		me.Health.State != "DRAINING" || me.Load.Established != 3 ||
		len(me.ClusterKeyIds) != 1 || me.ClusterKeyIds[0] != 1 || me.SealingKey != 1 ||
		me.LayoutMin != statestore.LayoutMin || me.LayoutMax != statestore.LayoutMax || me.Layout != statestore.LayoutMax {
		t.Fatalf("node %v", me)
	}
	drain(t, tn, &adminv1.DrainNodeRequest{Resume: true})
	// Terminated SAs leave the registry's count too.
	terminate(t, tn, &adminv1.TerminateSARequest{Filter: &adminv1.SAFilter{Identity: "gw1@*"}})
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, err := tn.cli.ListNodes(ctx, &adminv1.ListNodesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if r.Nodes[0].OwnedSas == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("owned SAs after a terminate: %v", r.Nodes[0])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The plaintext admin API on loopback serves this node's account (and
// root) only: a client whose socket another account opened is
// disconnected before any call, and the refusal is logged; the node's own
// clients go on being served.
func TestPlaintextAdminOnlyForTheNodesAccount(t *testing.T) {
	localpeertest.NeedRoot(t)
	tn := startNode(t, nodeConfig(1, ""))
	var logged syncbuf.Buffer
	srv, err := Start(concentrator.AdminConfig{Listen: "127.0.0.1:0"}, tn.node,
		slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	dial := func(uid int) adminv1.AdminClient {
		conn, err := grpc.NewClient(srv.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				return localpeertest.DialAs(ctx, uid, addr)
			}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return adminv1.NewAdminClient(conn)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = dial(localpeertest.Nobody).PutCredentials(ctx, &adminv1.PutCredentialsRequest{})
	if code(err) != codes.Unavailable {
		t.Fatalf("another account's call: %v, want Unavailable (disconnected)", err)
	}
	if _, err := dial(os.Geteuid()).GetClusterStatus(ctx, &adminv1.GetClusterStatusRequest{}); err != nil {
		t.Fatalf("this account's call: %v", err)
	}
	if want := "api=admin remote=127.0.0.1:"; !strings.Contains(logged.String(), want) ||
		!strings.Contains(logged.String(), fmt.Sprintf("uid=%d", localpeertest.Nobody)) {
		t.Fatalf("refusal not logged:\n%s", logged.String())
	}
}

// admin.listen unix:///path: the socket is made 0660 (the node's account
// and group), serves the API, is removed at Stop; a socket file a crashed
// node left is replaced, while a live server's socket and any other file
// at the path are not.
func TestAdminSocketLifecycle(t *testing.T) {
	tn := startNode(t, nodeConfig(1, ""))
	dir := t.TempDir()
	sock := filepath.Join(dir, "admin.sock")
	cfg := concentrator.AdminConfig{Listen: "unix://" + sock}
	// A socket left behind (its server gone without removing it).
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	stale.Close()
	// Under a umask of 0 too, the socket is never open to others: it is
	// bound elsewhere and appears at its path with its mode.
	// The kernel reports what happens at the path meanwhile.
	events := watchDir(t, dir)
	old := syscall.Umask(0)
	srv, err := Start(cfg, tn.node, quietLog())
	syscall.Umask(old)
	if err != nil {
		t.Fatalf("start over a stale socket: %v", err)
	}
	// Created elsewhere and moved to the path: never there with another
	// mode (created there, then its attributes changed).
	for _, ev := range events() {
		if ev.name == "admin.sock" && ev.mask&(unix.IN_CREATE|unix.IN_ATTRIB) != 0 {
			t.Fatalf("the socket was created or changed at its path (inotify mask %#x): it was there before it had its mode", ev.mask)
		}
	}
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != SocketMode || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("socket %v %v, want mode %04o", fi.Mode(), err, SocketMode)
	}
	if ents, err := os.ReadDir(dir); err != nil || len(ents) != 1 {
		t.Fatalf("beside the socket: %v %v, want it alone", ents, err)
	}
	if a := srv.Addr().String(); a != sock {
		t.Fatalf("Addr %q, want %q", a, sock)
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := adminv1.NewAdminClient(conn).GetClusterStatus(context.Background(), &adminv1.GetClusterStatusRequest{}); err != nil {
		t.Fatalf("call over the socket: %v", err)
	}
	if _, err := Start(cfg, tn.node, quietLog()); err == nil || !strings.Contains(err.Error(), "another process serves it") {
		t.Fatalf("a second server on a live socket: %v", err)
	}
	srv.Stop()
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left after Stop: %v", err)
	}
	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Start(cfg, tn.node, quietLog()); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("a regular file at the path: %v", err)
	}
}

type dirEvent struct {
	name string
	mask uint32
}

// watchDir watches directory dir with inotify; the function returned
// gives the events so far.
func watchDir(t *testing.T, dir string) func() []dirEvent {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE|unix.IN_ATTRIB|unix.IN_MOVED_TO|unix.IN_DELETE); err != nil {
		t.Fatal(err)
	}
	return func() []dirEvent {
		var evs []dirEvent
		buf := make([]byte, 64<<10)
		for {
			n, err := unix.Read(fd, buf)
			if err != nil || n <= 0 {
				return evs
			}
			for off := 0; off+unix.SizeofInotifyEvent <= n; {
				ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
				name := buf[off+unix.SizeofInotifyEvent : off+unix.SizeofInotifyEvent+int(ev.Len)]
				evs = append(evs, dirEvent{name: strings.TrimRight(string(name), "\x00"), mask: ev.Mask})
				off += unix.SizeofInotifyEvent + int(ev.Len)
			}
		}
	}
}

// A socket path that fits, in a directory too deep to bind beside it, is
// refused with both lengths named, and leaves nothing behind.
func TestAdminSocketPathTooLong(t *testing.T) {
	dir := t.TempDir()
	deep := filepath.Join(dir, strings.Repeat("d", maxSocketPath-len(dir)-12))
	if err := os.Mkdir(deep, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(deep, "adm.sock") // 107 bytes or less
	if len(path) > maxSocketPath {
		t.Fatalf("test path %d bytes", len(path))
	}
	_, err := listen(concentrator.AdminConfig{Listen: "unix://" + path})
	if err == nil || !strings.Contains(err.Error(), "too long") {
		t.Fatalf("listen: %v, want the path too long", err)
	}
	if ents, err := os.ReadDir(deep); err != nil || len(ents) != 0 {
		t.Fatalf("left behind: %v %v", ents, err)
	}
}
