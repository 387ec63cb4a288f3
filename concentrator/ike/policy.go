package ike

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
)

// Per-identity policy: which traffic selectors and which address pool an
// authenticated peer may claim. Config.Policies are matched in order
// against the peer's identity and, for policies with certificate
// conditions (certpolicy.go), the attributes of its authenticated
// end-entity certificate; the first match decides. With no policies
// every peer gets Config.RemoteTS and Config.Pool (shared selectors, the
// behaviour of a single remote_ts); with policies a peer no policy matches
// may claim nothing (TS_UNACCEPTABLE), and the selectors a peer holds
// under an exclusive policy cannot be claimed by another identity
// (SelectorRegistry).

// IdentityPattern matches peer identities: one identity exactly, or a
// pattern whose '*' stands for any run of characters of the identity's
// string form (strongSwan notation: "*.branch.example.net",
// "C=CH, O=Org, CN=*"); "%any" or "*" matches every identity.
type IdentityPattern struct {
	any   bool
	exact Identity
	glob  []string // the parts between the '*'s
}

// ParseIdentityPattern reads an identity or a pattern.
func ParseIdentityPattern(s string) (IdentityPattern, error) {
	s = strings.TrimSpace(s)
	switch {
	case s == "":
		return IdentityPattern{}, fmt.Errorf("empty identity")
	case s == "%any" || s == "*":
		return IdentityPattern{any: true}, nil
	case strings.Contains(s, "*"):
		// Normalise what is not a wildcard through the identity parser
		// (a DN's spacing, an address's form) where it parses as a whole.
		return IdentityPattern{glob: strings.Split(s, "*")}, nil
	}
	id, err := ParseIdentity(s)
	if err != nil {
		return IdentityPattern{}, err
	}
	return IdentityPattern{exact: id}, nil
}

// Matches reports whether id matches the pattern.
func (p IdentityPattern) Matches(id Identity) bool {
	switch {
	case p.any:
		return true
	case p.glob != nil:
		return globMatch(p.glob, id.String())
	default:
		return p.exact.Equal(id)
	}
}

func (p IdentityPattern) String() string {
	switch {
	case p.any:
		return "%any"
	case p.glob != nil:
		return strings.Join(p.glob, "*")
	}
	return p.exact.String()
}

// globMatch matches s against parts joined by '*' (no other metacharacters).
func globMatch(parts []string, s string) bool {
	if len(parts) == 1 {
		return parts[0] == s
	}
	if !strings.HasPrefix(s, parts[0]) {
		return false
	}
	s = s[len(parts[0]):]
	last := parts[len(parts)-1]
	for _, mid := range parts[1 : len(parts)-1] {
		i := strings.Index(s, mid)
		if i < 0 {
			return false
		}
		s = s[i+len(mid):]
	}
	return strings.HasSuffix(s, last)
}

// PeerPolicy is what the identities a policy matches may claim.
type PeerPolicy struct {
	Name string // for logs and errors (the configuration's index or name)
	ID   IdentityPattern
	// Cert: conditions on the peer's authenticated certificate, all of
	// which must hold beside ID; nil: none (any authentication method).
	// A policy with Cert never matches a peer that authenticated without
	// a certificate.
	Cert *CertMatch
	// RemoteTS are the selectors the peer may claim as its side; nil: none
	// but its virtual IP.
	RemoteTS []TrafficSelector
	// Pool hands out the peer's virtual IP; nil: no virtual IPs. A pool
	// bounds the addresses an identity holds at once (Pool.MaxPerPeer).
	Pool AddressPool
	// Exclusive: the selectors a peer holds under this policy are its own
	// on this node; another identity proposing any of them gets
	// TS_UNACCEPTABLE.
	Exclusive bool
}

// policyFor returns the policy of an authenticated peer with identity id
// and certificate attributes cert (nil: not authenticated by certificate).
func (e *Engine) policyFor(id Identity, cert *CertAttrs) *PeerPolicy {
	if len(e.cfg.Policies) == 0 {
		e.defaultPolicy.RemoteTS, e.defaultPolicy.Pool = e.cfg.RemoteTS, e.cfg.Pool
		return &e.defaultPolicy
	}
	if p := MatchPolicy(e.cfg.Policies, id, cert); p != nil {
		return p
	}
	return &noPolicy
}

// Matches reports whether the policy applies to a peer with identity id
// and certificate attributes cert (nil: no authenticated certificate).
func (p *PeerPolicy) Matches(id Identity, cert *CertAttrs) bool {
	return p.ID.Matches(id) && (p.Cert == nil || p.Cert.Matches(cert))
}

