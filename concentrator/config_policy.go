package concentrator

import (
	"fmt"
	"net/netip"

	"github.com/ikefleet/ikefleet/concentrator/ike"
)

// PolicyConfig is one entry of `policies:`: which traffic selectors and
// which virtual IP pool the identities it matches may claim. Entries are
// matched in order; the first whose id matches an authenticated peer
// decides. With policies configured, a peer no entry matches may claim no
// selectors (its CHILD SAs get TS_UNACCEPTABLE), and the selectors a peer
// holds are its own on the node: another identity proposing any part of
// them gets TS_UNACCEPTABLE. Without policies every peer may claim
// children.remote_ts and children.pool.
type PolicyConfig struct {
	Name string `yaml:"name"` // for logs; default policies[i]
	// ID is an identity (strongSwan notation) or a pattern in which '*'
	// stands for any characters of the identity's string form
	// ("*.branch.example.net", "C=CH, O=Org, CN=*"); "%any" matches all.
	ID            string   `yaml:"id"`
	RemoteTS      []string `yaml:"remote_ts"`       // subnets the peer may claim as its side
	Pool          string   `yaml:"pool"`            // IPv4 subnet of its virtual IPs (may be children.pool)
	MaxVirtualIPs int      `yaml:"max_virtual_ips"` // distinct virtual IPs one identity holds at once; 0 = 1 (more SAs share them)
}

func (c *Config) validatePolicies() error {
	pools := map[netip.Prefix]int{} // prefix -> max_virtual_ips
	if c.Children.Pool != "" {
		p, _ := netip.ParsePrefix(c.Children.Pool)
		pools[p.Masked()] = 1
	}
	for i, pc := range c.Policies {
		f := fmt.Sprintf("policies[%d]", i)
		if pc.ID == "" {
			return fieldErr(f+".id", "required (an identity, a pattern with *, or %%any)")
		}
		if _, err := ike.ParseIdentityPattern(pc.ID); err != nil {
			return fieldErr(f+".id", "%v", err)
		}
		for j, s := range pc.RemoteTS {
			if _, err := netip.ParsePrefix(s); err != nil {
				return fieldErr(fmt.Sprintf("%s.remote_ts[%d]", f, j), "not a subnet: %q", s)
			}
		}
		if len(pc.RemoteTS) == 0 && pc.Pool == "" {
			return fieldErr(f+".remote_ts", "needs at least one subnet (or set pool)")
		}
		if pc.MaxVirtualIPs < 0 || pc.MaxVirtualIPs > 64 {
			return fieldErr(f+".max_virtual_ips", "must be 0 (one) to 64: %d", pc.MaxVirtualIPs)
		}
		if pc.MaxVirtualIPs > 1 && c.StateStore.Mode != "none" {
			return fieldErr(f+".max_virtual_ips", "more than one address per identity needs statestore.mode none (the cluster-wide lease is one per identity)")
		}
		if pc.Pool == "" {
			if pc.MaxVirtualIPs != 0 {
				return fieldErr(f+".max_virtual_ips", "needs pool")
			}
			continue
		}
		p, err := netip.ParsePrefix(pc.Pool)
		if err != nil || !p.Addr().Is4() || p.Bits() > 30 {
			return fieldErr(f+".pool", "must be an IPv4 subnet of /30 or larger: %q", pc.Pool)
		}
		p = p.Masked()
		m := max(pc.MaxVirtualIPs, 1)
		if prev, ok := pools[p]; ok {
			if prev != m {
				return fieldErr(f+".max_virtual_ips", "%d, but another policy (or children.pool: 1) shares pool %s with %d", m, p, prev)
			}
			continue
		}
		for q := range pools {
			if q.Overlaps(p) {
				return fieldErr(f+".pool", "%s overlaps pool %s: pools are the same subnet or disjoint", p, q)
			}
		}
		pools[p] = m
	}
	return nil
}

// enginePolicies builds the engine's policies; pools with the same prefix
// (children.pool included) are one pool.
func (c *Config) enginePolicies(defaultPool *clusterPool) ([]*ike.PeerPolicy, error) {
	byPrefix := map[netip.Prefix]*clusterPool{}
	if defaultPool != nil {
		byPrefix[defaultPool.local.Prefix()] = defaultPool
	}
	var out []*ike.PeerPolicy
	for i, pc := range c.Policies {
		f := fmt.Sprintf("policies[%d]", i)
		id, err := ike.ParseIdentityPattern(pc.ID)
		if err != nil {
			return nil, fieldErr(f+".id", "%v", err)
		}
		ts, err := selectors(f+".remote_ts", pc.RemoteTS)
		if err != nil {
			return nil, err
		}
		name := pc.Name
		if name == "" {
			name = f
		}
		pp := &ike.PeerPolicy{Name: name, ID: id, RemoteTS: ts, Exclusive: true}
		if pc.Pool != "" {
			p, _ := netip.ParsePrefix(pc.Pool)
			p = p.Masked()
			cp := byPrefix[p]
			if cp == nil {
				cp = newClusterPool(p, pc.MaxVirtualIPs)
				byPrefix[p] = cp
			}
			pp.Pool = cp
		}
		out = append(out, pp)
	}
	return out, nil
}

// clusterPools returns every virtual IP pool of an engine configuration.
func clusterPools(ec *ike.Config) []*clusterPool {
	var out []*clusterPool
	seen := map[*clusterPool]bool{}
	add := func(p ike.AddressPool) {
		if cp, ok := p.(*clusterPool); ok && !seen[cp] {
			seen[cp] = true
			out = append(out, cp)
		}
	}
	add(ec.Pool)
	add(ec.Pool6)
	for _, p := range ec.Policies {
		add(p.Pool)
	}
	return out
}

// poolFor returns the pool a peer's virtual IP comes from, as the engine
// chooses it.
func poolFor(ec *ike.Config, peer ike.Identity) *clusterPool {
	p := ec.Pool
	if len(ec.Policies) > 0 {
		p = nil
		if pp := ike.MatchPolicy(ec.Policies, peer); pp != nil {
			p = pp.Pool
		}
	}
	cp, _ := p.(*clusterPool)
	return cp
}
