package metrics

import (
	"context"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// EtcdBuckets are the latency buckets of etcd requests, in seconds: from a
// local fsync-less write to a request that waited out an election.
var EtcdBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// CommitBuckets are the buckets of the commit wait, in seconds: finer
// than EtcdBuckets where a setup's latency is (a few milliseconds to a
// few tens), so that a quantile read from them is within a few percent.
var CommitBuckets = []float64{.0005, .001, .0015, .002, .003, .004, .005, .0065, .008, .01, .0125, .015, .02, .025, .03, .04,
	.05, .065, .08, .1, .125, .15, .2, .25, .3, .4, .5, .75, 1, 2.5, 5, 10}

// Etcd observes the state store's etcd requests: latency by method and
// errors by method and gRPC code. Its interceptor goes on the etcd client
// (statestore.ClientConfig.DialOptions). It also holds the commit wait of
// the node's SA state changes (ObserveCommit).
type Etcd struct {
	latency *prometheus.HistogramVec
	errors  *prometheus.CounterVec
	commit  *prometheus.HistogramVec
}

// NewEtcd returns an observer; register it with the node's other metrics.
func NewEtcd() *Etcd {
	return &Etcd{
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: dEtcdLatency.name, Help: dEtcdLatency.help,
			Buckets: EtcdBuckets}, dEtcdLatency.labels),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: dEtcdErrors.name, Help: dEtcdErrors.help}, dEtcdErrors.labels),
		commit: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: dCommitWait.name, Help: dCommitWait.help,
			Buckets: CommitBuckets}, dCommitWait.labels),
	}
}

// Describe and Collect make Etcd a prometheus.Collector.
func (e *Etcd) Describe(ch chan<- *prometheus.Desc) {
	e.latency.Describe(ch)
	e.errors.Describe(ch)
	e.commit.Describe(ch)
}

func (e *Etcd) Collect(ch chan<- prometheus.Metric) {
	e.latency.Collect(ch)
	e.errors.Collect(ch)
	e.commit.Collect(ch)
}

// ObserveCommit records how long an SA state change of kind change (its
// statestore.ChangeKind name) waited from its submission to its commit or
// refusal.
func (e *Etcd) ObserveCommit(change string, d time.Duration) {
	e.commit.WithLabelValues(change).Observe(d.Seconds())
}

// Observe records one request: method is the gRPC method's last element
// (Txn, Range, LeaseGrant...).
func (e *Etcd) Observe(method string, d time.Duration, err error) {
	e.latency.WithLabelValues(method).Observe(d.Seconds())
	if err != nil {
		e.errors.WithLabelValues(method, status.Code(err).String()).Inc()
	}
}

// UnaryClientInterceptor observes every unary etcd RPC.
func (e *Etcd) UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		start := time.Now()
		err := invoker(ctx, method, req, reply, cc, opts...)
		e.Observe(shortMethod(method), time.Since(start), err)
		return err
	}
}

// DialOption installs the interceptor on a gRPC client.
func (e *Etcd) DialOption() grpc.DialOption {
	return grpc.WithChainUnaryInterceptor(e.UnaryClientInterceptor())
}

// shortMethod turns "/etcdserverpb.KV/Txn" into "Txn".
func shortMethod(full string) string {
	if i := strings.LastIndexByte(full, '/'); i >= 0 {
		return full[i+1:]
	}
	return full
}
