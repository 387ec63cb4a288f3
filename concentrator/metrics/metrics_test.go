package metrics

import (
	"context"
	"errors"
	"flag"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/internal/buildinfo"
)

var update = flag.Bool("update", false, "rewrite deploy/metrics.txt")

func snapshot() Snapshot {
	ev := &Events{}
	ev.Observe(ike.Event{Kind: ike.EventChildRekeyed, Reason: ChildRekeyedByUs})
	ev.Observe(ike.Event{Kind: ike.EventChildRekeyed, Reason: ChildRekeyedByUs})
	ev.Observe(ike.Event{Kind: ike.EventChildRekeyed, Reason: "rekeyed by peer"})
	ev.Observe(ike.Event{Kind: ike.EventIKERekeyed, Initiator: true})
	ev.Observe(ike.Event{Kind: ike.EventIKERekeyed})
	ev.Observe(ike.Event{Kind: ike.EventIKERekeyed})
	ev.Observe(ike.Event{Kind: ike.EventAddressChanged})
	ev.Observe(ike.Event{Kind: ike.EventIKEEstablished}) // counted by ike.Stats, not here
	counts := ev.Counts()
	counts.Takeovers = 1
	return Snapshot{
		Shards: []Shard{
			{Stats: ike.Stats{HalfOpen: 3, Established: 10, CookiesSent: 4, DPDSent: 2, DPDDead: 1, Retransmits: 5, RefusedPrefix: 2, RefusedSAs: 1,
				Failed: map[ike.NotifyType]uint64{ike.AUTHENTICATION_FAILED: 2, 0: 1, 40000: 1}},
				States: map[string]int{"ESTABLISHED": 7, "INIT_DONE": 3}, ChildSAs: 9, CookiesActive: true, Waiting: [3]int{5000, 2, 130},
				Engine: [len(EngineWork)]EngineTime{0: {Calls: 4, Seconds: 0.25}, 1: {Calls: 3, Seconds: 0.125}, 8: {Calls: 2, Seconds: 0.001, Outliers: 1}}},
			{Stats: ike.Stats{Established: 5, Failed: map[ike.NotifyType]uint64{ike.AUTHENTICATION_FAILED: 1, ike.NO_PROPOSAL_CHOSEN: 1}, RekeyCollisions: 1, RefusedPrefix: 3, RefusedHalfOpen: 4, PrefixCredits: 6},
				States: map[string]int{"ESTABLISHED": 5}, ChildSAs: 5, Engine: [len(EngineWork)]EngineTime{0: {Calls: 2, Seconds: 0.5}, 3: {Calls: 1, Seconds: 0.0625}}},
		},
		Node: Node{PersistFailures: 1, FencedDrops: 2, NonIKEDrops: 3, LogDropped: 8, KeepalivesSent: 4, KeepalivesReceived: 5,
			QueueDrops:  []QueueDrop{{Listen: "0.0.0.0", NATT: false, Shard: 1, Queue: "other", Count: 6}, {Listen: "0.0.0.0", NATT: true, Shard: 0, Queue: "new", Count: 7}},
			SocketDrops: []SocketDrop{{Listen: "0.0.0.0", NATT: false, Receives: "new", Count: 900}, {Listen: "0.0.0.0", NATT: false, Receives: "other", Count: 0}},
			Listening:   true},
		Events:     counts,
		StateStore: &StateStore{Reachable: true, Registered: true, Queued: 2, Txns: 42, SealingKey: 2, Keys: 2, Rewrapped: 7},
		Anycast:    &Anycast{Front: true, Healthy: true, Announced: 2, Failing: map[string]bool{"lease": false}, Members: true, MembersAlive: 3},
		DataPlane: DataPlane{Name: "userspace", InstallFailures: 1, Report: &dataplane.Report{InBytes: 1000, OutBytes: 2000,
			InPackets: 10, OutPackets: 20, Drops: map[string]uint64{"replay": 3, "no_sa": 0}}},
	}
}

// engineFamily is the exposition of the counter family
// ikefleet_engine_<name>: one series per EngineWork, its value from vals
// or 0.
func engineFamily(name, help string, vals map[string]string) string {
	name = "ikefleet_engine_" + name
	var b strings.Builder
	b.WriteString("# HELP " + name + " " + help + "\n# TYPE " + name + " counter\n")
	for _, w := range EngineWork {
		v := vals[w]
		if v == "" {
			v = "0"
		}
		b.WriteString(name + `{work="` + w + `"} ` + v + "\n")
	}
	return b.String()
}

