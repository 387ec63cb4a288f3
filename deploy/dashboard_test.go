package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
	"github.com/ikefleet/ikefleet/concentrator/metrics"
)

type dashboard struct {
	Title      string  `json:"title"`
	UID        string  `json:"uid"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	GridPos struct{ H, W, X, Y int } `json:"gridPos"`
	Targets []struct {
		Expr         string `json:"expr"`
		LegendFormat string `json:"legendFormat"`
		RefID        string `json:"refId"`
	} `json:"targets"`
}

// runtimeMetrics are the metrics of the registry's Go and process
// collectors that the dashboard reads beside the node's own (memory against
// its limit); TestDashboardUsesExportedMetrics checks that the daemon's
// registry exports them.
var runtimeMetrics = []string{"process_resident_memory_bytes", "go_gc_gomemlimit_bytes", "process_cpu_seconds_total"}

var (
	metricName = `ikefleet_[a-z0-9_]+|` + strings.Join(runtimeMetrics, "|")
	metricRef  = regexp.MustCompile(`\b(?:` + metricName + `)\b`)
	selector   = regexp.MustCompile(`\b(` + metricName + `)\s*\{([^{}]*)\}`)
	byClause   = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	braces     = regexp.MustCompile(`\{([^{}]*)\}`)
	matcher    = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"`)
	legendVar  = regexp.MustCompile(`\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}`)
	labelValue = regexp.MustCompile(`label_values\(\s*(ikefleet_[a-z0-9_]+)\s*,\s*([a-z_]+)\s*\)`)
)

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile("grafana/ikefleet-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	return d
}

// exported maps the daemon's metric families by name.
func exported() map[string]Metric {
	byName := map[string]Metric{}
	for _, m := range ExportedMetrics() {
		byName[m.Name] = m
	}
	return byName
}

// closedLabels are the labels whose values the collector draws from a
// fixed set; a dashboard matcher on one must use a value the daemon emits.
var closedLabels = []string{"state", "kind", "initiator", "socket", "direction", "queue", "work"}

// emittedValues scrapes a collector fed a snapshot that exercises every
// family with a closed label, and returns family -> label -> values seen.
func emittedValues(t *testing.T) map[string]map[string][]string {
	t.Helper()
	snap := metrics.Snapshot{
		Shards: []metrics.Shard{{States: map[string]int{"ESTABLISHED": 1}, ChildSAs: 1}},
		Node: metrics.Node{QueueDrops: []metrics.QueueDrop{
			{Listen: "192.0.2.1", Shard: 0, Queue: "other", Count: 1},
			{Listen: "192.0.2.1", NATT: true, Shard: 0, Queue: "proven", Count: 1},
			{Listen: "192.0.2.1", NATT: true, Shard: 0, Queue: "new", Count: 1},
		}},
		StateStore: &metrics.StateStore{Reachable: true},
		DataPlane:  metrics.DataPlane{Name: "memory", Report: &dataplane.Report{InBytes: 1, OutBytes: 1}},
	}
	reg := metrics.NewRegistry(metrics.SourceFunc(func(context.Context) (metrics.Snapshot, error) {
		return snap, nil
	}), nil, 0)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string][]string{}
	for _, mf := range mfs {
		vals := map[string][]string{}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if !slices.Contains(vals[lp.GetName()], lp.GetValue()) {
					vals[lp.GetName()] = append(vals[lp.GetName()], lp.GetValue())
				}
			}
		}
		out[mf.GetName()] = vals
	}
	return out
}

// resolve maps a series name in an expression to the exported family: a
// histogram is read through _bucket, _sum and _count only.
func resolve(byName map[string]Metric, ref string) (m Metric, series string, ok bool) {
	if m, ok := byName[ref]; ok && m.Type != "histogram" {
		return m, "", true
	}
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		if m, ok := byName[strings.TrimSuffix(ref, suf)]; ok && m.Type == "histogram" && strings.HasSuffix(ref, suf) {
			return m, suf, true
		}
	}
	return Metric{}, "", false
}

