package sig

import (
	"crypto/x509"
	encasn1 "encoding/asn1"
	"errors"
	"strings"
	"testing"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/ikefleet/ikefleet/concentrator/internal/wycheproof"
)

// Project Wycheproof's signature vectors (testdata/wycheproof) through
// Verify, the check of a peer's AUTH payload: malleated and BER-encoded
// ECDSA signatures, r or s out of range, PKCS#1 v1.5 padding variants,
// PSS with every salt length, Ed25519 edge cases.

type sigGroup struct {
	PublicKeyDER wycheproof.Hex `json:"publicKeyDer"`
	SHA          string         `json:"sha"`
	MGFSHA       string         `json:"mgfSha"`
	SaltLen      int            `json:"sLen"`
	Tests        []struct {
		wycheproof.Vector
		Msg wycheproof.Hex `json:"msg"`
		Sig wycheproof.Hex `json:"sig"`
	} `json:"tests"`
}

// wycheproofOIDs are the hash OIDs by Wycheproof's names.
var wycheproofOIDs = map[string]encasn1.ObjectIdentifier{
	"SHA-1":   oidSHA1,
	"SHA-224": {2, 16, 840, 1, 101, 3, 4, 2, 4},
	"SHA-256": oidSHA256,
	"SHA-384": oidSHA384,
	"SHA-512": oidSHA512,
}

// verifyCase is one vector file and how its signatures reach Verify.
type verifyCase struct {
	file   string
	method uint8
	// algID gives RFC 7427's AlgorithmIdentifier for a group (method 14).
	algID func(tb testing.TB, g *sigGroup) []byte
	// policy: whether Verify accepts the group's algorithm at all (a valid
	// signature under another is refused as unsupported).
	supported func(g *sigGroup, allowSHA1 bool) bool
}

func always(*sigGroup, bool) bool { return true }

func fixedAlgID(der []byte) func(testing.TB, *sigGroup) []byte {
	return func(testing.TB, *sigGroup) []byte { return der }
}

