package statestore

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// writeCert issues a certificate (self-signed when parent is nil) and
// writes cert and key as PEM files named name.crt / name.key in dir.
func writeCert(t *testing.T, dir, name string, tmpl *x509.Certificate, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	os.WriteFile(filepath.Join(dir, name+".crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(filepath.Join(dir, name+".key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	c, _ := x509.ParseCertificate(der)
	return c, key
}

// External etcd with TLS client certificates: the store connects with
// the ClientConfig files; a client without a certificate is refused.
func TestTLSClientCertificates(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	ca, caKey := writeCert(t, dir, "ca", &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}, nil, nil)
	writeCert(t, dir, "server", &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "etcd"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}, ca, caKey)
	writeCert(t, dir, "node", &x509.Certificate{SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "node-a"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}, ca, caKey)
	f := func(n string) string { return filepath.Join(dir, n) }
	e, err := StartEmbedded(EmbedConfig{Dir: filepath.Join(dir, "data"), NoFsync: true,
		CertFile: f("server.crt"), KeyFile: f("server.key"), ClientCAFile: f("ca.crt")})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()

	cc := ClientConfig{Endpoints: e.Endpoints(), CertFile: f("node.crt"), KeyFile: f("node.key"), CAFile: f("ca.crt"),
		DialTimeout: 5 * time.Second}
	cli, err := Dial(cc)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	s := open(t, cli, testConfig(t, "a"))
	if err := s.Persist(tctx(t, 10*time.Second), Change{Kind: Established, Record: sampleRecord(1)}); err != nil {
		t.Fatal(err)
	}

	noCert := ClientConfig{Endpoints: e.Endpoints(), CAFile: f("ca.crt"), DialTimeout: time.Second}
	if cli2, err := Dial(noCert); err == nil {
		defer cli2.Close()
		if _, err := cli2.Get(tctx(t, time.Second), "x"); err == nil {
			t.Fatal("client without a certificate was served")
		}
	}
	if _, err := Dial(ClientConfig{Endpoints: e.Endpoints(), CertFile: f("nope.crt"), KeyFile: f("nope.key")}); err == nil {
		t.Fatal("missing certificate file accepted")
	}
}
