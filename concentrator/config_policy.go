package concentrator

import (
	"fmt"
	"net/netip"

	"github.com/ikefleet/ikefleet/concentrator/ike"
)

// PolicyConfig is one entry of `policies:`: which traffic selectors and
// which virtual IP pool the identities it matches may claim. Entries are
// matched in order; the first whose id and cert conditions match an
// authenticated peer decides. With policies configured, a peer no entry matches may claim no
// selectors (its CHILD SAs get TS_UNACCEPTABLE), and the selectors a peer
// holds are its own on the node: another identity proposing any part of
// them gets TS_UNACCEPTABLE. Without policies every peer may claim
// children.remote_ts and children.pool.
type PolicyConfig struct {
	Name string `yaml:"name"` // for logs; default policies[i]
	// ID is an identity (strongSwan notation) or a pattern in which '*'
	// stands for any characters of the identity's string form
	// ("*.branch.example.net", "C=CH, O=Org, CN=*"); "%any" matches all.
	// ID may be omitted when Cert is given (then it is %any).
	ID string `yaml:"id"`
	// Cert: conditions on the peer's authenticated end-entity certificate;
	// all given must hold, and a peer that authenticated without a
	// certificate (PSK, EAP, raw public key) never matches.
	Cert          *CertPolicyConfig `yaml:"cert,omitempty"`
	RemoteTS      []string          `yaml:"remote_ts"`       // subnets the peer may claim as its side
	Pool          string            `yaml:"pool"`            // IPv4 subnet of its virtual IPs (may be children.pool)
	MaxVirtualIPs int               `yaml:"max_virtual_ips"` // distinct virtual IPs one identity holds at once; 0 = 1 (more SAs share them)
}

// CertPolicyConfig is a policy's `cert:` conditions on the attributes of
// the peer's authenticated end-entity certificate.
type CertPolicyConfig struct {
	// Issuer: the certificate's issuer DN ("C=CH, O=Fleet, CN=Fleet A
	// CA"), '*' standing for any characters of its string form.
	Issuer string `yaml:"issuer"`
	// Subject: the certificate's subject DN, a pattern like Issuer
	// ("C=CH, O=Fleet, OU=site-*, CN=*").
	Subject string `yaml:"subject"`
	// SAN: at least one of the certificate's subjectAltNames (DNS name,
	// e-mail address, IP address, URI) matches one of these patterns
	// ('*' for any characters; an IP subnet matches the addresses in it).
	SAN []string `yaml:"san"`
	// EKU: every extended key usage listed is in the certificate (dotted
	// OIDs, or serverAuth, clientAuth, ipsecIKE, ...).
	EKU []string `yaml:"eku"`
	// PolicyOIDs: every certificate policy listed (dotted OIDs) is in the
	// certificate.
	PolicyOIDs []string `yaml:"policy_oids"`
}

// certMatch builds the engine's conditions; f names the field in errors.
func (cc *CertPolicyConfig) certMatch(f string) (*ike.CertMatch, error) {
	m := &ike.CertMatch{}
	var err error
	if cc.Issuer != "" {
		if m.Issuer, err = ike.ParseDNPattern(cc.Issuer); err != nil {
			return nil, fieldErr(f+".issuer", "%v", err)
		}
	}
	if cc.Subject != "" {
		if m.Subject, err = ike.ParseDNPattern(cc.Subject); err != nil {
			return nil, fieldErr(f+".subject", "%v", err)
		}
	}
	for i, s := range cc.SAN {
		p, err := ike.ParseSANPattern(s)
		if err != nil {
			return nil, fieldErr(fmt.Sprintf("%s.san[%d]", f, i), "%v", err)
		}
		m.SANs = append(m.SANs, p)
	}
	for i, s := range cc.EKU {
		o, err := ike.ParseOID(s, true)
		if err != nil {
			return nil, fieldErr(fmt.Sprintf("%s.eku[%d]", f, i), "%v (or serverAuth, clientAuth, ipsecIKE, ...)", err)
		}
		m.EKUs = append(m.EKUs, o)
	}
	for i, s := range cc.PolicyOIDs {
		o, err := ike.ParseOID(s, false)
		if err != nil {
			return nil, fieldErr(fmt.Sprintf("%s.policy_oids[%d]", f, i), "%v", err)
		}
		m.Policies = append(m.Policies, o)
	}
	if m.Issuer == nil && m.Subject == nil && len(m.SANs) == 0 && len(m.EKUs) == 0 && len(m.Policies) == 0 {
		return nil, fieldErr(f, "needs at least one of issuer, subject, san, eku, policy_oids")
	}
	return m, nil
}

// policyMatch returns the identity pattern and certificate conditions of
// policies[i].
func (pc *PolicyConfig) policyMatch(f string) (ike.IdentityPattern, *ike.CertMatch, error) {
	id := pc.ID
	if id == "" {
		if pc.Cert == nil {
			return ike.IdentityPattern{}, nil, fieldErr(f+".id", "required (an identity, a pattern with *, or %%any) unless cert is given")
		}
		id = "%any"
	}
	pat, err := ike.ParseIdentityPattern(id)
	if err != nil {
		return ike.IdentityPattern{}, nil, fieldErr(f+".id", "%v", err)
	}
	if pc.Cert == nil {
		return pat, nil, nil
	}
	cm, err := pc.Cert.certMatch(f + ".cert")
	return pat, cm, err
}

// checkCertAuth: certificate conditions need certificate authentication.
func (c *Config) checkCertAuth(f string, pc *PolicyConfig) error {
	if pc.Cert != nil && len(c.Auth.CAs) == 0 {
		return fieldErr(f+".cert", "needs certificate authentication (auth.cas): no peer could match it")
	}
	return nil
}

func (c *Config) validatePolicies() error {
	pools := map[netip.Prefix]int{} // prefix -> max_virtual_ips
	if c.Children.Pool != "" {
		p, _ := netip.ParsePrefix(c.Children.Pool)
		pools[p.Masked()] = 1
	}
	for i, pc := range c.Policies {
		f := fmt.Sprintf("policies[%d]", i)
		if _, _, err := pc.policyMatch(f); err != nil {
			return err
		}
		if err := c.checkCertAuth(f, &pc); err != nil {
			return err
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
		id, cm, err := pc.policyMatch(f)
		if err != nil {
			return nil, err
		}
		ts, err := selectors(f+".remote_ts", pc.RemoteTS)
		if err != nil {
			return nil, err
		}
		name := pc.Name
		if name == "" {
			name = f
		}
		pp := &ike.PeerPolicy{Name: name, ID: id, Cert: cm, RemoteTS: ts, Exclusive: true}
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
// chooses it (cert: the attributes of its authenticated certificate, as
// persisted; nil: none).
func poolFor(ec *ike.Config, peer ike.Identity, cert *ike.CertAttrs) *clusterPool {
	p := ec.Pool
	if len(ec.Policies) > 0 {
		p = nil
		if pp := ike.MatchPolicy(ec.Policies, peer, cert); pp != nil {
			p = pp.Pool
		}
	}
	cp, _ := p.(*clusterPool)
	return cp
}
