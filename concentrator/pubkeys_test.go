package concentrator

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestConfigPubKeys(t *testing.T) {
	dir := t.TempDir()
	gw, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	gwDER, _ := x509.MarshalPKIXPublicKey(&gw.PublicKey)
	gwFile := filepath.Join(dir, "gw.pub")
	writePEM(t, gwFile, "PUBLIC KEY", gwDER)
	_, conc, _ := ed25519.GenerateKey(rand.Reader)
	concDER, _ := x509.MarshalPKCS8PrivateKey(conc)
	concFile := filepath.Join(dir, "conc.key")
	writePEM(t, concFile, "PRIVATE KEY", concDER)

	yaml := strings.Replace(minimal, "  id: conc.example\n", "  id: conc.example\n  key: "+concFile+"\n", 1)
	yaml = strings.Replace(yaml, "  psks:\n", "  pubkeys:\n    - id: gw9.iot.example\n      key_file: "+gwFile+"\n  psks:\n", 1)
	c, err := ParseConfig([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	ec, err := c.engineConfig()
	if err != nil {
		t.Fatal(err)
	}
	k, ok := ec.PublicKeys.PublicKey(mustID(t, "gw9.iot.example"))
	if !ok || !gw.PublicKey.Equal(k) {
		t.Fatal("raw public key not loaded")
	}
	if ec.Local.Signer == nil || !conc.Public().(ed25519.PublicKey).Equal(ec.Local.Signer.Public()) || len(ec.Local.Chain) != 0 {
		t.Fatal("our raw key not loaded")
	}

	// Errors name the field.
	for _, tc := range []struct{ yaml, field string }{
		{strings.Replace(yaml, "key_file: "+gwFile, "key_file: ''", 1), "auth.pubkeys[0].key_file"},
		{strings.Replace(yaml, "id: gw9.iot.example", "id: ''", 1), "auth.pubkeys[0].id"},
		{strings.Replace(yaml, "  psks:\n", "    - id: gw9.iot.example\n      key_file: x\n  psks:\n", 1), "auth.pubkeys[1].id"},
		{strings.Replace(minimal, "  id: conc.example\n", "  id: conc.example\n  key: "+concFile+"\n", 1), "identity.key"},
	} {
		_, err := ParseConfig([]byte(tc.yaml))
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != tc.field {
			t.Errorf("want an error at %s, got %v", tc.field, err)
		}
	}
	// Key files are read with the credentials.
	certFile := filepath.Join(dir, "not-a-key.pem")
	writePEM(t, certFile, "CERTIFICATE", []byte{0x30, 0})
	small, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	smallDER, _ := x509.MarshalPKIXPublicKey(&small.PublicKey)
	smallFile := filepath.Join(dir, "p224.pub")
	writePEM(t, smallFile, "PUBLIC KEY", smallDER)
	for _, f := range []string{filepath.Join(dir, "missing"), certFile, smallFile} {
		c, err := ParseConfig([]byte(strings.Replace(yaml, gwFile, f, 1)))
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.engineConfig()
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Field != "auth.pubkeys[0].key_file" {
			t.Errorf("%s: want an error at auth.pubkeys[0].key_file, got %v", filepath.Base(f), err)
		}
	}
}
