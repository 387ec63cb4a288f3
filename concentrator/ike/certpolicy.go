package ike

import (
	"crypto/x509"
	encasn1 "encoding/asn1"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/ikefleet/ikefleet/concentrator/ike/sig"
)

// Certificate conditions of a policy: what the peer's authenticated
// end-entity certificate must carry for the policy to match, beside (or
// instead of) its identity. The attributes are taken from the certificate
// verifyPeer accepted (path, identity binding, AUTH signature and
// revocation all checked), never from an unverified CERT payload; a peer
// that authenticated otherwise (PSK, EAP, raw public key, a resumed
// ticket issued to such a peer) has none, and no policy with certificate
// conditions matches it.

// CertAttrs are the attributes of a peer's authenticated end-entity
// certificate that policies match. They are persisted with the SA (and
// sealed into resumption tickets) so a restored, handed-off or resumed SA
// is matched against the policies exactly as at IKE_AUTH.
type CertAttrs struct {
	Issuer   string   // the issuer's DN, string form ("C=CH, O=Fleet, CN=Fleet A CA")
	Subject  string   // the subject's DN, string form
	SANs     []string // subjectAltNames: DNS names, e-mail addresses, IP addresses, URIs
	EKUs     []string // extended key usages, dotted OIDs
	Policies []string // certificate policies, dotted OIDs
}

// CertAttrsOf returns the attributes of a certificate.
func CertAttrsOf(c *x509.Certificate) *CertAttrs {
	a := &CertAttrs{
		Issuer:  sig.IdentityString(sig.IDDERASN1DN, c.RawIssuer),
		Subject: sig.IdentityString(sig.IDDERASN1DN, c.RawSubject),
	}
	a.SANs = append(a.SANs, c.DNSNames...)
	a.SANs = append(a.SANs, c.EmailAddresses...)
	for _, ip := range c.IPAddresses {
		if addr, ok := netip.AddrFromSlice(ip); ok {
			a.SANs = append(a.SANs, addr.Unmap().String())
		}
	}
	for _, u := range c.URIs {
		a.SANs = append(a.SANs, u.String())
	}
	// The extension itself: crypto/x509 folds the OIDs it knows into
	// constants.
	for _, ext := range c.Extensions {
		if ext.Id.Equal(oidExtKeyUsage) {
			var oids []encasn1.ObjectIdentifier
			if rest, err := encasn1.Unmarshal(ext.Value, &oids); err == nil && len(rest) == 0 {
				for _, o := range oids {
					a.EKUs = append(a.EKUs, o.String())
				}
			}
		}
	}
	for _, p := range c.Policies {
		a.Policies = append(a.Policies, p.String())
	}
	if len(a.Policies) == 0 {
		for _, p := range c.PolicyIdentifiers {
			a.Policies = append(a.Policies, p.String())
		}
	}
	return a
}

var oidExtKeyUsage = encasn1.ObjectIdentifier{2, 5, 29, 37}

// Clone returns a deep copy (nil for nil).
func (a *CertAttrs) Clone() *CertAttrs {
	if a == nil {
		return nil
	}
	return &CertAttrs{Issuer: a.Issuer, Subject: a.Subject, SANs: slices.Clone(a.SANs),
		EKUs: slices.Clone(a.EKUs), Policies: slices.Clone(a.Policies)}
}

// Equal reports whether a and b carry the same attributes.
func (a *CertAttrs) Equal(b *CertAttrs) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Issuer == b.Issuer && a.Subject == b.Subject && slices.Equal(a.SANs, b.SANs) &&
		slices.Equal(a.EKUs, b.EKUs) && slices.Equal(a.Policies, b.Policies)
}

// EKU names accepted beside dotted OIDs.
var ekuNames = map[string]string{
	"serverAuth":          "1.3.6.1.5.5.7.3.1",
	"clientAuth":          "1.3.6.1.5.5.7.3.2",
	"codeSigning":         "1.3.6.1.5.5.7.3.3",
	"emailProtection":     "1.3.6.1.5.5.7.3.4",
	"ipsecIKE":            "1.3.6.1.5.5.7.3.17", // RFC 4945
	"ocspSigning":         "1.3.6.1.5.5.7.3.9",
	"anyExtendedKeyUsage": "2.5.29.37.0",
}

