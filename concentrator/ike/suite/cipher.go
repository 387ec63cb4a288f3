package suite

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"errors"
	"fmt"
	"hash"
	"strconv"

	"golang.org/x/crypto/chacha20poly1305"
)

// Implementation constants.
const (
	saltLen    = 4 // AEAD salt at the end of SK_e (RFC 5282 §7.1, RFC 7634 §2)
	aeadIVLen  = 8 // explicit IV of the AEAD ciphers (RFC 5282 §3.1, RFC 7634 §2)
	nonceLen   = saltLen + aeadIVLen
	gcmFullTag = 16
)

type cipherKind uint8

const (
	kindGCM cipherKind = iota + 1
	kindChaCha
	kindCBC
)

// integ describes an HMAC integrity algorithm (RFC 2404, RFC 2403, RFC 4868).
type integ struct {
	hash   func() hash.Hash
	keyLen int // octets of SK_a
	icvLen int // truncated output
}

func integAlg(id uint16) (integ, bool) {
	switch id {
	case IntegHMACSHA256128:
		return integ{sha256.New, 32, 16}, true
	case IntegHMACSHA384192:
		return integ{sha512.New384, 48, 24}, true
	case IntegHMACSHA512256:
		return integ{sha512.New, 64, 32}, true
	case IntegHMACSHA196:
		return integ{sha1.New, 20, 12}, true
	case IntegHMACMD596:
		return integ{md5.New, 16, 12}, true
	}
	return integ{}, false
}

// Cipher describes a negotiated ENCR transform (with its key length) and
// INTEG transform: how SK payloads are protected. A Cipher holds no key and
// is safe for concurrent use; Key makes the per-direction SKCipher.
type Cipher struct {
	encrID  uint16
	keyBits int
	integID uint16

	kind   cipherKind
	aesLen int // AES key octets (GCM, CBC)
	icvLen int
	integ  integ
}

// NewCipher validates an ENCR/INTEG combination. keyBits is the ENCR key
// length attribute (0 when absent).
//
//   - AES-GCM with an 8, 12 or 16 octet ICV: keyBits 128, 192 or 256;
//     integID must be IntegNone (RFC 5282 §8).
//   - ChaCha20-Poly1305: keyBits 0 or 256; integID must be IntegNone.
//   - AES-CBC: keyBits 128, 192 or 256; integID one of HMAC-SHA2-256-128,
//     -384-192, -512-256, or the weak HMAC-SHA1-96 and HMAC-MD5-96.
//
// An unimplemented transform yields an *UnsupportedError; a bad combination
// or key length a plain error naming the problem. NewCipher does not apply
// the crypto policy: see Weak and Check. A Cipher holds no key and is
// immutable: NewCipher hands out one per combination, shared.
func NewCipher(encrID uint16, keyBits int, integID uint16) (*Cipher, error) {
	return ciphers.get(cipherKey{encrID, keyBits, integID}, func() (*Cipher, error) {
		return newCipher(encrID, keyBits, integID)
	})
}

type cipherKey struct {
	encrID  uint16
	keyBits int
	integID uint16
}

var ciphers shared[cipherKey, Cipher]

func newCipher(encrID uint16, keyBits int, integID uint16) (*Cipher, error) {
	c := &Cipher{encrID: encrID, keyBits: keyBits, integID: integID}
	switch encrID {
	case EncrAESGCM8, EncrAESGCM12, EncrAESGCM16:
		c.kind = kindGCM
		c.icvLen = 16
		if encrID == EncrAESGCM8 {
			c.icvLen = 8
		} else if encrID == EncrAESGCM12 {
			c.icvLen = 12
		}
	case EncrChaCha20Poly1305:
		c.kind = kindChaCha
		c.icvLen = chacha20poly1305.Overhead
	case EncrAESCBC:
		c.kind = kindCBC
	default:
		return nil, &UnsupportedError{Type: TypeENCR, ID: encrID}
	}

	switch c.kind {
	case kindGCM, kindCBC:
		if keyBits != 128 && keyBits != 192 && keyBits != 256 {
			return nil, fmt.Errorf("suite: %s needs a key length of 128, 192 or 256 bits, not %d", EncrName(encrID), keyBits)
		}
		c.aesLen = keyBits / 8
	case kindChaCha:
		if keyBits != 0 && keyBits != 256 {
			return nil, fmt.Errorf("suite: %s has a fixed 256-bit key, not %d", EncrName(encrID), keyBits)
		}
		c.keyBits = 256
	}

	if c.kind == kindCBC {
		if integID == IntegNone {
			return nil, fmt.Errorf("suite: %s needs an integrity algorithm", EncrName(encrID))
		}
		in, ok := integAlg(integID)
		if !ok {
			return nil, &UnsupportedError{Type: TypeINTEG, ID: integID}
		}
		c.integ, c.icvLen = in, in.icvLen
	} else if integID != IntegNone {
		return nil, fmt.Errorf("suite: combined-mode %s must not be paired with %s", EncrName(encrID), IntegName(integID))
	}
	return c, nil
}