// MatchPolicy returns the first policy that matches a peer with identity
// id and certificate attributes cert, or nil.
func MatchPolicy(policies []*PeerPolicy, id Identity, cert *CertAttrs) *PeerPolicy {
	for _, p := range policies {
		if p.Matches(id, cert) {
			return p
		}
	}
	return nil
}

// noPolicy is the policy of a peer no configured policy matches.
var noPolicy = PeerPolicy{Name: "(no policy matches)"}

// peerPolicy returns sa's policy, looked up once (at IKE_AUTH, a restore),
// after the peer is authenticated: sa.peerCert is set by verifyPeer only.
func (sa *IKESA) peerPolicy(e *Engine) *PeerPolicy {
	if sa.policy == nil {
		sa.policy = e.policyFor(sa.PeerID, sa.peerCert)
	}
	return sa.policy
}

// PolicyName is the name of the policy an established SA's peer was
// matched to ("default" without policies, "(no policy matches)"); "" for
// a connection we started or an SA not yet authenticated.
func (sa *IKESA) PolicyName() string {
	if sa.outbound || sa.state != stateEstablished || sa.eng == nil {
		return ""
	}
	return sa.peerPolicy(sa.eng).Name
}

// pool returns the pool sa's virtual IP comes from.
func (sa *IKESA) pool(e *Engine) AddressPool {
	if sa.outbound {
		return nil
	}
	return sa.peerPolicy(e).Pool
}

// SelectorRegistry records which identity holds which selector ranges
// (addresses only: protocol and ports are ignored, so any overlap counts)
// among the SAs of a node. It is shared by the engine's shards and safe
// for concurrent use. A claim overlapping a range another identity holds
// is refused.
//
// Lookups go through interval indexes (RangeIndex): a claim's cost does
// not grow with the claims held (a fleet of gateways, each with its LAN;
// virtual IPs are kept apart by their pool and not registered).
type SelectorRegistry struct {
	mu     sync.Mutex
	ranges map[tsRange]*rangeHolders
	bySA   map[uint64][]tsRange
	local  RangeIndex[struct{}] // the keys of ranges
	// remote: what SAs held elsewhere in the cluster claim (SetRemote, from
	// the state store), by their IKE SPI. An SA held here counts by its
	// local entry only.
	remote    map[uint64]remoteClaim
	remoteIdx RangeIndex[uint64] // remote's ranges, by SPI
}

type remoteClaim struct {
	owner  string
	ranges []tsRange
}

type tsRange struct{ start, end netip.Addr }

type rangeHolders struct {
	owner string
	sas   map[uint64]int // IKE SA (our SPI) -> CHILD SAs claiming the range
}

// NewSelectorRegistry returns an empty registry.
func NewSelectorRegistry() *SelectorRegistry {
	return &SelectorRegistry{ranges: map[tsRange]*rangeHolders{}, bySA: map[uint64][]tsRange{}, remote: map[uint64]remoteClaim{}}
}

// SelectorRange is an address range of a selector claim.
type SelectorRange struct{ Start, End netip.Addr }

// SetRemote records the ranges IKE SA sa of owner holds on another node of
// the cluster (as the state store says); later claims by other identities
// that overlap them are refused as if they were held here. An empty
// ranges drops what sa held.
func (r *SelectorRegistry) SetRemote(sa uint64, owner string, ranges []SelectorRange) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, k := range r.remote[sa].ranges {
		r.remoteIdx.Remove(k.selectorRange(), sa)
	}
	if len(ranges) == 0 {
		delete(r.remote, sa)
		return
	}
	c := remoteClaim{owner: owner, ranges: make([]tsRange, len(ranges))}
	for i, x := range ranges {
		c.ranges[i] = tsRange{x.Start, x.End}
		r.remoteIdx.Add(x, sa)
	}
	r.remote[sa] = c
}

func (k tsRange) selectorRange() SelectorRange { return SelectorRange{k.start, k.end} }

// HeldBy returns the ranges IKE SA sa holds here.
func (r *SelectorRegistry) HeldBy(sa uint64) []SelectorRange {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []SelectorRange
	for _, k := range r.bySA[sa] {
		out = append(out, SelectorRange{k.start, k.end})
	}
	return out
}

// Remote returns how many SAs held elsewhere claim ranges (tests, metrics).
func (r *SelectorRegistry) Remote() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.remote)
}