func TestCollector(t *testing.T) {
	c := NewCollector(SourceFunc(func(context.Context) (Snapshot, error) { return snapshot(), nil }), time.Second)
	want := `
# HELP ikefleet_build_info Always 1: the running build and its data plane.
# TYPE ikefleet_build_info gauge
ikefleet_build_info{dataplane="userspace",goversion="` + buildinfo.GoVersion() + `",version="` + buildinfo.Get() + `"} 1
# HELP ikefleet_ike_sas IKE SAs by state.
# TYPE ikefleet_ike_sas gauge
ikefleet_ike_sas{state="auth_sent"} 0
ikefleet_ike_sas{state="dead"} 0
ikefleet_ike_sas{state="deleting"} 0
ikefleet_ike_sas{state="established"} 12
ikefleet_ike_sas{state="init_done"} 3
ikefleet_ike_sas{state="init_sent"} 0
ikefleet_ike_sas{state="rekeyed"} 0
# HELP ikefleet_child_sas CHILD SAs held by the IKE SAs.
# TYPE ikefleet_child_sas gauge
ikefleet_child_sas 14
# HELP ikefleet_half_open_sas Half-open IKE SAs (IKE_SA_INIT answered, IKE_AUTH not done).
# TYPE ikefleet_half_open_sas gauge
ikefleet_half_open_sas 3
# HELP ikefleet_cookies_active 1 while the shard demands cookies: half-open SAs at its share of ike.cookie_threshold, its queue of new IKE_SA_INITs backed up, or within ike.half_open_timeout of the last cookie demanded.
# TYPE ikefleet_cookies_active gauge
ikefleet_cookies_active{shard="0"} 1
ikefleet_cookies_active{shard="1"} 0
# HELP ikefleet_queue_waiting IKE messages waiting in a shard's queues, by queue: other (IKE_AUTH, established SAs' messages, answers to our requests; beyond its 4,096 slots they spill over, 8 MiB per shard or 64 MiB shared by more than 8, and are counted here too), proven (new IKE_SA_INITs with a valid cookie; beyond its 8,192 slots they spill over the same way, into a spill of their own), new (other new IKE_SA_INITs).
# TYPE ikefleet_queue_waiting gauge
ikefleet_queue_waiting{queue="new",shard="0"} 130
ikefleet_queue_waiting{queue="new",shard="1"} 0
ikefleet_queue_waiting{queue="other",shard="0"} 5000
ikefleet_queue_waiting{queue="other",shard="1"} 0
ikefleet_queue_waiting{queue="proven",shard="0"} 2
ikefleet_queue_waiting{queue="proven",shard="1"} 0
# HELP ikefleet_handshakes_total IKE SAs established (IKE_SA_INIT + IKE_AUTH completed).
# TYPE ikefleet_handshakes_total counter
ikefleet_handshakes_total 15
# HELP ikefleet_handshake_failures_total Handshakes that did not complete, by the notify sent or received (NONE: no notify, OTHER: an unnamed type).
# TYPE ikefleet_handshake_failures_total counter
ikefleet_handshake_failures_total{reason="AUTHENTICATION_FAILED"} 3
ikefleet_handshake_failures_total{reason="NONE"} 1
ikefleet_handshake_failures_total{reason="NO_PROPOSAL_CHOSEN"} 1
ikefleet_handshake_failures_total{reason="OTHER"} 1
# HELP ikefleet_rekeys_total SAs rekeyed, by kind (child, ike) and by who started the rekey (us, peer).
# TYPE ikefleet_rekeys_total counter
ikefleet_rekeys_total{initiator="peer",kind="child"} 1
ikefleet_rekeys_total{initiator="peer",kind="ike"} 2
ikefleet_rekeys_total{initiator="us",kind="child"} 2
ikefleet_rekeys_total{initiator="us",kind="ike"} 1
# HELP ikefleet_dpd_sent_total Liveness checks sent after silence from a peer.
# TYPE ikefleet_dpd_sent_total counter
ikefleet_dpd_sent_total 2
# HELP ikefleet_dpd_dead_total Peers declared dead (liveness check or request unanswered).
# TYPE ikefleet_dpd_dead_total counter
ikefleet_dpd_dead_total 1
# HELP ikefleet_keepalives_total NAT-T keepalives sent and received.
# TYPE ikefleet_keepalives_total counter
ikefleet_keepalives_total{direction="received"} 5
ikefleet_keepalives_total{direction="sent"} 4
# HELP ikefleet_address_updates_total IKE SAs moved to new addresses (NAT rebinding, MOBIKE).
# TYPE ikefleet_address_updates_total counter
ikefleet_address_updates_total 1
# HELP ikefleet_cookies_sent_total IKE_SA_INIT requests answered with a cookie demand.
# TYPE ikefleet_cookies_sent_total counter
ikefleet_cookies_sent_total 4
# HELP ikefleet_sa_init_refused_total New IKE_SA_INIT requests dropped unanswered by an admission limit: half_open (ike.max_half_open), prefix (ike.max_half_open_per_prefix: cookie-proven requests of one source prefix), memory (ike.max_half_open_bytes), sas (ike.max_sas). The initiator retransmits.
# TYPE ikefleet_sa_init_refused_total counter
ikefleet_sa_init_refused_total{limit="half_open"} 4
ikefleet_sa_init_refused_total{limit="memory"} 0
ikefleet_sa_init_refused_total{limit="prefix"} 5
ikefleet_sa_init_refused_total{limit="sas"} 1
# HELP ikefleet_half_open_prefix_credits_total SAs that authenticated from a source prefix after a cookie-proven request of that prefix was refused by its quota (ike.max_half_open_per_prefix); each raises the prefix's quota by one for 30 s, so gateways behind one NAT address that restart together get in by doubling waves.
# TYPE ikefleet_half_open_prefix_credits_total counter
ikefleet_half_open_prefix_credits_total 6
# HELP ikefleet_handoffs_total SAs handed off to another node.
# TYPE ikefleet_handoffs_total counter
ikefleet_handoffs_total 0
# HELP ikefleet_takeovers_total SAs taken over from another node.
# TYPE ikefleet_takeovers_total counter
ikefleet_takeovers_total 1
# HELP ikefleet_persist_failures_total SA state changes that could not be written to the state store.
# TYPE ikefleet_persist_failures_total counter
ikefleet_persist_failures_total 1
# HELP ikefleet_fenced_drops_total IKE messages not sent because the node was fenced (lease not certainly alive).
# TYPE ikefleet_fenced_drops_total counter
ikefleet_fenced_drops_total 2
# HELP ikefleet_log_lines_dropped_total Log lines the daemon dropped because the log's reader (journald, the container runtime) did not take them; the log says where, with a warning line per gap.
# TYPE ikefleet_log_lines_dropped_total counter
ikefleet_log_lines_dropped_total 8
# HELP ikefleet_queue_drops_total IKE messages dropped because a shard's queue was full, by socket (our listen address, ike or natt), shard and queue: other (IKE_AUTH, established SAs' messages, answers to our requests), proven (new IKE_SA_INITs with a valid cookie), new (other new IKE_SA_INITs); the first two only once their spill is full too.
# TYPE ikefleet_queue_drops_total counter
ikefleet_queue_drops_total{listen="0.0.0.0",queue="new",shard="0",socket="natt"} 7
ikefleet_queue_drops_total{listen="0.0.0.0",queue="other",shard="1",socket="ike"} 6
# HELP ikefleet_socket_receive_drops_total Datagrams the kernel dropped for one of the node's UDP sockets (a full receive buffer), by socket (our listen address, ike or natt) and what it receives: new (IKE_SA_INITs without a cookie, on a split port), other (everything else there: established SAs, cookie replies, ESP), all (one socket per port).
# TYPE ikefleet_socket_receive_drops_total counter
ikefleet_socket_receive_drops_total{listen="0.0.0.0",receives="new",socket="ike"} 900
ikefleet_socket_receive_drops_total{listen="0.0.0.0",receives="other",socket="ike"} 0
# HELP ikefleet_statestore_reachable 1 while the last etcd request succeeded.
# TYPE ikefleet_statestore_reachable gauge
ikefleet_statestore_reachable 1
# HELP ikefleet_dataplane_bytes_total Inner bytes carried by the data plane's CHILD SAs (removed ones included).
# TYPE ikefleet_dataplane_bytes_total counter
ikefleet_dataplane_bytes_total{dataplane="userspace",direction="in"} 1000
ikefleet_dataplane_bytes_total{dataplane="userspace",direction="out"} 2000
# HELP ikefleet_dataplane_packets_total Inner packets carried by the data plane's CHILD SAs (removed ones included).
# TYPE ikefleet_dataplane_packets_total counter
ikefleet_dataplane_packets_total{dataplane="userspace",direction="in"} 10
ikefleet_dataplane_packets_total{dataplane="userspace",direction="out"} 20
# HELP ikefleet_dataplane_drops_total Packets the data plane dropped, by reason (each data plane has its own fixed set).
# TYPE ikefleet_dataplane_drops_total counter
ikefleet_dataplane_drops_total{dataplane="userspace",reason="no_sa"} 0
ikefleet_dataplane_drops_total{dataplane="userspace",reason="replay"} 3
# HELP ikefleet_dataplane_install_failures_total CHILD SAs the data plane failed to install.
# TYPE ikefleet_dataplane_install_failures_total counter
ikefleet_dataplane_install_failures_total{dataplane="userspace"} 1
`
	// The engine's three families: a series for every work, 0 where the
	// snapshot has none.
	want += engineFamily("calls_total", dEngineCalls.help, map[string]string{"IKE_AUTH": "3", "IKE_SA_INIT": "6", "INFORMATIONAL": "1", "timers": "2"})
	want += engineFamily("cpu_outliers_total", dEngineOutliers.help, map[string]string{"timers": "1"})
	want += engineFamily("cpu_seconds_total", dEngineSeconds.help, map[string]string{"IKE_AUTH": "0.125", "IKE_SA_INIT": "0.75", "INFORMATIONAL": "0.0625", "timers": "0.001"})
	names := []string{"ikefleet_build_info", "ikefleet_ike_sas", "ikefleet_child_sas", "ikefleet_half_open_sas",
		"ikefleet_cookies_active", "ikefleet_queue_waiting", "ikefleet_handshakes_total", "ikefleet_handshake_failures_total", "ikefleet_rekeys_total",
		"ikefleet_dpd_sent_total", "ikefleet_dpd_dead_total", "ikefleet_keepalives_total", "ikefleet_address_updates_total",
		"ikefleet_cookies_sent_total", "ikefleet_sa_init_refused_total", "ikefleet_half_open_prefix_credits_total", "ikefleet_handoffs_total", "ikefleet_takeovers_total", "ikefleet_persist_failures_total",
		"ikefleet_fenced_drops_total", "ikefleet_log_lines_dropped_total", "ikefleet_queue_drops_total", "ikefleet_socket_receive_drops_total", "ikefleet_statestore_reachable",
		"ikefleet_dataplane_bytes_total", "ikefleet_dataplane_packets_total", "ikefleet_dataplane_drops_total",
		"ikefleet_dataplane_install_failures_total", "ikefleet_engine_calls_total", "ikefleet_engine_cpu_seconds_total", "ikefleet_engine_cpu_outliers_total"}
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}
	problems, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	// Everything the collector emits is in Names, and the reverse for the
	// families a full snapshot has.
	listed := map[string]bool{}
	for _, n := range Names() {
		listed[n.Name] = true
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, mf := range mfs {
		got[mf.GetName()] = true
		if !listed[mf.GetName()] {
			t.Errorf("%s is emitted but not in Names", mf.GetName())
		}
	}
	for _, d := range defs {
		if !got[d.name] && d.collected { // the others are Etcd's
			t.Errorf("%s is in Names but a full snapshot does not emit it", d.name)
		}
	}
}

