package concentrator

import (
	"crypto"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"strings"

	"github.com/ikefleet/ikefleet/concentrator/ike"
	"github.com/ikefleet/ikefleet/concentrator/ike/sig"
)

func parseIdentity(s string) (ike.Identity, error) { return ike.ParseIdentity(s) }

func decodeHex(s string) ([]byte, error) {
	s = strings.TrimPrefix(strings.TrimPrefix(s, "0x"), "0X")
	s = strings.NewReplacer(":", "", " ", "").Replace(s)
	b, err := hex.DecodeString(s)
	if err == nil && len(b) == 0 {
		return nil, fmt.Errorf("empty")
	}
	return b, err
}

func (c *Config) ikeProposals() ([]ike.ProposalSpec, error) {
	if len(c.IKE.Proposals) == 0 {
		return nil, fieldErr("ike.proposals", "needs at least one proposal")
	}
	out := make([]ike.ProposalSpec, 0, len(c.IKE.Proposals))
	for i, s := range c.IKE.Proposals {
		p, err := ike.ParseProposal(s, false, c.IKE.AllowWeak)
		if err != nil {
			return nil, &FieldError{Field: fmt.Sprintf("ike.proposals[%d]", i), Err: err}
		}
		out = append(out, p)
	}
	return out, nil
}

func (c *Config) espProposals() ([]ike.ProposalSpec, error) {
	if len(c.IKE.ESPProposals) == 0 {
		return nil, fieldErr("ike.esp_proposals", "needs at least one proposal")
	}
	out := make([]ike.ProposalSpec, 0, len(c.IKE.ESPProposals))
	for i, s := range c.IKE.ESPProposals {
		p, err := ike.ParseProposal(s, true, c.IKE.AllowWeak)
		if err != nil {
			return nil, &FieldError{Field: fmt.Sprintf("ike.esp_proposals[%d]", i), Err: err}
		}
		out = append(out, p)
	}
	return out, nil
}

func selectors(field string, ss []string) ([]ike.TrafficSelector, error) {
	out := make([]ike.TrafficSelector, 0, len(ss))
	for i, s := range ss {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fieldErr(fmt.Sprintf("%s[%d]", field, i), "not a subnet: %q", s)
		}
		out = append(out, ike.SelectorFromPrefix(p))
	}
	return out, nil
}

