package sig

import (
	"crypto/rand"
	"crypto/x509"
	"math/big"
	"slices"
	"testing"
	"time"
)

// bigCRL is a CRL of issuer listing n serials (none of the test chain's
// unless extra names some).
func bigCRL(tb testing.TB, issuer *pkiNode, n int, extra ...*x509.Certificate) *x509.RevocationList {
	tb.Helper()
	tmpl := &x509.RevocationList{Number: nextSerial(), ThisUpdate: t0.AddDate(0, 0, -1), NextUpdate: t0.AddDate(0, 0, 7)}
	for i := 0; i < n; i++ {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{
			SerialNumber: new(big.Int).SetInt64(1<<40 + int64(i)), RevocationTime: t0.AddDate(0, 0, -2)})
	}
	for _, c := range extra {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{
			SerialNumber: c.SerialNumber, RevocationTime: t0.AddDate(0, 0, -2), ReasonCode: 1})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, issuer.cert, issuer.key)
	if err != nil {
		tb.Fatal(err)
	}
	l, err := x509.ParseRevocationList(der)
	if err != nil {
		tb.Fatal(err)
	}
	return l
}

// VerifyPath does no revocation work: a CRL whose signature is broken
// fails only CheckRevocation, so a caller can check the AUTH signature in
// between.
func TestVerifyPathThenRevocation(t *testing.T) {
	p := newPKI(t)
	good := crl(t, p.inter, t0.AddDate(0, 0, -1), t0.AddDate(0, 0, 7))
	raw := slices.Clone(good.Raw)
	raw[len(raw)-5] ^= 0x01
	bad, err := x509.ParseRevocationList(raw)
	if err != nil {
		t.Fatal(err)
	}
	v := &Verifier{Roots: p.roots(), CRLs: []*x509.RevocationList{bad}}
	path, err := v.VerifyPath(p.chain(), t0)
	if err != nil {
		t.Fatalf("VerifyPath consulted the CRLs: %v", err)
	}
	if path.Leaf.SerialNumber.Cmp(p.leaf.cert.SerialNumber) != 0 {
		t.Fatalf("leaf %v", path.Leaf.Subject)
	}
	wantChainError(t, "bad CRL signature", path.CheckRevocation(), ChainReasonCRLSignature, leafDN, 0)
}

// A large CRL is indexed: the revoked leaf is found among 20,000 entries,
// an unlisted one passes, and replacing CRLs rebuilds the index.
func TestCRLIndex(t *testing.T) {
	p := newPKI(t)
	listed := bigCRL(t, p.inter, 20000, p.leaf.cert)
	v := &Verifier{Roots: p.roots(), CRLs: []*x509.RevocationList{listed}}
	v.Prepare()
	_, err := v.VerifyChain(p.chain(), t0)
	wantChainError(t, "revoked among many", err, ChainReasonRevoked, leafDN, 0)

	v.CRLs = []*x509.RevocationList{bigCRL(t, p.inter, 20000)}
	if _, err := v.VerifyChain(p.chain(), t0); err != nil {
		t.Fatalf("after replacing the CRLs: %v", err)
	}
	// The same slice modified in place is seen as well.
	v.CRLs[0] = listed
	_, err = v.VerifyChain(p.chain(), t0)
	wantChainError(t, "modified in place", err, ChainReasonRevoked, leafDN, 0)
}

// BenchmarkRevocation compares the indexed check with scanning a
// 100,000-entry CRL and checking its signature on every verification (what
// the verifier did before): ratio-to-scan is the indexed cost divided by
// the scan's, measured in the same run.
func BenchmarkRevocation(b *testing.B) {
	p := newPKI(b)
	l := bigCRL(b, p.inter, 100000)
	v := &Verifier{Roots: p.roots(), CRLs: []*x509.RevocationList{l}}
	path, err := v.VerifyPath(p.chain(), t0)
	if err != nil {
		b.Fatal(err)
	}
	v.Prepare()
	scan := func() {
		if err := l.CheckSignatureFrom(p.inter.cert); err != nil {
			b.Fatal(err)
		}
		for _, e := range l.RevokedCertificateEntries {
			if e.SerialNumber.Cmp(p.leaf.cert.SerialNumber) == 0 {
				b.Fatal("listed")
			}
		}
	}
	const rounds = 200
	start := time.Now()
	for i := 0; i < rounds; i++ {
		scan()
	}
	scanNs := float64(time.Since(start).Nanoseconds()) / rounds
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := path.CheckRevocation(); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	indexed := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	b.ReportMetric(scanNs, "scan-ns/op")
	b.ReportMetric(indexed/scanNs, "ratio-to-scan")
}