// String names the cipher for logs, e.g. "AES_GCM_16_256" or
// "AES_CBC_128/HMAC_SHA2_256_128".
func (c *Cipher) String() string {
	s := EncrName(c.encrID)
	if c.kind != kindChaCha {
		s += "_" + strconv.Itoa(c.keyBits)
	}
	if c.kind == kindCBC {
		s += "/" + IntegName(c.integID)
	}
	return s
}

// AEAD reports whether the cipher is a combined-mode (AEAD) algorithm.
func (c *Cipher) AEAD() bool { return c.kind != kindCBC }

// EncrKeyLen is the length of SK_e (and of the ENCR part of a CHILD SA's
// KEYMAT) in octets, including the 4-octet salt of the AEAD ciphers:
// 20, 28 or 36 for AES-GCM, 36 for ChaCha20-Poly1305, 16, 24 or 32 for
// AES-CBC.
func (c *Cipher) EncrKeyLen() int {
	switch c.kind {
	case kindGCM:
		return c.aesLen + saltLen
	case kindChaCha:
		return chacha20poly1305.KeySize + saltLen
	}
	return c.aesLen
}

// IntegKeyLen is the length of SK_a in octets: 0 for AEAD ciphers.
func (c *Cipher) IntegKeyLen() int { return c.integ.keyLen }

// IVLen is the length of the IV that precedes the ciphertext: 8 for the
// AEAD ciphers, 16 for AES-CBC.
func (c *Cipher) IVLen() int {
	if c.kind == kindCBC {
		return aes.BlockSize
	}
	return aeadIVLen
}

// ICVLen is the length of the integrity checksum that ends the payload:
// 8, 12 or 16 for AES-GCM, 16 for ChaCha20-Poly1305, the truncated HMAC
// length (12, 16, 24 or 32) for AES-CBC.
func (c *Cipher) ICVLen() int { return c.icvLen }

// SealedLen is the length of IV | ciphertext | ICV that Seal produces for a
// plaintext of plaintextLen octets. The ciphertext covers the plaintext, the
// padding and the pad-length octet.
func (c *Cipher) SealedLen(plaintextLen int) int {
	return c.IVLen() + c.ciphertextLen(plaintextLen) + c.icvLen
}

func (c *Cipher) ciphertextLen(n int) int {
	if c.kind == kindCBC {
		return (n + 1 + aes.BlockSize - 1) / aes.BlockSize * aes.BlockSize
	}
	return n + 1
}

// Key makes the SKCipher for one direction from its SK_e (encrKey, salt
// included) and SK_a (integKey, empty for AEAD ciphers). It expands the AES
// key schedule and precomputes the HMAC pads once, so Seal and Open do no
// per-message setup.
func (c *Cipher) Key(encrKey, integKey []byte) (*SKCipher, error) {
	if len(encrKey) != c.EncrKeyLen() {
		return nil, fmt.Errorf("suite: %s key is %d octets, want %d", c, len(encrKey), c.EncrKeyLen())
	}
	if len(integKey) != c.IntegKeyLen() {
		return nil, fmt.Errorf("suite: %s integrity key is %d octets, want %d", c, len(integKey), c.IntegKeyLen())
	}
	s := &SKCipher{c: c}
	var err error
	switch c.kind {
	case kindGCM:
		if s.block, err = aes.NewCipher(encrKey[:c.aesLen]); err != nil {
			return nil, err
		}
		tag := c.icvLen
		if tag == 8 {
			tag = gcmFullTag // crypto/cipher's minimum is 12: seal with 16 and truncate
		}
		if s.aead, err = cipher.NewGCMWithTagSize(s.block, tag); err != nil {
			return nil, err
		}
		copy(s.nonce[:saltLen], encrKey[c.aesLen:])
	case kindChaCha:
		if s.aead, err = chacha20poly1305.New(encrKey[:chacha20poly1305.KeySize]); err != nil {
			return nil, err
		}
		copy(s.nonce[:saltLen], encrKey[chacha20poly1305.KeySize:])
	case kindCBC:
		if s.block, err = aes.NewCipher(encrKey); err != nil {
			return nil, err
		}
		s.mac = hmac.New(c.integ.hash, integKey)
	default:
		return nil, errors.New("suite: zero Cipher")
	}
	return s, nil
}

