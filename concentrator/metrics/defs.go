package metrics

//go:generate go test -run ^TestMetricsFileUpToDate$ -update .

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// EAPResults are the result labels of eap_radius_answers_total.
var EAPResults = []string{"challenge", "accept", "reject", "unavailable", "overload"}

// def is one metric family: its name (without the ikefleet_ prefix), help,
// type and labels. Every family the package exports is in defs, so that
// Names can list them without a scrape.
type def struct {
	name, help string
	typ        string // counter | gauge | histogram
	labels     []string
	collected  bool // emitted by Collector (else by Etcd)
	desc       *prometheus.Desc
}

var defs []*def

func newDef(typ, name, help string, labels ...string) *def {
	d := &def{name: "ikefleet_" + name, help: help, typ: typ, labels: labels, collected: true}
	d.desc = prometheus.NewDesc(d.name, help, labels, nil)
	defs = append(defs, d)
	return d
}

func counterDef(name, help string, labels ...string) *def {
	return newDef("counter", name, help, labels...)
}

func gaugeDef(name, help string, labels ...string) *def {
	return newDef("gauge", name, help, labels...)
}

var (
	dBuildInfo = gaugeDef("build_info", "Always 1: the running build and its data plane.", "version", "goversion", "dataplane")

	// IKE.
	dSAs             = gaugeDef("ike_sas", "IKE SAs by state.", "state")
	dChildSAs        = gaugeDef("child_sas", "CHILD SAs held by the IKE SAs.")
	dHalfOpen        = gaugeDef("half_open_sas", "Half-open IKE SAs (IKE_SA_INIT answered, IKE_AUTH not done).")
	dHalfOpenShard   = gaugeDef("shard_half_open_sas", "Half-open IKE SAs per engine shard (cookies are demanded per shard).", "shard")
	dQueueWaiting    = gaugeDef("queue_waiting", "IKE messages waiting in a shard's queues, by queue: other (IKE_AUTH, established SAs' messages, answers to our requests; beyond its 4,096 slots they spill over, 8 MiB per shard or 64 MiB shared by more than 8, and are counted here too), proven (new IKE_SA_INITs with a valid cookie; beyond its 8,192 slots they spill over the same way, into a spill of their own), new (other new IKE_SA_INITs).", "shard", "queue")
	dCookiesActive   = gaugeDef("cookies_active", "1 while the shard demands cookies: half-open SAs at its share of ike.cookie_threshold, its queue of new IKE_SA_INITs backed up, or within ike.half_open_timeout of the last cookie demanded.", "shard")
	dEngineSeconds   = counterDef("engine_cpu_seconds_total", "CPU time the IKE engine spent on received messages, by exchange (other: another exchange type, or a message too short to name one), and on its timers (timers: retransmissions, liveness checks, rekeys, expiries). Estimated: one call in "+strconv.Itoa(EngineSample)+", chosen at random, is timed with its thread's CPU clock and counts "+strconv.Itoa(EngineSample)+" times. Divided by engine_calls_total, the CPU per message; beside process_cpu_seconds_total, the engine's share of the node.", "work")
	dEngineCalls     = counterDef("engine_calls_total", "Received messages the IKE engine handled, by exchange, and runs of its timers (work as in engine_cpu_seconds_total), each counted.", "work")
	dEngineOutliers  = counterDef("engine_cpu_outliers_total", "Timed engine calls (engine_cpu_seconds_total) whose thread's clock also counted other work: the goroutine changed threads inside the engine, or read over a millisecond and over 16 times its work's mean (it waited there, or the scheduler preempted it and ran other goroutines on its thread); counted at their work's mean instead. Many against engine_calls_total / "+strconv.Itoa(EngineSample)+": a node whose shards are seldom idle.", "work")
	dHandshakes      = counterDef("handshakes_total", "IKE SAs established (IKE_SA_INIT + IKE_AUTH completed).")
	dFailures        = counterDef("handshake_failures_total", "Handshakes that did not complete, by the notify sent or received (NONE: no notify, OTHER: an unnamed type).", "reason")
	dRekeys          = counterDef("rekeys_total", "SAs rekeyed, by kind (child, ike) and by who started the rekey (us, peer).", "kind", "initiator")
	dRekeyCollisions = counterDef("rekey_collisions_total", "Simultaneous rekeys resolved (RFC 7296 2.8.1).")
	dDPDSent         = counterDef("dpd_sent_total", "Liveness checks sent after silence from a peer.")
	dDPDTraffic      = counterDef("dpd_traffic_total", "Liveness checks not sent when due: the data plane counted inbound ESP from the peer since its last sign of life (RFC 7296 2.4).")
	dDPDDead         = counterDef("dpd_dead_total", "Peers declared dead (liveness check or request unanswered).")
	dKeepalives      = counterDef("keepalives_total", "NAT-T keepalives sent and received.", "direction")
	dAddressUpdates  = counterDef("address_updates_total", "IKE SAs moved to new addresses (NAT rebinding, MOBIKE).")
	dMovesRefused    = counterDef("address_updates_refused_total", "Authenticated IKE messages from a new address that did not move their SA (peer not behind a NAT, no MOBIKE update).")
	dMappingChecks   = counterDef("nat_mapping_checks_total", "Liveness checks sent to a new NAT mapping the data plane reported (ESP from a new port or address).")
	dTSRefused       = counterDef("selectors_refused_total", "CHILD SAs refused (TS_UNACCEPTABLE) because another identity holds the selectors (policies).")
	dCookiesSent     = counterDef("cookies_sent_total", "IKE_SA_INIT requests answered with a cookie demand.")
	dInitRefused     = counterDef("sa_init_refused_total", "New IKE_SA_INIT requests dropped unanswered by an admission limit: half_open (ike.max_half_open), prefix (ike.max_half_open_per_prefix: cookie-proven requests of one source prefix), memory (ike.max_half_open_bytes), sas (ike.max_sas). The initiator retransmits.", "limit")
	dRetransmits     = counterDef("retransmits_total", "Requests we retransmitted.")
	dDuplicates      = counterDef("duplicate_requests_total", "Retransmitted requests answered from the response cache.")
	dPrefixCredits   = counterDef("half_open_prefix_credits_total", "SAs that authenticated from a source prefix after a cookie-proven request of that prefix was refused by its quota (ike.max_half_open_per_prefix); each raises the prefix's quota by one for 30 s, so gateways behind one NAT address that restart together get in by doubling waves.")
	dIKEDropped      = counterDef("ike_messages_dropped_total", "IKE messages dropped as malformed (by the engine or, for a malformed header, the socket loop), for an unknown SA, failing integrity, or stale (a late copy of a request the SA has moved past, such as a gateway's retransmission that waited in a queue).")
	dUnreservedSPIs  = counterDef("unreserved_spis_total", "SPIs allocated without a cluster-wide reservation (reservation pool empty).")
	dReturnedSPIs    = counterDef("returned_spis_total", "Reserved SPIs handed back unused to the reservation pools (a half-open SA, IKE_AUTH or rekey that failed before it was persisted).")
	dHandoffs        = counterDef("handoffs_total", "SAs handed off to another node.")
	dUniqueReplaced  = counterDef("unique_id_replacements_total", "Older IKE SAs of a peer identity deleted for a new one (auth.unique_ids): where the old one was (local: this node, remote: another live node, asked over the peer API, dead: a dead node's, deleted from the state store).", "where")
	dUniqueFailed    = counterDef("unique_id_replace_failures_total", "Older IKE SAs of a peer identity that were to be replaced but were not (state store or peer unreachable); they stay until their peer's liveness check fails.")
	dUniqueRefused   = counterDef("unique_id_refused_total", "New IKE SAs refused because their identity has one (auth.unique_ids keep).")
	dTakeovers       = counterDef("takeovers_total", "SAs taken over from another node.")

	// The node.
	dPersistFailures = counterDef("persist_failures_total", "SA state changes that could not be written to the state store.")
	dFencedDrops     = counterDef("fenced_drops_total", "IKE messages not sent because the node was fenced (lease not certainly alive).")
	dLogDropped      = counterDef("log_lines_dropped_total", "Log lines the daemon dropped because the log's reader (journald, the container runtime) did not take them; the log says where, with a warning line per gap.")
	dNonIKEDrops     = counterDef("non_ike_drops_total", "Datagrams on the IKE sockets that were not IKE (and no data plane took).")
	dQueueDrops      = counterDef("queue_drops_total", "IKE messages dropped because a shard's queue was full, by socket (our listen address, ike or natt), shard and queue: other (IKE_AUTH, established SAs' messages, answers to our requests), proven (new IKE_SA_INITs with a valid cookie), new (other new IKE_SA_INITs); the first two only once their spill is full too.", "listen", "socket", "shard", "queue")
	dSocketDrops     = counterDef("socket_receive_drops_total", "Datagrams the kernel dropped for one of the node's UDP sockets (a full receive buffer), by socket (our listen address, ike or natt) and what it receives: new (IKE_SA_INITs without a cookie, on a split port), other (everything else there: established SAs, cookie replies, ESP), all (one socket per port).", "listen", "socket", "receives")
	dEAP             = counterDef("eap_radius_answers_total", "EAP messages of gateways relayed to RADIUS, by result: challenge (the method goes on), accept, reject, unavailable (no server answered), overload (auth.eap.radius.max_pending reached).", "result")
	dRevLookups      = counterDef("revocation_lookups_total", "Certificate revocation lookups in the node's cache of fetched CRLs and OCSP answers, by source (ocsp, crl) and result (hit: a current answer; miss: none, a fetch runs or failed).", "source", "result")
	dRevFetches      = counterDef("revocation_fetches_total", "CRL and OCSP fetches completed, by source and result (ok, error).", "source", "result")
	dRevFetchSeconds = counterDef("revocation_fetch_seconds_total", "Time spent in completed CRL and OCSP fetches, by source (divide by revocation_fetches_total for the mean).", "source")
	dRevRevoked      = counterDef("revocation_revoked_total", "Lookups that found a certificate revoked by a fetched CRL or an OCSP answer, by source.", "source")
	dRevOutcome      = counterDef("revocation_unavailable_total", "Lookups with no answer obtainable, by outcome: refused (fail closed) or accepted (auth.revocation.fail_open, with a warning).", "outcome")
	dRevPending      = counterDef("revocation_pending_total", "Lookups answered pending: a fetch was running and the IKE_AUTH exchange was parked until the peer's retransmission.")
	dRevCached       = gaugeDef("revocation_cache_entries", "CRLs and OCSP answers held in the node's revocation cache.")
	dListening       = gaugeDef("listening", "1 once the IKE sockets are bound.")
	dFenced          = gaugeDef("fenced", "1 while the node may not send for its SAs (state store lease not certainly alive).")
	dDraining        = gaugeDef("draining", "1 while the node drains (takes no new SAs).")

	// The state store.
	dStoreReachable    = gaugeDef("statestore_reachable", "1 while the last etcd request succeeded.")
	dStoreRegistered   = gaugeDef("statestore_registered", "1 while the node holds a live registration.")
	dStoreQueued       = gaugeDef("statestore_queued_changes", "SA state changes waiting to be written.")
	dStoreTxns         = counterDef("statestore_txns_total", "etcd transactions issued by the state store.")
	dStoreWrites       = counterDef("statestore_writes_total", "Puts and deletes in the state store's committed etcd requests, as etcd counts them (a delete counts whether or not its key was there; keys etcd removes with an expired or revoked lease are not counted): etcd's work is mostly per write, so their rate per SA is the store's footprint.", "op")
	dStoreRollbacks    = counterDef("statestore_rollbacks_total", "Sealed SA records refused because an older value was put back in etcd (not restored).")
	dStoreWatchResumes = counterDef("statestore_watch_resumes_total", "Watches of the cluster's keys (nodes, selector claims) that broke (e.g. their etcd member lost its leader) and went on from the last revision they had read.")
	dStoreWatchRelists = counterDef("statestore_watch_relists_total", "Watches of the cluster's keys that broke and listed the keys again: etcd had compacted the history they needed.")
	dStoreLayout       = gaugeDef("statestore_layout", "The cluster's store layout the node writes: the newest every live node's release supports (it moves on once every node was upgraded).")
	dStoreLayoutFenced = counterDef("statestore_layout_fenced_total", "Registrations of other nodes this node deleted because their release cannot read or write the cluster's store layout (a release older than the cluster's layout joined: upgrade it).")
	dSealingKey        = gaugeDef("cluster_key_sealing", "Id of the cluster key the node seals records under: the newest every live node holds.")
	dClusterKeys       = gaugeDef("cluster_keys", "Cluster keys the node holds (statestore.cluster_key_file).")
	dRewrapped         = counterDef("cluster_key_records_rewritten_total", "Records rewritten under the sealing key after it changed (cluster key rotation).")
	dRewrapFailed      = counterDef("cluster_key_records_unreadable_total", "Records a rewrap could not open (a key the node lacks, corrupt, rolled back): left as they are.")
	dSelConflicts      = counterDef("selector_conflicts_total", "Selector claims that lost to an earlier overlapping claim of another identity (two nodes admitting them at once), as this node judged them; the losing SA is discarded by its node.")
	dSelHolds          = counterDef("selector_claim_holds_total", "Writes that claim selector ranges held (with their answers and CHILD SA installs) until this node has read the cluster's claims up to them.")
	dSelHoldTimeouts   = counterDef("selector_claim_hold_timeouts_total", "Held selector claim writes given up without a verdict (the claims watch more than 10 s behind); their SAs are discarded.")
	dStoreUnknown      = counterDef("statestore_unknown_writes_settled_total", "New SAs' first writes whose answer was lost (etcd unreachable, a timeout), settled once etcd answered: their SPI reservations given back and, where the write had landed (landed=\"true\"), the SA's keys deleted.", "landed")

	// The data plane.
	dInstallFailures = counterDef("dataplane_install_failures_total", "CHILD SAs the data plane failed to install.", "dataplane")
	dDPBytes         = counterDef("dataplane_bytes_total", "Inner bytes carried by the data plane's CHILD SAs (removed ones included).", "dataplane", "direction")
	dDPPackets       = counterDef("dataplane_packets_total", "Inner packets carried by the data plane's CHILD SAs (removed ones included).", "dataplane", "direction")
	dDPDrops         = counterDef("dataplane_drops_total", "Packets the data plane dropped, by reason (each data plane has its own fixed set).", "dataplane", "reason")

	// etcd, observed per request, and the commits the node waits for (Etcd).
	dEtcdLatency = etcdDef("histogram", "etcd_request_duration_seconds", "Latency of the state store's etcd requests (unary RPCs), by method.", "method")
	dEtcdErrors  = etcdDef("counter", "etcd_request_errors_total", "Failed etcd requests, by method and gRPC code.", "method", "code")
	dCommitWait  = etcdDef("histogram", "statestore_commit_wait_seconds", "How long the node's SA state changes waited from their submission to their commit or refusal, by change (established, deleted, child-rekeyed...): the state store's share of what gateways wait, since the messages a change reveals leave after it (an IKE_AUTH response after its SA's established change).", "change")
)

