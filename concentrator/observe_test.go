package concentrator

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ikefleet/ikefleet/concentrator/metrics"
	"github.com/ikefleet/ikefleet/loadtest"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// sample returns the value of one series in an exposition.
func sample(t *testing.T, exposition, series string) float64 {
	t.Helper()
	for line := range strings.Lines(exposition) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", series, err)
			}
			return f
		}
	}
	t.Fatalf("%s: not in the exposition", series)
	return 0
}

// Gateways come and go, one is refused; the node's /metrics says so, and
// its probes follow its health.
func TestNodeMetricsAndProbes(t *testing.T) {
	n, _ := startNode(t, 2, "")
	base := "http://" + n.HTTPAddr().String()
	if !n.HTTPAddr().IsValid() {
		t.Fatal("no metrics listener with metrics.listen 127.0.0.1:0")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rep, err := loadtest.Run(ctx, loadOptions(t, n, 3)) // gw3 has no PSK
	if rep.Established != 2 || rep.Failures["AUTHENTICATION_FAILED"] != 1 {
		t.Fatalf("want 2 in and gw3 refused: %v %+v", err, rep)
	}
	want := `
# HELP ikefleet_handshakes_total IKE SAs established (IKE_SA_INIT + IKE_AUTH completed).
# TYPE ikefleet_handshakes_total counter
ikefleet_handshakes_total 2
# HELP ikefleet_handshake_failures_total Handshakes that did not complete, by the notify sent or received (NONE: no notify, OTHER: an unnamed type).
# TYPE ikefleet_handshake_failures_total counter
ikefleet_handshake_failures_total{reason="AUTHENTICATION_FAILED"} 1
# HELP ikefleet_listening 1 once the IKE sockets are bound.
# TYPE ikefleet_listening gauge
ikefleet_listening 1
# HELP ikefleet_queue_drops_total IKE messages dropped because a shard's queue was full, by socket (our listen address, ike or natt), shard and queue: other (IKE_AUTH, established SAs' messages, answers to our requests), proven (new IKE_SA_INITs with a valid cookie), new (other new IKE_SA_INITs); the first two only once their spill is full too.
# TYPE ikefleet_queue_drops_total counter
ikefleet_queue_drops_total{listen="127.0.0.1",queue="new",shard="0",socket="ike"} 0
ikefleet_queue_drops_total{listen="127.0.0.1",queue="new",shard="0",socket="natt"} 0
ikefleet_queue_drops_total{listen="127.0.0.1",queue="new",shard="1",socket="ike"} 0
ikefleet_queue_drops_total{listen="127.0.0.1",queue="new",shard="1",socket="natt"} 0
ikefleet_queue_drops_total{listen="127.0.0.1",queue="other",shard="0",socket="ike"} 0
ikefleet_queue_drops_total{listen="127.0.0.1",queue="other",shard="0",socket="natt"} 0
ikefleet_queue_drops_total{listen="127.0.0.1",queue="other",shard="1",socket="ike"} 0
ikefleet_queue_drops_total{listen="127.0.0.1",queue="other",shard="1",socket="natt"} 0
ikefleet_queue_drops_total{listen="127.0.0.1",queue="proven",shard="0",socket="ike"} 0
ikefleet_queue_drops_total{listen="127.0.0.1",queue="proven",shard="0",socket="natt"} 0
ikefleet_queue_drops_total{listen="127.0.0.1",queue="proven",shard="1",socket="ike"} 0
ikefleet_queue_drops_total{listen="127.0.0.1",queue="proven",shard="1",socket="natt"} 0
# HELP ikefleet_dataplane_packets_total Inner packets carried by the data plane's CHILD SAs (removed ones included).
# TYPE ikefleet_dataplane_packets_total counter
ikefleet_dataplane_packets_total{dataplane="memory",direction="in"} 0
ikefleet_dataplane_packets_total{dataplane="memory",direction="out"} 0
`
	if err := testutil.ScrapeAndCompare(base+"/metrics", strings.NewReader(want), "ikefleet_handshakes_total",
		"ikefleet_handshake_failures_total", "ikefleet_listening", "ikefleet_queue_drops_total",
		"ikefleet_dataplane_packets_total"); err != nil {
		t.Fatal(err)
	}
	// The gateways deleted their SAs on leaving: none in any state.
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := testutil.ScrapeAndCompare(base+"/metrics", strings.NewReader(`
# HELP ikefleet_child_sas CHILD SAs held by the IKE SAs.
# TYPE ikefleet_child_sas gauge
ikefleet_child_sas 0
`), "ikefleet_child_sas")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The engine's work, by exchange: the three gateways' handshakes (gw3
	// refused in its IKE_AUTH) and the two deletes. Its CPU is sampled
	// (one call in 8: TestShardCountsEngineWork), so a few calls may
	// have none.
	_, body := get(t, base+"/metrics")
	for _, c := range []struct {
		work    string
		atLeast float64
	}{{"IKE_SA_INIT", 3}, {"IKE_AUTH", 3}, {"INFORMATIONAL", 2}} {
		calls := sample(t, body, `ikefleet_engine_calls_total{work="`+c.work+`"}`)
		secs := sample(t, body, `ikefleet_engine_cpu_seconds_total{work="`+c.work+`"}`)
		if calls < c.atLeast || secs < 0 || secs/calls > 1 {
			t.Errorf("%s: %v calls, %v s of CPU; want at least %v calls", c.work, calls, secs, c.atLeast)
		}
	}
	if calls := sample(t, body, `ikefleet_engine_calls_total{work="CREATE_CHILD_SA"}`); calls != 0 {
		t.Errorf("CREATE_CHILD_SA: %v calls, but nothing rekeyed", calls)
	}

	if code, body := get(t, base+"/healthz"); code != 200 || body != "ok fenced\n" {
		t.Fatalf("/healthz: %d %q", code, body)
	}
	if code, body := get(t, base+"/readyz"); code != 200 || strings.Contains(body, "failed") {
		t.Fatalf("/readyz: %d %q", code, body)
	}
	n.SetDraining(true)
	if code, body := get(t, base+"/readyz"); code != 503 || !strings.Contains(body, "failed draining") {
		t.Fatalf("/readyz while draining: %d %q", code, body)
	}
	if code, _ := get(t, base+"/healthz"); code != 200 {
		t.Fatalf("/healthz while draining: %d (draining is not dead)", code)
	}
	n.SetDraining(false)
	n.noteInstall(fmt.Errorf("netlink: no buffer space"))
	if code, body := get(t, base+"/readyz"); code != 503 || !strings.Contains(body, "failed dataplane: memory data plane: last install failed: netlink: no buffer space") {
		t.Fatalf("/readyz after an install failure: %d %q", code, body)
	}
	n.noteInstall(nil)
	if code, _ := get(t, base+"/readyz"); code != 200 {
		t.Fatalf("/readyz after a good install: %d", code)
	}
}

// With the state store (embedded etcd) every family of metrics.Names is
// on /metrics, etcd's request latency included; the list in
// deploy/metrics.txt is what a node really exports.
func TestNodeExportsEveryListedMetric(t *testing.T) {
	dir := t.TempDir()
	// With an anycast front too (its BGP neighbour is a closed port on
	// loopback: the session never comes up, the families are there).
	n, _, _ := runNode(t, nodeConfig(1, "", fmt.Sprintf("statestore:\n  mode: embedded\n  data_dir: %s\n  cluster_key_file: %s.key\n", dir, dir)+
		"anycast:\n  mode: bgp\n  bgp:\n    asn: 65001\n    router_id: 127.0.0.1\n    neighbors:\n      - {address: 127.0.0.1, asn: 65000, port: 1}\n"+
		"  members:\n    listen: 127.0.0.1:0\n"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	loadtest.Run(ctx, loadOptions(t, n, 2)) // a failure for handshake_failures_total
	_, body := get(t, "http://"+n.HTTPAddr().String()+"/metrics")
	for _, m := range metrics.Names() {
		switch m.Name {
		case "ikefleet_dataplane_drops_total": // the memory data plane has no drop reasons
			continue
		case "ikefleet_etcd_request_errors_total": // a series appears with the first failed request
			continue
		}
		if !strings.Contains(body, "\n# TYPE "+m.Name+" "+m.Type+"\n") {
			t.Errorf("%s (%s) not on /metrics", m.Name, m.Type)
		}
	}
	if !strings.Contains(body, `ikefleet_etcd_request_duration_seconds_count{method="Txn"}`) {
		t.Error("no etcd Txn latency observed")
	}
	if !strings.Contains(body, `ikefleet_statestore_commit_wait_seconds_count{change="established"}`) {
		t.Error("no commit wait of an established SA observed")
	}
	if !strings.Contains(body, "ikefleet_statestore_reachable 1\n") {
		t.Error("state store not reported reachable")
	}
	if code, body := get(t, "http://"+n.HTTPAddr().String()+"/readyz"); code != 200 || !strings.Contains(body, "ok statestore\n") {
		t.Fatalf("/readyz: %d %q", code, body)
	}
}

// metrics.listen that cannot be bound stops the node with an error naming
// the field.
func TestNodeMetricsListenBusy(t *testing.T) {
	n1, _ := startNode(t, 1, "")
	cfg, err := ParseConfig([]byte(nodeConfig(1, "", "metrics:\n  listen: "+n1.HTTPAddr().String()+"\n")))
	if err != nil {
		t.Fatal(err)
	}
	n2, err := New(cfg, n1.log, n1.dp)
	if err != nil {
		t.Fatal(err)
	}
	err = n2.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "metrics.listen") {
		t.Fatalf("Run with a busy metrics.listen: %v", err)
	}
}
