package sig

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"sync"
	"time"
)

// Implementation limits of VerifyChain: a peer sends at most this many
// certificates (leaf plus intermediates) of at most this many bytes in total.
// They bound the parsing and path-building work of hostile input.
const (
	DefaultMaxChainCerts = 8
	DefaultMaxChainBytes = 64 << 10
)

// Verifier validates the certificate chains peers send in CERT payloads.
// A Verifier is not modified by VerifyChain and may be shared between
// goroutines.
type Verifier struct {
	// Roots are the trust anchors. Required: a nil pool is an error, never
	// the system roots.
	Roots *x509.CertPool

	// CRLs are optional full CRLs (RFC 5280, parsed by
	// x509.ParseRevocationList or ParseCRLs). For every element of the
	// verified chain except the root, each CRL whose issuer name is the
	// element's issuer (and whose authority key identifier, when both are
	// present, is the issuer's subject key identifier) must carry a valid
	// signature by the issuer, and the element's serial must not be listed.
	// A CRL past its NextUpdate makes verification fail ("stale CRL"): a
	// revocation source the operator configured but did not refresh is
	// treated as an error, not ignored. When several CRLs match, only the
	// newest (by ThisUpdate) must be current. Delta CRLs, distribution
	// points and OCSP are not consulted; certificates without a matching CRL
	// are not checked.
	CRLs []*x509.RevocationList

	// MaxCerts and MaxBytes limit the received list; 0 selects
	// DefaultMaxChainCerts and DefaultMaxChainBytes.
	MaxCerts int
	MaxBytes int

	// Online, if set, is asked about every element of a verified chain
	// except the root after the CRLs passed (fetched CRLs, OCSP). It
	// answers from memory; see OnlineChecker.
	Online OnlineChecker

	// ClockSkew is the tolerance for certificate validity periods (and CRL
	// NextUpdate): a certificate expired or not yet valid by less than this
	// is accepted. 0: none.
	ClockSkew time.Duration

	// The CRLs indexed by issuer and serial, built once for the CRLs
	// slice it was built from (Prepare, or the first verification).
	mu  sync.Mutex
	idx *crlIndex
}

// Reasons carried by ChainError (a closed set, usable as metric labels).
const (
	ChainReasonNoRoots      = "no trust anchors configured"
	ChainReasonNoTime       = "no verification time"
	ChainReasonEmpty        = "no certificate"
	ChainReasonTooMany      = "too many certificates"
	ChainReasonTooLarge     = "certificates too large"
	ChainReasonMalformed    = "malformed certificate"
	ChainReasonInvalid      = "certificate chain invalid"
	ChainReasonRevoked      = "certificate revoked"
	ChainReasonCRLSignature = "CRL signature invalid"
	ChainReasonStaleCRL     = "stale CRL"
)

// ErrStaleCRL is wrapped by a ChainError whose matching CRL is past its
// NextUpdate.
var ErrStaleCRL = errors.New("CRL is past its NextUpdate")

// ChainError is the error returned by VerifyChain. It names the certificate
// that failed. Err wraps the x509 error (x509.CertificateInvalidError,
// x509.UnknownAuthorityError, …), a *RevokedError, or a CRL error.
type ChainError struct {
	Reason string // one of the ChainReason constants
	// Subject is the DN of the certificate that failed (for CRL errors: of
	// the certificate being checked); empty if none could be parsed.
	Subject string
	// Index is the certificate's position in the received list (0 = leaf),
	// or -1 if it was not received (a root) or none applies.
	Index int
	Err   error
}

