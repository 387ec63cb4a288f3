package suite

import (
	"bytes"
	"errors"
	"testing"
)

// fuzzSuites are fixed-key ciphers of each construction Open implements.
var fuzzSuites = []suiteSpec{
	{"aes128gcm16", EncrAESGCM16, 128, IntegNone},
	{"aes256gcm8", EncrAESGCM8, 256, IntegNone},
	{"chacha20poly1305", EncrChaCha20Poly1305, 256, IntegNone},
	{"aes128cbc-sha256", EncrAESCBC, 128, IntegHMACSHA256128},
	{"aes256cbc-sha1", EncrAESCBC, 256, IntegHMACSHA196},
}

// FuzzSKOpen feeds arbitrary bodies and associated data to Open: it must
// never panic, must fail with one of its documented errors, and whatever
// it accepts must be no longer than the ciphertext.
func FuzzSKOpen(f *testing.F) {
	sks := make([]*SKCipher, len(fuzzSuites))
	for i, spec := range fuzzSuites {
		sks[i] = newSK(f, spec, 42)
		c := sks[i].Cipher()
		assoc := seq(0, 31)
		for _, n := range []int{0, 1, 15, 16, 100} {
			sealed := sks[i].Seal(nil, make([]byte, c.IVLen()), assoc, bytes.Repeat([]byte{0xab}, n))
			f.Add(byte(i), assoc, sealed)
			f.Add(byte(i), assoc, sealed[:len(sealed)-1])
		}
		f.Add(byte(i), []byte{}, []byte{})
		f.Add(byte(i), assoc, make([]byte, c.IVLen()+c.ICVLen()))
	}
	f.Fuzz(func(t *testing.T, sel byte, assoc, body []byte) {
		s := sks[int(sel)%len(sks)]
		orig := append([]byte{}, body...)
		out, err := s.Open(nil, assoc, body)
		if !bytes.Equal(body, orig) {
			t.Fatal("Open modified its input")
		}
		if err != nil {
			if out != nil {
				t.Fatal("output returned with an error")
			}
			if err != ErrIntegrity && !errors.Is(err, ErrMalformed) {
				t.Fatalf("undocumented error %v", err)
			}
			return
		}
		c := s.Cipher()
		if len(out) > len(body)-c.IVLen()-c.ICVLen()-1 {
			t.Fatalf("plaintext of %d octets from a %d-octet body", len(out), len(body))
		}
	})
}

// FuzzKeyExchangePeer feeds arbitrary peer values to SharedSecret: it must
// never panic, and must either return a secret of the group's length or a
// *KeyExchangeError.
func FuzzKeyExchangePeer(f *testing.F) {
	groups := []uint16{Group31, Group19, Group20, Group21, Group14, Group2}
	kes := make([]KeyExchange, len(groups))
	for i, g := range groups {
		k, err := GenerateKeyExchange(g, testRand(byte(i)))
		if err != nil {
			f.Fatal(err)
		}
		kes[i] = k
		peer, _ := GenerateKeyExchange(g, testRand(byte(100+i)))
		f.Add(byte(i), peer.Public())
		f.Add(byte(i), make([]byte, len(peer.Public())))
		f.Add(byte(i), bytes.Repeat([]byte{0xff}, len(peer.Public())))
		f.Add(byte(i), peer.Public()[1:])
	}
	secretLen := map[uint16]int{Group31: 32, Group19: 32, Group20: 48, Group21: 66, Group14: 256, Group2: 128}
	f.Fuzz(func(t *testing.T, sel byte, peer []byte) {
		k := kes[int(sel)%len(kes)]
		z, err := k.SharedSecret(peer)
		if err != nil {
			var ke *KeyExchangeError
			if !errors.As(err, &ke) || ke.Group != k.Group() {
				t.Fatalf("error %v is not a *KeyExchangeError for the group", err)
			}
			return
		}
		if len(z) != secretLen[k.Group()] {
			t.Fatalf("%s: %d-octet secret", GroupName(k.Group()), len(z))
		}
	})
}

// FuzzX25519MatchesStdlib: group 31's public value and shared secret are
// crypto/ecdh's for any private key and peer value.
func FuzzX25519MatchesStdlib(f *testing.F) {
	f.Add(make([]byte, 32), make([]byte, 32))
	f.Add(bytes.Repeat([]byte{0xff}, 32), bytes.Repeat([]byte{0xff}, 32))
	f.Add(bytes.Repeat([]byte{0x5a}, 32), bytes.Repeat([]byte{0x09}, 32))
	f.Fuzz(func(t *testing.T, priv, peer []byte) {
		var p, q [32]byte // any input: cut or padded to 32 octets
		copy(p[:], priv)
		copy(q[:], peer)
		checkX25519(t, p[:], [][]byte{q[:]})
	})
}
