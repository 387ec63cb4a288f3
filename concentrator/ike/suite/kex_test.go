package suite

import (
	"bytes"
	"crypto/ecdh"
	"errors"
	"io"
	"math/big"
	"testing"
)

// RFC 5903 §8: the initiator's and responder's private keys i and r, their
// public values g^i and g^r (x | y, the KE payload encoding of §7) and the
// shared secret, the x-coordinate of g^ir.
var ecpVectors = []struct {
	group        uint16
	i, gi, r, gr string
	girx         string
}{
	{
		group: Group19,
		i:     "C88F01F5 10D9AC3F 70A292DA A2316DE5 44E9AAB8 AFE84049 C62A9C57 862D1433",
		gi: `DAD0B653 94221CF9 B051E1FE CA5787D0 98DFE637 FC90B9EF 945D0C37 72581180
		     5271A046 1CDB8252 D61F1C45 6FA3E59A B1F45B33 ACCF5F58 389E0577 B8990BB3`,
		r: "C6EF9C5D 78AE012A 011164AC B397CE20 88685D8F 06BF9BE0 B283AB46 476BEE53",
		gr: `D12DFB52 89C8D4F8 1208B702 70398C34 2296970A 0BCCB74C 736FC755 4494BF63
		     56FBF3CA 366CC23E 8157854C 13C58D6A AC23F046 ADA30F83 53E74F33 039872AB`,
		girx: "D6840F6B 42F6EDAF D13116E0 E1256520 2FEF8E9E CE7DCE03 812464D0 4B9442DE",
	},
	{
		group: Group20,
		i: `099F3C70 34D4A2C6 99884D73 A375A67F 7624EF7C 6B3C0F16 0647B674 14DCE655
		    E35B5380 41E649EE 3FAEF896 783AB194`,
		gi: `667842D7 D180AC2C DE6F74F3 7551F557 55C7645C 20EF73E3 1634FE72 B4C55EE6
		     DE3AC808 ACB4BDB4 C88732AE E95F41AA 9482ED1F C0EEB9CA FC498462 5CCFC23F
		     65032149 E0E144AD A0241815 35A0F38E EB9FCFF3 C2C947DA E69B4C63 4573A81C`,
		r: `41CB0779 B4BDB85D 47846725 FBEC3C94 30FAB46C C8DC5060 855CC9BD A0AA2942
		    E0308312 916B8ED2 960E4BD5 5A7448FC`,
		gr: `E558DBEF 53EECDE3 D3FCCFC1 AEA08A89 A987475D 12FD950D 83CFA417 32BC509D
		     0D1AC43A 0336DEF9 6FDA41D0 774A3571 DCFBEC7A ACF31964 72169E83 8430367F
		     66EEBE3C 6E70C416 DD5F0C68 759DD1FF F83FA401 42209DFF 5EAAD96D B9E6386C`,
		girx: `11187331 C279962D 93D60424 3FD592CB 9D0A926F 422E4718 7521287E 7156C5C4
		       D6031355 69B9E9D0 9CF5D4A2 70F59746`,
	},
	{
		group: Group21,
		i: `0037ADE9 319A89F4 DABDB3EF 411AACCC A5123C61 ACAB57B5 393DCE47 608172A0
		    95AA85A3 0FE1C295 2C6771D9 37BA9777 F5957B26 39BAB072 462F68C2 7A57382D
		    4A52`,
		gi: `0015417E 84DBF28C 0AD3C278 713349DC 7DF153C8 97A1891B D98BAB43 57C9ECBE
		     E1E3BF42 E00B8E38 0AEAE57C 2D107564 94188594 2AF5A7F4 601723C4 195D176C
		     ED3E017C AE20B664 1D2EEB69 5786D8C9 46146239 D099E18E 1D5A514C 739D7CB4
		     A10AD8A7 88015AC4 05D7799D C75E7B7D 5B6CF226 1A6A7F15 07438BF0 1BEB6CA3
		     926F9582`,
		r: `0145BA99 A847AF43 793FDD0E 872E7CDF A16BE30F DC780F97 BCCC3F07 8380201E
		    9C677D60 0B343757 A3BDBF2A 3163E4C2 F869CCA7 458AA4A4 EFFC311F 5CB15168
		    5EB9`,
		gr: `00D0B397 5AC4B799 F5BEA16D 5E13E9AF 971D5E9B 984C9F39 728B5E57 39735A21
		     9B97C356 436ADC6E 95BB0352 F6BE64A6 C2912D4E F2D0433C ED2B6171 640012D9
		     460F015C 68226383 956E3BD0 66E797B6 23C27CE0 EAC2F551 A10C2C72 4D985207
		     7B87220B 6536C5C4 08A1D2AE BB8E86D6 78AE49CB 57091F47 32296579 AB44FCD1
		     7F0FC56A`,
		girx: `01144C7D 79AE6956 BC8EDB8E 7C787C45 21CB086F A64407F9 7894E5E6 B2D79B04
		       D1427E73 CA4BAA24 0A347868 59810C06 B3C715A3 A8CC3151 F2BEE417 996D19F3
		       DDEA`,
	},
}

