package sig

import (
	"crypto/x509"
	"errors"
	"testing"
	"time"
)

// fakeOnline answers from a table by subject CN and records what it was
// asked (with which issuer).
type fakeOnline struct {
	status map[string]OnlineResult
	asked  []string
}

func (f *fakeOnline) CheckOnline(cert, issuer *x509.Certificate, now time.Time) OnlineResult {
	f.asked = append(f.asked, cert.Subject.CommonName+" by "+issuer.Subject.CommonName)
	return f.status[cert.Subject.CommonName]
}

func TestVerifierOnline(t *testing.T) {
	p := newPKI(t)
	f := &fakeOnline{status: map[string]OnlineResult{}}
	v := &Verifier{Roots: p.roots(), Online: f}
	if _, err := v.VerifyChain(p.chain(), t0); err != nil {
		t.Fatal(err)
	}
	// The leaf (by the intermediate) and the intermediate (by the root)
	// are asked about; the root is not.
	if len(f.asked) != 2 || f.asked[0] != "gw1.iot.example by Test Intermediate" || f.asked[1] != "Test Intermediate by Test Root" {
		t.Errorf("asked %q", f.asked)
	}

	f.status["gw1.iot.example"] = OnlineResult{Status: OnlineRevoked, Source: "ocsp", RevokedAt: t0, ReasonCode: 1}
	_, err := v.VerifyChain(p.chain(), t0)
	ce := wantChainError(t, "revoked by OCSP", err, ChainReasonRevoked, leafDN, 0)
	var rev *RevokedError
	if ce != nil && (!errors.As(err, &rev) || rev.Source != "ocsp" || rev.ReasonCode != 1) {
		t.Errorf("revoked: %v", err)
	}

	f.status["gw1.iot.example"] = OnlineResult{Status: OnlinePending}
	_, err = v.VerifyChain(p.chain(), t0)
	wantChainError(t, "pending", err, ChainReasonRevocationPending, leafDN, 0)
	if !errors.Is(err, ErrRevocationPending) {
		t.Errorf("pending: %v does not wrap ErrRevocationPending", err)
	}

	f.status["gw1.iot.example"] = OnlineResult{}
	f.status["Test Intermediate"] = OnlineResult{Status: OnlineUnavailable, Err: errors.New("responder down")}
	_, err = v.VerifyChain(p.chain(), t0)
	wantChainError(t, "unavailable", err, ChainReasonRevocationUnavailable, interDN, 1)

	// A configured CRL that lists the leaf is decisive before the online
	// sources are asked.
	f.status["Test Intermediate"] = OnlineResult{}
	f.asked = nil
	v2 := &Verifier{Roots: p.roots(), Online: f, CRLs: []*x509.RevocationList{crl(t, p.inter, t0.AddDate(0, 0, -1), t0.AddDate(0, 0, 7), p.leaf.cert)}}
	_, err = v2.VerifyChain(p.chain(), t0)
	wantChainError(t, "CRL file", err, ChainReasonRevoked, leafDN, 0)
	if len(f.asked) != 0 {
		t.Errorf("online source asked although a CRL file decided: %q", f.asked)
	}
}

func TestIndexedCRL(t *testing.T) {
	p := newPKI(t)
	other := issue(t, leafTemplate("other.iot.example", t0.AddDate(0, -1, 0), t0.AddDate(1, 0, 0)), p256Key(t), p.inter)
	ic := NewIndexedCRL(crl(t, p.inter, t0.AddDate(0, 0, -1), t0.AddDate(0, 0, 7), other.cert))
	if err := ic.Check(p.leaf.cert, p.inter.cert, t0, 0); err != nil {
		t.Errorf("not listed: %v", err)
	}
	var rev *RevokedError
	if err := ic.Check(other.cert, p.inter.cert, t0, 0); !errors.As(err, &rev) || rev.Source != "crl" {
		t.Errorf("listed: %v", err)
	}
	if err := ic.Check(p.leaf.cert, p.inter.cert, t0.AddDate(0, 0, 8), 0); !errors.Is(err, ErrStaleCRL) {
		t.Errorf("stale: %v", err)
	}
	if err := ic.Check(p.leaf.cert, p.inter.cert, t0.AddDate(0, 0, 7).Add(time.Minute), 5*time.Minute); err != nil {
		t.Errorf("stale by less than the skew: %v", err)
	}
	// Not the issuer's CRL: the intermediate is issued by the root.
	if err := ic.Check(p.inter.cert, p.root.cert, t0, 0); err == nil {
		t.Error("CRL of another issuer accepted")
	}
	// Forged: signed by another key under the intermediate's name.
	forger := issue(t, caTemplate("Test Intermediate", t0.AddDate(-1, 0, 0), t0.AddDate(5, 0, 0)), p256Key(t), p.root)
	forged := NewIndexedCRL(crl(t, forger, t0.AddDate(0, 0, -1), t0.AddDate(0, 0, 7)))
	if err := forged.Check(p.leaf.cert, p.inter.cert, t0, 0); err == nil {
		t.Error("CRL with a bad signature accepted")
	}
}

func TestVerifyChainClockSkew(t *testing.T) {
	p := newPKI(t)
	// The leaf is valid from t0-1 month to t0+1 year.
	notAfter := p.leaf.cert.NotAfter
	notBefore := p.leaf.cert.NotBefore
	for _, tc := range []struct {
		name string
		now  time.Time
		skew time.Duration
		ok   bool
	}{
		{"expired a minute ago, no tolerance", notAfter.Add(time.Minute), 0, false},
		{"expired a minute ago, 5m tolerance", notAfter.Add(time.Minute), 5 * time.Minute, true},
		{"expired an hour ago, 5m tolerance", notAfter.Add(time.Hour), 5 * time.Minute, false},
		{"valid in a minute, no tolerance", notBefore.Add(-time.Minute), 0, false},
		{"valid in a minute, 5m tolerance", notBefore.Add(-time.Minute), 5 * time.Minute, true},
		{"valid in an hour, 5m tolerance", notBefore.Add(-time.Hour), 5 * time.Minute, false},
	} {
		v := &Verifier{Roots: p.roots(), ClockSkew: tc.skew}
		_, err := v.VerifyChain(p.chain(), tc.now)
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
}
