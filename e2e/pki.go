package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"
)

// PKI is a throw-away test CA (ECDSA P-256), made at test time.
type PKI struct {
	CA    *x509.Certificate
	CAPEM []byte // the CA certificate, PEM

	// CRLURL and OCSPURL, when set, go into the certificates Issue makes
	// from then on (CRL distribution point, AIA OCSP responder).
	CRLURL, OCSPURL string

	key     *ecdsa.PrivateKey
	mu      sync.Mutex
	revoked map[string]time.Time // by serial (hex)
}

// Credential is an end-entity certificate and its private key.
type Credential struct {
	Cert    *x509.Certificate
	CertPEM []byte // "CERTIFICATE"
	KeyPEM  []byte // "PRIVATE KEY" (PKCS#8)
}

// NewPKI creates a CA "C=XX, O=ikefleet e2e, CN=ikefleet e2e CA".
func NewPKI(t testing.TB) *PKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{Country: []string{"XX"}, Organization: []string{"ikefleet e2e"}, CommonName: "ikefleet e2e CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &PKI{CA: ca, CAPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key: key}
}

// Issue makes an ECDSA P-256 certificate for "C=XX, O=ikefleet e2e, CN=name"
// with subjectAltName DNS:name (e.g. "conc.example", "gw1.iot.example"),
// usable as IKE identity name. extraSANs are added as further DNS names
// (a long list makes a certificate big enough to need IKE fragmentation).
func (p *PKI) Issue(t testing.TB, name string, extraSANs ...string) Credential {
	t.Helper()
	return p.issue(t, name, extraSANs, nil)
}

// IssueIP is Issue with subjectAltName IP addresses as well: a TLS server
// reached by address (an etcd member, a node's peer API).
func (p *PKI) IssueIP(t testing.TB, name string, ips ...net.IP) Credential {
	t.Helper()
	return p.issue(t, name, nil, ips)
}

func (p *PKI) issue(t testing.TB, name string, extraSANs []string, ips []net.IP) Credential {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{Country: []string{"XX"}, Organization: []string{"ikefleet e2e"}, CommonName: name},
		DNSNames:              append([]string{name}, extraSANs...),
		IPAddresses:           ips,
		CRLDistributionPoints: p.crlDPs(),
		OCSPServer:            p.ocspServers(),
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.CA, &key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return Credential{
		Cert:    cert,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}),
	}
}

func serial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		t.Fatal(err)
	}
	return n.Add(n, big.NewInt(1))
}

// PublicKeyPEM is the credential's public key as PEM "PUBLIC KEY"
// (SubjectPublicKeyInfo): what a raw-public-key peer (RFC 7670) configures.
func PublicKeyPEM(c Credential) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: c.Cert.RawSubjectPublicKeyInfo})
}

func (p *PKI) crlDPs() []string {
	if p.CRLURL == "" {
		return nil
	}
	return []string{p.CRLURL}
}

func (p *PKI) ocspServers() []string {
	if p.OCSPURL == "" {
		return nil
	}
	return []string{p.OCSPURL}
}

// Intermediate makes a CA "C=XX, O=ikefleet e2e, CN=name" signed by p,
// carrying p's CRLURL and OCSPURL (its own revocation is p's to tell).
func (p *PKI) Intermediate(t testing.TB, name string) *PKI {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{Country: []string{"XX"}, Organization: []string{"ikefleet e2e"}, CommonName: name},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		CRLDistributionPoints: p.crlDPs(),
		OCSPServer:            p.ocspServers(),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.CA, &key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &PKI{CA: ca, CAPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key: key}
}

// Revoke lists c (issued by p) in p's CRL and OCSP answers from now on.
func (p *PKI) Revoke(c *x509.Certificate) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.revoked == nil {
		p.revoked = map[string]time.Time{}
	}
	p.revoked[c.SerialNumber.Text(16)] = time.Now().Add(-time.Minute)
}

// RevokedAt reports whether the serial is revoked, and since when.
func (p *PKI) RevokedAt(serial *big.Int) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	at, ok := p.revoked[serial.Text(16)]
	return at, ok
}

// CRL is p's current CRL (DER), valid for validity.
func (p *PKI) CRL(t testing.TB, validity time.Duration) []byte {
	p.mu.Lock()
	var entries []x509.RevocationListEntry
	for s, at := range p.revoked {
		n, _ := new(big.Int).SetString(s, 16)
		entries = append(entries, x509.RevocationListEntry{SerialNumber: n, RevocationTime: at, ReasonCode: 1})
	}
	p.mu.Unlock()
	now := time.Now()
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(now.UnixNano()),
		ThisUpdate: now.Add(-time.Minute), NextUpdate: now.Add(validity), RevokedCertificateEntries: entries}, p.CA, p.key)
	if err != nil {
		t.Error(err)
	}
	return der
}

// Signer is the CA's key (an OCSP responder signs with it).
func (p *PKI) Signer() *ecdsa.PrivateKey { return p.key }
