// Package metrics turns a concentrator node's counters into Prometheus
// metrics named ikefleet_*. The node's counters are read at scrape time
// (Source.Snapshot): the packet and exchange paths pay nothing beyond the
// atomic adds they already do. Only etcd requests are observed as they
// happen (Etcd), by a gRPC interceptor on the state store's client.
//
// Labels are bounded: states, notify names, shards, the node's own listen
// addresses, data plane drop reasons, etcd methods and gRPC codes. Never a
// peer identity, a peer address or an SPI.
package metrics

import (
	"context"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ikefleet/ikefleet/concentrator/dataplane"
	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/internal/buildinfo"
)

// Source is what the collector reads at every scrape.
type Source interface {
	Snapshot(ctx context.Context) (Snapshot, error)
}

// SourceFunc adapts a function to Source.
type SourceFunc func(ctx context.Context) (Snapshot, error)

func (f SourceFunc) Snapshot(ctx context.Context) (Snapshot, error) { return f(ctx) }

// Snapshot is a node's counters at one moment.
type Snapshot struct {
	Shards     []Shard
	Node       Node
	Events     EventCounts
	StateStore *StateStore // nil: no state store (statestore.mode none)
	DataPlane  DataPlane
	Anycast    *Anycast // the anycast front (anycast.go)
}

// Shard is one engine shard.
type Shard struct {
	Stats         ike.Stats
	States        map[string]int // IKE SAs by state (ike.IKESA.State names)
	ChildSAs      int
	CookiesActive bool // the shard demands cookies (ike.Cookies.UnderPressure)
	// Messages waiting in the shard's queues: other (IKE_AUTH,
	// established SAs' messages, answers; with what spilled over),
	// proven and new IKE_SA_INITs.
	Waiting [3]int
	// What the engine spent on received messages, by exchange, and on
	// its timers: indexed as EngineWork.
	Engine [len(EngineWork)]EngineTime
}

// EngineTime is an engine's time on one kind of work.
type EngineTime struct {
	Calls   uint64 // messages handled, or timer runs
	Seconds float64
	// Timed calls whose reading was not the engine's alone (the
	// goroutine waited, was preempted or changed threads inside it),
	// counted at their work's mean instead.
	Outliers uint64
}

// EngineWork are the work label of engine_cpu_seconds_total and
// engine_calls_total: the exchanges a received message can belong to,
// other (another exchange type, or a message too short to say), and the
// engine's timers.
var EngineWork = [...]string{"IKE_SA_INIT", "IKE_AUTH", "CREATE_CHILD_SA", "INFORMATIONAL", "IKE_INTERMEDIATE",
	"IKE_FOLLOWUP_KE", "IKE_SESSION_RESUME", "other", "timers"}

// EngineSample: one engine call in EngineSample is timed with its
// thread's CPU clock and counts EngineSample times in
// engine_cpu_seconds_total (the shards time; the help says so, and
// benchnode reckons the readings from the calls).
const EngineSample = 8

// QueueNames are the queue label of queue_drops_total and
// queue_waiting, in the order of a shard's queues (Shard.Waiting): the
// node names its queues by them.
var QueueNames = [3]string{"other", "proven", "new"}

// Node holds the node's own counters.
type Node struct {
	PersistFailures    uint64
	FencedDrops        uint64
	NonIKEDrops        uint64
	HeaderDrops        uint64 // IKE datagrams with malformed headers the socket loop dropped (counted as the engine's drops)
	LogDropped         uint64 // log lines the daemon's log writer dropped (Node.CountLogDrops)
	KeepalivesSent     uint64
	KeepalivesReceived uint64
	QueueDrops         []QueueDrop
	SocketDrops        []SocketDrop
	EAP                map[string]uint64 // EAP messages relayed to RADIUS, by result (EAPResults)
	Revocation         Revocation        // online revocation checking
	Listening          bool              // sockets bound
	Fenced             bool
	Draining           bool
}

// Revocation counts the node's online revocation lookups and fetches;
// arrays are indexed by RevocationSources.
type Revocation struct {
	Hits, Misses, FetchOK, FetchFailed, Revoked [2]uint64
	FetchSeconds                                [2]float64
	Refused, FailOpen, Pending                  uint64
	Cached                                      int
}

// RevocationSources label the arrays of Revocation.
var RevocationSources = [2]string{"ocsp", "crl"}

// QueueDrop counts IKE messages one socket dropped because one of one
// shard's queues was full. Listen is the socket's configured address
// (ours); Queue names the queue: "other" (everything but new SAs:
// IKE_AUTH, established SAs' messages, answers), "proven" (new SAs whose
// cookie proved their address), "new" (other new SAs).
type QueueDrop struct {
	Listen string
	NATT   bool
	Shard  int
	Queue  string
	Count  uint64
}

