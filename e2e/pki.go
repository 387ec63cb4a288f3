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
	"testing"
	"time"
)

// PKI is a throw-away test CA (ECDSA P-256), made at test time.
type PKI struct {
	CA    *x509.Certificate
	CAPEM []byte // the CA certificate, PEM

	key *ecdsa.PrivateKey
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
		SerialNumber: serial(t),
		Subject:      pkix.Name{Country: []string{"XX"}, Organization: []string{"ikefleet e2e"}, CommonName: name},
		DNSNames:     append([]string{name}, extraSANs...),
		IPAddresses:  ips,
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
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