// CertMatch is a policy's certificate conditions; every condition given
// must hold. The zero CertMatch has none (and is not used: a policy
// without certificate conditions has a nil *CertMatch).
type CertMatch struct {
	// Issuer and Subject match the DN string forms (patterns as in
	// IdentityPattern: exact DN equality, or '*' for any characters).
	Issuer, Subject *DNPattern
	// SANs: at least one of the certificate's subjectAltNames matches one
	// of them ('*' patterns over the SAN's string form; an IP prefix
	// matches the IP addresses in it).
	SANs []SANPattern
	// EKUs and Policies: every OID listed is in the certificate.
	EKUs, Policies []string
}

// DNPattern matches a DN's string form: exactly (after normalising the
// pattern through the DN parser: spacing, attribute names, escapes) or, with
// '*', as a wildcard pattern over the normalised form ("C=CH, O=Fleet,
// OU=site-*, CN=*"). A pattern with '*' that does not parse as a DN
// ("*, OU=site-7, *") is matched as written against the string form
// ("C=CH, O=Fleet, OU=site-7, CN=gw1": RDNs joined by ", ").
type DNPattern struct {
	src  string
	glob []string
}

// ParseDNPattern reads a DN or a DN pattern ("C=CH, O=Fleet, OU=site-*, CN=*").
func ParseDNPattern(s string) (*DNPattern, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, fmt.Errorf("empty DN")
	}
	if !strings.Contains(s, "=") {
		return nil, fmt.Errorf("%q is not a DN (no attribute=value)", s)
	}
	t, data, err := sig.ParseIdentity(s)
	if err != nil && strings.Contains(s, "*") {
		return &DNPattern{src: s, glob: strings.Split(s, "*")}, nil
	}
	if err != nil {
		return nil, err
	}
	if t != sig.IDDERASN1DN {
		return nil, fmt.Errorf("%q is not a DN", s)
	}
	// The parser keeps '*' as a value character; the normalised string
	// form then splits into the pattern's parts.
	norm := sig.IdentityString(sig.IDDERASN1DN, data)
	return &DNPattern{src: s, glob: strings.Split(norm, "*")}, nil
}

func (p *DNPattern) Matches(dn string) bool { return globMatch(p.glob, dn) }
func (p *DNPattern) String() string         { return strings.Join(p.glob, "*") }

// SANPattern matches one subjectAltName.
type SANPattern struct {
	prefix netip.Prefix // an IP subnet; else glob
	glob   []string
}

// ParseSANPattern reads a SAN pattern: a DNS name, e-mail address, URI or
// IP address, '*' standing for any characters; or an IP subnet.
func ParseSANPattern(s string) (SANPattern, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return SANPattern{}, fmt.Errorf("empty subjectAltName")
	}
	if strings.Contains(s, "/") && !strings.Contains(s, ":/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return SANPattern{}, fmt.Errorf("%q: not an IP subnet: %v", s, err)
		}
		return SANPattern{prefix: p.Masked()}, nil
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return SANPattern{glob: []string{a.Unmap().String()}}, nil
	}
	return SANPattern{glob: strings.Split(s, "*")}, nil
}

func (p SANPattern) Matches(san string) bool {
	if p.prefix.IsValid() {
		a, err := netip.ParseAddr(san)
		return err == nil && p.prefix.Contains(a.Unmap())
	}
	// DNS names and e-mail domains are case-insensitive.
	return globMatch(p.glob, san) || globMatch(lowerAll(p.glob), strings.ToLower(san))
}

func (p SANPattern) String() string {
	if p.prefix.IsValid() {
		return p.prefix.String()
	}
	return strings.Join(p.glob, "*")
}

func lowerAll(s []string) []string {
	out := make([]string, len(s))
	for i, x := range s {
		out[i] = strings.ToLower(x)
	}
	return out
}

