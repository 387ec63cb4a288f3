package suite

import (
	"bytes"
	"crypto/hmac"
	"encoding/binary"
	"errors"
	"slices"
	"testing"
	"unsafe"
)

// RFC 4868 §2.7.1: PRF test cases PRF-1 to PRF-6 (the RFC 4231 cases that
// apply to IKEv2 PRFs).
var prfVectors = []struct {
	name      string
	key, data []byte
	s256      string
	s384      string
	s512      string
}{
	{
		name: "PRF-1", key: repeat(0x0b, 20), data: []byte("Hi There"),
		s256: "b0344c61d8db38535ca8afceaf0bf12b 881dc200c9833da726e9376c2e32cff7",
		s384: "afd03944d84895626b0825f4ab46907f 15f9dadbe4101ec682aa034c7cebc59c faea9ea9076ede7f4af152e8b2fa9cb6",
		s512: "87aa7cdea5ef619d4ff0b4241a1d6cb0 2379f4e2ce4ec2787ad0b30545e17cde daa833b7d6b8a702038b274eaea3f4e4 be9d914eeb61f1702e696c203a126854",
	},
	{
		name: "PRF-2", key: []byte("Jefe"), data: []byte("what do ya want for nothing?"),
		s256: "5bdcc146bf60754e6a042426089575c7 5a003f089d2739839dec58b964ec3843",
		s384: "af45d2e376484031617f78d2b58a6b1b 9c7ef464f5a01b47e42ec3736322445e 8e2240ca5e69e2c78b3239ecfab21649",
		s512: "164b7a7bfcf819e2e395fbe73b56e0a3 87bd64222e831fd610270cd7ea250554 9758bf75c05a994a6d034f65f8f0e6fd caeab1a34d4a6b4b636e070a38bce737",
	},
	{
		name: "PRF-3", key: repeat(0xaa, 20), data: repeat(0xdd, 50),
		s256: "773ea91e36800e46854db8ebd09181a7 2959098b3ef8c122d9635514ced565fe",
		s384: "88062608d3e6ad8a0aa2ace014c8a86f 0aa635d947ac9febe83ef4e55966144b 2a5ab39dc13814b94e3ab6e101a34f27",
		s512: "fa73b0089d56a284efb0f0756c890be9 b1b5dbdd8ee81a3655f83e33b2279d39 bf3e848279a722c806b485a47e67c807 b946a337bee8942674278859e13292fb",
	},
	{
		name: "PRF-4", key: seq(0x01, 0x19), data: repeat(0xcd, 50),
		s256: "82558a389a443c0ea4cc819899f2083a 85f0faa3e578f8077a2e3ff46729665b",
		s384: "3e8a69b7783c25851933ab6290af6ca7 7a9981480850009cc5577c6e1f573b4e 6801dd23c4a7d679ccf8a386c674cffb",
		s512: "b0ba465637458c6990e5a8c5f61d4af7 e576d97ff94b872de76f8050361ee3db a91ca5c11aa25eb4d679275cc5788063 a5f19741120c4f2de2adebeb10a298dd",
	},
	{
		name: "PRF-5", key: repeat(0xaa, 131), data: []byte("Test Using Larger Than Block-Size Key - Hash Key First"),
		s256: "60e431591ee0b67f0d8a26aacbf5b77f 8e0bc6213728c5140546040f0ee37f54",
		s384: "4ece084485813e9088d2c63a041bc5b4 4f9ef1012a2b588f3cd11f05033ac4c6 0c2ef6ab4030fe8296248df163f44952",
		s512: "80b24263c7c1a3ebb71493c1dd7be8b4 9b46d1f41b4aeec1121b013783f8f352 6b56d037e05f2598bd0fd2215d6a1e52 95e64f73f63f0aec8b915a985d786598",
	},
	{
		name: "PRF-6", key: repeat(0xaa, 131),
		data: []byte("This is a test using a larger than block-size key and a larger than block-size data. " +
			"The key needs to be hashed before being used by the HMAC algorithm."),
		s256: "9b09ffa71b942fcb27635fbcd5b0e944 bfdc63644f0713938a7f51535c3a35e2",
		s384: "6617178e941f020d351e2f254e8fd32c 602420feb0b8fb9adccebb82461e99c5 a678cc31e799176d3860e6110c46523e",
		s512: "e37b6a775dc87dbaa4dfa9f96e5e3ffd debd71f8867289865df5a32d20cdc944 b6022cac3c4982b10d5eeb55c3e4de15 134676fb6de0446065c97440fa8c6a58",
	},
}

