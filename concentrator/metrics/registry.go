package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// NewRegistry returns a registry with the node's collector, the etcd
// observer (nil: none) and the Go runtime and process collectors.
func NewRegistry(src Source, etcd *Etcd, timeout time.Duration) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(src, timeout),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if etcd != nil {
		reg.MustRegister(etcd)
	}
	return reg
}

// Handler serves reg in the Prometheus exposition formats. A failed
// snapshot fails the scrape (HTTP 500) rather than report stale zeros.
func Handler(reg *prometheus.Registry) http.Handler {
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg, ErrorHandling: promhttp.HTTPErrorOnError})
}