// checkExpr returns what is wrong with one query: names the daemon does
// not export, labels the named families do not have, values a closed
// label never takes, legend variables the query does not group by.
func checkExpr(byName map[string]Metric, values map[string]map[string][]string, expr, legend string) (problems []string, used []string) {
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	refs := metricRef.FindAllString(expr, -1)
	if len(refs) == 0 {
		bad("%q reads no ikefleet metric", expr)
		return
	}
	allowed := map[string]bool{"instance": true}
	for _, r := range refs {
		m, series, ok := resolve(byName, r)
		if !ok {
			bad("%s is not exported by concentratord (deploy/metrics.txt; a histogram is read through _bucket, _sum, _count)", r)
			continue
		}
		used = append(used, m.Name)
		for _, l := range m.Labels {
			allowed[l] = true
		}
		if series == "_bucket" {
			allowed["le"] = true
		}
		if (m.Type == "counter" || m.Type == "histogram") && !strings.Contains(expr, "rate(") && !strings.Contains(expr, "increase(") {
			bad("%s %s read without rate() or increase()", m.Type, m.Name)
		}
	}
	// Matchers are checked against the family they select.
	for _, s := range selector.FindAllStringSubmatch(expr, -1) {
		m, series, ok := resolve(byName, s[1])
		if !ok {
			continue
		}
		for _, mt := range matcher.FindAllStringSubmatch(s[2], -1) {
			l, op, v := mt[1], mt[2], mt[3]
			if l != "instance" && !slices.Contains(m.Labels, l) && !(l == "le" && series == "_bucket") {
				bad("%s has no label %q (labels %v)", m.Name, l, m.Labels)
				continue
			}
			if (op == "=" || op == "!=") && slices.Contains(closedLabels, l) {
				if seen := values[m.Name][l]; !slices.Contains(seen, v) {
					bad("%s{%s=%q}: concentratord emits %s values %v", m.Name, l, v, l, seen)
				}
			}
		}
	}
	for _, b := range braces.FindAllStringSubmatch(selector.ReplaceAllString(expr, ""), -1) {
		if !strings.HasPrefix(b[1], "{") && matcher.MatchString(b[1]) {
			bad("selector {%s} names no ikefleet metric", b[1])
		}
	}
	grouped := map[string]bool{}
	for _, g := range byClause.FindAllStringSubmatch(expr, -1) {
		for _, l := range strings.Split(g[1], ",") {
			if l = strings.TrimSpace(l); l == "" {
				continue
			}
			grouped[l] = true
			if !allowed[l] {
				bad("by (%s): not a label of %v", l, refs)
			}
		}
	}
	for _, v := range legendVar.FindAllStringSubmatch(legend, -1) {
		if !grouped[v[1]] {
			bad("legend {{%s}} is not among the expression's by() labels", v[1])
		}
	}
	if strings.Count(expr, "(") != strings.Count(expr, ")") || strings.Count(expr, "{") != strings.Count(expr, "}") || strings.Count(expr, `"`)%2 != 0 {
		bad("unbalanced expression %q", expr)
	}
	return problems, used
}

// deploy/metrics.txt is the daemon's list, current.
func TestMetricsFileIsTheDaemons(t *testing.T) {
	b, err := os.ReadFile("metrics.txt")
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != metrics.NamesText() {
		t.Error("deploy/metrics.txt differs from metrics.Names(): run make generate")
	}
	if _, err := os.Stat("grafana/metrics.txt"); err == nil {
		t.Error("grafana/metrics.txt is back: the dashboard is checked against the daemon's list only")
	}
}

