package suite

import (
	"strconv"
	"testing"
)

// BenchmarkKeyExchange measures one side of a handshake: generate a key,
// then compute the shared secret with the peer's value.
func BenchmarkKeyExchange(b *testing.B) {
	for _, g := range []struct {
		name  string
		group uint16
	}{{"x25519", Group31}, {"p256", Group19}, {"p384", Group20}, {"modp2048", Group14}} {
		b.Run(g.name, func(b *testing.B) {
			peer, err := GenerateKeyExchange(g.group, testRand(1))
			if err != nil {
				b.Fatal(err)
			}
			pub := peer.Public()
			rand := testRand(2)
			b.ReportAllocs()
			for b.Loop() {
				k, err := GenerateKeyExchange(g.group, rand)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := k.SharedSecret(pub); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

var benchSuites = []suiteSpec{
	{"aes128gcm16", EncrAESGCM16, 128, IntegNone},
	{"aes256gcm16", EncrAESGCM16, 256, IntegNone},
	{"chacha20poly1305", EncrChaCha20Poly1305, 256, IntegNone},
	{"aes128cbc-sha256", EncrAESCBC, 128, IntegHMACSHA256128},
	{"aes256cbc-sha512", EncrAESCBC, 256, IntegHMACSHA512256},
}

func BenchmarkSKSeal(b *testing.B) {
	for _, spec := range benchSuites {
		for _, n := range []int{200, 1400} {
			b.Run(spec.name+"/"+strconv.Itoa(n), func(b *testing.B) {
				s := newSK(b, spec, 1)
				iv := make([]byte, s.Cipher().IVLen())
				assoc, pt := make([]byte, 32), make([]byte, n)
				buf := make([]byte, 0, 32+s.Cipher().SealedLen(n))
				b.SetBytes(int64(n))
				b.ReportAllocs()
				for b.Loop() {
					s.Seal(buf, iv, assoc, pt)
				}
			})
		}
	}
}

func BenchmarkSKOpen(b *testing.B) {
	for _, spec := range benchSuites {
		for _, n := range []int{200, 1400} {
			b.Run(spec.name+"/"+strconv.Itoa(n), func(b *testing.B) {
				s := newSK(b, spec, 1)
				iv := make([]byte, s.Cipher().IVLen())
				assoc := make([]byte, 32)
				sealed := s.Seal(nil, iv, assoc, make([]byte, n))
				out := make([]byte, 0, n+16)
				b.SetBytes(int64(n))
				b.ReportAllocs()
				for b.Loop() {
					if _, err := s.Open(out, assoc, sealed); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