func TestPRFVectors(t *testing.T) {
	for _, v := range prfVectors {
		for _, c := range []struct {
			id   uint16
			want string
		}{{PRFHMACSHA256, v.s256}, {PRFHMACSHA384, v.s384}, {PRFHMACSHA512, v.s512}} {
			p, err := NewPRF(c.id)
			if err != nil {
				t.Fatal(err)
			}
			want := unhex(t, c.want)
			if got := p.Sum(v.key, v.data); !bytes.Equal(got, want) {
				t.Errorf("%s %s: got %x, want %x", v.name, PRFName(c.id), got, want)
			}
			// The data may arrive in pieces.
			if got := p.Sum(v.key, v.data[:3], nil, v.data[3:]); !bytes.Equal(got, want) {
				t.Errorf("%s %s (split data): got %x", v.name, PRFName(c.id), got)
			}
			if p.Size() != len(want) {
				t.Errorf("%s Size() = %d, want %d", PRFName(c.id), p.Size(), len(want))
			}
		}
	}
}

// RFC 4868 §2.7.2: authenticator test cases, the HMAC truncated to half its
// length. AUTH384-4 and AUTH512-4 are left out: their keys are misprinted
// in the RFC (errata 1785 and 5507).
var integVectors = []struct {
	name      string
	id        uint16
	key, data []byte
	icv       string
}{
	{"AUTH256-1", IntegHMACSHA256128, repeat(0x0b, 32), []byte("Hi There"), "198a607eb44bfbc69903a0f1cf2bbdc5"},
	{"AUTH256-2", IntegHMACSHA256128, bytes.Repeat([]byte("Jefe"), 8), []byte("what do ya want for nothing?"), "167f928588c5cc2eef8e3093caa0e87c"},
	{"AUTH256-3", IntegHMACSHA256128, repeat(0xaa, 32), repeat(0xdd, 50), "cdcb1220d1ecccea91e53aba3092f962"},
	{"AUTH256-4", IntegHMACSHA256128, seq(0x01, 0x20), repeat(0xcd, 50), "372efcf9b40b35c2115b1346903d2ef4"},
	{"AUTH384-1", IntegHMACSHA384192, repeat(0x0b, 48), []byte("Hi There"), "b6a8d5636f5c6a7224f9977dcf7ee6c7 fb6d0c48cbdee973"},
	{"AUTH384-2", IntegHMACSHA384192, bytes.Repeat([]byte("Jefe"), 12), []byte("what do ya want for nothing?"), "2c7353974f1842fd66d53c452ca42122 b28c0b594cfb184d"},
	{"AUTH384-3", IntegHMACSHA384192, repeat(0xaa, 48), repeat(0xdd, 50), "809f439be00274321d4a538652164b53 554a508184a0c316"},
	{"AUTH512-1", IntegHMACSHA512256, repeat(0x0b, 64), []byte("Hi There"), "637edc6e01dce7e6742a99451aae82df 23da3e92439e590e43e761b33e910fb8"},
	{"AUTH512-2", IntegHMACSHA512256, bytes.Repeat([]byte("Jefe"), 16), []byte("what do ya want for nothing?"), "cb370917ae8a7ce28cfd1d8f4705d614 1c173b2a9362c15df235dfb251b15454"},
	{"AUTH512-3", IntegHMACSHA512256, repeat(0xaa, 64), repeat(0xdd, 50), "2ee7acd783624ca9398710f3ee05ae41 b9f9b0510c87e49e586cc9bf961733d8"},
}