// SocketDrop is the kernel's drop count of one of the node's UDP sockets
// (full receive buffers). Receives: "new" (a split port's socket of new
// IKE_SA_INITs without a cookie), "other" (its socket of everything
// else), "all" (a port with one socket).
type SocketDrop struct {
	Listen   string
	NATT     bool
	Receives string
	Count    uint64
}

// StateStore is the state store's view of itself.
type StateStore struct {
	Reachable  bool
	Registered bool
	Queued     int
	Txns       uint64
	Puts       uint64 // puts and deletes in committed requests
	Deletes    uint64
	Rollbacks  uint64 // sealed records refused as rolled back
	// Watches of the cluster's keys that broke and went on where they
	// were, and those that had to list again (history compacted).
	WatchResumes, WatchRelists uint64
	// Layout: the cluster's store layout the node writes; LayoutFenced:
	// registrations of releases that do not support it, fenced.
	Layout       int
	LayoutFenced uint64
	// Cluster keys: the sealing key's id and how many are held; records
	// rewritten under it and those no key of the node opened; selector
	// claims judged lost, writes held for a verdict, holds given up.
	SealingKey, Keys                                       uint32
	Rewrapped, RewrapUnreadable                            uint64
	SelectorConflicts, SelectorHolds, SelectorHoldTimeouts uint64
	// New SAs' first writes of unknown outcome settled, and of them those
	// that had landed.
	UnknownSettled, UnknownLanded uint64
}

// DataPlane is the data plane's name, install failures and, when it is a
// dataplane.Reporter, its report.
type DataPlane struct {
	Name            string
	InstallFailures uint64
	Report          *dataplane.Report
}

// EventCounts are the counters Events keeps.
type EventCounts struct {
	ChildRekeysByUs, ChildRekeysByPeer uint64
	IKERekeysByUs, IKERekeysByPeer     uint64
	AddressUpdates                     uint64
	Handoffs, Takeovers                uint64 // filled by the node from its claim counters
	// Unique identities (filled by the node): older SAs replaced by where
	// they were, replacements that failed, new SAs refused.
	UniqueLocal, UniqueRemote, UniqueDead, UniqueFailed, UniqueRefused uint64
}

// Events counts what ike.Stats does not break down: rekeys by who started
// them and address updates (NAT rebinding, MOBIKE), from the engine's
// events (the node adds handoffs and takeovers from its claim counters).
// Safe for concurrent use.
type Events struct {
	childUs, childPeer, ikeUs, ikePeer atomic.Uint64
	addressUpdates                     atomic.Uint64
}

// ChildRekeyedByUs is the Reason of a CHILD SA rekey that we started (the
// engine's wording).
const ChildRekeyedByUs = "rekeyed by us"

// Observe counts one engine event.
func (e *Events) Observe(ev ike.Event) {
	switch ev.Kind {
	case ike.EventChildRekeyed:
		if ev.Reason == ChildRekeyedByUs {
			e.childUs.Add(1)
		} else {
			e.childPeer.Add(1)
		}
	case ike.EventIKERekeyed:
		// The new IKE SA's original initiator is whoever started the rekey.
		if ev.Initiator {
			e.ikeUs.Add(1)
		} else {
			e.ikePeer.Add(1)
		}
	case ike.EventAddressChanged:
		e.addressUpdates.Add(1)
	}
}

// Counts returns the current counts.
func (e *Events) Counts() EventCounts {
	return EventCounts{ChildRekeysByUs: e.childUs.Load(), ChildRekeysByPeer: e.childPeer.Load(),
		IKERekeysByUs: e.ikeUs.Load(), IKERekeysByPeer: e.ikePeer.Load(),
		AddressUpdates: e.addressUpdates.Load()}
}

// IKEStates are the IKE SA states always reported (0 when none), in the
// label's spelling: ike.IKESA.State lower-cased.
var IKEStates = []string{"init_sent", "init_done", "auth_sent", "established", "deleting", "rekeyed", "dead"}

// failureReason is the label of a failure's notify: its name, NONE for no
// notify (a timeout, say), OTHER for a type we have no name for (a peer
// may send any number).
func failureReason(n ike.NotifyType) string {
	if n == 0 {
		return "NONE"
	}
	s := n.String()
	if strings.HasPrefix(s, "NOTIFY(") {
		return "OTHER"
	}
	return s
}

// Collector is the prometheus.Collector of a node's Source.
type Collector struct {
	src     Source
	timeout time.Duration
}

// NewCollector returns a collector reading src at every scrape, giving it
// timeout (default 5 s) to answer.
func NewCollector(src Source, timeout time.Duration) *Collector {
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	return &Collector{src: src, timeout: timeout}
}

