// Package deploy holds what deployments (deploy/grafana, deploy/helm)
// rely on from concentratord, in a form tests can compare with what the
// daemon does. The Grafana dashboard reads only metrics concentratord
// exports: the list is the daemon's own (metrics.Names, written out as
// deploy/metrics.txt by make generate), not a second one kept here.
package deploy

import "github.com/ikefleet/ikefleet/concentrator/metrics"

// Metric is one metric family concentratord exports: its name, type
// (counter, gauge, histogram) and label names.
type Metric = metrics.Name

// ExportedMetrics returns every ikefleet_* family concentratord exports.
func ExportedMetrics() []Metric { return metrics.Names() }
