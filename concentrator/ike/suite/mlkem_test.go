package suite

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"
)

func TestMLKEMRoundTrip(t *testing.T) {
	for _, g := range []uint16{GroupMLKEM768, GroupMLKEM1024} {
		for _, r := range []struct {
			name string
			resp func(byte) any
		}{{"deterministic", func(b byte) any { return testRand(b) }}, {"system", func(byte) any { return rand.Reader }}} {
			ini, err := GenerateKeyExchange(g, testRand(1))
			if err != nil {
				t.Fatal(err)
			}
			if n, _ := KeyExchangeLen(g); len(ini.Public()) != n {
				t.Fatalf("%s: encapsulation key %d octets, want %d", GroupName(g), len(ini.Public()), n)
			}
			var rr = testRand(2)
			if r.name == "system" {
				resp, secret, err := Respond(g, ini.Public(), rand.Reader)
				checkKEM(t, g, ini, resp, secret, err)
				continue
			}
			resp, secret, err := Respond(g, ini.Public(), rr)
			checkKEM(t, g, ini, resp, secret, err)
			// Deterministic readers replay: the same ciphertext again.
			resp2, secret2, _ := Respond(g, ini.Public(), testRand(2))
			if !bytes.Equal(resp.Public(), resp2.Public()) || !bytes.Equal(secret, secret2) {
				t.Fatalf("%s: derandomised encapsulation does not replay", GroupName(g))
			}
		}
	}
}

func checkKEM(t *testing.T, g uint16, ini, resp KeyExchange, secret []byte, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: Respond: %v", GroupName(g), err)
	}
	if n, _ := ResponseLen(g); len(resp.Public()) != n {
		t.Fatalf("%s: ciphertext %d octets, want %d", GroupName(g), len(resp.Public()), n)
	}
	got, err := ini.SharedSecret(resp.Public())
	if err != nil || !bytes.Equal(got, secret) || len(secret) != 32 {
		t.Fatalf("%s: decapsulated %x (%v), encapsulated %x", GroupName(g), got, err, secret)
	}
}

func TestMLKEMInvalidPeer(t *testing.T) {
	ini, _ := GenerateKeyExchange(GroupMLKEM768, testRand(3))
	var ke *KeyExchangeError
	if _, _, err := Respond(GroupMLKEM768, ini.Public()[1:], testRand(4)); !errors.As(err, &ke) {
		t.Fatalf("short encapsulation key: %v", err)
	}
	// An encapsulation key whose coefficients are not reduced mod q.
	bad := bytes.Repeat([]byte{0xff}, len(ini.Public()))
	if _, _, err := Respond(GroupMLKEM768, bad, testRand(4)); !errors.As(err, &ke) {
		t.Fatalf("unreduced encapsulation key: %v", err)
	}
	if _, err := ini.SharedSecret(make([]byte, 10)); !errors.As(err, &ke) {
		t.Fatalf("short ciphertext: %v", err)
	}
	// A wrong ciphertext of the right length decapsulates (implicit
	// rejection) to a secret unrelated to the responder's.
	resp, secret, _ := Respond(GroupMLKEM768, ini.Public(), testRand(5))
	ct := bytes.Clone(resp.Public())
	ct[0] ^= 1
	if got, err := ini.SharedSecret(ct); err != nil || bytes.Equal(got, secret) {
		t.Fatalf("tampered ciphertext: %x %v", got, err)
	}
}

func TestRespondDH(t *testing.T) {
	ini, _ := GenerateKeyExchange(Group31, testRand(6))
	resp, secret, err := Respond(Group31, ini.Public(), testRand(7))
	if err != nil {
		t.Fatal(err)
	}
	got, err := ini.SharedSecret(resp.Public())
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("X25519 through Respond: %x %v vs %x", got, err, secret)
	}
}

func TestAdditionalKeyExchangePolicy(t *testing.T) {
	for typ := TypeADDKE1; typ <= TypeADDKE7; typ++ {
		if err := Check(typ, GroupMLKEM768, false); err != nil {
			t.Errorf("ADDKE%d ML-KEM-768: %v", typ-TypeADDKE1+1, err)
		}
		if err := Check(typ, 0, false); err != nil {
			t.Errorf("ADDKE%d NONE: %v", typ-TypeADDKE1+1, err)
		}
		var we *WeakError
		if err := Check(typ, Group2, false); !errors.As(err, &we) {
			t.Errorf("ADDKE%d MODP_1024: %v", typ-TypeADDKE1+1, err)
		}
	}
	if GroupName(GroupMLKEM768) != "ML_KEM_768" || GroupName(GroupMLKEM1024) != "ML_KEM_1024" {
		t.Error("names")
	}
}

func BenchmarkMLKEM768(b *testing.B) {
	for i := 0; i < b.N; i++ {
		ini, _ := GenerateKeyExchange(GroupMLKEM768, rand.Reader)
		resp, _, _ := Respond(GroupMLKEM768, ini.Public(), rand.Reader)
		if _, err := ini.SharedSecret(resp.Public()); err != nil {
			b.Fatal(err)
		}
	}
}
