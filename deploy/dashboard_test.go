package deploy

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
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

var (
	metricRef  = regexp.MustCompile(`\bikefleet_[a-z0-9_]+`)
	byClause   = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	braces     = regexp.MustCompile(`\{([^{}]*)\}`)
	matcher    = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"`)
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

func TestMetricsList(t *testing.T) {
	ms, err := DashboardMetrics()
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) < 12 {
		t.Errorf("%d metrics listed", len(ms))
	}
	for _, bad := range []string{
		"ikefleet_x_total counter\nikefleet_x_total counter",
		"ikefleet_dpd counter event",
		"ikefleet_etcd_latency histogram",
		"ikefleet_sas gauge le",
		"ikefleet_sas summary",
		"sas gauge",
		"ikefleet_sas",
		"# nothing",
	} {
		if _, err := parseMetrics(bad); err == nil {
			t.Errorf("parseMetrics(%q) accepted it", bad)
		}
	}
}

// The dashboard reads exactly the listed metrics, with their labels only.
func TestDashboardUsesListedMetrics(t *testing.T) {
	ms, err := DashboardMetrics()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]Metric{}
	for _, m := range ms {
		byName[m.Name] = m
	}
	d := loadDashboard(t)
	used := map[string]bool{}
	// resolve maps a series name in an expression to its listed metric.
	resolve := func(ref string) (Metric, bool) {
		if m, ok := byName[ref]; ok && m.Type != "histogram" {
			return m, true
		}
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if m, ok := byName[strings.TrimSuffix(ref, suf)]; ok && m.Type == "histogram" && strings.HasSuffix(ref, suf) {
				return m, true
			}
		}
		return Metric{}, false
	}
	check := func(where, expr, legend string) {
		refs := metricRef.FindAllString(expr, -1)
		if len(refs) == 0 {
			t.Errorf("%s: %q reads no ikefleet metric", where, expr)
			return
		}
		allowed := map[string]bool{"instance": true}
		for _, r := range refs {
			m, ok := resolve(r)
			if !ok {
				t.Errorf("%s: %s is not in grafana/metrics.txt (a histogram is read through _bucket, _sum, _count)", where, r)
				continue
			}
			used[m.Name] = true
			for _, l := range m.Labels {
				allowed[l] = true
			}
			if m.Type == "histogram" {
				allowed["le"] = true
			}
			if m.Type == "counter" && !strings.Contains(expr, "rate(") && !strings.Contains(expr, "increase(") {
				t.Errorf("%s: counter %s read without rate() or increase()", where, m.Name)
			}
		}
		var labels []string
		grouped := map[string]bool{}
		for _, g := range byClause.FindAllStringSubmatch(expr, -1) {
			for _, l := range strings.Split(g[1], ",") {
				if l = strings.TrimSpace(l); l != "" {
					labels = append(labels, l)
					grouped[l] = true
				}
			}
		}
		for _, b := range braces.FindAllStringSubmatch(expr, -1) {
			for _, m := range matcher.FindAllStringSubmatch(b[1], -1) {
				labels = append(labels, m[1])
			}
		}
		for _, l := range labels {
			if !allowed[l] {
				t.Errorf("%s: label %q is not a label of %v", where, l, refs)
			}
		}
		for _, v := range legendVar.FindAllStringSubmatch(legend, -1) {
			if !grouped[v[1]] {
				t.Errorf("%s: legend {{%s}} is not among the expression's by() labels", where, v[1])
			}
		}
		if strings.Count(expr, "(") != strings.Count(expr, ")") || strings.Count(expr, "{") != strings.Count(expr, "}") || strings.Count(expr, `"`)%2 != 0 {
			t.Errorf("%s: unbalanced expression %q", where, expr)
		}
	}

	ids := map[int]bool{}
	var queries int
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
			if !strings.Contains(tg.Expr, `instance=~"$instance"`) {
				t.Errorf("%s: %q ignores the node selection", where, tg.Expr)
			}
			check(where, tg.Expr, tg.LegendFormat)
			queries++
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
					t.Errorf("variable %s: label_values(%s, %s) does not match metrics.txt", v.Name, m[1], m[2])
				}
				used[m[1]] = true
			}
		}
	}
	sort.Strings(vars)
	if !slices.Equal(vars, []string{"datasource", "instance"}) {
		t.Errorf("variables %v, want datasource and instance", vars)
	}
	for _, m := range ms {
		if !used[m.Name] {
			t.Errorf("%s is listed in grafana/metrics.txt but no panel reads it", m.Name)
		}
	}
	if queries < len(ms) {
		t.Errorf("%d queries for %d metrics", queries, len(ms))
	}
}