// TestIntegVectors checks the truncated HMACs through the SKCipher's own
// precomputed HMAC state, Reset between uses as Seal and Open do.
func TestIntegVectors(t *testing.T) {
	for _, v := range integVectors {
		c, err := NewCipher(EncrAESCBC, 128, v.id)
		if err != nil {
			t.Fatal(err)
		}
		if c.IntegKeyLen() != len(v.key) {
			t.Fatalf("%s: IntegKeyLen() = %d, vector key is %d", v.name, c.IntegKeyLen(), len(v.key))
		}
		s, err := c.Key(make([]byte, 16), v.key)
		if err != nil {
			t.Fatal(err)
		}
		want := unhex(t, v.icv)
		for range 2 {
			s.mac.Reset()
			s.mac.Write(v.data)
			got := s.mac.Sum(s.sum[:0])[:c.ICVLen()]
			if !bytes.Equal(got, want) {
				t.Errorf("%s: got %x, want %x", v.name, got, want)
			}
		}
	}
}

// naivePRFPlus is prf+ written straight from RFC 7296 §2.13.
func naivePRFPlus(p *PRF, key, seed []byte, n int) []byte {
	var out, t []byte
	for i := byte(1); len(out) < n; i++ {
		in := append(append(append([]byte{}, t...), seed...), i)
		m := hmac.New(p.hash, key)
		m.Write(in)
		t = m.Sum(nil)
		out = append(out, t...)
	}
	return out[:n]
}

func TestPRFPlus(t *testing.T) {
	for _, id := range []uint16{PRFHMACSHA256, PRFHMACSHA384, PRFHMACSHA512, PRFHMACSHA1, PRFHMACMD5} {
		p, err := NewPRF(id)
		if err != nil {
			t.Fatal(err)
		}
		key, seed := seq(1, 40), seq(100, 163)
		for _, n := range []int{0, 1, p.Size() - 1, p.Size(), p.Size() + 1, 3*p.Size() + 7, 255 * p.Size()} {
			got := p.Plus(key, seed, n)
			if want := naivePRFPlus(p, key, seed, n); !bytes.Equal(got, want) {
				t.Errorf("%s prf+ n=%d: mismatch", PRFName(id), n)
			}
			if len(got) != n || cap(got) != n {
				t.Errorf("%s prf+ n=%d: len %d cap %d", PRFName(id), n, len(got), cap(got))
			}
		}
		// T1 is prf(K, S | 0x01).
		if got, want := p.Plus(key, seed, p.Size()), p.Sum(key, seed, []byte{1}); !bytes.Equal(got, want) {
			t.Errorf("%s: T1 != prf(K, S | 0x01)", PRFName(id))
		}
		for _, n := range []int{-1, 255*p.Size() + 1} {
			if got := p.Plus(key, seed, n); got != nil {
				t.Errorf("%s prf+ n=%d: got %d octets, want nil", PRFName(id), n, len(got))
			}
		}
	}
}

