package suite

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"testing"
)

// RFC 7634 Appendix B, "IKEv2 Example": an INFORMATIONAL message whose SK
// payload carries one Notify payload and the pad-length octet 0. The AAD is
// the IKE header and the SK payload's generic header.
func TestChaChaIKEv2Example(t *testing.T) {
	key := unhex(t, `80 81 82 83 84 85 86 87 88 89 8a 8b 8c 8d 8e 8f
	                 90 91 92 93 94 95 96 97 98 99 9a 9b 9c 9d 9e 9f a0 a1 a2 a3`) // key | salt
	iv := unhex(t, "10 11 12 13 14 15 16 17")
	aad := unhex(t, `c0 c1 c2 c3 c4 c5 c6 c7 d0 d1 d2 d3 d4 d5 d6 d7
	                 2e 20 25 00 00 00 00 09 00 00 00 45 29 00 00 29`)
	notify := unhex(t, "00 00 00 0c 00 00 40 01 00 00 00 0a") // plaintext minus the pad-length octet
	ct := unhex(t, "61 03 94 70 1f 8d 01 7f 7c 12 92 48 89")
	tag := unhex(t, "6b 71 bf e2 52 36 ef d7 cd c6 70 66 90 63 15 b2")

	c, err := NewCipher(EncrChaCha20Poly1305, 0, IntegNone)
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.Key(key, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := append(append(append([]byte{}, iv...), ct...), tag...)
	if c.SealedLen(len(notify)) != len(want) || 4+len(want) != 0x29 {
		t.Fatalf("SealedLen = %d, want %d", c.SealedLen(len(notify)), len(want))
	}
	// Built in place, as the engine does: the header is dst and assoc.
	msg := append([]byte{}, aad...)
	msg = s.Seal(msg, iv, msg, notify)
	if !bytes.Equal(msg[:len(aad)], aad) || !bytes.Equal(msg[len(aad):], want) {
		t.Fatalf("Seal:\n got %x\nwant %x", msg[len(aad):], want)
	}
	if len(msg) != 0x45 {
		t.Errorf("message length %d, want 0x45", len(msg))
	}
	pt, err := s.Open(nil, aad, want)
	if err != nil || !bytes.Equal(pt, notify) {
		t.Fatalf("Open = %x, %v", pt, err)
	}
}

// RFC 7634 Appendix B "ESP Example" and RFC 8439 §2.8.2, checked through
// the SKCipher's own AEAD and nonce (key | salt split, salt | IV nonce).
func TestChaChaAEADVectors(t *testing.T) {
	vectors := []struct {
		name               string
		key, salt, iv, aad string
		plaintext, sealed  string
	}{
		{
			name: "RFC 7634 B ESP",
			key:  "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f",
			salt: "a0a1a2a3", iv: "1011121314151617", aad: "0102030400000005",
			plaintext: `4500005 4a6f200004001e778c6336405c000020508005b7a3a080000553bec1000073627
				08090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f
				303132333435363701020204`,
			sealed: `24039428b97f417e3c13753a4f05087b67c352e6a7fab1b982d466ef407ae5c614ee8099d52844eb
				61aa95dfab4c02f72aa71e7c4c4f64c9befe2facc638e8f3cbec163fac469b502773f6fb94e664da
				9165b82829f641e076aaa8266b7fb0f7b11b369907e1ad43`,
		},
		{
			name: "RFC 8439 2.8.2",
			key:  "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f",
			salt: "07000000", iv: "4041424344454647", aad: "50515253c0c1c2c3c4c5c6c7",
			plaintext: "4c616469657320616e642047656e746c656d656e206f662074686520636c617373206f66202739393a" +
				"204966204920636f756c64206f6666657220796f75206f6e6c79206f6e652074697020666f722074" +
				"6865206675747572652c2073756e73637265656e20776f756c642062652069742e",
			sealed: `d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca96712
				82fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58
				fab324e4fad675945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b6116
				1ae10b594f09e26a7e902ecbd0600691`,
		},
	}
	c, _ := NewCipher(EncrChaCha20Poly1305, 256, IntegNone)
	for _, v := range vectors {
		s, err := c.Key(append(unhex(t, v.key), unhex(t, v.salt)...), nil)
		if err != nil {
			t.Fatal(err)
		}
		copy(s.nonce[saltLen:], unhex(t, v.iv))
		pt, sealed, aad := unhex(t, v.plaintext), unhex(t, v.sealed), unhex(t, v.aad)
		if got := s.aead.Seal(nil, s.nonce[:], pt, aad); !bytes.Equal(got, sealed) {
			t.Errorf("%s: Seal:\n got %x\nwant %x", v.name, got, sealed)
		}
		if got, err := s.aead.Open(nil, s.nonce[:], sealed, aad); err != nil || !bytes.Equal(got, pt) {
			t.Errorf("%s: Open: %v", v.name, err)
		}
	}
}

// McGrew & Viega, "The Galois/Counter Mode of Operation", test cases 2, 3,
// 4 (AES-128) and 14, 15, 16 (AES-256), whose 96-bit IVs split into the
// RFC 5282 salt | IV.
var gcmVectors = []struct {
	name               string
	key, salt, iv, aad string
	plaintext, ct, tag string
}{
	{
		name: "TC2", key: "00000000000000000000000000000000", salt: "00000000", iv: "0000000000000000",
		plaintext: "00000000000000000000000000000000",
		ct:        "0388dace60b6a392f328c2b971b2fe78", tag: "ab6e47d42cec13bdf53a67b21257bddf",
	},
	{
		name: "TC3", key: "feffe9928665731c6d6a8f9467308308", salt: "cafebabe", iv: "facedbaddecaf888",
		plaintext: gcmPlain64,
		ct:        gcmCT128,
		tag:       "4d5c2af327cd64a62cf35abd2ba6fab4",
	},
	{
		name: "TC4", key: "feffe9928665731c6d6a8f9467308308", salt: "cafebabe", iv: "facedbaddecaf888",
		aad: "feedfacedeadbeeffeedfacedeadbeefabaddad2", plaintext: gcmPlain64[:120], ct: gcmCT128[:120],
		tag: "5bc94fbc3221a5db94fae95ae7121a47",
	},
	{
		name: "TC14", key: "0000000000000000000000000000000000000000000000000000000000000000",
		salt: "00000000", iv: "0000000000000000", plaintext: "00000000000000000000000000000000",
		ct: "cea7403d4d606b6e074ec5d3baf39d18", tag: "d0d1c8a799996bf0265b98b5d48ab919",
	},
	{
		name: "TC15", key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
		salt: "cafebabe", iv: "facedbaddecaf888", plaintext: gcmPlain64, ct: gcmCT256,
		tag: "b094dac5d93471bdec1a502270e3cc6c",
	},
	{
		name: "TC16", key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
		salt: "cafebabe", iv: "facedbaddecaf888", aad: "feedfacedeadbeeffeedfacedeadbeefabaddad2",
		plaintext: gcmPlain64[:120], ct: gcmCT256[:120], tag: "76fc6ece0f4e1768cddf8853bb2d551b",
	},
}

const (
	gcmPlain64 = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72" +
		"1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255"
	gcmCT128 = "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e" +
		"21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985"
	gcmCT256 = "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa" +
		"8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad"
)

func TestGCMVectors(t *testing.T) {
	for _, v := range gcmVectors {
		key := append(unhex(t, v.key), unhex(t, v.salt)...)
		iv, aad, pt := unhex(t, v.iv), unhex(t, v.aad), unhex(t, v.plaintext)
		ct, tag := unhex(t, v.ct), unhex(t, v.tag)
		for _, id := range []uint16{EncrAESGCM16, EncrAESGCM12, EncrAESGCM8} {
			c, err := NewCipher(id, 8*len(unhex(t, v.key)), IntegNone)
			if err != nil {
				t.Fatal(err)
			}
			s, err := c.Key(key, nil)
			if err != nil {
				t.Fatal(err)
			}
			icv := tag[:c.ICVLen()] // the short ICVs are the truncated tag
			body := append(append(append([]byte{}, iv...), ct...), icv...)

			// The raw AEAD with the salt | IV nonce (GCM-16 and GCM-12).
			if id != EncrAESGCM8 {
				copy(s.nonce[saltLen:], iv)
				got := s.aead.Seal(nil, s.nonce[:], pt, aad)
				if !bytes.Equal(got, append(append([]byte{}, ct...), icv...)) {
					t.Errorf("%s %s: Seal = %x", v.name, EncrName(id), got)
				}
			}

			// Through Open: the decrypted vector's last octet is read as the
			// pad length. TC4 and TC16 end in 0x39 (57 of 59 octets are
			// padding): Open returns the first two octets. The 64-octet
			// cases end in 0x55, more than the payload: a typed error after
			// authentication succeeded. The 16-octet zero cases: pad 0.
			got, err := s.Open(nil, aad, body)
			switch padLen := int(pt[len(pt)-1]); {
			case padLen+1 > len(pt):
				if !errors.Is(err, ErrMalformed) || errors.Is(err, ErrIntegrity) {
					t.Errorf("%s %s: Open err = %v, want pad-length error", v.name, EncrName(id), err)
				}
			case err != nil || !bytes.Equal(got, pt[:len(pt)-1-padLen]):
				t.Errorf("%s %s: Open = %x, %v", v.name, EncrName(id), got, err)
			}

			// A wrong tag is an integrity failure.
			body[len(body)-1] ^= 1
			if _, err := s.Open(nil, aad, body); err != ErrIntegrity {
				t.Errorf("%s %s: bad tag: err = %v", v.name, EncrName(id), err)
			}
		}
	}
}

// NIST SP 800-38A F.2.1 and F.2.5 (CBC-AES128.Encrypt, CBC-AES256.Encrypt).
var cbcVectors = []struct {
	name, key, ct string
}{
	{"F.2.1", "2b7e151628aed2a6abf7158809cf4f3c",
		`7649abac8119b246cee98e9b12e9197d 5086cb9b507219ee95db113a917678b2
		 73bed6b8e3c1743b7116e69e22229516 3ff1caa1681fac09120eca307586e1a7`},
	{"F.2.5", "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
		`f58c4c04d6e5f1ba779eabfb5f7bfbd6 9cfc4e967edb808d679f777bc6702c7d
		 39f23369a9d9bacfa530e26304231461 b2eb05e2c39be9fcda6c19078c6a9d1b`},
}

const (
	sp80038aIV    = "000102030405060708090a0b0c0d0e0f"
	sp80038aPlain = `6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51
	                 30c81c46a35ce411e5fbc1191a0a52ef f69f2445df4f9b17ad2b417be66c3710`
)

func TestCBCVectors(t *testing.T) {
	for _, v := range cbcVectors {
		key, iv, pt, ct := unhex(t, v.key), unhex(t, sp80038aIV), unhex(t, sp80038aPlain), unhex(t, v.ct)
		c, err := NewCipher(EncrAESCBC, 8*len(key), IntegHMACSHA256128)
		if err != nil {
			t.Fatal(err)
		}
		integKey := seq(0x40, 0x5f)
		s, err := c.Key(key, integKey)
		if err != nil {
			t.Fatal(err)
		}
		buf := append([]byte{}, pt...)
		s.cbcEncrypt(buf, iv)
		if !bytes.Equal(buf, ct) {
			t.Errorf("%s encrypt: %x", v.name, buf)
		}
		dec := make([]byte, len(ct))
		s.cbcDecrypt(dec, ct, iv)
		if !bytes.Equal(dec, pt) {
			t.Errorf("%s decrypt: %x", v.name, dec)
		}

		// Through Open, with the ICV over assoc | IV | ciphertext computed
		// independently: the plaintext's last octet, 0x10, is the pad
		// length, so Open returns 64-1-16 = 47 octets.
		assoc := []byte("IKE header and SK generic header")
		m := hmac.New(sha256.New, integKey)
		m.Write(assoc)
		m.Write(iv)
		m.Write(ct)
		body := append(append(append([]byte{}, iv...), ct...), m.Sum(nil)[:16]...)
		got, err := s.Open(nil, assoc, body)
		if err != nil || !bytes.Equal(got, pt[:47]) {
			t.Errorf("%s Open = %x, %v", v.name, got, err)
		}
		assoc[0] ^= 1
		if _, err := s.Open(nil, assoc, body); err != ErrIntegrity {
			t.Errorf("%s: tampered assoc: err = %v", v.name, err)
		}
	}
}

// TestCBCSealLayout checks Seal's CBC output against an independent
// computation: zero padding to the block size, then the pad length,
// encrypted, then the truncated HMAC of assoc | IV | ciphertext.
func TestCBCSealLayout(t *testing.T) {
	key, integKey := seq(1, 16), seq(0x20, 0x3f)
	c, _ := NewCipher(EncrAESCBC, 128, IntegHMACSHA256128)
	s, _ := c.Key(key, integKey)
	iv := seq(0xa0, 0xaf)
	assoc := []byte("header")
	for n := range 40 {
		pt := seq(0, byte(n))[:n]
		sealed := s.Seal(nil, iv, assoc, pt)
		if len(sealed) != c.SealedLen(n) {
			t.Fatalf("n=%d: len %d, SealedLen %d", n, len(sealed), c.SealedLen(n))
		}
		ctLen := (n/16 + 1) * 16
		padded := append(append([]byte{}, pt...), make([]byte, ctLen-n-1)...)
		padded = append(padded, byte(ctLen-n-1))
		s.cbcEncrypt(padded, iv)
		m := hmac.New(sha256.New, integKey)
		m.Write(assoc)
		m.Write(iv)
		m.Write(padded)
		want := append(append(append([]byte{}, iv...), padded...), m.Sum(nil)[:16]...)
		if !bytes.Equal(sealed, want) {
			t.Fatalf("n=%d: layout differs", n)
		}
	}
}

func TestRoundTripAllSuites(t *testing.T) {
	for _, spec := range allSuites() {
		t.Run(spec.name, func(t *testing.T) {
			s := newSK(t, spec, 7)
			c := s.Cipher()
			iv := seq(0x80, byte(0x80+c.IVLen()-1))
			hdr := seq(0, 31)
			for _, n := range []int{0, 1, 2, 14, 15, 16, 17, 31, 32, 33, 200, 1400} {
				pt := bytes.Repeat([]byte{byte(n)}, n)
				msg := append([]byte{}, hdr...)
				msg = s.Seal(msg, iv, msg, pt)
				if len(msg) != len(hdr)+c.SealedLen(n) {
					t.Fatalf("n=%d: sealed %d octets, SealedLen %d", n, len(msg)-len(hdr), c.SealedLen(n))
				}
				if !bytes.Equal(msg[:len(hdr)], hdr) || !bytes.Equal(msg[len(hdr):len(hdr)+len(iv)], iv) {
					t.Fatalf("n=%d: header or IV clobbered", n)
				}
				prefix := []byte("dst")
				got, err := s.Open(prefix, msg[:len(hdr)], msg[len(hdr):])
				if err != nil {
					t.Fatalf("n=%d: Open: %v", n, err)
				}
				if !bytes.Equal(got, append([]byte("dst"), pt...)) {
					t.Fatalf("n=%d: Open returned %x", n, got)
				}
			}
		})
	}
}

func TestTamper(t *testing.T) {
	for _, spec := range allSuites() {
		s := newSK(t, spec, 9)
		iv := make([]byte, s.Cipher().IVLen())
		assoc := seq(0, 27)
		sealed := s.Seal(nil, iv, assoc, []byte("a payload chain of some length"))
		for i := range len(assoc) + len(sealed) {
			a, b := append([]byte{}, assoc...), append([]byte{}, sealed...)
			if i < len(a) {
				a[i] ^= 0x80
			} else {
				b[i-len(a)] ^= 0x01
			}
			if _, err := s.Open(nil, a, b); err != ErrIntegrity {
				t.Fatalf("%s: flipped octet %d: err = %v", spec.name, i, err)
			}
		}
		// Extra trailing octets also fail integrity.
		if _, err := s.Open(nil, assoc, append(append([]byte{}, sealed...), 0)); err == nil {
			t.Fatalf("%s: trailing octet accepted", spec.name)
		}
	}
}

func TestTruncated(t *testing.T) {
	for _, spec := range allSuites() {
		s := newSK(t, spec, 11)
		c := s.Cipher()
		sealed := s.Seal(nil, make([]byte, c.IVLen()), nil, bytes.Repeat([]byte{1}, 40))
		for n := range len(sealed) {
			_, err := s.Open(nil, nil, sealed[:n])
			if err == nil {
				t.Fatalf("%s: %d-octet prefix accepted", spec.name, n)
			}
			if n < c.IVLen()+1+c.ICVLen() && !errors.Is(err, ErrMalformed) {
				t.Fatalf("%s: %d octets: err = %v, want ErrMalformed", spec.name, n, err)
			}
		}
	}
}

// TestCBCMalformedAfterMAC covers the structural errors that are only
// reported once the ICV verified: a ciphertext that is not whole blocks,
// and a pad length larger than the payload.
func TestCBCMalformedAfterMAC(t *testing.T) {
	c, _ := NewCipher(EncrAESCBC, 128, IntegHMACSHA256128)
	integKey := seq(1, 32)
	s, _ := c.Key(seq(1, 16), integKey)
	iv := make([]byte, 16)
	mac := func(assoc, data []byte) []byte {
		m := hmac.New(sha256.New, integKey)
		m.Write(assoc)
		m.Write(data)
		return append(append([]byte{}, data...), m.Sum(nil)[:16]...)
	}

	body := mac(nil, append(append([]byte{}, iv...), seq(1, 20)...)) // 20-octet ciphertext
	if _, err := s.Open(nil, nil, body); err != errBlockAlign {
		t.Errorf("unaligned: err = %v", err)
	}

	blk := bytes.Repeat([]byte{0xff}, 16) // pad length 255 > 15
	s.cbcEncrypt(blk, iv)
	body = mac(nil, append(append([]byte{}, iv...), blk...))
	_, err := s.Open(nil, nil, body)
	var me *MalformedError
	if !errors.As(err, &me) || !errors.Is(err, ErrMalformed) || err != errPadLength {
		t.Errorf("pad length: err = %v", err)
	}

	blk = append(make([]byte, 15), 15) // exactly all padding: empty payload
	s.cbcEncrypt(blk, iv)
	body = mac(nil, append(append([]byte{}, iv...), blk...))
	if got, err := s.Open([]byte{}, nil, body); err != nil || len(got) != 0 {
		t.Errorf("all padding: %x, %v", got, err)
	}
}

func TestNewCipherErrors(t *testing.T) {
	unsupported := []struct {
		encr  uint16
		bits  int
		integ uint16
		typ   uint8
		id    uint16
	}{
		{EncrDES, 0, IntegHMACSHA256128, TypeENCR, EncrDES},
		{Encr3DES, 0, IntegHMACSHA256128, TypeENCR, Encr3DES},
		{EncrNULL, 0, IntegHMACSHA256128, TypeENCR, EncrNULL},
		{EncrAESCTR, 128, IntegHMACSHA256128, TypeENCR, EncrAESCTR},
		{99, 128, 0, TypeENCR, 99},
		{EncrAESCBC, 128, IntegAESXCBC96, TypeINTEG, IntegAESXCBC96},
		{EncrAESCBC, 128, 99, TypeINTEG, 99},
	}
	for _, u := range unsupported {
		_, err := NewCipher(u.encr, u.bits, u.integ)
		var ue *UnsupportedError
		if !errors.As(err, &ue) || ue.Type != u.typ || ue.ID != u.id {
			t.Errorf("NewCipher(%d, %d, %d) = %v, want unsupported %d/%d", u.encr, u.bits, u.integ, err, u.typ, u.id)
		}
	}
	invalid := []struct {
		encr  uint16
		bits  int
		integ uint16
	}{
		{EncrAESGCM16, 0, IntegNone},
		{EncrAESGCM16, 64, IntegNone},
		{EncrAESGCM16, 512, IntegNone},
		{EncrAESGCM16, 128, IntegHMACSHA256128},
		{EncrChaCha20Poly1305, 128, IntegNone},
		{EncrChaCha20Poly1305, 0, IntegHMACSHA256128},
		{EncrAESCBC, 0, IntegHMACSHA256128},
		{EncrAESCBC, 257, IntegHMACSHA256128},
		{EncrAESCBC, 128, IntegNone},
	}
	for _, v := range invalid {
		c, err := NewCipher(v.encr, v.bits, v.integ)
		if err == nil || c != nil || errors.Is(err, ErrUnsupported) {
			t.Errorf("NewCipher(%d, %d, %d) = %v, %v; want a plain error", v.encr, v.bits, v.integ, c, err)
		}
	}
}

func TestCipherParameters(t *testing.T) {
	cases := []struct {
		encr                       uint16
		bits                       int
		integ                      uint16
		name                       string
		aead                       bool
		encrKey, integKey, iv, icv int
		sealed0, sealed16          int
	}{
		{EncrAESGCM16, 256, 0, "AES_GCM_16_256", true, 36, 0, 8, 16, 8 + 1 + 16, 8 + 17 + 16},
		{EncrAESGCM12, 128, 0, "AES_GCM_12_128", true, 20, 0, 8, 12, 21, 37},
		{EncrAESGCM8, 192, 0, "AES_GCM_8_192", true, 28, 0, 8, 8, 17, 33},
		{EncrChaCha20Poly1305, 0, 0, "CHACHA20_POLY1305", true, 36, 0, 8, 16, 25, 41},
		{EncrAESCBC, 128, IntegHMACSHA256128, "AES_CBC_128/HMAC_SHA2_256_128", false, 16, 32, 16, 16, 48, 64},
		{EncrAESCBC, 256, IntegHMACSHA512256, "AES_CBC_256/HMAC_SHA2_512_256", false, 32, 64, 16, 32, 64, 80},
		{EncrAESCBC, 192, IntegHMACSHA384192, "AES_CBC_192/HMAC_SHA2_384_192", false, 24, 48, 16, 24, 56, 72},
		{EncrAESCBC, 128, IntegHMACSHA196, "AES_CBC_128/HMAC_SHA1_96", false, 16, 20, 16, 12, 44, 60},
		{EncrAESCBC, 128, IntegHMACMD596, "AES_CBC_128/HMAC_MD5_96", false, 16, 16, 16, 12, 44, 60},
	}
	for _, k := range cases {
		c, err := NewCipher(k.encr, k.bits, k.integ)
		if err != nil {
			t.Fatal(err)
		}
		got := []any{c.String(), c.AEAD(), c.EncrKeyLen(), c.IntegKeyLen(), c.IVLen(), c.ICVLen(), c.SealedLen(0), c.SealedLen(16)}
		want := []any{k.name, k.aead, k.encrKey, k.integKey, k.iv, k.icv, k.sealed0, k.sealed16}
		for i := range got {
			if got[i] != want[i] {
				t.Errorf("%s: parameter %d = %v, want %v", k.name, i, got[i], want[i])
			}
		}
		// Key checks both lengths.
		if _, err := c.Key(make([]byte, c.EncrKeyLen()-1), make([]byte, c.IntegKeyLen())); err == nil {
			t.Errorf("%s: short encryption key accepted", k.name)
		}
		if _, err := c.Key(make([]byte, c.EncrKeyLen()), make([]byte, c.IntegKeyLen()+1)); err == nil {
			t.Errorf("%s: long integrity key accepted", k.name)
		}
	}
	if _, err := new(Cipher).Key(nil, nil); err == nil {
		t.Error("zero Cipher made a key")
	}
}

func TestSealBadIVPanics(t *testing.T) {
	s := newSK(t, allSuites()[0], 1)
	defer func() {
		if recover() == nil {
			t.Error("Seal with a short IV did not panic")
		}
	}()
	s.Seal(nil, []byte{1, 2, 3}, nil, nil)
}

func TestSealOpenAllocs(t *testing.T) {
	for _, spec := range []suiteSpec{
		{"aes128gcm16", EncrAESGCM16, 128, IntegNone},
		{"chacha20poly1305", EncrChaCha20Poly1305, 256, IntegNone},
		{"aes128cbc-sha256", EncrAESCBC, 128, IntegHMACSHA256128},
	} {
		s := newSK(t, spec, 3)
		iv := make([]byte, s.Cipher().IVLen())
		assoc, pt := make([]byte, 32), make([]byte, 200)
		buf := make([]byte, 0, 512)
		out := make([]byte, 0, 512)
		sealed := s.Seal(nil, iv, assoc, pt)
		if n := testing.AllocsPerRun(100, func() { s.Seal(buf, iv, assoc, pt) }); n != 0 {
			t.Errorf("%s: Seal allocates %v times", spec.name, n)
		}
		if n := testing.AllocsPerRun(100, func() { s.Open(out, assoc, sealed) }); n != 0 {
			t.Errorf("%s: Open allocates %v times", spec.name, n)
		}
		bad := append([]byte{}, sealed...)
		bad[20] ^= 1
		if n := testing.AllocsPerRun(100, func() { s.Open(out, assoc, bad) }); n != 0 {
			t.Errorf("%s: failing Open allocates %v times", spec.name, n)
		}
	}
}
