package concentrator

// Observability: the node's Prometheus metrics and its probes on one HTTP
// listener (metrics.listen): /metrics, /healthz (alive: not fenced) and
// /readyz (sockets bound, etcd reachable, data plane installing, not
// draining). Counters are read at scrape time (metrics.Source).

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/concentrator/metrics"
)

// observability is the node's share of metrics and probes.
type observability struct {
	events   metrics.Events
	etcd     *metrics.Etcd
	registry *prometheus.Registry

	keepalivesSent  atomic.Uint64
	installFailures atomic.Uint64
	installErr      atomic.Pointer[string] // the last install failed with it; nil once one succeeds
	logDropped      atomic.Pointer[func() uint64]
	draining        atomic.Bool
	eapResults      sync.Map // result -> *atomic.Uint64
	queueDrops      sync.Map // queueKey -> *atomic.Uint64

	mu       sync.Mutex
	httpAddr netip.AddrPort
}

type queueKey struct {
	listen netip.Addr
	natt   bool
	shard  int
	kind   queueKind
}

// scrapeTimeout bounds how long a scrape waits for the shards.
const scrapeTimeout = 5 * time.Second

func (n *Node) initObservability() {
	// Queue drop counters start at zero for every socket and shard.
	for _, a := range n.cfg.IKE.Listen {
		addr := netip.MustParseAddr(a).Unmap()
		for _, natt := range []bool{false, true} {
			for i := 0; i < n.cfg.shards(); i++ {
				for _, k := range []queueKind{queuePrio, queueProven, queueNew} {
					n.obs.queueDrops.Store(queueKey{listen: addr, natt: natt, shard: i, kind: k}, new(atomic.Uint64))
				}
			}
		}
	}
	n.obs.etcd = metrics.NewEtcd()
	n.obs.registry = metrics.NewRegistry(metrics.SourceFunc(n.metricsSnapshot), n.obs.etcd, scrapeTimeout)
}

// Metrics returns the node's metrics registry (ikefleet_* families, the
// Go runtime and the process).
func (n *Node) Metrics() *prometheus.Registry { return n.obs.registry }

// Events counts rekeys, address updates, handoffs and takeovers for the
// metrics.
func (n *Node) Events() *metrics.Events { return &n.obs.events }

// CountLogDrops makes f the source of ikefleet_log_lines_dropped_total:
// the log lines the daemon's writer dropped so far (its reader stalled).
func (n *Node) CountLogDrops(f func() uint64) { n.obs.logDropped.Store(&f) }

// SetDraining marks the node as draining: /readyz fails so that load
// balancers and announcers stop sending new peers here.
func (n *Node) SetDraining(on bool) { n.obs.draining.Store(on) }

// HTTPAddr returns the address the metrics listener is bound to (invalid
// while it is not, or with metrics.listen off).
func (n *Node) HTTPAddr() netip.AddrPort {
	n.obs.mu.Lock()
	defer n.obs.mu.Unlock()
	return n.obs.httpAddr
}

// noteInstall records the outcome of a data plane install for the
// readiness probe and the metrics.
func (n *Node) noteInstall(err error) {
	if err == nil {
		if n.obs.installErr.Load() != nil {
			n.obs.installErr.Store(nil)
		}
		return
	}
	n.obs.installFailures.Add(1)
	s := err.Error()
	n.obs.installErr.Store(&s)
}

// countQueueDrop counts an IKE message that socket local (NAT-T or not)
// dropped because shard s's queue of its kind was full.
func (n *Node) countQueueDrop(local netip.AddrPort, natt bool, s *shard, kind queueKind) {
	if kind == queuePrio {
		n.prioDrops.Add(1)
	} else {
		n.initDrops.Add(1)
	}
	k := queueKey{listen: local.Addr(), natt: natt, shard: s.id, kind: kind}
	c, ok := n.obs.queueDrops.Load(k)
	if !ok {
		c, _ = n.obs.queueDrops.LoadOrStore(k, new(atomic.Uint64))
	}
	c.(*atomic.Uint64).Add(1)
}

