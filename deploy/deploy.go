// Package deploy holds what deployments (deploy/grafana, deploy/helm)
// rely on from concentratord, in a form tests can compare with what the
// daemon does: the metrics the Grafana dashboard reads.
package deploy

import (
	_ "embed"
	"fmt"
	"regexp"
	"strings"
)

//go:embed grafana/metrics.txt
var metricsTxt string

// Metric is one metric the dashboard reads: concentratord must export it
// under this name, of this type, with exactly these labels.
type Metric struct {
	Name   string
	Type   string // counter | gauge | histogram
	Labels []string
}

var (
	metricName = regexp.MustCompile(`^ikefleet_[a-z][a-z0-9_]*[a-z0-9]$`)
	labelName  = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
)

// DashboardMetrics returns the metrics listed in grafana/metrics.txt.
func DashboardMetrics() ([]Metric, error) { return parseMetrics(metricsTxt) }

func parseMetrics(text string) ([]Metric, error) {
	var out []Metric
	seen := map[string]bool{}
	for i, line := range strings.Split(text, "\n") {
		if j := strings.IndexByte(line, '#'); j >= 0 {
			line = line[:j]
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		bad := func(format string, args ...any) error {
			return fmt.Errorf("metrics.txt:%d: %s", i+1, fmt.Sprintf(format, args...))
		}
		if len(f) > 3 {
			return nil, bad("want NAME TYPE [LABEL,...], got %d fields", len(f))
		}
		if len(f) < 2 {
			return nil, bad("%s has no type", f[0])
		}
		m := Metric{Name: f[0], Type: f[1]}
		if !metricName.MatchString(m.Name) {
			return nil, bad("%q is not an ikefleet_ metric name", m.Name)
		}
		if seen[m.Name] {
			return nil, bad("%s listed twice", m.Name)
		}
		seen[m.Name] = true
		switch m.Type {
		case "counter":
			if !strings.HasSuffix(m.Name, "_total") {
				return nil, bad("counter %s must end in _total", m.Name)
			}
		case "gauge":
		case "histogram":
			if !strings.HasSuffix(m.Name, "_seconds") && !strings.HasSuffix(m.Name, "_bytes") {
				return nil, bad("histogram %s must name its unit (_seconds, _bytes)", m.Name)
			}
		default:
			return nil, bad("%s: type %q is not counter, gauge or histogram", m.Name, m.Type)
		}
		if len(f) == 3 {
			for _, l := range strings.Split(f[2], ",") {
				if !labelName.MatchString(l) || l == "le" || l == "instance" || l == "job" {
					return nil, bad("%s: bad label %q", m.Name, l)
				}
				m.Labels = append(m.Labels, l)
			}
		}
		out = append(out, m)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("metrics.txt lists no metric")
	}
	return out, nil
}