// Describe sends the descriptions of every metric the collector emits.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range defs {
		if d.collected {
			ch <- d.desc
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Collect reads a snapshot and emits it.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	s, err := c.src.Snapshot(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(dSAs.desc, err)
		return
	}
	counter := func(d *def, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d.desc, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *def, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d.desc, prometheus.GaugeValue, v, labels...)
	}

	gauge(dBuildInfo, 1, buildinfo.Get(), buildinfo.GoVersion(), s.DataPlane.Name)

	// Engine: summed over shards, except what is per shard by nature.
	states := map[string]int{}
	for _, st := range IKEStates {
		states[st] = 0
	}
	total := ike.Stats{Dropped: s.Node.HeaderDrops}
	failed := map[string]uint64{}
	children, halfOpen := 0, 0
	var engine [len(EngineWork)]EngineTime
	for i, sh := range s.Shards {
		for w, t := range sh.Engine {
			engine[w].Calls += t.Calls
			engine[w].Seconds += t.Seconds
			engine[w].Outliers += t.Outliers
		}
		for k, v := range sh.States {
			states[strings.ToLower(k)] += v
		}
		children += sh.ChildSAs
		halfOpen += sh.Stats.HalfOpen
		st := sh.Stats
		total.Established += st.Established
		total.CookiesSent += st.CookiesSent
		total.RefusedHalfOpen += st.RefusedHalfOpen
		total.RefusedPrefix += st.RefusedPrefix
		total.RefusedMemory += st.RefusedMemory
		total.RefusedSAs += st.RefusedSAs
		total.PrefixCredits += st.PrefixCredits
		total.Dropped += st.Dropped
		total.Retransmits += st.Retransmits
		total.DuplicateRequests += st.DuplicateRequests
		total.DPDSent += st.DPDSent
		total.DPDTraffic += st.DPDTraffic
		total.DPDDead += st.DPDDead
		total.RekeyCollisions += st.RekeyCollisions
		total.UnreservedSPIs += st.UnreservedSPIs
		total.ReturnedSPIs += st.ReturnedSPIs
		total.MovesRefused += st.MovesRefused
		total.SelectorsRefused += st.SelectorsRefused
		total.MappingChecks += st.MappingChecks
		for n, v := range st.Failed {
			failed[failureReason(n)] += v
		}
		shard := strconv.Itoa(i)
		gauge(dCookiesActive, b2f(sh.CookiesActive), shard)
		gauge(dHalfOpenShard, float64(sh.Stats.HalfOpen), shard)
		for q, w := range sh.Waiting {
			gauge(dQueueWaiting, float64(w), shard, QueueNames[q])
		}
	}
	for _, st := range sortedKeys(states) {
		gauge(dSAs, float64(states[st]), st)
	}
	for w, t := range engine {
		ch <- prometheus.MustNewConstMetric(dEngineSeconds.desc, prometheus.CounterValue, t.Seconds, EngineWork[w])
		counter(dEngineCalls, t.Calls, EngineWork[w])
		counter(dEngineOutliers, t.Outliers, EngineWork[w])
	}
	gauge(dChildSAs, float64(children))
	gauge(dHalfOpen, float64(halfOpen))
	counter(dHandshakes, total.Established)
	for _, r := range sortedKeys(failed) {
		counter(dFailures, failed[r], r)
	}
	ev := s.Events
	counter(dRekeys, ev.ChildRekeysByUs, "child", "us")
	counter(dRekeys, ev.ChildRekeysByPeer, "child", "peer")
	counter(dRekeys, ev.IKERekeysByUs, "ike", "us")
	counter(dRekeys, ev.IKERekeysByPeer, "ike", "peer")
	counter(dRekeyCollisions, total.RekeyCollisions)
	counter(dDPDSent, total.DPDSent)
	counter(dDPDTraffic, total.DPDTraffic)
	counter(dDPDDead, total.DPDDead)
	counter(dKeepalives, s.Node.KeepalivesSent, "sent")
	counter(dKeepalives, s.Node.KeepalivesReceived, "received")
	counter(dAddressUpdates, ev.AddressUpdates)
	counter(dMovesRefused, total.MovesRefused)
	counter(dTSRefused, total.SelectorsRefused)
	counter(dMappingChecks, total.MappingChecks)
	counter(dCookiesSent, total.CookiesSent)
	counter(dInitRefused, total.RefusedHalfOpen, "half_open")
	counter(dInitRefused, total.RefusedPrefix, "prefix")
	counter(dInitRefused, total.RefusedMemory, "memory")
	counter(dInitRefused, total.RefusedSAs, "sas")
	counter(dPrefixCredits, total.PrefixCredits)
	counter(dRetransmits, total.Retransmits)
	counter(dDuplicates, total.DuplicateRequests)
	counter(dIKEDropped, total.Dropped)
	counter(dUnreservedSPIs, total.UnreservedSPIs)
	counter(dReturnedSPIs, total.ReturnedSPIs)
	counter(dHandoffs, ev.Handoffs)
	counter(dTakeovers, ev.Takeovers)
	counter(dUniqueReplaced, ev.UniqueLocal, "local")
	counter(dUniqueReplaced, ev.UniqueRemote, "remote")
	counter(dUniqueReplaced, ev.UniqueDead, "dead")
	counter(dUniqueFailed, ev.UniqueFailed)
	counter(dUniqueRefused, ev.UniqueRefused)

	// The node.
	n := s.Node
	counter(dPersistFailures, n.PersistFailures)
	counter(dFencedDrops, n.FencedDrops)
	counter(dNonIKEDrops, n.NonIKEDrops)
	counter(dLogDropped, n.LogDropped)
	for _, q := range n.QueueDrops {
		sock := "ike"
		if q.NATT {
			sock = "natt"
		}
		counter(dQueueDrops, q.Count, q.Listen, sock, strconv.Itoa(q.Shard), q.Queue)
	}
	for _, d := range n.SocketDrops {
		sock := "ike"
		if d.NATT {
			sock = "natt"
		}
		counter(dSocketDrops, d.Count, d.Listen, sock, d.Receives)
	}
	for _, r := range EAPResults {
		counter(dEAP, n.EAP[r], r)
	}
	for i, src := range RevocationSources {
		rv := &n.Revocation
		counter(dRevLookups, rv.Hits[i], src, "hit")
		counter(dRevLookups, rv.Misses[i], src, "miss")
		counter(dRevFetches, rv.FetchOK[i], src, "ok")
		counter(dRevFetches, rv.FetchFailed[i], src, "error")
		ch <- prometheus.MustNewConstMetric(dRevFetchSeconds.desc, prometheus.CounterValue, rv.FetchSeconds[i], src)
		counter(dRevRevoked, rv.Revoked[i], src)
	}
	counter(dRevOutcome, n.Revocation.Refused, "refused")
	counter(dRevOutcome, n.Revocation.FailOpen, "accepted")
	counter(dRevPending, n.Revocation.Pending)
	gauge(dRevCached, float64(n.Revocation.Cached))
	gauge(dListening, b2f(n.Listening))
	gauge(dFenced, b2f(n.Fenced))
	gauge(dDraining, b2f(n.Draining))
	collectAnycast(s.Anycast, gauge, counter)

	// The state store.
	if ss := s.StateStore; ss != nil {
		gauge(dStoreReachable, b2f(ss.Reachable))
		gauge(dStoreRegistered, b2f(ss.Registered))
		gauge(dStoreQueued, float64(ss.Queued))
		counter(dStoreTxns, ss.Txns)
		counter(dStoreWrites, ss.Puts, "put")
		counter(dStoreWrites, ss.Deletes, "delete")
		counter(dStoreRollbacks, ss.Rollbacks)
		counter(dStoreWatchResumes, ss.WatchResumes)
		counter(dStoreWatchRelists, ss.WatchRelists)
		gauge(dStoreLayout, float64(ss.Layout))
		counter(dStoreLayoutFenced, ss.LayoutFenced)
		if ss.Keys > 0 {
			gauge(dSealingKey, float64(ss.SealingKey))
			gauge(dClusterKeys, float64(ss.Keys))
		}
		counter(dRewrapped, ss.Rewrapped)
		counter(dRewrapFailed, ss.RewrapUnreadable)
		counter(dSelConflicts, ss.SelectorConflicts)
		counter(dSelHolds, ss.SelectorHolds)
		counter(dSelHoldTimeouts, ss.SelectorHoldTimeouts)
		counter(dStoreUnknown, ss.UnknownLanded, "true")
		counter(dStoreUnknown, ss.UnknownSettled-ss.UnknownLanded, "false")
	}

	// The data plane.
	dp := s.DataPlane
	counter(dInstallFailures, dp.InstallFailures, dp.Name)
	if r := dp.Report; r != nil {
		counter(dDPBytes, r.InBytes, dp.Name, "in")
		counter(dDPBytes, r.OutBytes, dp.Name, "out")
		counter(dDPPackets, r.InPackets, dp.Name, "in")
		counter(dDPPackets, r.OutPackets, dp.Name, "out")
		for _, reason := range sortedKeys(r.Drops) {
			counter(dDPDrops, r.Drops[reason], dp.Name, reason)
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