// ParseOID reads a dotted OID, or for an EKU (names true) one of the names
// serverAuth, clientAuth, codeSigning, emailProtection, ipsecIKE,
// ocspSigning, anyExtendedKeyUsage.
func ParseOID(s string, names bool) (string, error) {
	s = strings.TrimSpace(s)
	if names {
		if o, ok := ekuNames[s]; ok {
			return o, nil
		}
	}
	parts := strings.Split(s, ".")
	if len(parts) < 2 {
		return "", fmt.Errorf("%q is not a dotted OID", s)
	}
	for _, p := range parts {
		if p == "" || strings.Trim(p, "0123456789") != "" || (len(p) > 1 && p[0] == '0') {
			return "", fmt.Errorf("%q is not a dotted OID", s)
		}
	}
	return s, nil
}

// Matches reports whether the certificate attributes a satisfy every
// condition; nil attributes (a peer without an authenticated certificate)
// satisfy none.
func (m *CertMatch) Matches(a *CertAttrs) bool {
	if a == nil {
		return false
	}
	if m.Issuer != nil && !m.Issuer.Matches(a.Issuer) {
		return false
	}
	if m.Subject != nil && !m.Subject.Matches(a.Subject) {
		return false
	}
	if len(m.SANs) > 0 {
		found := false
		for _, p := range m.SANs {
			for _, s := range a.SANs {
				if p.Matches(s) {
					found = true
					break
				}
			}
			if found {
				break
			}
		}
		if !found {
			return false
		}
	}
	for _, o := range m.EKUs {
		if !slices.Contains(a.EKUs, o) {
			return false
		}
	}
	for _, o := range m.Policies {
		if !slices.Contains(a.Policies, o) {
			return false
		}
	}
	return true
}

func (m *CertMatch) String() string {
	var parts []string
	if m.Issuer != nil {
		parts = append(parts, "issuer "+m.Issuer.String())
	}
	if m.Subject != nil {
		parts = append(parts, "subject "+m.Subject.String())
	}
	if len(m.SANs) > 0 {
		s := make([]string, len(m.SANs))
		for i, p := range m.SANs {
			s[i] = p.String()
		}
		parts = append(parts, "san "+strings.Join(s, "|"))
	}
	if len(m.EKUs) > 0 {
		parts = append(parts, "eku "+strings.Join(m.EKUs, "+"))
	}
	if len(m.Policies) > 0 {
		parts = append(parts, "policies "+strings.Join(m.Policies, "+"))
	}
	return strings.Join(parts, "; ")
}

// appendCertAttrs appends a's compact encoding (resumption tickets): per
// field a count (1 octet; the DNs one each) and per string a 2-octet
// length and its octets.
func appendCertAttrs(b []byte, a *CertAttrs) []byte {
	str := func(s string) {
		if len(s) > 0xffff {
			s = s[:0xffff]
		}
		b = append(b, byte(len(s)>>8), byte(len(s)))
		b = append(b, s...)
	}
	list := func(l []string) {
		l = l[:min(len(l), 0xff)]
		b = append(b, byte(len(l)))
		for _, s := range l {
			str(s)
		}
	}
	list([]string{a.Issuer})
	list([]string{a.Subject})
	list(a.SANs)
	list(a.EKUs)
	list(a.Policies)
	return b
}

// parseCertAttrs reads appendCertAttrs's encoding, which must fill b.
func parseCertAttrs(b []byte) (*CertAttrs, error) {
	bad := fmt.Errorf("malformed certificate attributes")
	list := func() ([]string, error) {
		if len(b) < 1 {
			return nil, bad
		}
		n := int(b[0])
		b = b[1:]
		var out []string
		for range n {
			if len(b) < 2 {
				return nil, bad
			}
			l := int(b[0])<<8 | int(b[1])
			if len(b) < 2+l {
				return nil, bad
			}
			out = append(out, string(b[2:2+l]))
			b = b[2+l:]
		}
		return out, nil
	}
	var fields [5][]string
	for i := range fields {
		l, err := list()
		if err != nil {
			return nil, err
		}
		fields[i] = l
	}
	if len(b) != 0 || len(fields[0]) != 1 || len(fields[1]) != 1 {
		return nil, bad
	}
	return &CertAttrs{Issuer: fields[0][0], Subject: fields[1][0], SANs: fields[2], EKUs: fields[3], Policies: fields[4]}, nil
}
