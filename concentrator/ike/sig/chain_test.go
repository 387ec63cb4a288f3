package sig

import (
	"crypto/x509"
	"errors"
	"slices"
	"testing"
	"time"
)

// wantChainError asserts err is a *ChainError with the reason, naming the
// certificate with the subject at index.
func wantChainError(t *testing.T, what string, err error, reason, subject string, index int) *ChainError {
	t.Helper()
	var ce *ChainError
	if !errors.As(err, &ce) {
		t.Errorf("%s: got %v, want *ChainError", what, err)
		return nil
	}
	if ce.Reason != reason || ce.Subject != subject || ce.Index != index {
		t.Errorf("%s: got reason %q subject %q index %d, want %q %q %d (%v)",
			what, ce.Reason, ce.Subject, ce.Index, reason, subject, index, err)
	}
	return ce
}

const (
	leafDN  = "C=XX, O=Interop Test, CN=gw1.iot.example"
	interDN = "C=XX, O=Interop Test, CN=Test Intermediate"
)

func TestVerifyChainValid(t *testing.T) {
	p := newPKI(t)
	v := &Verifier{Roots: p.roots()}
	leaf, err := v.VerifyChain(p.chain(), t0)
	if err != nil {
		t.Fatal(err)
	}
	if !leaf.Equal(p.leaf.cert) {
		t.Errorf("returned %v, want the leaf", leaf.Subject)
	}
	// Fresh CRLs that do not list the chain.
	other := issue(t, leafTemplate("other.iot.example", t0.AddDate(0, -1, 0), t0.AddDate(1, 0, 0)), p256Key(t), p.inter)
	v.CRLs = []*x509.RevocationList{
		crl(t, p.inter, t0.AddDate(0, 0, -1), t0.AddDate(0, 0, 7), other.cert),
		crl(t, p.root, t0.AddDate(0, 0, -1), t0.AddDate(0, 0, 7)),
	}
	if _, err := v.VerifyChain(p.chain(), t0); err != nil {
		t.Fatalf("with CRLs: %v", err)
	}
	// The leaf may also be sent alone if the intermediate is a root.
	v2 := &Verifier{Roots: x509.NewCertPool()}
	v2.Roots.AddCert(p.inter.cert)
	if _, err := v2.VerifyChain(p.chain()[:1], t0); err != nil {
		t.Fatalf("intermediate as anchor: %v", err)
	}
	// The root may be sent too; it is ignored as a trust anchor.
	if _, err := v.VerifyChain(append(p.chain(), p.root.cert.Raw), t0); err != nil {
		t.Fatalf("with root: %v", err)
	}
}

func TestVerifyChainInvalid(t *testing.T) {
	p := newPKI(t)
	v := &Verifier{Roots: p.roots()}

	// Unknown root: a different PKI's anchor.
	q := newPKI(t)
	_, err := (&Verifier{Roots: q.roots()}).VerifyChain(p.chain(), t0)
	ce := wantChainError(t, "unknown root", err, ChainReasonInvalid, interDN, 1)
	var unknown x509.UnknownAuthorityError
	if !errors.As(ce, &unknown) {
		t.Errorf("unknown root: %v does not wrap x509.UnknownAuthorityError", err)
	}

	// Intermediate missing.
	_, err = v.VerifyChain(p.chain()[:1], t0)
	ce = wantChainError(t, "intermediate missing", err, ChainReasonInvalid, leafDN, 0)
	if !errors.As(ce, &unknown) {
		t.Errorf("intermediate missing: %v does not wrap x509.UnknownAuthorityError", err)
	}

	// Expired and not yet valid leaf.
	for _, c := range []struct {
		name string
		now  time.Time
	}{{"expired", t0.AddDate(2, 0, 0)}, {"not yet valid", t0.AddDate(0, -2, 0)}} {
		_, err = v.VerifyChain(p.chain(), c.now)
		ce = wantChainError(t, c.name, err, ChainReasonInvalid, leafDN, 0)
		var invalid x509.CertificateInvalidError
		if !errors.As(ce, &invalid) || invalid.Reason != x509.Expired {
			t.Errorf("%s: %v does not wrap an x509.Expired CertificateInvalidError", c.name, err)
		}
	}

	// Expired intermediate, leaf still valid.
	inter := issue(t, caTemplate("Test Intermediate", t0.AddDate(-2, 0, 0), t0.AddDate(0, 0, -1)), p256Key(t), p.root)
	leaf := issue(t, leafTemplate("gw1.iot.example", t0.AddDate(0, -1, 0), t0.AddDate(1, 0, 0)), p256Key(t), inter)
	_, err = v.VerifyChain([][]byte{leaf.cert.Raw, inter.cert.Raw}, t0)
	wantChainError(t, "expired intermediate", err, ChainReasonInvalid, interDN, 1)

	// A leaf used as an issuer is not a CA (x509 reports the issued
	// certificate's authority as unknown).
	sub := issue(t, leafTemplate("sub.iot.example", t0.AddDate(0, -1, 0), t0.AddDate(1, 0, 0)), p256Key(t), p.leaf)
	_, err = v.VerifyChain([][]byte{sub.cert.Raw, p.leaf.cert.Raw, p.inter.cert.Raw}, t0)
	wantChainError(t, "leaf as issuer", err, ChainReasonInvalid, "C=XX, O=Interop Test, CN=sub.iot.example", 0)
}