// Overlaps reports whether r and o share an address (of one family).
func (r SelectorRange) Overlaps(o SelectorRange) bool {
	return r.Start.BitLen() == o.Start.BitLen() && r.Start.Compare(o.End) <= 0 && o.Start.Compare(r.End) <= 0
}

// RangesOverlap reports whether any range of a overlaps any of b.
func RangesOverlap(a, b []SelectorRange) bool {
	for _, x := range a {
		for _, y := range b {
			if x.Overlaps(y) {
				return true
			}
		}
	}
	return false
}

// heldByOther names an identity other than owner holding a range that
// overlaps q, here or (by a remote claim of an SA not held here) on
// another node; "" if none.
func (r *SelectorRegistry) heldByOther(owner string, q SelectorRange) (holder string) {
	r.local.Overlapping(q, func(k SelectorRange, _ struct{}) bool {
		if h := r.ranges[tsRange{k.Start, k.End}]; h != nil && h.owner != owner {
			holder = h.owner
			return false
		}
		return true
	})
	if holder != "" {
		return holder
	}
	r.remoteIdx.Overlapping(q, func(_ SelectorRange, spi uint64) bool {
		if c := r.remote[spi]; c.owner != owner && r.bySA[spi] == nil {
			holder = c.owner
			return false
		}
		return true
	})
	return holder
}

// ErrSelectorHeld is the cause of a refused claim.
type ErrSelectorHeld struct {
	Selector TrafficSelector
	Holder   string
}

func (e *ErrSelectorHeld) Error() string {
	return fmt.Sprintf("selector %s overlaps selectors held by %s", e.Selector, e.Holder)
}

// Claim records that IKE SA sa of owner holds ts; force records it even if
// another identity holds an overlapping range (a restored SA: the state
// store is the authority). A refused claim records nothing.
func (r *SelectorRegistry) Claim(owner string, sa uint64, ts []TrafficSelector, force bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !force {
		for _, t := range ts {
			if holder := r.heldByOther(owner, SelectorRange{t.Start, t.End}); holder != "" {
				return &ErrSelectorHeld{Selector: t, Holder: holder}
			}
		}
	}
	for _, t := range ts {
		k := tsRange{t.Start, t.End}
		h := r.ranges[k]
		if h == nil || h.owner != owner {
			if h != nil { // forced over another identity's range: the newest wins
				for s := range h.sas {
					r.dropLocked(s, k)
				}
			}
			h = &rangeHolders{owner: owner, sas: map[uint64]int{}}
			r.ranges[k] = h
			r.local.Add(k.selectorRange(), struct{}{})
		}
		if h.sas[sa] == 0 {
			r.bySA[sa] = append(r.bySA[sa], k)
		}
		h.sas[sa]++
	}
	return nil
}

// Release drops what IKE SA sa holds.
func (r *SelectorRegistry) Release(sa uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, k := range r.bySA[sa] {
		if h := r.ranges[k]; h != nil {
			delete(h.sas, sa)
			if len(h.sas) == 0 {
				delete(r.ranges, k)
				r.local.Remove(k.selectorRange(), struct{}{})
			}
		}
	}
	delete(r.bySA, sa)
}

// Move hands what IKE SA from holds to its successor (an IKE rekey).
func (r *SelectorRegistry) Move(from, to uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, k := range r.bySA[from] {
		if h := r.ranges[k]; h != nil {
			h.sas[to] += h.sas[from]
			delete(h.sas, from)
		}
	}
	r.bySA[to] = append(r.bySA[to], r.bySA[from]...)
	delete(r.bySA, from)
}

func (r *SelectorRegistry) dropLocked(sa uint64, k tsRange) {
	l := r.bySA[sa]
	for i, x := range l {
		if x == k {
			r.bySA[sa] = append(l[:i], l[i+1:]...)
			break
		}
	}
}

// Held returns how many ranges are held (tests, metrics).
func (r *SelectorRegistry) Held() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.ranges)
}

// claimSelectors registers the peer's selectors of a new CHILD SA when its
// policy is exclusive; the error is a TS_UNACCEPTABLE.
func (sa *IKESA) claimSelectors(e *Engine, ts []TrafficSelector, force bool) error {
	p := sa.peerPolicy(e)
	if !p.Exclusive || e.cfg.Selectors == nil || sa.vip.IsValid() {
		return nil
	}
	if err := e.cfg.Selectors.Claim(sa.PeerID.String(), sa.localSPI(), ts, force); err != nil {
		e.stats.SelectorsRefused++
		return &Error{Notify: TS_UNACCEPTABLE, Reason: "traffic selectors", Err: err}
	}
	sa.selectorsHeld = true
	return nil
}
