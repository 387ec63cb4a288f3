package suite

// X25519 (group 31, RFC 8031) with the public value computed as a
// fixed-base multiple on the birationally equivalent Edwards curve, whose
// precomputed tables make it about 2.5 times faster than the Montgomery
// ladder crypto/ecdh runs for every private key it makes. A responder
// makes one key and one shared secret per IKE_SA_INIT, so this takes
// about a sixth off a handshake's cost (BenchmarkResponderHandshake).
// The shared secret is the RFC 7748 ladder over the same constant-time
// field arithmetic: crypto/ecdh cannot compute one without first deriving
// the private key's public value by a ladder of its own. Both agree
// with crypto/ecdh on every input (TestX25519MatchesStdlib,
// FuzzX25519MatchesStdlib). With the Go FIPS 140 module enabled,
// crypto/ecdh (and its policy) is used instead.

import (
	"crypto/fips140"
	"crypto/subtle"
	"fmt"
	"io"

	"filippo.io/edwards25519"
	"filippo.io/edwards25519/field"
)

const x25519Len = 32

type x25519KE struct {
	priv [x25519Len]byte // as drawn; clamped where it is used (RFC 7748 §5)
	pub  [x25519Len]byte
}

// fastX25519 reports whether group 31 uses this implementation.
func fastX25519() bool { return !fips140.Enabled() }

func newX25519(rand io.Reader) (KeyExchange, error) {
	k := &x25519KE{}
	if _, err := io.ReadFull(rand, k.priv[:]); err != nil {
		return nil, fmt.Errorf("suite: reading %s private key: %w", GroupName(Group31), err)
	}
	s, err := edwards25519.NewScalar().SetBytesWithClamping(k.priv[:])
	if err != nil {
		return nil, err // 32 bytes: cannot happen
	}
	copy(k.pub[:], new(edwards25519.Point).ScalarBaseMult(s).BytesMontgomery())
	return k, nil
}

func (k *x25519KE) Group() uint16  { return Group31 }
func (k *x25519KE) Public() []byte { return k.pub[:] }

func (k *x25519KE) SharedSecret(peer []byte) ([]byte, error) {
	if len(peer) != x25519Len {
		return nil, &KeyExchangeError{Group: Group31, Reason: fmt.Sprintf("%d octets, want %d", len(peer), x25519Len)}
	}
	out := make([]byte, x25519Len)
	x25519Ladder(out, &k.priv, peer)
	var zero [x25519Len]byte
	if subtle.ConstantTimeCompare(out, zero[:]) == 1 {
		return nil, &KeyExchangeError{Group: Group31, Reason: "low-order point (all-zero shared secret)"}
	}
	return out, nil
}

// x25519Ladder sets dst to X25519(scalar, u): the Montgomery ladder of RFC
// 7748 §5, in constant time (conditional swaps, no secret-dependent
// branch or index). The scalar is clamped; u's top bit is ignored and
// non-canonical values are taken modulo p, as §5 asks.
func x25519Ladder(dst []byte, scalar *[x25519Len]byte, u []byte) {
	e := *scalar
	e[0] &= 248
	e[31] &= 127
	e[31] |= 64
	var x1, x2, z2, x3, z3, a, b, aa, bb, e2, c, d, da, cb field.Element
	if _, err := x1.SetBytes(u); err != nil {
		panic("suite: X25519 point of the wrong length") // checked by the caller
	}
	x2.One()
	x3.Set(&x1)
	z3.One()
	swap := 0
	for t := 254; t >= 0; t-- {
		bit := int(e[t/8]>>(t%8)) & 1
		swap ^= bit
		x2.Swap(&x3, swap)
		z2.Swap(&z3, swap)
		swap = bit
		a.Add(&x2, &z2)
		aa.Square(&a)
		b.Subtract(&x2, &z2)
		bb.Square(&b)
		e2.Subtract(&aa, &bb)
		c.Add(&x3, &z3)
		d.Subtract(&x3, &z3)
		da.Multiply(&d, &a)
		cb.Multiply(&c, &b)
		x3.Add(&da, &cb)
		x3.Square(&x3)
		z3.Subtract(&da, &cb)
		z3.Square(&z3)
		z3.Multiply(&z3, &x1)
		x2.Multiply(&aa, &bb)
		z2.Mult32(&e2, 121665)
		z2.Add(&z2, &aa)
		z2.Multiply(&z2, &e2)
	}
	x2.Swap(&x3, swap)
	z2.Swap(&z3, swap)
	z2.Invert(&z2)
	x2.Multiply(&x2, &z2)
	copy(dst, x2.Bytes())
	clear(e[:])
}
