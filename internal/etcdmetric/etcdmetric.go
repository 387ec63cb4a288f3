// Package etcdmetric reads the metrics an etcd member running in this
// process registers with Prometheus's default registry (etcd's server
// packages register them when they are loaded), for tests and benchmarks
// that compare what the node did with what etcd counted.
package etcdmetric

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// Value returns the value of the counter or gauge name (its first
// series); an error if it is not registered.
func Value(name string) (float64, error) {
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		return 0, err
	}
	for _, mf := range mfs {
		if mf.GetName() != name || len(mf.Metric) == 0 {
			continue
		}
		m := mf.Metric[0]
		switch {
		case m.Gauge != nil:
			return m.Gauge.GetValue(), nil
		case m.Counter != nil:
			return m.Counter.GetValue(), nil
		}
	}
	return 0, fmt.Errorf("etcd metric %s not found", name)
}