// engineConfig builds the engine configuration shared by all shards,
// loading keys, certificates and PSKs from disk. Errors name the field.
func (c *Config) engineConfig() (ike.Config, error) {
	var ec ike.Config
	var err error
	if ec.IKEProposals, err = c.ikeProposals(); err != nil {
		return ec, err
	}
	if ec.ESPProposals, err = c.espProposals(); err != nil {
		return ec, err
	}
	if ec.Local.ID, err = parseIdentity(c.Identity.ID); err != nil {
		return ec, fieldErr("identity.id", "%v", err)
	}
	if c.Identity.SendCert == "ifasked" {
		ec.Local.SendCert = ike.SendCertIfAsked
	}
	if c.Identity.Cert != "" {
		data, err := os.ReadFile(c.Identity.Cert)
		if err != nil {
			return ec, fieldErr("identity.cert", "%v", err)
		}
		certs, err := sig.ParseCertificates(data)
		if err != nil || len(certs) == 0 {
			return ec, fieldErr("identity.cert", "no certificate in %s: %v", c.Identity.Cert, err)
		}
		for _, ct := range certs {
			ec.Local.Chain = append(ec.Local.Chain, ct.Raw)
		}
		if err := checkPrivateKeyFile("identity.key", c.Identity.Key); err != nil {
			return ec, err
		}
		kd, err := os.ReadFile(c.Identity.Key)
		if err != nil {
			return ec, fieldErr("identity.key", "%v", err)
		}
		if ec.Local.Signer, err = sig.ParsePrivateKey(kd); err != nil {
			return ec, fieldErr("identity.key", "%v", err)
		}
		if !publicKeysEqual(certs[0].PublicKey, ec.Local.Signer.Public()) {
			return ec, fieldErr("identity.key", "does not match the certificate in %s", c.Identity.Cert)
		}
		if err := sig.MatchIdentity(certs[0], ec.Local.ID.Type, ec.Local.ID.Data); err != nil {
			return ec, fieldErr("identity.id", "not in the certificate %s: %v", c.Identity.Cert, err)
		}
	}
	if err := c.rawKeyCredentials(&ec); err != nil {
		return ec, err
	}
	ec.EAP = c.eapEngineConfig()
	if len(c.Auth.CAs) > 0 {
		roots := x509.NewCertPool()
		var req []byte
		for i, path := range c.Auth.CAs {
			data, err := os.ReadFile(path)
			if err != nil {
				return ec, fieldErr(fmt.Sprintf("auth.cas[%d]", i), "%v", err)
			}
			certs, err := sig.ParseCertificates(data)
			if err != nil || len(certs) == 0 {
				return ec, fieldErr(fmt.Sprintf("auth.cas[%d]", i), "no certificate in %s: %v", path, err)
			}
			for _, ct := range certs {
				roots.AddCert(ct)
				h := sha1.Sum(ct.RawSubjectPublicKeyInfo)
				req = append(req, h[:]...)
			}
		}
		v := &sig.Verifier{Roots: roots, ClockSkew: c.Auth.ClockSkew}
		for i, path := range c.Auth.CRLs {
			data, err := os.ReadFile(path)
			if err != nil {
				return ec, fieldErr(fmt.Sprintf("auth.crls[%d]", i), "%v", err)
			}
			crls, err := sig.ParseCRLs(data)
			if err != nil {
				return ec, fieldErr(fmt.Sprintf("auth.crls[%d]", i), "%v", err)
			}
			v.CRLs = append(v.CRLs, crls...)
		}
		v.Prepare() // index the CRLs once per load, not per authentication
		ec.Verifier, ec.CertReq = v, req
	}
	psks := ike.PSKMap{}
	for i, p := range c.Auth.PSKs {
		id, _ := parseIdentity(p.ID)
		if p.SecretFile != "" {
			if err := checkPrivateKeyFile(fmt.Sprintf("auth.psks[%d].secret_file", i), p.SecretFile); err != nil {
				return ec, err
			}
		}
		s, err := p.secret()
		if err == nil {
			err = checkPSKLength(s, c.IKE.AllowWeak)
		}
		if err != nil {
			return ec, fieldErr(fmt.Sprintf("auth.psks[%d].secret", i), "%v", err)
		}
		psks[id.String()] = s
	}
	ec.PSKs = psks
	if ec.LocalTS, err = selectors("children.local_ts", c.Children.LocalTS); err != nil {
		return ec, err
	}
	if ec.RemoteTS, err = selectors("children.remote_ts", c.Children.RemoteTS); err != nil {
		return ec, err
	}
	if c.Children.Pool != "" {
		p, _ := netip.ParsePrefix(c.Children.Pool)
		ec.Pool = newClusterPool(p, 1) // cluster-wide leases once the state store is open (vippool.go)
	}
	if len(c.Policies) > 0 {
		dp, _ := ec.Pool.(*clusterPool)
		if ec.Policies, err = c.enginePolicies(dp); err != nil {
			return ec, err
		}
		ec.Selectors = ike.NewSelectorRegistry() // one for all shards
	}
	if c.Children.Pool6 != "" {
		p, _ := netip.ParsePrefix(c.Children.Pool6)
		ec.Pool6 = newClusterPool(p, 1)
	}
	for _, d := range c.Children.DNS {
		a, _ := netip.ParseAddr(d)
		ec.DNS = append(ec.DNS, a)
	}
	ec.NATTPort = uint16(c.IKE.NATTPort)
	ec.ForceEncap = c.IKE.ForceEncap == nil || *c.IKE.ForceEncap
	if c.IKE.CookieThreshold != nil {
		ec.CookieThreshold = *c.IKE.CookieThreshold
	}
	ec.HalfOpenTimeout = c.IKE.HalfOpenTimeout
	ec.MaxMessageSize = c.IKE.MaxMessageSize
	ec.MaxInitSize = c.IKE.MaxInitMessageSize
	ec.MaxHalfOpen = c.IKE.MaxHalfOpen
	ec.MaxHalfOpenPerPrefix = c.IKE.MaxHalfOpenPerPrefix
	ec.MaxHalfOpenBytes = c.IKE.MaxHalfOpenBytes
	ec.HalfOpenPrefix4 = c.IKE.HalfOpenPrefix4
	ec.HalfOpenPrefix6 = c.IKE.HalfOpenPrefix6
	ec.MaxSAs = c.IKE.MaxSAs
	ec.RetransmitTimeout = c.IKE.RetransmitTimeout
	ec.RetransmitTries = c.IKE.RetransmitTries
	ec.FragmentSize = c.IKE.FragmentSize
	ec.DPDDelay = c.IKE.DPDDelay
	ec.MOBIKE = c.IKE.MOBIKE == nil || *c.IKE.MOBIKE
	ec.UniqueIDs, _ = ike.ParseUniqueIDs(c.Auth.UniqueIDs) // validated
	ec.KeepaliveInterval = c.IKE.KeepaliveInterval
	ec.RekeyOverlap = c.Children.RekeyOverlap
	ec.IKERekeyAfter = c.IKE.RekeyAfter
	ec.MaxChildren = c.Children.MaxPerIKE
	if c.Children.RekeyAfter > 0 {
		// One scheduler for the node: every shard's rekeys share its load map.
		ec.ChildRekey = ike.NewSmoothScheduler(c.Children.RekeyAfter, c.Children.RekeyWindow, c.Children.MaxRekeysPerSec, rand.Reader)
	}
	return ec, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}

func (c *Config) shards() int {
	if c.IKE.Shards > 0 {
		return c.IKE.Shards
	}
	return runtime.GOMAXPROCS(0)
}