func TestVerifyChainRevocation(t *testing.T) {
	p := newPKI(t)
	fresh := func(issuer *pkiNode, revoked ...*x509.Certificate) *x509.RevocationList {
		return crl(t, issuer, t0.AddDate(0, 0, -1), t0.AddDate(0, 0, 7), revoked...)
	}

	// Revoked leaf.
	v := &Verifier{Roots: p.roots(), CRLs: []*x509.RevocationList{fresh(p.inter, p.leaf.cert), fresh(p.root)}}
	_, err := v.VerifyChain(p.chain(), t0)
	ce := wantChainError(t, "revoked leaf", err, ChainReasonRevoked, leafDN, 0)
	var re *RevokedError
	if !errors.As(ce, &re) || re.Serial.Cmp(p.leaf.cert.SerialNumber) != 0 || re.Subject != leafDN || re.ReasonCode != 1 {
		t.Errorf("revoked leaf: %#v", re)
	}

	// Revoked intermediate.
	v.CRLs = []*x509.RevocationList{fresh(p.inter), fresh(p.root, p.inter.cert)}
	_, err = v.VerifyChain(p.chain(), t0)
	ce = wantChainError(t, "revoked intermediate", err, ChainReasonRevoked, interDN, 1)
	if !errors.As(ce, &re) || re.Serial.Cmp(p.inter.cert.SerialNumber) != 0 {
		t.Errorf("revoked intermediate: %v", err)
	}

	// A CRL whose signature does not verify.
	good := fresh(p.inter)
	raw := slices.Clone(good.Raw)
	raw[len(raw)-5] ^= 0x01 // inside the signature value
	bad, err := x509.ParseRevocationList(raw)
	if err != nil {
		t.Fatal(err)
	}
	v.CRLs = []*x509.RevocationList{bad}
	_, err = v.VerifyChain(p.chain(), t0)
	wantChainError(t, "bad CRL signature", err, ChainReasonCRLSignature, leafDN, 0)

	// A CRL of another CA with the same name but another key (different
	// authority key identifier) does not apply, whatever it lists.
	impostor := issue(t, caTemplate("Test Intermediate", t0.AddDate(-1, 0, 0), t0.AddDate(5, 0, 0)), p256Key(t), p.root)
	v.CRLs = []*x509.RevocationList{fresh(impostor, p.leaf.cert)}
	if _, err := v.VerifyChain(p.chain(), t0); err != nil {
		t.Errorf("same-name CRL of another key: %v", err)
	}

	// Stale CRL: past its NextUpdate.
	v.CRLs = []*x509.RevocationList{crl(t, p.inter, t0.AddDate(0, 0, -14), t0.AddDate(0, 0, -7))}
	_, err = v.VerifyChain(p.chain(), t0)
	ce = wantChainError(t, "stale CRL", err, ChainReasonStaleCRL, leafDN, 0)
	if !errors.Is(ce, ErrStaleCRL) {
		t.Errorf("stale CRL: %v does not wrap ErrStaleCRL", err)
	}
	// ...unless a newer one for the same issuer is current.
	v.CRLs = append(v.CRLs, fresh(p.inter))
	if _, err := v.VerifyChain(p.chain(), t0); err != nil {
		t.Errorf("stale and fresh CRL: %v", err)
	}
	// A stale CRL listing the certificate still revokes it.
	v.CRLs = []*x509.RevocationList{crl(t, p.inter, t0.AddDate(0, 0, -14), t0.AddDate(0, 0, -7), p.leaf.cert)}
	_, err = v.VerifyChain(p.chain(), t0)
	wantChainError(t, "stale CRL listing the leaf", err, ChainReasonRevoked, leafDN, 0)
}