func TestWycheproofVerify(t *testing.T) {
	cases := []verifyCase{
		// RFC 4754: raw r || s of the curve's width.
		{"ecdsa_secp256r1_sha256_p1363_test", MethodECDSA256, nil, always},
		{"ecdsa_secp384r1_sha384_p1363_test", MethodECDSA384, nil, always},
		{"ecdsa_secp521r1_sha512_p1363_test", MethodECDSA521, nil, always},
		// RFC 7427: DER signatures.
		{"ecdsa_secp256r1_sha256_test", MethodDigitalSignature, fixedAlgID(algIDECDSAWithSHA256), always},
		{"ecdsa_secp384r1_sha384_test", MethodDigitalSignature, fixedAlgID(algIDECDSAWithSHA384), always},
		{"ecdsa_secp521r1_sha512_test", MethodDigitalSignature, fixedAlgID(algIDECDSAWithSHA512), always},
		{"ed25519_test", MethodDigitalSignature, fixedAlgID(algIDEd25519), always},
		{"rsa_signature_2048_sha256_test", MethodDigitalSignature, fixedAlgID(algIDSHA256WithRSA), always},
		{"rsa_signature_2048_sha384_test", MethodDigitalSignature, fixedAlgID(algIDSHA384WithRSA), always},
		{"rsa_signature_2048_sha512_test", MethodDigitalSignature, fixedAlgID(algIDSHA512WithRSA), always},
		{"rsa_pss_2048_sha256_mgf1_32_test", MethodDigitalSignature, pssParams, pssSupported},
		{"rsa_pss_2048_sha384_mgf1_48_test", MethodDigitalSignature, pssParams, pssSupported},
		{"rsa_pss_4096_sha512_mgf1_64_test", MethodDigitalSignature, pssParams, pssSupported},
		// Every pairing of message and MGF1 hash with salts of 0 to 64.
		{"rsa_pss_misc_test", MethodDigitalSignature, pssParams, pssSupported},
	}
	for _, c := range cases {
		t.Run(c.file, func(t *testing.T) {
			f := wycheproof.Load(t, "testdata/wycheproof/"+c.file+".json.gz", func(g *sigGroup) int { return len(g.Tests) })
			var accepted, refused, unsupported int
			for gi := range f.TestGroups {
				g := &f.TestGroups[gi]
				pub, err := x509.ParsePKIXPublicKey(g.PublicKeyDER)
				if err != nil {
					t.Fatalf("group %d: key: %v", gi, err)
				}
				var algID []byte
				if c.algID != nil {
					algID = c.algID(t, g)
				}
				for _, v := range g.Tests {
					data := []byte(v.Sig)
					if algID != nil {
						data = append(append([]byte{byte(len(algID))}, algID...), v.Sig...)
					}
					for _, allowSHA1 := range []bool{false, true} {
						err := Verify(pub, c.method, data, v.Msg, allowSHA1)
						var ve *VerifyError
						if err != nil && !errors.As(err, &ve) {
							t.Fatalf("%s: %T %v, want a *VerifyError", v.Name(), err, err)
						}
						switch {
						case !c.supported(g, allowSHA1):
							if err == nil || ve.Reason != ReasonUnsupportedAlgorithm && ve.Reason != ReasonSHA1NotAllowed {
								t.Errorf("%s, %s/%s salt %d (allowSHA1 %v): %v, want refused as unsupported", v.Name(), g.SHA, g.MGFSHA, g.SaltLen, allowSHA1, err)
							}
							unsupported++
						case v.Valid():
							if err != nil {
								t.Errorf("%s (allowSHA1 %v): %v", v.Name(), allowSHA1, err)
							}
							accepted++
						case v.Invalid():
							if err == nil {
								t.Errorf("%s %v: invalid signature accepted", v.Name(), v.Flags)
							}
							refused++
						default: // acceptable: either, by policy
							t.Logf("%s %v (acceptable): %v", v.Name(), v.Flags, err)
						}
					}
				}
			}
			t.Logf("%d verified, %d refused as invalid, %d refused as unsupported", accepted, refused, unsupported)
			if accepted == 0 {
				t.Error("no signature verified")
			}
		})
	}
}

// pssSupported: RSASSA-PSS with SHA-256/384/512 (SHA-1 only if allowed)
// and MGF1 over the same hash.
func pssSupported(g *sigGroup, allowSHA1 bool) bool {
	switch g.SHA {
	case "SHA-256", "SHA-384", "SHA-512":
	case "SHA-1":
		if !allowSHA1 {
			return false
		}
	default:
		return false
	}
	return g.MGFSHA == g.SHA
}

// pssParams encodes the group's RSASSA-PSS AlgorithmIdentifier (RFC 4055
// §3.1) with every field explicit.
func pssParams(tb testing.TB, g *sigGroup) []byte {
	tb.Helper()
	hash, mgf := wycheproofOIDs[g.SHA], wycheproofOIDs[g.MGFSHA]
	if hash == nil || mgf == nil || !strings.HasPrefix(g.SHA, "SHA-") {
		tb.Fatalf("PSS with %s, MGF1 %s", g.SHA, g.MGFSHA)
	}
	hashAlg := func(b *cryptobyte.Builder, oid encasn1.ObjectIdentifier) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(oid)
			b.AddASN1NULL()
		})
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(oidRSASSAPSS)
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) { hashAlg(b, hash) })
			b.AddASN1(cbasn1.Tag(1).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
					b.AddASN1ObjectIdentifier(oidMGF1)
					hashAlg(b, mgf)
				})
			})
			b.AddASN1(cbasn1.Tag(2).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
				b.AddASN1Int64(int64(g.SaltLen))
			})
		})
	})
	der, err := b.Bytes()
	if err != nil {
		tb.Fatal(err)
	}
	return der
}