// SKCipher protects and verifies the SK (and SKF) payloads of one direction
// of an IKE SA. It keeps scratch state, so it is safe for sequential use
// only: give each direction (and each worker) its own.
type SKCipher struct {
	c     *Cipher
	aead  cipher.AEAD  // GCM and ChaCha20-Poly1305
	block cipher.Block // AES (CBC; GCM-8's decryption)
	mac   hash.Hash    // CBC: HMAC with precomputed pads, reused via Reset
	nonce [nonceLen]byte
	sum   [sha512.Size]byte
}

// Cipher returns the transform pair s was made from.
func (s *SKCipher) Cipher() *Cipher { return s.c }

// Seal appends IV | Encrypted(plaintext | padding | pad length) | ICV to dst
// and returns the extended slice.
//
// assoc is every octet of the IKE message that precedes the IV: the IKE
// header and the SK generic payload header (plus the fragment number fields
// of SKF). For the AEAD ciphers it is the additional authenticated data and
// the nonce is salt | iv (RFC 5282 §5.1, RFC 7634 §2); for AES-CBC the ICV is
// the truncated HMAC of assoc | IV | ciphertext (RFC 7296 §3.14). Since assoc
// holds the payload and message lengths, the caller fills those in first,
// using SealedLen.
//
// iv must be IVLen() octets, from the caller's injected randomness (for
// AEAD ciphers a per-SA counter will do: the IV must never repeat under a
// key). Seal panics if it is not. AEAD ciphers add no padding, only the pad
// length octet 0; AES-CBC pads with zero octets to the block size.
//
// dst may be assoc's own buffer (the usual case: the message is built in
// place), but the octets Seal appends must not overlap iv, assoc or
// plaintext.
func (s *SKCipher) Seal(dst, iv, assoc, plaintext []byte) []byte {
	c := s.c
	if len(iv) != c.IVLen() {
		panic("suite: Seal: IV is " + strconv.Itoa(len(iv)) + " octets, want " + strconv.Itoa(c.IVLen()))
	}
	ctLen := c.ciphertextLen(len(plaintext))
	tagRoom := c.icvLen
	if c.kind == kindGCM && c.icvLen == 8 {
		tagRoom = gcmFullTag
	}
	ret, out := sliceForAppend(dst, len(iv)+ctLen+tagRoom)
	copy(out, iv)
	body := out[len(iv) : len(iv)+ctLen]
	copy(body, plaintext)
	padLen := ctLen - len(plaintext) - 1
	clear(body[len(plaintext) : ctLen-1])
	body[ctLen-1] = byte(padLen)

	if c.kind == kindCBC {
		s.cbcEncrypt(body, iv)
		s.mac.Reset()
		s.mac.Write(assoc)
		s.mac.Write(out[:len(iv)+ctLen])
		sum := s.mac.Sum(s.sum[:0])
		copy(out[len(iv)+ctLen:], sum[:c.icvLen])
		return ret
	}
	copy(s.nonce[saltLen:], iv)
	s.aead.Seal(body[:0], s.nonce[:], body, assoc)
	return ret[:len(ret)-tagRoom+c.icvLen]
}