func TestVerifyChainLimits(t *testing.T) {
	p := newPKI(t)
	v := &Verifier{Roots: p.roots()}
	for _, c := range []struct {
		name   string
		v      *Verifier
		certs  [][]byte
		now    time.Time
		reason string
		index  int
	}{
		{"nil verifier", nil, p.chain(), t0, ChainReasonNoRoots, -1},
		{"no roots", &Verifier{}, p.chain(), t0, ChainReasonNoRoots, -1},
		{"zero time", v, p.chain(), time.Time{}, ChainReasonNoTime, -1},
		{"empty", v, nil, t0, ChainReasonEmpty, -1},
		{"too many", v, slices.Repeat(p.chain(), 5), t0, ChainReasonTooMany, -1},
		{"too many (configured)", &Verifier{Roots: p.roots(), MaxCerts: 1}, p.chain(), t0, ChainReasonTooMany, -1},
		{"too large", &Verifier{Roots: p.roots(), MaxBytes: 100}, p.chain(), t0, ChainReasonTooLarge, -1},
		{"malformed leaf", v, [][]byte{{0x30, 0x00}}, t0, ChainReasonMalformed, 0},
		{"malformed intermediate", v, [][]byte{p.leaf.cert.Raw, p.inter.cert.Raw[:50]}, t0, ChainReasonMalformed, 1},
	} {
		leaf, err := c.v.VerifyChain(c.certs, c.now)
		if leaf != nil {
			t.Errorf("%s: returned a leaf", c.name)
		}
		wantChainError(t, c.name, err, c.reason, "", c.index)
	}
	// Truncations of the leaf never panic.
	for n := range len(p.leaf.cert.Raw) {
		if _, err := v.VerifyChain([][]byte{p.leaf.cert.Raw[:n], p.inter.cert.Raw}, t0); err == nil {
			t.Fatalf("truncated leaf (%d bytes) accepted", n)
		}
	}
}

// TestVerifyChainStrongSwan validates the certificates of the recorded
// strongSwan exchanges (ECDSA and Ed25519 CAs without extensions, v1).
func TestVerifyChainStrongSwan(t *testing.T) {
	now := time.Date(2027, 6, 1, 0, 0, 0, 0, time.UTC)
	for _, dir := range []string{"ecdsa", "ed25519"} {
		ca, err := ParseCertificates(readFile(t, "strongswan", dir, "ca.crt"))
		if err != nil {
			t.Fatal(err)
		}
		roots := x509.NewCertPool()
		roots.AddCert(ca[0])
		v := &Verifier{Roots: roots}
		for _, name := range []string{"gw1", "conc"} {
			certs, err := ParseCertificates(readFile(t, "strongswan", dir, name+".crt"))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := v.VerifyChain([][]byte{certs[0].Raw}, now); err != nil {
				t.Errorf("%s/%s: %v", dir, name, err)
			}
			if _, err := v.VerifyChain([][]byte{certs[0].Raw}, now.AddDate(5, 0, 0)); err == nil {
				t.Errorf("%s/%s: accepted after expiry", dir, name)
			}
		}
	}
}
