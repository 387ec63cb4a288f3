package sig

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// Revocation sources beyond the configured CRL files: a node fetches CRLs
// from distribution points and asks OCSP responders, caches the answers and
// hands the verifier an OnlineChecker that only reads that cache. The
// verifier itself never does I/O.

// OnlineStatus is an OnlineChecker's answer for one certificate.
type OnlineStatus int

const (
	// OnlineGood: a current answer says the certificate is not revoked,
	// or no source applies to it and policy accepts that, or the source
	// was unreachable and policy fails open.
	OnlineGood OnlineStatus = iota
	// OnlineRevoked: a current CRL or OCSP answer lists it.
	OnlineRevoked
	// OnlinePending: an answer is being fetched; ask again shortly. The
	// engine parks the exchange (it does not answer, the peer's
	// retransmission asks again).
	OnlinePending
	// OnlineUnavailable: no answer could be obtained and policy fails
	// closed.
	OnlineUnavailable
)

// OnlineResult is the answer for one certificate.
type OnlineResult struct {
	Status OnlineStatus
	Source string // "ocsp" or "crl" (where the answer came from)
	// Revoked: when and why (RFC 5280 §5.3.1 reason code).
	RevokedAt  time.Time
	ReasonCode int
	Err        error // Unavailable: why
}

// OnlineChecker looks up the revocation status of cert, issued by issuer,
// at now. Implementations must not block: they answer from memory and start
// fetches in the background.
type OnlineChecker interface {
	CheckOnline(cert, issuer *x509.Certificate, now time.Time) OnlineResult
}

// Reasons of online revocation failures.
const (
	ChainReasonRevocationPending     = "revocation status pending"
	ChainReasonRevocationUnavailable = "revocation status unavailable"
)

// ErrRevocationPending is wrapped by the ChainError of a certificate whose
// revocation status is being fetched: the authentication should be retried
// (the engine parks it until the peer retransmits).
var ErrRevocationPending = errors.New("revocation status is being fetched")

func (p *Path) checkOnline(chain []*x509.Certificate) *ChainError {
	for i := 0; i+1 < len(chain); i++ {
		cert, issuer := chain[i], chain[i+1]
		r := p.v.Online.CheckOnline(cert, issuer, p.now)
		subject := dnString(cert.RawSubject)
		switch r.Status {
		case OnlineGood:
			continue
		case OnlineRevoked:
			return &ChainError{Reason: ChainReasonRevoked, Subject: subject, Index: p.index(cert), Err: &RevokedError{
				Serial: new(big.Int).Set(cert.SerialNumber), Subject: subject, RevokedAt: r.RevokedAt,
				ReasonCode: r.ReasonCode, Source: r.Source}}
		case OnlinePending:
			return &ChainError{Reason: ChainReasonRevocationPending, Subject: subject, Index: p.index(cert), Err: ErrRevocationPending}
		default:
			err := r.Err
			if err == nil {
				err = errors.New("no answer")
			}
			return &ChainError{Reason: ChainReasonRevocationUnavailable, Subject: subject, Index: p.index(cert), Err: err}
		}
	}
	return nil
}

// IndexedCRL is one CRL indexed for lookups, as a node caches CRLs fetched
// from distribution points. Its signature is checked once per issuer key.
type IndexedCRL struct{ ic *indexedCRL }

// NewIndexedCRL indexes crl's revoked serials.
func NewIndexedCRL(crl *x509.RevocationList) *IndexedCRL {
	return &IndexedCRL{ic: newCRLIndex([]*x509.RevocationList{crl}).byIssuer[string(crl.RawIssuer)][0]}
}

// CRL returns the indexed CRL.
func (c *IndexedCRL) CRL() *x509.RevocationList { return c.ic.crl }

// Check checks cert, issued by issuer, against the CRL at now, allowing
// skew for its validity times. It returns a *RevokedError if the serial is
// listed, ErrStaleCRL (wrapped) past NextUpdate+skew, an error if the CRL is
// not the issuer's (name, key identifier or signature), nil otherwise.
func (c *IndexedCRL) Check(cert, issuer *x509.Certificate, now time.Time, skew time.Duration) error {
	crl := c.ic.crl
	if !bytes.Equal(crl.RawIssuer, cert.RawIssuer) {
		return fmt.Errorf("CRL issuer %q is not the certificate's issuer %q", dnString(crl.RawIssuer), dnString(cert.RawIssuer))
	}
	if len(crl.AuthorityKeyId) > 0 && len(issuer.SubjectKeyId) > 0 && !bytes.Equal(crl.AuthorityKeyId, issuer.SubjectKeyId) {
		return errors.New("CRL signed by another key of the issuer")
	}
	if err := c.ic.checkSignature(issuer); err != nil {
		return fmt.Errorf("CRL signature: %w", err)
	}
	if e, ok := c.ic.revoked[serialKey(cert.SerialNumber)]; ok {
		return &RevokedError{Serial: new(big.Int).Set(cert.SerialNumber), Subject: dnString(cert.RawSubject),
			RevokedAt: e.RevocationTime, ReasonCode: e.ReasonCode, Source: "crl"}
	}
	if !crl.NextUpdate.IsZero() && now.After(crl.NextUpdate.Add(skew)) {
		return fmt.Errorf("next update %s, now %s: %w", crl.NextUpdate.UTC().Format(time.RFC3339),
			now.UTC().Format(time.RFC3339), ErrStaleCRL)
	}
	return nil
}