// Without a state store and with a data plane that reports nothing, those
// families are absent rather than zero; a failed snapshot fails the
// scrape.
func TestCollectorPartialAndFailing(t *testing.T) {
	s := snapshot()
	s.StateStore, s.DataPlane.Report = nil, nil
	c := NewCollector(SourceFunc(func(context.Context) (Snapshot, error) { return s, nil }), 0)
	if n := testutil.CollectAndCount(c, "ikefleet_statestore_reachable", "ikefleet_dataplane_bytes_total"); n != 0 {
		t.Fatalf("%d series for an absent state store and report", n)
	}
	if n := testutil.CollectAndCount(c, "ikefleet_dataplane_install_failures_total"); n != 1 {
		t.Fatalf("install failures: %d series", n)
	}
	boom := errors.New("shard 3 did not answer")
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(SourceFunc(func(context.Context) (Snapshot, error) { return Snapshot{}, boom }), 0))
	if _, err := reg.Gather(); err == nil || !strings.Contains(err.Error(), boom.Error()) {
		t.Fatalf("Gather with a failing source: %v", err)
	}
}

func TestEtcdInterceptor(t *testing.T) {
	e := NewEtcd()
	ic := e.UnaryClientInterceptor()
	ok := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error { return nil }
	fail := func(context.Context, string, any, any, *grpc.ClientConn, ...grpc.CallOption) error {
		return status.Error(codes.Unavailable, "no leader")
	}
	for range 3 {
		if err := ic(context.Background(), "/etcdserverpb.KV/Txn", nil, nil, nil, ok); err != nil {
			t.Fatal(err)
		}
	}
	if err := ic(context.Background(), "/etcdserverpb.Lease/LeaseGrant", nil, nil, nil, fail); status.Code(err) != codes.Unavailable {
		t.Fatalf("the interceptor changed the error: %v", err)
	}
	if n := testutil.CollectAndCount(e, "ikefleet_etcd_request_duration_seconds"); n != 2 {
		t.Fatalf("%d latency series, want Txn and LeaseGrant", n)
	}
	want := `
# HELP ikefleet_etcd_request_errors_total Failed etcd requests, by method and gRPC code.
# TYPE ikefleet_etcd_request_errors_total counter
ikefleet_etcd_request_errors_total{code="Unavailable",method="LeaseGrant"} 1
`
	if err := testutil.CollectAndCompare(e, strings.NewReader(want), "ikefleet_etcd_request_errors_total"); err != nil {
		t.Fatal(err)
	}
	problems, err := testutil.CollectAndLint(e)
	if err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
}

