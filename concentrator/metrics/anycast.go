package metrics

// The anycast front (package lb): health, announcement, BGP sessions,
// membership, drain progress, redirects.

var (
	dAnycastHealthy     = gaugeDef("anycast_healthy", "1 while the anycast health checks pass (after fall/rise hysteresis).")
	dAnycastAnnounced   = gaugeDef("anycast_announced_prefixes", "Prefixes announced now (BGP or the kernel-route interface); 0: withdrawn.")
	dAnycastFailing     = gaugeDef("anycast_check_failing", "1 while a health check fails (last probe), by check.", "check")
	dAnycastWithdrawals = counterDef("anycast_withdrawals_total", "Times every prefix was withdrawn (unhealthy, draining).")
	dAnycastDowns       = counterDef("anycast_health_downs_total", "Times the node went unhealthy.")
	dAnycastSessions    = gaugeDef("anycast_bgp_sessions", "BGP sessions by state (up, configured).", "state")
	dAnycastMembers     = gaugeDef("anycast_members", "Members of the gossip membership by state (alive, dead), this node included.", "state")
	dDrainActive        = gaugeDef("drain_active", "1 while a drain with hand-off runs (route withdrawn, SAs moving away).")
	dDrainInitial       = gaugeDef("drain_initial_sas", "IKE SAs on the node when the current (or last) drain began.")
	dDrainRemaining     = gaugeDef("drain_remaining_sas", "IKE SAs still on the node in the current (or last) drain.")
	dDrainDuration      = gaugeDef("drain_duration_seconds", "How long the last completed drain took (withdraw to flushed).")
	dRedirects          = counterDef("redirects_total", "IKE_SA_INITs answered with an RFC 5685 REDIRECT to another node.")
)

// Anycast is the anycast front's state for the metrics.
type Anycast struct {
	Front        bool // anycast.mode is set
	Healthy      bool
	Announced    int
	Failing      map[string]bool // every check name, true when failing
	Withdrawals  uint64
	Downs        uint64
	SessionsUp   int
	Sessions     int
	Members      bool // membership runs
	MembersAlive int
	MembersDead  int

	DrainActive      bool
	DrainInitial     int64
	DrainRemaining   int64
	DrainDurationSec float64
	Redirects        uint64
}

func collectAnycast(a *Anycast, gauge func(*def, float64, ...string), counter func(*def, uint64, ...string)) {
	if a == nil {
		return
	}
	if a.Front {
		gauge(dAnycastHealthy, b2f(a.Healthy))
		gauge(dAnycastAnnounced, float64(a.Announced))
		for _, name := range sortedKeys(a.Failing) {
			gauge(dAnycastFailing, b2f(a.Failing[name]), name)
		}
		counter(dAnycastWithdrawals, a.Withdrawals)
		counter(dAnycastDowns, a.Downs)
		gauge(dAnycastSessions, float64(a.SessionsUp), "up")
		gauge(dAnycastSessions, float64(a.Sessions), "configured")
	}
	if a.Members {
		gauge(dAnycastMembers, float64(a.MembersAlive), "alive")
		gauge(dAnycastMembers, float64(a.MembersDead), "dead")
	}
	gauge(dDrainActive, b2f(a.DrainActive))
	gauge(dDrainInitial, float64(a.DrainInitial))
	gauge(dDrainRemaining, float64(a.DrainRemaining))
	gauge(dDrainDuration, a.DrainDurationSec)
	counter(dRedirects, a.Redirects)
}