// TestKeyScheduleCAVS checks SKEYSEED, prf+, CHILD SA KEYMAT (with and
// without PFS) and the rekey SKEYSEED against the NIST CAVS IKEv2 KDF
// example with PRF-HMAC-SHA1 recorded in libreswan's
// programs/ikev2-cavs (a 1056-bit DKM).
func TestKeyScheduleCAVS(t *testing.T) {
	p, err := NewPRF(PRFHMACSHA1)
	if err != nil {
		t.Fatal(err)
	}
	gir := unhex(t, "4b2c1f971981a8ad8d0abeafabf38cf75fc8349c148142465ed9c8b516b8be52")
	girNew := unhex(t, "863f3c9d06efd39d2b907b97f8699e5dd5251ef64a2a176f36ee40c87d4f9330")
	ni := unhex(t, "32b50d5f4a3763f3")
	nr := unhex(t, "9206a04b26564cb1")
	spii := binary.BigEndian.Uint64(unhex(t, "34c9e7c188868785"))
	spir := binary.BigEndian.Uint64(unhex(t, "3ff77d760d2b2199"))

	skeyseed := SKEYSEED(p, ni, nr, gir)
	if want := unhex(t, "a9a7b222b59f8f48645f28a1db5b5f5d7479cba7"); !bytes.Equal(skeyseed, want) {
		t.Fatalf("SKEYSEED = %x, want %x", skeyseed, want)
	}
	seed := append(append(append([]byte{}, ni...), nr...), unhex(t, "34c9e7c188868785 3ff77d760d2b2199")...)
	dkm := p.Plus(skeyseed, seed, 132)
	wantDKM := unhex(t, `a14293677cc80ff8f9cc0eee30d895da9d8f405666e30ef0dfcb63c634a46002a2a63080e514a062
		768b76606f9fa5e992204fc5a670bde3f10d6b027113936a5c55b648a194ae587b0088d52204b702c979fa280870d2ed41
		efa9c549fd11198af1670b143d384bd275c5f594cf266b05ebadca855e4249520a441a81157435a7a56cc4`)
	if !bytes.Equal(dkm, wantDKM) {
		t.Fatalf("DKM = %x, want %x", dkm, wantDKM)
	}
	skd := dkm[:p.Size()]

	child := ChildKeys(p, skd, nil, ni, nr, 132)
	wantChild := unhex(t, `8059e3ee8810e6c3a91bc8bcd2a7a41151b8d0e6ae239c7b38093ad85ef4c5811a8e7b5d1cdabd
		9560b2d5e092d1f24e2d4b85eccdf0ad0dc9abd94b51ee71814ca6dbc8bb51b6309f5b9545c7eb35cf5580b1e521a8fe20
		754a2d883ba0c2cf285f524aea6545b33106bc03e614296d319d41d4b50b3f510b1c0a22f3e664994d234cb4`)
	if !bytes.Equal(child, wantChild) {
		t.Errorf("DKM(Child SA) = %x, want %x", child, wantChild)
	}
	childDH := ChildKeys(p, skd, girNew, ni, nr, 132)
	wantChildDH := unhex(t, `bb43244c1860ad65ee1e211ffe8bb3661750c8f89cb9f547df7f4fa61d37301628190e38c66232
		eab4b3ab14c400a5197dd3730ed4820a8a10394d51e1c0400052f63ebd36b0e7ef53aaed31eba4a5080d7d4b5666023a8b
		bb5ffb7857240f9a05884d1b7d2f933708450b7b3288f1fc863ab49fa901227cffc06e27899c7054d56fd74c`)
	if !bytes.Equal(childDH, wantChildDH) {
		t.Errorf("DKM(Child SA D-H) = %x, want %x", childDH, wantChildDH)
	}
	rekey := RekeySKEYSEED(p, skd, girNew, ni, nr)
	if want := unhex(t, "63e81194946ebd05df7df5ebf5d8750056bf1f1d"); !bytes.Equal(rekey, want) {
		t.Errorf("SKEYSEED(Rekey) = %x, want %x", rekey, want)
	}

	// DeriveIKEKeys splits the same prf+ stream in RFC 7296 order.
	c, err := NewCipher(EncrAESCBC, 256, IntegHMACSHA256128) // 32+32+32+32 octets
	if err != nil {
		t.Fatal(err)
	}
	k := DeriveIKEKeys(p, skeyseed, ni, nr, spii, spir, c)
	parts := [][]byte{k.SKd, k.SKai, k.SKar, k.SKei, k.SKer, k.SKpi, k.SKpr}
	lens := []int{20, 32, 32, 32, 32, 20, 20}
	full := p.Plus(skeyseed, seed, 188)
	off := 0
	for i, part := range parts {
		if len(part) != lens[i] || cap(part) != lens[i] {
			t.Errorf("key %d: len %d cap %d, want %d", i, len(part), cap(part), lens[i])
		}
		if !bytes.Equal(part, full[off:off+lens[i]]) {
			t.Errorf("key %d is not octets %d..%d of prf+", i, off, off+lens[i])
		}
		off += lens[i]
	}
	if !bytes.Equal(k.SKd, skd) {
		t.Error("SK_d differs from the CAVS DKM")
	}
}