// Open verifies and decrypts body = IV | ciphertext | ICV (every octet of the
// SK payload after its generic header) with assoc as in Seal, appends the
// plaintext without padding and pad length to dst and returns the extended
// slice. dst must not overlap body.
//
// Errors: ErrIntegrity when the ICV does not verify (checked in constant
// time, before anything is decrypted for AES-CBC); a *MalformedError
// (errors.Is ErrMalformed) when body is too short to hold IV and ICV, or
// when an authenticated ciphertext is not a whole number of blocks or its
// pad length exceeds the payload. Open never panics, whatever the input.
func (s *SKCipher) Open(dst, assoc, body []byte) ([]byte, error) {
	c := s.c
	ivLen := c.IVLen()
	if len(body) < ivLen+1+c.icvLen {
		return nil, errShortBody
	}
	iv := body[:ivLen]
	ct := body[ivLen : len(body)-c.icvLen]

	var pt []byte
	switch {
	case c.kind == kindCBC:
		s.mac.Reset()
		s.mac.Write(assoc)
		s.mac.Write(body[:len(body)-c.icvLen])
		sum := s.mac.Sum(s.sum[:0])
		if !hmac.Equal(sum[:c.icvLen], body[len(body)-c.icvLen:]) {
			return nil, ErrIntegrity
		}
		if len(ct)%aes.BlockSize != 0 {
			return nil, errBlockAlign
		}
		var ret []byte
		ret, pt = sliceForAppend(dst, len(ct))
		s.cbcDecrypt(pt, ct, iv)
		dst = ret
	case c.kind == kindGCM && c.icvLen == 8:
		var err error
		if dst, pt, err = s.openGCM8(dst, assoc, iv, ct, body[len(body)-8:]); err != nil {
			return nil, err
		}
	default:
		copy(s.nonce[saltLen:], iv)
		out, err := s.aead.Open(dst, s.nonce[:], body[ivLen:], assoc)
		if err != nil {
			return nil, ErrIntegrity
		}
		dst, pt = out, out[len(dst):]
	}

	padLen := int(pt[len(pt)-1])
	if padLen+1 > len(pt) {
		return nil, errPadLength
	}
	return dst[:len(dst)-padLen-1], nil
}

// openGCM8 opens AES-GCM with an 8-octet ICV, which crypto/cipher cannot
// verify directly (its minimum tag is 12 octets). GCM encrypts with AES-CTR
// from counter block nonce | 2, so it decrypts that way, re-seals the
// plaintext to recompute the full tag, and compares the first 8 octets in
// constant time. Unauthenticated plaintext is wiped on failure.
func (s *SKCipher) openGCM8(dst, assoc, iv, ct, icv []byte) (ret, pt []byte, err error) {
	copy(s.nonce[saltLen:], iv)
	var ctr [aes.BlockSize]byte
	copy(ctr[:], s.nonce[:])
	ctr[aes.BlockSize-1] = 2
	ret, pt = sliceForAppend(dst, len(ct))
	cipher.NewCTR(s.block, ctr[:]).XORKeyStream(pt, ct)
	full := s.aead.Seal(make([]byte, 0, len(ct)+gcmFullTag), s.nonce[:], pt, assoc)
	if subtle.ConstantTimeCompare(full[len(ct):len(ct)+8], icv) != 1 {
		clear(pt)
		return nil, nil, ErrIntegrity
	}
	return ret, pt, nil
}

// cbcEncrypt encrypts buf (a whole number of blocks) in place.
func (s *SKCipher) cbcEncrypt(buf, iv []byte) {
	prev := iv
	for i := 0; i < len(buf); i += aes.BlockSize {
		b := buf[i : i+aes.BlockSize]
		subtle.XORBytes(b, b, prev)
		s.block.Encrypt(b, b)
		prev = b
	}
}

// cbcDecrypt decrypts ct (a whole number of blocks) into dst, which must
// not overlap ct.
func (s *SKCipher) cbcDecrypt(dst, ct, iv []byte) {
	prev := iv
	for i := 0; i < len(ct); i += aes.BlockSize {
		c := ct[i : i+aes.BlockSize]
		d := dst[i : i+aes.BlockSize]
		s.block.Decrypt(d, c)
		subtle.XORBytes(d, d, prev)
		prev = c
	}
}

// sliceForAppend extends in by n octets, reallocating if needed, and returns
// the whole slice and the n new octets.
func sliceForAppend(in []byte, n int) (head, tail []byte) {
	if total := len(in) + n; cap(in) >= total {
		head = in[:total]
	} else {
		head = make([]byte, total, total+total/4)
		copy(head, in)
	}
	tail = head[len(in):]
	return
}
