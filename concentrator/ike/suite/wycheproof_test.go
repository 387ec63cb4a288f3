package suite

import (
	"bytes"
	"errors"
	"fmt"
	"math/big"
	"testing"

	"github.com/ikefleet/ikefleet/concentrator/internal/wycheproof"
)

// Project Wycheproof's vectors for the key exchanges and AEAD ciphers
// (testdata/wycheproof): edge cases, invalid points and modified tags that
// random round trips do not reach.

// kexGroup is a group of X25519 or ECDH vectors.
type kexGroup struct {
	Curve    string `json:"curve"`
	Encoding string `json:"encoding"` // ECDH: how the public values are written
	Tests    []struct {
		wycheproof.Vector
		Public  wycheproof.Hex `json:"public"`
		Private wycheproof.Hex `json:"private"`
		Shared  wycheproof.Hex `json:"shared"`
	} `json:"tests"`
}

// Group 31 (x25519.go, or crypto/ecdh with FIPS 140 on) on every vector:
// twist points, non-canonical and small public values, edge-case scalars.
// An all-zero shared secret is refused (RFC 8031 §2); Wycheproof marks
// those "acceptable", every other one gives the vector's secret.
func TestWycheproofX25519(t *testing.T) {
	f := wycheproof.Load(t, "testdata/wycheproof/x25519_test.json.gz", func(g *kexGroup) int { return len(g.Tests) })
	var zero [x25519Len]byte
	refused := 0
	for _, g := range f.TestGroups {
		if g.Curve != "curve25519" {
			t.Fatalf("curve %q", g.Curve)
		}
		for _, v := range g.Tests {
			k, err := GenerateKeyExchange(Group31, bytes.NewReader(v.Private))
			if err != nil {
				t.Fatalf("%s: %v", v.Name(), err)
			}
			got, err := k.SharedSecret(v.Public)
			if bytes.Equal(v.Shared, zero[:]) {
				var ke *KeyExchangeError
				if !errors.As(err, &ke) {
					t.Errorf("%s: all-zero secret not refused: %x %v", v.Name(), got, err)
				}
				refused++
				continue
			}
			if v.Invalid() || err != nil || !bytes.Equal(got, v.Shared) {
				t.Errorf("%s (%s): got %x %v, want %x", v.Name(), v.Result, got, err, v.Shared)
			}
			// The public value of the same private key, against crypto/ecdh.
			checkX25519(t, v.Private, [][]byte{v.Public})
		}
	}
	if refused == 0 {
		t.Error("no vector with an all-zero secret")
	}
}

// Groups 19-21 on every vector. The public values are SEC 1 points; a KE
// payload carries x | y without the 0x04 octet (RFC 5903 §7), so an
// uncompressed point is given without it and any other encoding as is,
// which IKE refuses (compressed points included, which Wycheproof deems
// acceptable). Points off the curve (invalid-curve attacks) are refused.
func TestWycheproofECDH(t *testing.T) {
	for _, c := range []struct {
		file  string
		group uint16
		curve string
	}{
		{"ecdh_secp256r1_ecpoint_test", Group19, "secp256r1"},
		{"ecdh_secp384r1_ecpoint_test", Group20, "secp384r1"},
		{"ecdh_secp521r1_ecpoint_test", Group21, "secp521r1"},
	} {
		t.Run(GroupName(c.group), func(t *testing.T) {
			f := wycheproof.Load(t, "testdata/wycheproof/"+c.file+".json.gz", func(g *kexGroup) int { return len(g.Tests) })
			_, size, _ := ecCurve(c.group)
			pubLen, err := KeyExchangeLen(c.group)
			if err != nil {
				t.Fatal(err)
			}
			accepted, refused := 0, 0
			for _, g := range f.TestGroups {
				if g.Curve != c.curve || g.Encoding != "ecpoint" {
					t.Fatalf("group of %s, %s", g.Curve, g.Encoding)
				}
				for _, v := range g.Tests {
					priv := new(big.Int).SetBytes(v.Private).FillBytes(make([]byte, size))
					k, err := GenerateKeyExchange(c.group, bytes.NewReader(priv))
					if err != nil {
						t.Fatalf("%s: private key: %v", v.Name(), err)
					}
					peer := []byte(v.Public)
					uncompressed := len(peer) == 1+pubLen && peer[0] == 4
					if uncompressed {
						peer = peer[1:]
					}
					got, err := k.SharedSecret(peer)
					if v.Valid() && uncompressed {
						if err != nil || !bytes.Equal(got, v.Shared) {
							t.Errorf("%s: got %x %v, want %x", v.Name(), got, err, v.Shared)
						}
						accepted++
						continue
					}
					var ke *KeyExchangeError
					if !errors.As(err, &ke) || got != nil {
						t.Errorf("%s (%s, %d octets): not refused: %x %v", v.Name(), v.Result, len(v.Public), got, err)
					}
					refused++
				}
			}
			if accepted == 0 || refused == 0 {
				t.Errorf("%d accepted, %d refused: the file did not exercise both", accepted, refused)
			}
		})
	}
}

