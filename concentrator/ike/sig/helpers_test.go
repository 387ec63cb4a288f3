package sig

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// testKeys are the fixed keys in testdata/keys, loaded once per test binary.
type testKeys struct {
	p256, p384, p521, ed25519, rsa2048 crypto.Signer
}

var loadKeys = sync.OnceValues(func() (testKeys, error) {
	var k testKeys
	for _, x := range []struct {
		file string
		dst  *crypto.Signer
	}{
		{"p256-sec1.pem", &k.p256},
		{"p384-pkcs8.pem", &k.p384},
		{"p521-sec1.pem", &k.p521},
		{"ed25519-pkcs8.pem", &k.ed25519},
		{"rsa2048-pkcs1.pem", &k.rsa2048},
	} {
		b, err := os.ReadFile(filepath.Join("testdata", "keys", x.file))
		if err != nil {
			return k, err
		}
		if *x.dst, err = ParsePrivateKey(b); err != nil {
			return k, err
		}
	}
	return k, nil
})

func keys(tb testing.TB) testKeys {
	tb.Helper()
	k, err := loadKeys()
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// namedKeys lists the fixed keys with names for subtests.
func namedKeys(tb testing.TB) []struct {
	name string
	key  crypto.Signer
} {
	k := keys(tb)
	return []struct {
		name string
		key  crypto.Signer
	}{
		{"p256", k.p256}, {"p384", k.p384}, {"p521", k.p521}, {"ed25519", k.ed25519}, {"rsa2048", k.rsa2048},
	}
}

// newKey makes a fresh key of the same type as k (for wrong-key tests).
func newKey(tb testing.TB, k crypto.Signer) crypto.Signer {
	tb.Helper()
	var (
		s   crypto.Signer
		err error
	)
	switch pub := k.Public().(type) {
	case *ecdsa.PublicKey:
		s, err = ecdsa.GenerateKey(pub.Curve, rand.Reader)
	case ed25519.PublicKey:
		_, s, err = ed25519.GenerateKey(rand.Reader)
	case *rsa.PublicKey:
		s, err = rsa.GenerateKey(rand.Reader, pub.N.BitLen())
	}
	if err != nil || s == nil {
		tb.Fatalf("newKey: %v", err)
	}
	return s
}

// testOctets stands in for the signed octets of RFC 7296 §2.15.
func testOctets() []byte {
	b := make([]byte, 300)
	for i := range b {
		b[i] = byte(i * 7)
	}
	return b
}

// ---- test PKI ----

// t0 is the reference "now" of the certificate tests.
var t0 = time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)

type pkiNode struct {
	cert *x509.Certificate
	key  crypto.Signer
}

var serialCounter struct {
	sync.Mutex
	n int64
}

func nextSerial() *big.Int {
	serialCounter.Lock()
	defer serialCounter.Unlock()
	serialCounter.n++
	return big.NewInt(1000 + serialCounter.n)
}

func p256Key(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// issue creates a certificate for key from template, signed by parent (self
// signed if parent is nil).
func issue(tb testing.TB, tmpl *x509.Certificate, key crypto.Signer, parent *pkiNode) *pkiNode {
	tb.Helper()
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber = nextSerial()
	}
	parentCert, parentKey := tmpl, key
	if parent != nil {
		parentCert, parentKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parentCert, key.Public(), parentKey)
	if err != nil {
		tb.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return &pkiNode{cert: c, key: key}
}

func caTemplate(cn string, notBefore, notAfter time.Time) *x509.Certificate {
	return &x509.Certificate{
		Subject:               pkix.Name{Country: []string{"XX"}, Organization: []string{"Interop Test"}, CommonName: cn},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
}

func leafTemplate(cn string, notBefore, notAfter time.Time) *x509.Certificate {
	return &x509.Certificate{
		Subject:   pkix.Name{Country: []string{"XX"}, Organization: []string{"Interop Test"}, CommonName: cn},
		NotBefore: notBefore,
		NotAfter:  notAfter,
		KeyUsage:  x509.KeyUsageDigitalSignature,
		DNSNames:  []string{cn},
	}
}

// testPKI is root → intermediate → leaf, valid around t0.
type testPKI struct {
	root, inter, leaf *pkiNode
}

func newPKI(tb testing.TB) *testPKI {
	tb.Helper()
	root := issue(tb, caTemplate("Test Root", t0.AddDate(-1, 0, 0), t0.AddDate(10, 0, 0)), p256Key(tb), nil)
	inter := issue(tb, caTemplate("Test Intermediate", t0.AddDate(-1, 0, 0), t0.AddDate(5, 0, 0)), p256Key(tb), root)
	leaf := issue(tb, leafTemplate("gw1.iot.example", t0.AddDate(0, -1, 0), t0.AddDate(1, 0, 0)), p256Key(tb), inter)
	return &testPKI{root: root, inter: inter, leaf: leaf}
}

func (p *testPKI) roots() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.root.cert)
	return pool
}

func (p *testPKI) chain() [][]byte {
	return [][]byte{p.leaf.cert.Raw, p.inter.cert.Raw}
}

// crl issues a CRL by issuer listing the given certificates.
func crl(tb testing.TB, issuer *pkiNode, thisUpdate, nextUpdate time.Time, revoked ...*x509.Certificate) *x509.RevocationList {
	tb.Helper()
	tmpl := &x509.RevocationList{
		Number:     nextSerial(),
		ThisUpdate: thisUpdate,
		NextUpdate: nextUpdate,
	}
	for _, c := range revoked {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{
			SerialNumber:   c.SerialNumber,
			RevocationTime: thisUpdate,
			ReasonCode:     1, // keyCompromise
		})
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

// ---- strongSwan known answers ----

type katCase struct {
	name   string
	cert   *x509.Certificate
	method uint8
	auth   []byte
	octets []byte
}

// loadKAT reads testdata/strongswan/<dir>/<name>.txt and its certificate.
func loadKAT(tb testing.TB, dir, name string) katCase {
	tb.Helper()
	f, err := os.ReadFile(filepath.Join("testdata", "strongswan", dir, name+".txt"))
	if err != nil {
		tb.Fatal(err)
	}
	kc := katCase{name: dir + "/" + name}
	sc := bufio.NewScanner(bytes.NewReader(f))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, ": ")
		if !ok {
			tb.Fatalf("%s: bad line %q", kc.name, line)
		}
		switch k {
		case "cert":
			b, err := os.ReadFile(filepath.Join("testdata", "strongswan", dir, v))
			if err != nil {
				tb.Fatal(err)
			}
			certs, err := ParseCertificates(b)
			if err != nil {
				tb.Fatal(err)
			}
			kc.cert = certs[0]
		case "method":
			m, err := strconv.Atoi(v)
			if err != nil {
				tb.Fatal(err)
			}
			kc.method = uint8(m)
		case "auth":
			kc.auth = mustHex(tb, v)
		case "octets":
			kc.octets = mustHex(tb, v)
		}
	}
	if kc.cert == nil || kc.auth == nil || kc.octets == nil || kc.method == 0 {
		tb.Fatalf("%s: incomplete", kc.name)
	}
	return kc
}

func mustHex(tb testing.TB, s string) []byte {
	tb.Helper()
	b, err := hex.DecodeString(strings.TrimSpace(s))
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func readFile(tb testing.TB, parts ...string) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(append([]string{"testdata"}, parts...)...))
	if err != nil {
		tb.Fatal(err)
	}
	return b
}