// The commit wait is a histogram per change kind, in CommitBuckets.
func TestCommitWait(t *testing.T) {
	e := NewEtcd()
	e.ObserveCommit("established", 3*time.Millisecond)
	e.ObserveCommit("established", 40*time.Millisecond)
	e.ObserveCommit("deleted", time.Millisecond)
	if n := testutil.CollectAndCount(e, "ikefleet_statestore_commit_wait_seconds"); n != 2 {
		t.Fatalf("%d commit wait series, want established and deleted", n)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(e)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "ikefleet_statestore_commit_wait_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			h := m.GetHistogram()
			if m.GetLabel()[0].GetValue() != "established" {
				continue
			}
			below5ms := uint64(0)
			for _, b := range h.GetBucket() {
				if b.GetUpperBound() == 0.005 {
					below5ms = b.GetCumulativeCount()
				}
			}
			if h.GetSampleCount() != 2 || below5ms != 1 || len(h.GetBucket()) != len(CommitBuckets) {
				t.Fatalf("established: %d samples, %d within 5 ms, %d buckets", h.GetSampleCount(), below5ms, len(h.GetBucket()))
			}
			return
		}
	}
	t.Fatal("no established series")
}

// deploy/metrics.txt lists every metric family (name, type, labels) for
// dashboards and alerts; go test ./concentrator/metrics -update rewrites it.
func TestMetricsFileUpToDate(t *testing.T) {
	const path = "../../deploy/metrics.txt"
	want := NamesText()
	if *update {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test ./concentrator/metrics -update writes it)", err)
	}
	if string(got) != want {
		t.Fatalf("%s is stale: run go test ./concentrator/metrics -update (or make generate)", path)
	}
}

func TestNamesAreValid(t *testing.T) {
	seen := map[string]bool{}
	for _, n := range Names() {
		if !strings.HasPrefix(n.Name, "ikefleet_") || seen[n.Name] {
			t.Errorf("bad or duplicate name %q", n.Name)
		}
		seen[n.Name] = true
		if (n.Type == "counter") != strings.HasSuffix(n.Name, "_total") {
			t.Errorf("%s: a %s (counters and only counters end in _total)", n.Name, n.Type)
		}
		for _, l := range n.Labels {
			switch l {
			case "peer", "peer_id", "remote", "spi", "identity", "address":
				t.Errorf("%s: unbounded label %q", n.Name, l)
			}
		}
	}
}