func etcdDef(typ, name, help string, labels ...string) *def {
	d := newDef(typ, name, help, labels...)
	d.collected = false
	return d
}

// Name is one exported metric family.
type Name struct {
	Name   string
	Type   string // counter | gauge | histogram
	Labels []string
	Help   string
}

// Names lists every ikefleet_* metric family, sorted by name (dashboards
// and alerts are checked against it; deploy/metrics.txt).
func Names() []Name {
	out := make([]Name, 0, len(defs))
	for _, d := range defs {
		out = append(out, Name{Name: d.name, Type: d.typ, Labels: append([]string(nil), d.labels...), Help: d.help})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// NamesText is deploy/metrics.txt: a header, then one family a line: name,
// type, labels (comma-separated, "-" for none).
func NamesText() string {
	var b strings.Builder
	b.WriteString("# ikefleet metric families: name type labels. Generated from concentrator/metrics\n")
	b.WriteString("# (go test ./concentrator/metrics -update, or make generate); a test fails when stale.\n")
	for _, n := range Names() {
		labels := "-"
		if len(n.Labels) > 0 {
			labels = strings.Join(n.Labels, ",")
		}
		fmt.Fprintf(&b, "%s %s %s\n", n.Name, n.Type, labels)
	}
	return b.String()
}