func TestECPVectors(t *testing.T) {
	for _, v := range ecpVectors {
		t.Run(GroupName(v.group), func(t *testing.T) {
			gi, gr, girx := unhex(t, v.gi), unhex(t, v.gr), unhex(t, v.girx)
			ini, err := GenerateKeyExchange(v.group, bytes.NewReader(unhex(t, v.i)))
			if err != nil {
				t.Fatal(err)
			}
			res, err := GenerateKeyExchange(v.group, bytes.NewReader(unhex(t, v.r)))
			if err != nil {
				t.Fatal(err)
			}
			if ini.Group() != v.group {
				t.Errorf("Group() = %d", ini.Group())
			}
			if !bytes.Equal(ini.Public(), gi) {
				t.Errorf("g^i = %X, want %X", ini.Public(), gi)
			}
			if !bytes.Equal(res.Public(), gr) {
				t.Errorf("g^r = %X, want %X", res.Public(), gr)
			}
			if n, _ := KeyExchangeLen(v.group); n != len(gi) {
				t.Errorf("KeyExchangeLen = %d, want %d", n, len(gi))
			}
			for name, side := range map[string]struct {
				k    KeyExchange
				peer []byte
			}{"initiator": {ini, gr}, "responder": {res, gi}} {
				z, err := side.k.SharedSecret(side.peer)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if !bytes.Equal(z, girx) {
					t.Errorf("%s: g^ir = %X, want %X", name, z, girx)
				}
			}

			// Invalid peer values: wrong length, the 0x04-prefixed SEC 1
			// form, off the curve, all zeros.
			bad := map[string][]byte{
				"short":     gr[:len(gr)-1],
				"long":      append(append([]byte{}, gr...), 0),
				"sec1":      append([]byte{4}, gr...)[:len(gr)],
				"off curve": append(append([]byte{}, gr[:len(gr)-1]...), gr[len(gr)-1]^1),
				"zero":      make([]byte, len(gr)),
				"empty":     nil,
			}
			for name, peer := range bad {
				_, err := ini.SharedSecret(peer)
				var ke *KeyExchangeError
				if !errors.As(err, &ke) || ke.Group != v.group {
					t.Errorf("%s peer: err = %v, want *KeyExchangeError", name, err)
				}
			}
		})
	}
}