func TestDeriveIKEKeysAEAD(t *testing.T) {
	p, _ := NewPRF(PRFHMACSHA256)
	c, err := NewCipher(EncrAESGCM16, 256, IntegNone)
	if err != nil {
		t.Fatal(err)
	}
	k := DeriveIKEKeys(p, seq(1, 32), seq(2, 33), seq(3, 34), 1, 2, c)
	if len(k.SKai) != 0 || len(k.SKar) != 0 {
		t.Errorf("AEAD SK_a lengths %d/%d, want 0", len(k.SKai), len(k.SKar))
	}
	if len(k.SKei) != 36 || len(k.SKer) != 36 || len(k.SKd) != 32 || len(k.SKpi) != 32 || len(k.SKpr) != 32 {
		t.Errorf("lengths d=%d ei=%d er=%d pi=%d pr=%d", len(k.SKd), len(k.SKei), len(k.SKer), len(k.SKpi), len(k.SKpr))
	}
	// Appending to one key must not clobber the next.
	before := append([]byte{}, k.SKer...)
	_ = append(k.SKei, 0xff)
	if !bytes.Equal(before, k.SKer) {
		t.Error("append to SK_ei overwrote SK_er")
	}
	// Kept is SK_d | SK_ai | SK_ar | SK_ei | SK_er, the layout an IKE SA
	// reads its keys from by their lengths alone.
	want := slices.Concat(k.SKd, k.SKai, k.SKar, k.SKei, k.SKer)
	if !bytes.Equal(k.Kept, want) || len(k.Kept) != 104 || unsafe.SliceData(k.Kept) != unsafe.SliceData(k.SKd) {
		t.Errorf("Kept %x, want %x in SK_d's array", k.Kept, want)
	}
	// SK_pi and SK_pr are not in the array an established SA keeps (SK_d
	// to SK_er, 104 bytes here), so that it does not keep them.
	kept := uintptr(unsafe.Pointer(unsafe.SliceData(k.SKd)))
	for _, p := range [][]byte{k.SKpi, k.SKpr} {
		if at := uintptr(unsafe.Pointer(unsafe.SliceData(p))); at >= kept && at < kept+104+64 {
			t.Errorf("SK_p at offset %d of SK_d's array", at-kept)
		}
	}
}

func TestNewPRFUnsupported(t *testing.T) {
	for _, id := range []uint16{0, 3, PRFAES128XCBC, 8, 99} {
		_, err := NewPRF(id)
		var ue *UnsupportedError
		if !errors.As(err, &ue) || !errors.Is(err, ErrUnsupported) || ue.Type != TypePRF || ue.ID != id {
			t.Errorf("NewPRF(%d) = %v, want *UnsupportedError", id, err)
		}
	}
}

// TestSharedInstances: every IKE SA that negotiated a transform points to
// one PRF or Cipher for it; invalid combinations are refused every time
// and leave nothing behind.
func TestSharedInstances(t *testing.T) {
	p1, err := NewPRF(PRFHMACSHA256)
	if err != nil {
		t.Fatal(err)
	}
	p2, _ := NewPRF(PRFHMACSHA256)
	p3, _ := NewPRF(PRFHMACSHA384)
	if p1 != p2 || p1 == p3 || p3.Size() != 48 {
		t.Fatalf("PRFs: %p %p %p", p1, p2, p3)
	}
	c1, err := NewCipher(EncrAESGCM16, 256, IntegNone)
	if err != nil {
		t.Fatal(err)
	}
	c2, _ := NewCipher(EncrAESGCM16, 256, IntegNone)
	c3, _ := NewCipher(EncrAESGCM16, 128, IntegNone)
	if c1 != c2 || c1 == c3 || c1.EncrKeyLen() != 36 || c3.EncrKeyLen() != 20 {
		t.Fatalf("ciphers: %v %v %v", c1, c2, c3)
	}
	for i := 0; i < 2; i++ {
		if _, err := NewPRF(9999); err == nil {
			t.Fatal("unknown PRF accepted")
		}
		if _, err := NewCipher(EncrAESGCM16, 100, IntegNone); err == nil {
			t.Fatal("AES-GCM with a 100-bit key accepted")
		}
	}
	if _, ok := ciphers.m[cipherKey{EncrAESGCM16, 100, IntegNone}]; ok {
		t.Fatal("a refused combination was kept")
	}
}
