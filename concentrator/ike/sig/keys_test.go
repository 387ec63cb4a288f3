package sig

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"testing"
)

func TestParsePrivateKey(t *testing.T) {
	p256 := keys(t).p256
	for _, c := range []struct {
		file  string
		check func(crypto.PublicKey) bool
	}{
		{"p256-sec1.pem", func(p crypto.PublicKey) bool { k, ok := p.(*ecdsa.PublicKey); return ok && k.Curve == elliptic.P256() }},
		{"p256-pkcs8.der", func(p crypto.PublicKey) bool { return p256.Public().(*ecdsa.PublicKey).Equal(p) }},
		{"p384-pkcs8.pem", func(p crypto.PublicKey) bool { k, ok := p.(*ecdsa.PublicKey); return ok && k.Curve == elliptic.P384() }},
		{"p521-sec1.pem", func(p crypto.PublicKey) bool { k, ok := p.(*ecdsa.PublicKey); return ok && k.Curve == elliptic.P521() }},
		{"ed25519-pkcs8.pem", func(p crypto.PublicKey) bool { _, ok := p.(ed25519.PublicKey); return ok }},
		{"rsa2048-pkcs1.pem", func(p crypto.PublicKey) bool { k, ok := p.(*rsa.PublicKey); return ok && k.N.BitLen() == 2048 }},
	} {
		key, err := ParsePrivateKey(readFile(t, "keys", c.file))
		if err != nil || !c.check(key.Public()) {
			t.Errorf("%s: %T %v", c.file, key, err)
		}
	}

	// DER forms of SEC 1 and PKCS#1.
	sec1, _ := x509.MarshalECPrivateKey(p256.(*ecdsa.PrivateKey))
	pkcs1 := x509.MarshalPKCS1PrivateKey(keys(t).rsa2048.(*rsa.PrivateKey))
	for name, der := range map[string][]byte{"SEC 1 DER": sec1, "PKCS#1 DER": pkcs1} {
		if _, err := ParsePrivateKey(der); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}

	var uke *UnsupportedKeyError
	for _, file := range []string{"rsa1024-pkcs8.pem", "x25519-pkcs8.pem"} {
		if _, err := ParsePrivateKey(readFile(t, "keys", file)); !errors.As(err, &uke) {
			t.Errorf("%s: got %v, want UnsupportedKeyError", file, err)
		}
	}
	encrypted := readFile(t, "keys", "p256-encrypted.pem")
	legacyEncrypted := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-128-CBC,00"}, Bytes: sec1})
	cert := readFile(t, "strongswan", "ecdsa", "gw1.crt")
	for name, in := range map[string][]byte{
		"encrypted PKCS#8":     encrypted,
		"encrypted legacy PEM": legacyEncrypted,
		"certificate only":     cert,
		"garbage DER":          {0x30, 0x03, 0x02, 0x01, 0x01},
		"empty":                nil,
		"bad PEM body":         []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
	} {
		if k, err := ParsePrivateKey(in); err == nil {
			t.Errorf("%s: parsed %T", name, k)
		}
	}
}

func TestParseCertificates(t *testing.T) {
	ca := readFile(t, "strongswan", "ecdsa", "ca.crt")
	gw := readFile(t, "strongswan", "ecdsa", "gw1.crt")
	one, err := ParseCertificates(gw)
	if err != nil || len(one) != 1 {
		t.Fatalf("PEM: %v", err)
	}
	// PEM bundle with a non-certificate block in between.
	key := readFile(t, "keys", "p256-sec1.pem")
	bundle := bytes.Join([][]byte{gw, key, ca}, nil)
	two, err := ParseCertificates(bundle)
	if err != nil || len(two) != 2 || !two[0].Equal(one[0]) {
		t.Fatalf("PEM bundle: %d, %v", len(two), err)
	}
	// DER, single and concatenated.
	if c, err := ParseCertificates(one[0].Raw); err != nil || len(c) != 1 {
		t.Errorf("DER: %v", err)
	}
	if c, err := ParseCertificates(append(bytes.Clone(two[0].Raw), two[1].Raw...)); err != nil || len(c) != 2 {
		t.Errorf("DER concatenated: %v", err)
	}
	for name, in := range map[string][]byte{
		"empty":          nil,
		"no cert block":  key,
		"garbage DER":    {0x30, 0x00},
		"truncated DER":  one[0].Raw[:100],
		"bad PEM inside": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 0x00}}),
	} {
		if c, err := ParseCertificates(in); err == nil {
			t.Errorf("%s: parsed %d certificates", name, len(c))
		}
	}
}

func TestParseCRLs(t *testing.T) {
	p := newPKI(t)
	a := crl(t, p.inter, t0, t0.AddDate(0, 0, 7), p.leaf.cert)
	b := crl(t, p.root, t0, t0.AddDate(0, 0, 7))
	pemBundle := append(pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: a.Raw}), pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: b.Raw})...)
	for name, in := range map[string][]byte{
		"PEM":             pemBundle,
		"DER":             append(bytes.Clone(a.Raw), b.Raw...),
		"PEM with others": append(bytes.Clone(readFile(t, "strongswan", "ecdsa", "ca.crt")), pemBundle...),
	} {
		crls, err := ParseCRLs(in)
		if err != nil || len(crls) != 2 || !bytes.Equal(crls[0].Raw, a.Raw) || !bytes.Equal(crls[1].Raw, b.Raw) {
			t.Errorf("%s: %d CRLs, %v", name, len(crls), err)
		}
	}
	for name, in := range map[string][]byte{
		"empty":          nil,
		"no CRL block":   readFile(t, "strongswan", "ecdsa", "ca.crt"),
		"truncated DER":  a.Raw[:len(a.Raw)-1],
		"trailing bytes": append(bytes.Clone(a.Raw), 0x00),
		"bad CRL":        {0x30, 0x00},
	} {
		if crls, err := ParseCRLs(in); err == nil {
			t.Errorf("%s: parsed %d CRLs", name, len(crls))
		}
	}
}

func TestParseRawPublicKey(t *testing.T) {
	for _, k := range namedKeys(t) {
		der, err := x509.MarshalPKIXPublicKey(k.key.Public())
		if err != nil {
			t.Fatal(err)
		}
		pub, err := ParseRawPublicKey(der)
		if err != nil {
			t.Errorf("%s: %v", k.name, err)
			continue
		}
		if !pub.(interface{ Equal(crypto.PublicKey) bool }).Equal(k.key.Public()) {
			t.Errorf("%s: different key", k.name)
		}
		// A signature verifies with the parsed raw key.
		method, data, err := Sign(k.key, testOctets(), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := Verify(pub, method, data, testOctets(), false); err != nil {
			t.Errorf("%s: %v", k.name, err)
		}
	}
	// Too small RSA and X25519 are refused.
	var uke *UnsupportedKeyError
	for _, file := range []string{"rsa1024-pkcs8.pem", "x25519-pkcs8.pem"} {
		block, _ := pem.Decode(readFile(t, "keys", file))
		priv, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.MarshalPKIXPublicKey(priv.(interface{ Public() crypto.PublicKey }).Public())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseRawPublicKey(der); !errors.As(err, &uke) {
			t.Errorf("%s: got %v, want UnsupportedKeyError", file, err)
		}
	}
}