func TestCheckExpr(t *testing.T) {
	byName, values := exported(), emittedValues(t)
	const i = `instance=~"$instance"`
	for _, tc := range []struct {
		expr, legend string
		want         string // "" = accepted; else a substring of one problem
	}{
		{`sum by (state) (ikefleet_ike_sas{` + i + `})`, "{{state}}", ""},
		{`sum(ikefleet_ike_sas{` + i + `,state="established"})`, "", ""},
		{`sum by (kind, initiator) (rate(ikefleet_rekeys_total{` + i + `,kind="ike",initiator!="peer"}[5m]))`, "{{kind}} {{initiator}}", ""},
		{`histogram_quantile(0.99, sum by (method, le) (rate(ikefleet_etcd_request_duration_seconds_bucket{` + i + `}[5m])))`, "{{method}}", ""},
		{`sum by (socket, shard) (rate(ikefleet_queue_drops_total{` + i + `,socket="natt"}[5m]))`, "", ""},
		{`sum by (direction) (rate(ikefleet_dataplane_bytes_total{` + i + `,direction="in"}[5m]))`, "", ""},
		// The names the dashboard was first written against.
		{`sum(rate(ikefleet_esp_bytes_total{` + i + `}[5m]))`, "", "ikefleet_esp_bytes_total is not exported"},
		{`sum by (event) (rate(ikefleet_dpd_total{` + i + `}[5m]))`, "", "ikefleet_dpd_total is not exported"},
		{`histogram_quantile(0.99, sum by (le) (rate(ikefleet_etcd_request_seconds_bucket{` + i + `}[5m])))`, "", "ikefleet_etcd_request_seconds_bucket is not exported"},
		{`sum by (result) (rate(ikefleet_handshakes_total{` + i + `}[5m]))`, "{{result}}", `by (result)`},
		{`sum by (socket, reason) (rate(ikefleet_queue_drops_total{` + i + `}[5m]))`, "", `by (reason)`},
		{`sum(rate(ikefleet_handshakes_total{` + i + `,reason="NONE"}[5m]))`, "", `ikefleet_handshakes_total has no label "reason"`},
		{`sum(rate(ikefleet_dpd_sent_total{` + i + `,event="sent"}[5m]))`, "", `has no label "event"`},
		// Label values.
		{`sum(ikefleet_ike_sas{` + i + `,state="ESTABLISHED"})`, "", `state="ESTABLISHED"`},
		{`sum(rate(ikefleet_rekeys_total{` + i + `,initiator="local"}[5m]))`, "", `initiator="local"`},
		{`sum(rate(ikefleet_dataplane_bytes_total{` + i + `,direction="rx"}[5m]))`, "", `direction="rx"`},
		{`sum(rate(ikefleet_queue_drops_total{` + i + `,socket="udp4500"}[5m]))`, "", `socket="udp4500"`},
		// Reading.
		{`sum(ikefleet_etcd_request_duration_seconds{` + i + `})`, "", "ikefleet_etcd_request_duration_seconds is not exported"},
		{`sum(ikefleet_etcd_request_duration_seconds_sum{` + i + `,le="1"})`, "", `has no label "le"`},
		{`sum(ikefleet_handshakes_total{` + i + `})`, "", "read without rate()"},
		{`sum by (instance) (ikefleet_child_sas{` + i + `})`, "{{reason}}", "legend {{reason}}"},
		{`sum(ikefleet_child_sas{` + i + `}`, "", "unbalanced"},
	} {
		problems, _ := checkExpr(byName, values, tc.expr, tc.legend)
		switch {
		case tc.want == "" && len(problems) > 0:
			t.Errorf("%s: rejected: %q", tc.expr, problems)
		case tc.want != "" && !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, tc.want) }):
			t.Errorf("%s: want a problem containing %q, got %q", tc.expr, tc.want, problems)
		}
	}
}