// eap counts one RADIUS result (metrics.EAPResults).
func (o *observability) eap(result string) {
	c, ok := o.eapResults.Load(result)
	if !ok {
		c, _ = o.eapResults.LoadOrStore(result, new(atomic.Uint64))
	}
	c.(*atomic.Uint64).Add(1)
}

func (o *observability) eapCounts() map[string]uint64 {
	m := map[string]uint64{}
	o.eapResults.Range(func(k, v any) bool {
		m[k.(string)] = v.(*atomic.Uint64).Load()
		return true
	})
	return m
}

func (n *Node) listening() bool {
	select {
	case <-n.ready:
		return true
	default:
		return false
	}
}

// metricsSnapshot reads every counter: each shard's engine on its own
// goroutine (once the shards run), the node's atomics, the state store's
// health and the data plane's report.
func (n *Node) metricsSnapshot(ctx context.Context) (metrics.Snapshot, error) {
	var s metrics.Snapshot
	if n.listening() {
		for _, sh := range n.shards {
			var m metrics.Shard
			err := n.do(ctx, sh, func() {
				m.Stats = sh.eng.Stats()
				m.CookiesActive = sh.eng.Cookies().UnderPressure(n.clock.Mono())
				m.Waiting = sh.q.waiting()
				m.Engine = sh.spent
				m.States = map[string]int{}
				sh.eng.Each(func(sa *ike.IKESA) bool {
					m.States[sa.State()]++
					m.ChildSAs += len(sa.Children())
					return true
				})
			})
			if err != nil {
				return s, fmt.Errorf("shard %d: %w", sh.id, err)
			}
			s.Shards = append(s.Shards, m)
		}
	}
	h := n.Health()
	s.Node = metrics.Node{PersistFailures: n.persistFailures.Load(), FencedDrops: n.fencedDrops.Load(),
		NonIKEDrops: n.nonIKEDrops.Load(), HeaderDrops: n.headerDrops.Load(), KeepalivesSent: n.obs.keepalivesSent.Load(),
		KeepalivesReceived: n.keepalives.Load(), EAP: n.obs.eapCounts(), Revocation: n.rev.stats(), Listening: h.Listening, Fenced: h.Fenced, Draining: h.Draining}
	if f := n.obs.logDropped.Load(); f != nil {
		s.Node.LogDropped = (*f)()
	}
	n.obs.queueDrops.Range(func(k, v any) bool {
		q := k.(queueKey)
		s.Node.QueueDrops = append(s.Node.QueueDrops, metrics.QueueDrop{Listen: q.listen.String(), NATT: q.natt,
			Shard: q.shard, Queue: q.kind.String(), Count: v.(*atomic.Uint64).Load()})
		return true
	})
	s.Node.SocketDrops = n.socketDrops()
	s.Events = n.obs.events.Counts()
	cs := n.ClusterStats()
	s.Events.Handoffs, s.Events.Takeovers = cs.HandedOff, cs.TakeOvers
	u := &n.unique
	s.Events.UniqueLocal, s.Events.UniqueRemote, s.Events.UniqueDead = u.local.Load(), u.remote.Load(), u.dead.Load()
	s.Events.UniqueFailed, s.Events.UniqueRefused = u.failed.Load(), u.refused.Load()
	if st := h.StateStore; st != nil {
		s.StateStore = &metrics.StateStore{Reachable: st.Reachable, Registered: st.Registered, Queued: st.Queued, Txns: st.Txns, Rollbacks: st.Rollbacks,
			Puts: st.Puts, Deletes: st.Deletes,
			WatchResumes: st.WatchResumes, WatchRelists: st.WatchRelists, Layout: st.Layout, LayoutFenced: st.LayoutFenced,
			Rewrapped: cs.Rewrapped, RewrapUnreadable: cs.RewrapUnreadable, SelectorConflicts: cs.SelectorConflicts,
			SelectorHolds: cs.SelectorHolds, SelectorHoldTimeouts: cs.SelectorHoldTimeouts}
		settled := n.SettleStats()
		s.StateStore.UnknownSettled, s.StateStore.UnknownLanded = settled.Settled, settled.Landed
		if held, sealing, ok := n.ClusterKeys(); ok {
			s.StateStore.SealingKey, s.StateStore.Keys = sealing, uint32(len(held))
		}
	}
	s.DataPlane = metrics.DataPlane{Name: n.dp.Name(), InstallFailures: n.obs.installFailures.Load()}
	s.Anycast = n.anycastMetrics(ctx) // anycast.go
	if r, ok := n.dp.(dataplane.Reporter); ok {
		rep, err := r.Report(ctx)
		if err != nil {
			return s, fmt.Errorf("%s data plane: %w", n.dp.Name(), err)
		}
		s.DataPlane.Report = &rep
	}
	return s, nil
}