// RFC 7748 §6.1 (the Curve25519 exchange RFC 8031 uses).
func TestX25519Vector(t *testing.T) {
	alicePriv := unhex(t, "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
	alicePub := unhex(t, "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
	bobPriv := unhex(t, "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
	bobPub := unhex(t, "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
	shared := unhex(t, "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")

	alice, err := GenerateKeyExchange(Group31, bytes.NewReader(alicePriv))
	if err != nil {
		t.Fatal(err)
	}
	bob, err := GenerateKeyExchange(Group31, bytes.NewReader(bobPriv))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(alice.Public(), alicePub) || !bytes.Equal(bob.Public(), bobPub) {
		t.Fatalf("public values %x %x", alice.Public(), bob.Public())
	}
	for _, z := range [][]byte{must(alice.SharedSecret(bobPub)), must(bob.SharedSecret(alicePub))} {
		if !bytes.Equal(z, shared) {
			t.Errorf("shared secret %x, want %x", z, shared)
		}
	}

	// Low-order points give an all-zero secret and are refused
	// (RFC 8031 §2, RFC 7748 §6.1).
	lowOrder := []string{
		"0000000000000000000000000000000000000000000000000000000000000000",
		"0100000000000000000000000000000000000000000000000000000000000000",
		"e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
		"ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
	}
	for _, h := range lowOrder {
		_, err := alice.SharedSecret(unhex(t, h))
		var ke *KeyExchangeError
		if !errors.As(err, &ke) || ke.Group != Group31 {
			t.Errorf("low-order %s: err = %v", h[:8], err)
		}
	}
	if _, err := alice.SharedSecret(bobPub[:31]); err == nil {
		t.Error("31-octet peer accepted")
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

func TestMODPRoundTrip(t *testing.T) {
	groups := []uint16{Group14, Group1, Group2, Group5}
	if !testing.Short() {
		groups = append(groups, Group15, Group16)
	}
	for _, g := range groups {
		a, err := GenerateKeyExchange(g, testRand(1))
		if err != nil {
			t.Fatal(err)
		}
		b, err := GenerateKeyExchange(g, testRand(2))
		if err != nil {
			t.Fatal(err)
		}
		n, _ := KeyExchangeLen(g)
		if len(a.Public()) != n || len(b.Public()) != n {
			t.Fatalf("%s: public lengths %d, %d, want %d", GroupName(g), len(a.Public()), len(b.Public()), n)
		}
		za, err := a.SharedSecret(b.Public())
		if err != nil {
			t.Fatal(err)
		}
		zb, err := b.SharedSecret(a.Public())
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(za, zb) || len(za) != n {
			t.Errorf("%s: the parties disagree (or wrong length %d)", GroupName(g), len(za))
		}
		// The same reader bytes give the same key.
		a2, _ := GenerateKeyExchange(g, testRand(1))
		if !bytes.Equal(a.Public(), a2.Public()) {
			t.Errorf("%s: generation is not deterministic in its reader", GroupName(g))
		}
	}
}

func TestMODPPadding(t *testing.T) {
	// A public value and a shared secret with leading zero octets keep the
	// prime's length: exponent 2 gives g^x = 4, and the peer value 2 gives
	// a secret of 2^x.
	k, err := GenerateKeyExchange(Group14, bytes.NewReader(append(make([]byte, 31), 2)))
	if err != nil {
		t.Fatal(err)
	}
	pub := k.Public()
	if len(pub) != 256 || pub[255] != 4 || !bytes.Equal(pub[:255], make([]byte, 255)) {
		t.Errorf("public value of x=2: %x", pub)
	}
	peer := make([]byte, 256)
	peer[255] = 2
	z, err := k.SharedSecret(peer)
	if err != nil {
		t.Fatal(err)
	}
	if len(z) != 256 || z[255] != 4 {
		t.Errorf("2^2 = %x", z)
	}
}

func TestMODPInvalidPeer(t *testing.T) {
	k, err := GenerateKeyExchange(Group14, testRand(3))
	if err != nil {
		t.Fatal(err)
	}
	p := modpGroup(Group14).p
	pad := func(x *big.Int) []byte { return x.FillBytes(make([]byte, 256)) }
	bad := map[string][]byte{
		"0":          make([]byte, 256),
		"1":          pad(big.NewInt(1)),
		"p-1":        pad(new(big.Int).Sub(p, big.NewInt(1))),
		"p":          pad(p),
		"p+1":        pad(new(big.Int).Add(p, big.NewInt(1))),
		"2^2048-1":   bytes.Repeat([]byte{0xff}, 256),
		"255 octets": k.Public()[1:],
		"257 octets": append([]byte{0}, k.Public()...),
		"empty":      nil,
	}
	for name, peer := range bad {
		_, err := k.SharedSecret(peer)
		var ke *KeyExchangeError
		if !errors.As(err, &ke) || ke.Group != Group14 {
			t.Errorf("peer %s: err = %v, want *KeyExchangeError", name, err)
		}
	}
	// The smallest and largest valid values are accepted.
	for _, y := range []*big.Int{big.NewInt(2), new(big.Int).Sub(p, big.NewInt(2))} {
		if _, err := k.SharedSecret(pad(y)); err != nil {
			t.Errorf("peer %v: %v", y, err)
		}
	}
}

// TestMODPPrimes recomputes every MODP prime from its definition,
// p = 2^n - 2^(n-64) - 1 + 2^64 * ([2^(n-130) pi] + k) (RFC 2409 §6,
// RFC 3526), so a typo in the hex constants cannot pass.
func TestMODPPrimes(t *testing.T) {
	offsets := map[uint16]int64{
		Group1: 149686, Group2: 129093, Group5: 741804,
		Group14: 124476, Group15: 1690314, Group16: 240904,
	}
	const guard = 64
	maxBits := 4096 - 130 + guard
	pi := machinPi(maxBits)
	for _, m := range modpGroups {
		n := m.p.BitLen()
		floor := new(big.Int).Rsh(pi, uint(maxBits-(n-130))) // [2^(n-130) pi]
		floor.Add(floor, big.NewInt(offsets[m.group]))
		want := new(big.Int).Lsh(floor, 64)
		want.Add(want, new(big.Int).Lsh(big.NewInt(1), uint(n)))
		want.Sub(want, new(big.Int).Lsh(big.NewInt(1), uint(n-64)))
		want.Sub(want, big.NewInt(1))
		if want.Cmp(m.p) != 0 {
			t.Errorf("%s: prime constant does not match its definition", GroupName(m.group))
		}
		if m.size*8 != n || n%8 != 0 {
			t.Errorf("%s: size %d for a %d-bit prime", GroupName(m.group), m.size, n)
		}
	}
}

// machinPi returns floor(pi * 2^bits) (within a few units), by Machin's
// formula pi = 16 atan(1/5) - 4 atan(1/239).
func machinPi(bits int) *big.Int {
	const extra = 32
	atanInv := func(x int64) *big.Int {
		one := new(big.Int).Lsh(big.NewInt(1), uint(bits+extra))
		x2 := big.NewInt(x * x)
		term := new(big.Int).Quo(one, big.NewInt(x))
		sum := new(big.Int).Set(term)
		t := new(big.Int)
		for k := int64(1); term.Sign() != 0; k++ {
			term.Quo(term, x2)
			t.Quo(term, big.NewInt(2*k+1))
			if k%2 == 1 {
				sum.Sub(sum, t)
			} else {
				sum.Add(sum, t)
			}
		}
		return sum
	}
	pi := new(big.Int).Mul(big.NewInt(16), atanInv(5))
	pi.Sub(pi, new(big.Int).Mul(big.NewInt(4), atanInv(239)))
	return pi.Rsh(pi, extra)
}

func TestGenerateKeyExchangeErrors(t *testing.T) {
	for _, g := range []uint16{0, 3, 4, 17, 22, 24, 25, 26, 30, 32, 35} {
		_, err := GenerateKeyExchange(g, testRand(1))
		var ue *UnsupportedError
		if !errors.As(err, &ue) || ue.Type != TypeKE || ue.ID != g || !errors.Is(err, ErrUnsupported) {
			t.Errorf("group %d: err = %v", g, err)
		}
		if _, err := KeyExchangeLen(g); !errors.Is(err, ErrUnsupported) {
			t.Errorf("KeyExchangeLen(%d): err = %v", g, err)
		}
	}
	for _, g := range []uint16{Group14, Group19, Group21, Group31} {
		if _, err := GenerateKeyExchange(g, errReader{}); err == nil {
			t.Errorf("%s: failing reader accepted", GroupName(g))
		}
		if _, err := GenerateKeyExchange(g, bytes.NewReader([]byte{1, 2, 3})); err == nil {
			t.Errorf("%s: short reader accepted", GroupName(g))
		}
		if _, err := GenerateKeyExchange(g, nil); err == nil {
			t.Errorf("%s: nil reader accepted", GroupName(g))
		}
	}
	// A reader of all-0xff bytes never yields a NIST scalar below the
	// order, nor a zero one: generation gives up instead of looping.
	for _, g := range []uint16{Group19, Group20} {
		if _, err := GenerateKeyExchange(g, constReader(0xff)); err == nil {
			t.Errorf("%s: out-of-range scalar accepted", GroupName(g))
		}
	}
	for _, g := range []uint16{Group19, Group14} {
		if _, err := GenerateKeyExchange(g, constReader(0)); err == nil {
			t.Errorf("%s: zero private key accepted", GroupName(g))
		}
	}
}

// TestECPRejectionSampling feeds a first draw that is out of range: the
// second draw is used.
func TestECPRejectionSampling(t *testing.T) {
	v := ecpVectors[0]
	in := append(bytes.Repeat([]byte{0xff}, 32), unhex(t, v.i)...)
	k, err := GenerateKeyExchange(Group19, bytes.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(k.Public(), unhex(t, v.gi)) {
		t.Error("second draw not used")
	}
	// P-521: the top seven bits of the first octet are masked off.
	v = ecpVectors[2]
	i := unhex(t, v.i)
	i[0] |= 0xfe
	k, err = GenerateKeyExchange(Group21, bytes.NewReader(i))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(k.Public(), unhex(t, v.gi)) {
		t.Error("P-521 top bits not masked")
	}
}

// Group 31's own implementation (x25519.go) gives what crypto/ecdh gives:
// the public value of any 32 octets, and the shared secret (or the
// refusal of an all-zero one) for any peer value, random or low-order.
func TestX25519MatchesStdlib(t *testing.T) {
	rng := testRand(31)
	peers := [][]byte{
		make([]byte, 32), // low order
		unhex(t, "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
		bytes.Repeat([]byte{0xff}, 32), // non-canonical, top bit set
	}
	for i := 0; i < 2000; i++ {
		priv := make([]byte, 32)
		if _, err := io.ReadFull(rng, priv); err != nil {
			t.Fatal(err)
		}
		peer := make([]byte, 32)
		if _, err := io.ReadFull(rng, peer); err != nil {
			t.Fatal(err)
		}
		checkX25519(t, priv, append([][]byte{peer}, peers...))
	}
	// Scalars at the edges of clamping.
	for _, priv := range [][]byte{make([]byte, 32), bytes.Repeat([]byte{0xff}, 32)} {
		checkX25519(t, priv, peers)
	}
}

// checkX25519 compares group 31's key exchange for private key priv with
// crypto/ecdh's, against each peer value.
func checkX25519(t testing.TB, priv []byte, peers [][]byte) {
	t.Helper()
	k, err := newX25519(bytes.NewReader(priv))
	if err != nil {
		t.Fatal(err)
	}
	std, err := ecdh.X25519().NewPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(k.Public(), std.PublicKey().Bytes()) {
		t.Fatalf("private %x: public %x, crypto/ecdh %x", priv, k.Public(), std.PublicKey().Bytes())
	}
	for _, peer := range peers {
		got, err := k.SharedSecret(peer)
		pub, perr := ecdh.X25519().NewPublicKey(peer)
		if perr != nil {
			t.Fatal(perr)
		}
		want, werr := std.ECDH(pub)
		if (err != nil) != (werr != nil) || !bytes.Equal(got, want) {
			t.Fatalf("private %x, peer %x: %x %v, crypto/ecdh %x %v", priv, peer, got, err, want, werr)
		}
	}
}
