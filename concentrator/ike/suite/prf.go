package suite

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"hash"
	"slices"
	"sync"
)

// PRF is a negotiated pseudo-random function. Only HMAC-based PRFs are
// implemented (HMAC-SHA2-256/384/512; HMAC-SHA1 and HMAC-MD5 for peers
// allowed by ike.allow_weak), so every PRF accepts keys of any length and
// prf(Ni | Nr, g^ir) needs no special key handling (RFC 7296 §2.14).
// A PRF holds no key and is safe for concurrent use; NewPRF hands out one
// PRF per transform ID, shared by every IKE SA that negotiated it (so do
// not modify one).
type PRF struct {
	ID   uint16 // IANA PRF transform ID
	hash func() hash.Hash
	size int
}

func prfHash(id uint16) (func() hash.Hash, int, bool) {
	switch id {
	case PRFHMACSHA256:
		return sha256.New, sha256.Size, true
	case PRFHMACSHA384:
		return sha512.New384, sha512.Size384, true
	case PRFHMACSHA512:
		return sha512.New, sha512.Size, true
	case PRFHMACSHA1:
		return sha1.New, sha1.Size, true
	case PRFHMACMD5:
		return md5.New, md5.Size, true
	}
	return nil, 0, false
}

// NewPRF returns the PRF with the given transform ID, or an *UnsupportedError.
// It does not apply the crypto policy: see Weak and Check.
func NewPRF(id uint16) (*PRF, error) {
	return prfs.get(id, func() (*PRF, error) {
		h, size, ok := prfHash(id)
		if !ok {
			return nil, &UnsupportedError{Type: TypePRF, ID: id}
		}
		return &PRF{ID: id, hash: h, size: size}, nil
	})
}

var prfs shared[uint16, PRF]

// shared holds the one instance of an immutable value per key: the PRFs
// and ciphers of the transforms in use (a handful), which a node's IKE
// SAs point to instead of each holding its own.
type shared[K comparable, V any] struct {
	mu sync.RWMutex
	m  map[K]*V
}

// get returns the instance for k, made by mk on first use; an error of mk
// is returned and nothing is kept.
func (s *shared[K, V]) get(k K, mk func() (*V, error)) (*V, error) {
	s.mu.RLock()
	v, ok := s.m[k]
	s.mu.RUnlock()
	if ok {
		return v, nil
	}
	v, err := mk()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if w, ok := s.m[k]; ok {
		return w, nil
	}
	if s.m == nil {
		s.m = make(map[K]*V)
	}
	s.m[k] = v
	return v, nil
}

// Size is the PRF's output length in octets, which is also its preferred key
// length (the length of SK_d, SK_pi and SK_pr).
func (p *PRF) Size() int { return p.size }

// Sum returns prf(key, S) where S is the concatenation of data.
func (p *PRF) Sum(key []byte, data ...[]byte) []byte {
	m := hmac.New(p.hash, key)
	for _, d := range data {
		m.Write(d)
	}
	return m.Sum(make([]byte, 0, p.size))
}

// Plus returns the first n octets of prf+(key, seed) (RFC 7296 §2.13):
//
//	prf+(K, S) = T1 | T2 | T3 | ...
//	T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n)
//
// The counter is one octet, so at most 255*Size() octets exist; Plus
// returns nil (it never panics) when n is negative or larger than that.
func (p *PRF) Plus(key, seed []byte, n int) []byte {
	if n < 0 || n > 255*p.size {
		return nil
	}
	out := make([]byte, 0, (n+p.size-1)/p.size*p.size)
	m := hmac.New(p.hash, key)
	var prev []byte
	for i := 1; len(out) < n; i++ {
		m.Reset()
		m.Write(prev)
		m.Write(seed)
		m.Write([]byte{byte(i)})
		start := len(out)
		out = m.Sum(out)
		prev = out[start:]
	}
	return out[:n:n]
}

// IKEKeys are the seven secrets of an IKE SA (RFC 7296 §2.14). SK_d, SK_a
// and SK_e share one backing array, SK_pi and SK_pr another (the SA drops
// them once authenticated); the capacities are capped, so appending to one
// never overwrites another.
type IKEKeys struct {
	// Kept holds SK_d | SK_ai | SK_ar | SK_ei | SK_er in one array of its
	// own, in that order: what an established IKE SA keeps. The five
	// slices below are parts of it.
	Kept       []byte
	SKd        []byte // for deriving CHILD SA keys and rekeying
	SKai, SKar []byte // integrity keys (empty for AEAD ciphers)
	SKei, SKer []byte // encryption keys, including any salt
	SKpi, SKpr []byte // for the AUTH payload
}