// The dashboard reads only what concentratord exports, with its labels and
// label values, and covers what an operator looks at first.
func TestDashboardUsesExportedMetrics(t *testing.T) {
	byName, values := exported(), emittedValues(t)
	for _, n := range runtimeMetrics {
		if _, ok := values[n]; !ok {
			t.Errorf("%s: not exported by the daemon's registry", n)
			continue
		}
		byName[n] = Metric{Name: n, Type: "gauge"}
	}
	for _, l := range closedLabels {
		n := 0
		for _, fam := range values {
			n += len(fam[l])
		}
		if n == 0 {
			t.Errorf("the test snapshot emits no %q value", l)
		}
	}
	if states := values["ikefleet_ike_sas"]["state"]; !slices.Equal(slices.Sorted(slices.Values(states)), slices.Sorted(slices.Values(metrics.IKEStates))) {
		t.Errorf("ike_sas states %v, want %v", states, metrics.IKEStates)
	}
	d := loadDashboard(t)
	used := map[string]bool{}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		where := "panel " + p.Title
		if ids[p.ID] {
			t.Errorf("%s: duplicate id %d", where, p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.W < 1 || p.GridPos.X < 0 || p.GridPos.X+p.GridPos.W > 24 || p.GridPos.H < 1 {
			t.Errorf("%s: gridPos %+v outside the 24-column grid", where, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("%s: datasource must be the ${datasource} variable", where)
		}
		if len(p.Targets) == 0 {
			t.Errorf("%s: no query", where)
		}
		refIDs := map[string]bool{}
		for _, tg := range p.Targets {
			if refIDs[tg.RefID] {
				t.Errorf("%s: duplicate refId %s", where, tg.RefID)
			}
			refIDs[tg.RefID] = true
			for _, sel := range selector.FindAllStringSubmatch(tg.Expr, -1) {
				if !strings.Contains(sel[2], `instance=~"$instance"`) {
					t.Errorf("%s: %s in %q ignores the node selection", where, sel[1], tg.Expr)
				}
			}
			if len(metricRef.FindAllString(tg.Expr, -1)) != len(selector.FindAllString(tg.Expr, -1)) {
				t.Errorf("%s: %q reads a metric without a selector", where, tg.Expr)
			}
			problems, u := checkExpr(byName, values, tg.Expr, tg.LegendFormat)
			for _, pr := range problems {
				t.Errorf("%s (%s): %s", where, tg.RefID, pr)
			}
			for _, n := range u {
				used[n] = true
			}
		}
	}
	for i, a := range d.Panels {
		for _, b := range d.Panels[i+1:] {
			ag, bg := a.GridPos, b.GridPos
			if ag.X < bg.X+bg.W && bg.X < ag.X+ag.W && ag.Y < bg.Y+bg.H && bg.Y < ag.Y+ag.H {
				t.Errorf("panels %q and %q overlap", a.Title, b.Title)
			}
		}
	}
	var vars []string
	for _, v := range d.Templating.List {
		vars = append(vars, v.Name)
		if q, err := json.Marshal(v.Query); err == nil {
			for _, m := range labelValue.FindAllStringSubmatch(string(q), -1) {
				mm, ok := byName[m[1]]
				if !ok || (m[2] != "instance" && !slices.Contains(mm.Labels, m[2])) {
					t.Errorf("variable %s: label_values(%s, %s): not an exported metric and label", v.Name, m[1], m[2])
				}
			}
		}
	}
	sort.Strings(vars)
	if !slices.Equal(vars, []string{"datasource", "instance"}) {
		t.Errorf("variables %v, want datasource and instance", vars)
	}
	for _, n := range []string{
		"ikefleet_ike_sas", "ikefleet_child_sas", "ikefleet_handshakes_total", "ikefleet_handshake_failures_total",
		"ikefleet_rekeys_total", "ikefleet_dpd_sent_total", "ikefleet_dpd_dead_total",
		"ikefleet_dataplane_bytes_total", "ikefleet_dataplane_packets_total", "ikefleet_etcd_request_duration_seconds",
		"ikefleet_queue_drops_total", "ikefleet_socket_receive_drops_total", "ikefleet_handoffs_total", "ikefleet_takeovers_total",
		"ikefleet_fenced", "ikefleet_draining", "ikefleet_statestore_reachable",
		"process_resident_memory_bytes", "go_gc_gomemlimit_bytes",
	} {
		if _, ok := byName[n]; !ok {
			t.Errorf("%s: no longer exported", n)
		}
		if !used[n] {
			t.Errorf("no panel reads %s", n)
		}
	}
}