type aeadGroup struct {
	IVSize  int `json:"ivSize"`
	KeySize int `json:"keySize"`
	TagSize int `json:"tagSize"`
	Tests   []struct {
		wycheproof.Vector
		Key wycheproof.Hex `json:"key"`
		IV  wycheproof.Hex `json:"iv"`
		AAD wycheproof.Hex `json:"aad"`
		Msg wycheproof.Hex `json:"msg"`
		CT  wycheproof.Hex `json:"ct"`
		Tag wycheproof.Hex `json:"tag"`
	} `json:"tests"`
}

// AES-GCM and ChaCha20-Poly1305 as SK payloads open them (SKCipher.Open):
// the vector's 12-octet nonce is the 4-octet salt that ends SK_e and the
// 8-octet IV that begins the payload (RFC 5282 §4, RFC 7634 §2), its AAD
// the associated data. A valid vector opens to its message less the IKE
// padding its last octet declares (or is refused as malformed when that
// octet declares more than there is, or the message is empty: an SK
// payload always carries the pad length); a modified tag is refused. The
// valid vectors also open with their tag cut to 12 and 8 octets (GCM's
// truncated ICVs, RFC 4106 §8; the 8-octet one is verified by our own
// code, openGCM8), and a flipped bit in any octet of the tag is refused.
// Other nonce lengths cannot occur in IKE and are skipped.
func TestWycheproofAEAD(t *testing.T) {
	for _, c := range []struct {
		file string
		encr []uint16 // by ICV: 16, 12, 8 octets
	}{
		{"aes_gcm_test", []uint16{EncrAESGCM16, EncrAESGCM12, EncrAESGCM8}},
		{"chacha20_poly1305_test", []uint16{EncrChaCha20Poly1305}},
	} {
		t.Run(c.file, func(t *testing.T) {
			f := wycheproof.Load(t, "testdata/wycheproof/"+c.file+".json.gz", func(g *aeadGroup) int { return len(g.Tests) })
			ran, skipped := 0, 0
			for _, g := range f.TestGroups {
				if g.IVSize != 8*nonceLen || g.TagSize != 128 {
					skipped += len(g.Tests)
					continue
				}
				for _, v := range g.Tests {
					for _, encr := range c.encr {
						keyBits := g.KeySize
						if encr == EncrChaCha20Poly1305 {
							keyBits = 0
						}
						ci, err := NewCipher(encr, keyBits, IntegNone)
						if err != nil {
							t.Fatalf("%s: %v", v.Name(), err)
						}
						if ci.ICVLen() != len(v.Tag) && !v.Valid() {
							continue // a modified tag may differ only past the cut
						}
						sk, err := ci.Key(append(append([]byte{}, v.Key...), v.IV[:saltLen]...), nil)
						if err != nil {
							t.Fatalf("%s: %v", v.Name(), err)
						}
						tag := v.Tag[:ci.ICVLen()]
						body := append(append(append([]byte{}, v.IV[saltLen:]...), v.CT...), tag...)
						checkWycheproofOpen(t, ci, sk, v.Name(), v.Valid(), v.AAD, body, v.Msg)
						if v.Valid() && len(v.Msg) > 0 {
							for i := len(body) - len(tag); i < len(body); i++ { // a bit of each tag octet
								body[i] ^= 0x10
								checkWycheproofOpen(t, ci, sk, fmt.Sprintf("%s with tag octet %d changed", v.Name(), i-len(body)+len(tag)), false, v.AAD, body, v.Msg)
								body[i] ^= 0x10
							}
						}
						ran++
					}
				}
			}
			t.Logf("%d openings, %d vectors of other nonce or tag lengths skipped", ran, skipped)
			if ran == 0 {
				t.Error("no vector ran")
			}
		})
	}
}

func checkWycheproofOpen(t *testing.T, ci *Cipher, sk *SKCipher, name string, valid bool, aad, body, msg []byte) {
	t.Helper()
	got, err := sk.Open(nil, aad, body)
	switch {
	case !valid:
		if err == nil || got != nil {
			t.Errorf("%s, %s: opened: %x %v", ci, name, got, err)
		}
	case len(msg) == 0 || int(msg[len(msg)-1])+1 > len(msg):
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("%s, %s: %x %v, want a malformed payload", ci, name, got, err)
		}
	default:
		want := msg[:len(msg)-1-int(msg[len(msg)-1])]
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s, %s: %x %v, want %x", ci, name, got, err, want)
		}
	}
}