// SKEYSEED returns prf(Ni | Nr, g^ir) (RFC 7296 §2.14). ni and nr are the
// nonce values without payload headers; gir is the shared secret in its
// IKE encoding (see KeyExchange.SharedSecret).
func SKEYSEED(p *PRF, ni, nr, gir []byte) []byte {
	key := make([]byte, 0, len(ni)+len(nr))
	key = append(append(key, ni...), nr...)
	return p.Sum(key, gir)
}

// DeriveIKEKeys computes {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr}
// = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr) and splits it: SK_d, SK_pi and
// SK_pr are p.Size() octets, SK_ai and SK_ar c.IntegKeyLen(), SK_ei and SK_er
// c.EncrKeyLen(). The SPIs are those of the IKE header, initiator's first,
// whichever side initiated the current exchange.
func DeriveIKEKeys(p *PRF, skeyseed, ni, nr []byte, spii, spir uint64, c *Cipher) IKEKeys {
	seed := make([]byte, 0, len(ni)+len(nr)+16)
	seed = append(append(seed, ni...), nr...)
	seed = binary.BigEndian.AppendUint64(seed, spii)
	seed = binary.BigEndian.AppendUint64(seed, spir)

	ps, ik, ek := p.Size(), c.IntegKeyLen(), c.EncrKeyLen()
	all := p.Plus(skeyseed, seed, 3*ps+2*ik+2*ek)
	// What an established IKE SA keeps (SK_d, SK_a, SK_e) gets an array of
	// its own; SK_pi and SK_pr, which only its AUTH payloads need, stay in
	// prf+'s, which goes with them: with AES-GCM-256 and SHA-256 an SA
	// keeps 112 bytes of keys instead of prf+'s 192.
	kept := ps + 2*ik + 2*ek
	km := slices.Clone(all[:kept])
	var k IKEKeys
	k.Kept = km
	next := func(n int) []byte {
		k := km[:n:n]
		km = km[n:]
		return k
	}
	k.SKd = next(ps)
	k.SKai, k.SKar = next(ik), next(ik)
	k.SKei, k.SKer = next(ek), next(ek)
	km = all[kept:]
	k.SKpi, k.SKpr = next(ps), next(ps)
	return k
}

// RekeySKEYSEED returns prf(SK_d (old), g^ir (new) | Ni | Nr), the SKEYSEED
// of an IKE SA created by rekeying (RFC 7296 §2.18). The same construction
// chains additional key exchanges in IKE_INTERMEDIATE (RFC 9370 §2.2.2).
// A rekey with additional key exchanges in IKE_FOLLOWUP_KE appends their
// secrets after the nonces (RFC 9370 §2.2.4):
//
//	SKEYSEED = prf(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n))
func RekeySKEYSEED(p *PRF, oldSKd, gir, ni, nr []byte, addKE ...[]byte) []byte {
	if len(addKE) == 0 {
		return p.Sum(oldSKd, gir, ni, nr)
	}
	return p.Sum(oldSKd, append([][]byte{gir, ni, nr}, addKE...)...)
}

// ChildKeys returns n octets of KEYMAT = prf+(SK_d, [g^ir (new)] | Ni | Nr)
// for a CHILD SA (RFC 7296 §2.17); gir is nil without PFS. The caller takes
// the keys in the order of §2.17: encryption then integrity key for the
// initiator-to-responder SA, then the same for the other direction. The
// secrets of additional key exchanges (RFC 9370 §2.2.4) follow the nonces:
//
//	KEYMAT = prf+(SK_d, SK(0) | Ni | Nr | SK(1) | ... | SK(n))
func ChildKeys(p *PRF, skd []byte, gir, ni, nr []byte, n int, addKE ...[]byte) []byte {
	size := len(gir) + len(ni) + len(nr)
	for _, k := range addKE {
		size += len(k)
	}
	seed := make([]byte, 0, size)
	seed = append(append(append(seed, gir...), ni...), nr...)
	for _, k := range addKE {
		seed = append(seed, k...)
	}
	return p.Plus(skd, seed, n)
}