func (e *ChainError) Error() string {
	s := "sig: " + e.Reason
	if e.Subject != "" {
		s += fmt.Sprintf(": certificate %q", e.Subject)
	}
	if e.Index >= 0 {
		s += fmt.Sprintf(" (#%d)", e.Index)
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *ChainError) Unwrap() error { return e.Err }

// RevokedError reports a certificate listed in a configured CRL.
type RevokedError struct {
	Serial     *big.Int
	Subject    string
	RevokedAt  time.Time
	ReasonCode int    // RFC 5280 §5.3.1 CRLReason, 0 (unspecified) if absent
	Source     string // "ocsp" or "crl" for online sources; empty: a configured CRL file
}

func (e *RevokedError) Error() string {
	s := fmt.Sprintf("certificate %q serial %x revoked at %s (reason %d)",
		e.Subject, e.Serial, e.RevokedAt.UTC().Format(time.RFC3339), e.ReasonCode)
	if e.Source != "" {
		s += " according to " + e.Source
	}
	return s
}

// VerifyChain parses DER certificates (leaf first, then intermediates, as
// received in CERT payloads), builds a chain to Roots valid at now with any
// extended key usage (IoT certificates vary), checks revocation against CRLs
// and returns the leaf. Every failure is a *ChainError. It is VerifyPath
// followed by Path.CheckRevocation; callers that can check something
// cheaper in between (the AUTH signature) call those two themselves.
func (v *Verifier) VerifyChain(certs [][]byte, now time.Time) (*x509.Certificate, error) {
	p, err := v.VerifyPath(certs, now)
	if err != nil {
		return nil, err
	}
	if err := p.CheckRevocation(); err != nil {
		return nil, err
	}
	return p.Leaf, nil
}

// Path is a certificate list whose chains to the trust anchors verified,
// before revocation is checked.
type Path struct {
	Leaf   *x509.Certificate
	v      *Verifier
	now    time.Time
	parsed []*x509.Certificate
	chains [][]*x509.Certificate
}

// VerifyPath parses the received certificates and builds chains to Roots
// valid at now, without consulting CRLs. Every failure is a *ChainError.
func (v *Verifier) VerifyPath(certs [][]byte, now time.Time) (*Path, error) {
	fail := func(reason, subject string, index int, err error) (*Path, error) {
		return nil, &ChainError{Reason: reason, Subject: subject, Index: index, Err: err}
	}
	if v == nil || v.Roots == nil {
		return fail(ChainReasonNoRoots, "", -1, nil)
	}
	if now.IsZero() {
		// x509 would read the clock.
		return fail(ChainReasonNoTime, "", -1, nil)
	}
	if len(certs) == 0 {
		return fail(ChainReasonEmpty, "", -1, nil)
	}
	maxCerts, maxBytes := v.MaxCerts, v.MaxBytes
	if maxCerts <= 0 {
		maxCerts = DefaultMaxChainCerts
	}
	if maxBytes <= 0 {
		maxBytes = DefaultMaxChainBytes
	}
	if len(certs) > maxCerts {
		return fail(ChainReasonTooMany, "", -1, fmt.Errorf("%d received, limit %d", len(certs), maxCerts))
	}
	total := 0
	for _, der := range certs {
		total += len(der)
	}
	if total > maxBytes {
		return fail(ChainReasonTooLarge, "", -1, fmt.Errorf("%d bytes received, limit %d", total, maxBytes))
	}

	p := &Path{v: v, now: now, parsed: make([]*x509.Certificate, len(certs))}
	for i, der := range certs {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return fail(ChainReasonMalformed, "", i, err)
		}
		p.parsed[i] = c
	}
	p.Leaf = p.parsed[0]
	intermediates := x509.NewCertPool()
	for _, c := range p.parsed[1:] {
		intermediates.AddCert(c)
	}
	verify := func(at time.Time) ([][]*x509.Certificate, error) {
		return p.Leaf.Verify(x509.VerifyOptions{
			Roots:         v.Roots,
			Intermediates: intermediates,
			CurrentTime:   at,
			KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
		})
	}
	chains, err := verify(now)
	var expired x509.CertificateInvalidError
	if err != nil && v.ClockSkew > 0 && errors.As(err, &expired) && expired.Reason == x509.Expired {
		// Expired or not yet valid, perhaps only by our clock or the
		// issuer's: try both ends of the tolerance.
		for _, at := range []time.Time{now.Add(-v.ClockSkew), now.Add(v.ClockSkew)} {
			if c, err2 := verify(at); err2 == nil {
				chains, err = c, nil
				break
			}
		}
	}
	if err != nil {
		culprit := p.Leaf
		var invalid x509.CertificateInvalidError
		var unknown x509.UnknownAuthorityError
		switch {
		case errors.As(err, &invalid) && invalid.Cert != nil:
			culprit = invalid.Cert
		case errors.As(err, &unknown) && unknown.Cert != nil:
			culprit = unknown.Cert
		}
		return fail(ChainReasonInvalid, dnString(culprit.RawSubject), p.index(culprit), err)
	}
	p.chains = chains
	return p, nil
}

func (p *Path) index(c *x509.Certificate) int {
	for i, q := range p.parsed {
		if q == c || bytes.Equal(q.Raw, c.Raw) {
			return i
		}
	}
	return -1
}

// CheckRevocation checks the verified chains against the configured CRLs,
// then asks Online (if set): it passes if any chain passes and reports the
// first chain's failure otherwise (a *ChainError).
func (p *Path) CheckRevocation() error {
	idx := p.v.crls()
	if idx == nil && p.v.Online == nil {
		return nil
	}
	var first *ChainError
	for _, chain := range p.chains {
		var cerr *ChainError
		if idx != nil {
			cerr = idx.check(chain, p.now, p.v.ClockSkew, p.index)
		}
		if cerr == nil && p.v.Online != nil {
			cerr = p.checkOnline(chain)
		}
		if cerr == nil {
			return nil
		}
		if first == nil {
			first = cerr
		}
	}
	return first
}