// HTTPHandler serves /metrics, /healthz and /readyz.
func (n *Node) HTTPHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics.Handler(n.obs.registry))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		probe(w, n.Health().LiveChecks())
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		probe(w, n.Health().ReadyChecks())
	})
	return mux
}

// Check is one condition of a probe; Err is nil when it holds.
type Check struct {
	Name string
	Err  error
}

// LiveChecks are the liveness conditions: the process answers and is not
// fenced (a fenced node that stays fenced needs a restart).
func (h Health) LiveChecks() []Check {
	var fenced error
	if h.Fenced {
		fenced = errors.New("fenced: the state store lease is not certainly alive")
	}
	return []Check{{Name: "fenced", Err: fenced}}
}

// ReadyChecks are the readiness conditions: sockets bound, the state store
// reachable, the data plane installing CHILD SAs, not draining, not
// fenced.
func (h Health) ReadyChecks() []Check {
	cs := h.LiveChecks()
	add := func(name string, failed bool, format string, args ...any) {
		var err error
		if failed {
			err = fmt.Errorf(format, args...)
		}
		cs = append(cs, Check{Name: name, Err: err})
	}
	add("sockets", !h.Listening, "IKE sockets not bound yet")
	if h.StateStore != nil {
		add("statestore", !h.StateStore.Reachable, "etcd unreachable: %s", h.StateStore.LastError)
	}
	add("dataplane", h.DataPlaneError != "", "%s data plane: last install failed: %s", h.DataPlane, h.DataPlaneError)
	add("draining", h.Draining, "draining")
	return cs
}

// probe answers 200 when every check holds, else 503; the body has one
// line a check ("ok name" or "failed name: why").
func probe(w http.ResponseWriter, checks []Check) {
	var b strings.Builder
	code := http.StatusOK
	for _, c := range checks {
		if c.Err != nil {
			code = http.StatusServiceUnavailable
			fmt.Fprintf(&b, "failed %s: %v\n", c.Name, c.Err)
		} else {
			fmt.Fprintf(&b, "ok %s\n", c.Name)
		}
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	w.Write([]byte(b.String()))
}

// serveHTTP binds metrics.listen and serves HTTPHandler until stop is
// called. Off (or empty): nothing, and stop does nothing.
func (n *Node) serveHTTP() (stop func(), err error) {
	addr := n.cfg.Metrics.Listen
	if !n.cfg.Metrics.Enabled() {
		return func() {}, nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics.listen %s: %w", addr, err)
	}
	a := l.Addr().(*net.TCPAddr).AddrPort()
	n.obs.mu.Lock()
	n.obs.httpAddr = netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
	n.obs.mu.Unlock()
	srv := &http.Server{Handler: n.HTTPHandler(), ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("metrics listener failed", "addr", addr, "err", err)
		}
	}()
	n.log.Info("metrics listening", "addr", n.HTTPAddr().String(), "paths", "/metrics /healthz /readyz")
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
		n.obs.mu.Lock()
		n.obs.httpAddr = netip.AddrPort{}
		n.obs.mu.Unlock()
	}, nil
}
