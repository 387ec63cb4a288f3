package suite

import (
	"encoding/hex"
	"io"
	mrand "math/rand/v2"
	"strconv"
	"strings"
	"testing"
)

// unhex decodes a hex string written as in the RFCs: whitespace is ignored.
func unhex(tb testing.TB, s string) []byte {
	tb.Helper()
	b, err := hex.DecodeString(strings.Join(strings.Fields(s), ""))
	if err != nil {
		tb.Fatalf("bad hex in test vector: %v", err)
	}
	return b
}

// repeat returns n copies of octet b.
func repeat(b byte, n int) []byte {
	return []byte(strings.Repeat(string([]byte{b}), n))
}

// seq returns the octets from, from+1, ..., to.
func seq(from, to byte) []byte {
	var b []byte
	for i := int(from); i <= int(to); i++ {
		b = append(b, byte(i))
	}
	return b
}

// testRand is a deterministic source of randomness for tests.
func testRand(seed byte) io.Reader {
	return mrand.NewChaCha8([32]byte{0: seed, 31: 0x5a})
}

// errReader fails every read.
type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }

// constReader returns the same octet forever.
type constReader byte

func (c constReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(c)
	}
	return len(p), nil
}

// suiteSpec names one ENCR/INTEG combination under test.
type suiteSpec struct {
	name    string
	encr    uint16
	keyBits int
	integ   uint16
}

// allSuites is every combination NewCipher accepts.
func allSuites() []suiteSpec {
	var s []suiteSpec
	for _, e := range []struct {
		id   uint16
		name string
	}{{EncrAESGCM8, "gcm8"}, {EncrAESGCM12, "gcm12"}, {EncrAESGCM16, "gcm16"}} {
		for _, bits := range []int{128, 192, 256} {
			s = append(s, suiteSpec{"aes" + strconv.Itoa(bits) + e.name, e.id, bits, IntegNone})
		}
	}
	s = append(s, suiteSpec{"chacha20poly1305", EncrChaCha20Poly1305, 0, IntegNone})
	for _, bits := range []int{128, 192, 256} {
		for _, in := range []struct {
			id   uint16
			name string
		}{
			{IntegHMACSHA256128, "sha256"}, {IntegHMACSHA384192, "sha384"}, {IntegHMACSHA512256, "sha512"},
			{IntegHMACSHA196, "sha1"}, {IntegHMACMD596, "md5"},
		} {
			s = append(s, suiteSpec{"aes" + strconv.Itoa(bits) + "cbc-" + in.name, EncrAESCBC, bits, in.id})
		}
	}
	return s
}

// newSK makes an SKCipher for spec with key material drawn from seed.
func newSK(tb testing.TB, spec suiteSpec, seed byte) *SKCipher {
	tb.Helper()
	c, err := NewCipher(spec.encr, spec.keyBits, spec.integ)
	if err != nil {
		tb.Fatalf("NewCipher(%s): %v", spec.name, err)
	}
	r := testRand(seed)
	ek := make([]byte, c.EncrKeyLen())
	ik := make([]byte, c.IntegKeyLen())
	io.ReadFull(r, ek)
	io.ReadFull(r, ik)
	s, err := c.Key(ek, ik)
	if err != nil {
		tb.Fatalf("Key(%s): %v", spec.name, err)
	}
	return s
}