// Prepare indexes the CRLs now (by issuer name, and each CRL's revoked
// serials in a map), so that the first verification does not pay for it.
// Verifications index them on first use otherwise; after CRLs is replaced
// the index is rebuilt.
func (v *Verifier) Prepare() { v.crls() }

func (v *Verifier) crls() *crlIndex {
	if len(v.CRLs) == 0 {
		return nil
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.idx == nil || !v.idx.builtFrom(v.CRLs) {
		v.idx = newCRLIndex(v.CRLs)
	}
	return v.idx
}

// crlIndex holds the CRLs by issuer name; each CRL's serials are a map,
// and its signature is checked once per issuer key, not per verification.
type crlIndex struct {
	from     []*x509.RevocationList // the slice it was built from
	byIssuer map[string][]*indexedCRL
}

type indexedCRL struct {
	crl     *x509.RevocationList
	revoked map[string]x509.RevocationListEntry // by serial (big-endian magnitude, sign)
	mu      sync.Mutex
	sigErr  map[[32]byte]error // by the issuer key's SHA-256: the signature check's result
}

func newCRLIndex(crls []*x509.RevocationList) *crlIndex {
	idx := &crlIndex{from: slices.Clone(crls), byIssuer: map[string][]*indexedCRL{}}
	for _, crl := range crls {
		if crl == nil {
			continue
		}
		ic := &indexedCRL{crl: crl, revoked: make(map[string]x509.RevocationListEntry, len(crl.RevokedCertificateEntries)),
			sigErr: map[[32]byte]error{}}
		for _, e := range crl.RevokedCertificateEntries {
			if e.SerialNumber != nil {
				ic.revoked[serialKey(e.SerialNumber)] = e
			}
		}
		k := string(crl.RawIssuer)
		idx.byIssuer[k] = append(idx.byIssuer[k], ic)
	}
	return idx
}

func (idx *crlIndex) builtFrom(crls []*x509.RevocationList) bool {
	if len(crls) != len(idx.from) {
		return false
	}
	for i := range crls {
		if crls[i] != idx.from[i] {
			return false
		}
	}
	return true
}

func serialKey(n *big.Int) string {
	if n.Sign() < 0 {
		return "-" + string(n.Bytes())
	}
	return string(n.Bytes())
}

func (ic *indexedCRL) checkSignature(issuer *x509.Certificate) error {
	k := sha256.Sum256(issuer.RawSubjectPublicKeyInfo)
	ic.mu.Lock()
	err, ok := ic.sigErr[k]
	ic.mu.Unlock()
	if ok {
		return err
	}
	err = ic.crl.CheckSignatureFrom(issuer)
	ic.mu.Lock()
	ic.sigErr[k] = err
	ic.mu.Unlock()
	return err
}

// check checks every element of chain except the root against the CRLs.
func (idx *crlIndex) check(chain []*x509.Certificate, now time.Time, skew time.Duration, index func(*x509.Certificate) int) *ChainError {
	for i := 0; i+1 < len(chain); i++ {
		cert, issuer := chain[i], chain[i+1]
		var newest *x509.RevocationList
		for _, ic := range idx.byIssuer[string(cert.RawIssuer)] {
			crl := ic.crl
			if len(crl.AuthorityKeyId) > 0 && len(issuer.SubjectKeyId) > 0 &&
				!bytes.Equal(crl.AuthorityKeyId, issuer.SubjectKeyId) {
				continue // a CRL of another key of a CA with the same name
			}
			if err := ic.checkSignature(issuer); err != nil {
				return &ChainError{Reason: ChainReasonCRLSignature, Subject: dnString(cert.RawSubject), Index: index(cert),
					Err: fmt.Errorf("CRL of %q: %w", dnString(crl.RawIssuer), err)}
			}
			if e, ok := ic.revoked[serialKey(cert.SerialNumber)]; ok {
				subject := dnString(cert.RawSubject)
				return &ChainError{Reason: ChainReasonRevoked, Subject: subject, Index: index(cert), Err: &RevokedError{
					Serial:     new(big.Int).Set(cert.SerialNumber),
					Subject:    subject,
					RevokedAt:  e.RevocationTime,
					ReasonCode: e.ReasonCode,
				}}
			}
			if newest == nil || crl.ThisUpdate.After(newest.ThisUpdate) {
				newest = crl
			}
		}
		if newest != nil && !newest.NextUpdate.IsZero() && now.After(newest.NextUpdate.Add(skew)) {
			return &ChainError{Reason: ChainReasonStaleCRL, Subject: dnString(cert.RawSubject), Index: index(cert),
				Err: fmt.Errorf("CRL of %q: next update %s, now %s: %w", dnString(newest.RawIssuer),
					newest.NextUpdate.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339), ErrStaleCRL)}
		}
	}
	return nil
}
