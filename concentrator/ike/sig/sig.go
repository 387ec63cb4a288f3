package sig

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	cryptorand "crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"io"
	"math/big"
	"slices"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// AUTH methods (IANA "IKEv2 Authentication Method").
const (
	MethodRSA              = 1  // RSA Digital Signature: PKCS#1 v1.5 with SHA-1 (RFC 7296)
	MethodPSK              = 2  // Shared Key Message Integrity Code (handled by the engine)
	MethodDSS              = 3  // DSS Digital Signature (not supported)
	MethodECDSA256         = 9  // ECDSA with SHA-256 on P-256, raw r||s (RFC 4754)
	MethodECDSA384         = 10 // ECDSA with SHA-384 on P-384, raw r||s (RFC 4754)
	MethodECDSA521         = 11 // ECDSA with SHA-512 on P-521, raw r||s (RFC 4754)
	MethodDigitalSignature = 14 // Digital Signature (RFC 7427)
)

// Hash algorithms of the SIGNATURE_HASH_ALGORITHMS notify (RFC 7427 §4, IANA
// "IKEv2 Hash Algorithms").
const (
	HashSHA1     = 1
	HashSHA256   = 2
	HashSHA384   = 3
	HashSHA512   = 4
	HashIdentity = 5 // RFC 8420: the octets are signed directly (Ed25519)
)

// Implementation limits on keys, applied to signing and verifying keys and to
// raw public keys.
const (
	MinRSABits = 2048 // smaller moduli are refused
	MaxRSABits = 8192 // bounds the work a hostile certificate or raw key can cause
)

// SupportedHashes returns the hash algorithms announced in our
// SIGNATURE_HASH_ALGORITHMS notify: SHA2-256, SHA2-384, SHA2-512, Identity.
// The caller owns the returned slice.
func SupportedHashes() []uint16 {
	return []uint16{HashSHA256, HashSHA384, HashSHA512, HashIdentity}
}

// Reasons carried by VerifyError. The set is closed, so a reason can be a
// metric label.
const (
	ReasonMalformed            = "malformed AUTH data"
	ReasonUnsupportedMethod    = "unsupported method"
	ReasonUnsupportedAlgorithm = "unsupported signature algorithm"
	ReasonUnsupportedKey       = "unsupported public key"
	ReasonKeyMismatch          = "key type does not match the algorithm"
	ReasonSHA1NotAllowed       = "SHA-1 not allowed"
	ReasonBadSignature         = "bad signature"
)

// ErrBadSignature is wrapped by a VerifyError whose signature is well formed
// but does not verify.
var ErrBadSignature = errors.New("signature does not verify")

// VerifyError is the error returned by Verify. The engine answers any
// VerifyError with AUTHENTICATION_FAILED.
type VerifyError struct {
	Method uint8  // the AUTH method of the payload
	Reason string // one of the Reason constants
	Err    error  // detail, possibly nil
}

func (e *VerifyError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("sig: AUTH method %d: %s", e.Method, e.Reason)
	}
	return fmt.Sprintf("sig: AUTH method %d: %s: %v", e.Method, e.Reason, e.Err)
}

func (e *VerifyError) Unwrap() error { return e.Err }

// UnsupportedKeyError reports a key type, curve or size this package does not
// sign or verify with.
type UnsupportedKeyError struct {
	Key string // description, e.g. "ECDSA P-224" or "RSA 1024 bits"
}

func (e *UnsupportedKeyError) Error() string { return "sig: unsupported key: " + e.Key }

// UnsupportedMethodError reports an AUTH method that is not a signature
// method this package implements (or not one usable with the key).
type UnsupportedMethodError struct {
	Method uint8
}

func (e *UnsupportedMethodError) Error() string {
	return fmt.Sprintf("sig: unsupported AUTH method %d", e.Method)
}

// NoCommonHashError is returned by Sign when none of the hash algorithms the
// peer announced can be used with the key.
type NoCommonHashError struct {
	Key  string   // key description
	Peer []uint16 // what the peer announced
}

func (e *NoCommonHashError) Error() string {
	return fmt.Sprintf("sig: no signature hash for %s among the peer's %v", e.Key, e.Peer)
}

// Sign produces the AUTH payload method and data for octets (the signed
// octets of RFC 7296 §2.15) with RFC 7427 Digital Signature authentication
// (method 14): data = 1-octet length of the AlgorithmIdentifier | its DER |
// signature value. Per key type:
//   - ECDSA P-256/P-384/P-521: ecdsa-with-SHA256/384/512 matching the curve
//     if the peer allows it, else another SHA-2 the peer supports; the
//     signature is DER (SEQUENCE of r, s).
//   - Ed25519: id-Ed25519 over the octets themselves (needs Identity).
//   - RSA: RSASSA-PSS with SHA-256, MGF1-SHA-256, salt 32, trailer 1 (or
//     SHA-384/512 with salt 48/64 if the peer lacks SHA-256).
//
// peerHashes are the hash algorithms of the peer's SIGNATURE_HASH_ALGORITHMS
// notify. nil or empty means the peer sent none: the defaults above are used
// (the caller decides whether to use method 14 at all then, see SignLegacy).
// Otherwise a hash the peer supports is chosen or *NoCommonHashError is
// returned. SHA-1 is never used for method 14.
//
// rand is passed to the signer (the standard library may ignore it); nil
// means crypto/rand. key may be any crypto.Signer (an HSM, for example)
// whose public key is one of the supported types.
func Sign(key crypto.Signer, octets []byte, peerHashes []uint16, rand io.Reader) (method uint8, data []byte, err error) {
	pub, rand, err := signerKey(key, rand)
	if err != nil {
		return 0, nil, err
	}
	var algID, signature []byte
	switch pub := pub.(type) {
	case *ecdsa.PublicKey:
		h, ok := chooseHash(peerHashes, curveHash(pub.Curve))
		if !ok {
			return 0, nil, &NoCommonHashError{Key: describeKey(pub), Peer: slices.Clone(peerHashes)}
		}
		algID = ecdsaAlgID(h)
		signature, err = key.Sign(rand, digest(h, octets), h)
	case ed25519.PublicKey:
		if len(peerHashes) != 0 && !slices.Contains(peerHashes, HashIdentity) {
			return 0, nil, &NoCommonHashError{Key: describeKey(pub), Peer: slices.Clone(peerHashes)}
		}
		algID = algIDEd25519
		signature, err = key.Sign(rand, octets, crypto.Hash(0))
	case *rsa.PublicKey:
		h, ok := chooseHash(peerHashes, crypto.SHA256)
		if !ok {
			return 0, nil, &NoCommonHashError{Key: describeKey(pub), Peer: slices.Clone(peerHashes)}
		}
		algID = pssAlgID(h)
		signature, err = key.Sign(rand, digest(h, octets), &rsa.PSSOptions{SaltLength: h.Size(), Hash: h})
	}
	if err != nil {
		return 0, nil, fmt.Errorf("sig: signing with %s: %w", describeKey(pub), err)
	}
	data = make([]byte, 0, 1+len(algID)+len(signature))
	data = append(data, byte(len(algID)))
	data = append(data, algID...)
	data = append(data, signature...)
	return MethodDigitalSignature, data, nil
}

// signerKey checks key's public key and defaults rand to crypto/rand.
func signerKey(key crypto.Signer, rand io.Reader) (crypto.PublicKey, io.Reader, error) {
	if key == nil {
		return nil, nil, &UnsupportedKeyError{Key: "nil"}
	}
	if rand == nil {
		rand = cryptorand.Reader
	}
	pub := key.Public()
	if err := checkPublicKey(pub); err != nil {
		return nil, nil, err
	}
	return pub, rand, nil
}

// SignLegacy produces AUTH data with the classic methods, for peers that did
// not send SIGNATURE_HASH_ALGORITHMS when configuration allows it: ECDSA
// keys use method 9, 10 or 11 by curve (RFC 4754, fixed-width r||s), RSA
// keys method 1 (PKCS#1 v1.5 with SHA-1, RFC 7296). Ed25519 has no classic
// method (RFC 8420) and yields *UnsupportedKeyError.
func SignLegacy(key crypto.Signer, octets []byte, rand io.Reader) (method uint8, data []byte, err error) {
	pub, rand, err := signerKey(key, rand)
	if err != nil {
		return 0, nil, err
	}
	switch pub := pub.(type) {
	case *ecdsa.PublicKey:
		h := curveHash(pub.Curve)
		der, err := key.Sign(rand, digest(h, octets), h)
		if err != nil {
			return 0, nil, fmt.Errorf("sig: signing with %s: %w", describeKey(pub), err)
		}
		raw, ok := ecdsaDERToRaw(der, curveByteLen(pub.Curve))
		if !ok {
			return 0, nil, fmt.Errorf("sig: signer for %s returned a malformed ECDSA signature", describeKey(pub))
		}
		return legacyECDSAMethod(pub.Curve), raw, nil
	case *rsa.PublicKey:
		s, err := key.Sign(rand, digest(crypto.SHA1, octets), crypto.SHA1)
		if err != nil {
			return 0, nil, fmt.Errorf("sig: signing with %s: %w", describeKey(pub), err)
		}
		return MethodRSA, s, nil
	}
	return 0, nil, &UnsupportedKeyError{Key: describeKey(pub) + " (RFC 8420 requires method 14)"}
}

// Verify checks AUTH data of the given method over octets with pub, a public
// key from a validated certificate or a raw public key. It accepts
//   - method 14 (RFC 7427) with ecdsa-with-SHA256/384/512 (any of P-256,
//     P-384, P-521), id-Ed25519, RSASSA-PSS (SHA-256/384/512, parameters
//     parsed from the AlgorithmIdentifier; the MGF1 hash must equal the
//     message hash) and sha256/384/512WithRSAEncryption (PKCS#1 v1.5);
//   - methods 9, 10, 11 (RFC 4754, raw r||s of the curve's width; the key's
//     curve must be the method's);
//   - method 1 (PKCS#1 v1.5 with SHA-1) and the SHA-1 variants of method 14
//     (ecdsa-with-SHA1, sha1WithRSAEncryption, PSS with SHA-1) only if
//     allowSHA1.
//
// The key type must match the algorithm. Every failure is a *VerifyError.
func Verify(pub crypto.PublicKey, method uint8, data, octets []byte, allowSHA1 bool) error {
	fail := func(reason string, err error) error {
		return &VerifyError{Method: method, Reason: reason, Err: err}
	}
	if err := checkPublicKey(pub); err != nil {
		return fail(ReasonUnsupportedKey, err)
	}
	switch method {
	case MethodDigitalSignature:
		if len(data) < 1 || int(data[0]) == 0 || len(data) <= 1+int(data[0]) {
			return fail(ReasonMalformed, errors.New("AlgorithmIdentifier length"))
		}
		n := int(data[0])
		alg, err := parseAlgorithmIdentifier(data[1 : 1+n])
		switch {
		case errors.Is(err, errAlgIDMalformed):
			return fail(ReasonMalformed, err)
		case err != nil:
			return fail(ReasonUnsupportedAlgorithm, err)
		}
		if alg.hash == crypto.SHA1 && !allowSHA1 {
			return fail(ReasonSHA1NotAllowed, fmt.Errorf("%v", alg))
		}
		signature := data[1+n:]
		var ok bool
		switch pub := pub.(type) {
		case *ecdsa.PublicKey:
			if alg.scheme != schemeECDSA {
				return fail(ReasonKeyMismatch, fmt.Errorf("%v with %s", alg, describeKey(pub)))
			}
			ok = ecdsa.VerifyASN1(pub, digest(alg.hash, octets), signature)
		case ed25519.PublicKey:
			if alg.scheme != schemeEd25519 {
				return fail(ReasonKeyMismatch, fmt.Errorf("%v with %s", alg, describeKey(pub)))
			}
			ok = ed25519.Verify(pub, octets, signature)
		case *rsa.PublicKey:
			switch alg.scheme {
			case schemeRSAPKCS1v15:
				ok = rsa.VerifyPKCS1v15(pub, alg.hash, digest(alg.hash, octets), signature) == nil
			case schemeRSAPSS:
				// A declared salt length of 0 maps to PSSSaltLengthAuto,
				// which also accepts a salt-less signature.
				opts := &rsa.PSSOptions{SaltLength: alg.saltLength, Hash: alg.hash}
				ok = rsa.VerifyPSS(pub, alg.hash, digest(alg.hash, octets), signature, opts) == nil
			default:
				return fail(ReasonKeyMismatch, fmt.Errorf("%v with %s", alg, describeKey(pub)))
			}
		}
		if !ok {
			return fail(ReasonBadSignature, fmt.Errorf("%v: %w", alg, ErrBadSignature))
		}
		return nil

	case MethodECDSA256, MethodECDSA384, MethodECDSA521:
		ec, isEC := pub.(*ecdsa.PublicKey)
		if !isEC || legacyECDSAMethod(ec.Curve) != method {
			return fail(ReasonKeyMismatch, fmt.Errorf("method %d with %s", method, describeKey(pub)))
		}
		size := curveByteLen(ec.Curve)
		if len(data) != 2*size {
			return fail(ReasonMalformed, fmt.Errorf("signature is %d bytes, want %d", len(data), 2*size))
		}
		r := new(big.Int).SetBytes(data[:size])
		s := new(big.Int).SetBytes(data[size:])
		if !ecdsa.Verify(ec, digest(curveHash(ec.Curve), octets), r, s) {
			return fail(ReasonBadSignature, ErrBadSignature)
		}
		return nil

	case MethodRSA:
		if !allowSHA1 {
			return fail(ReasonSHA1NotAllowed, nil)
		}
		rk, isRSA := pub.(*rsa.PublicKey)
		if !isRSA {
			return fail(ReasonKeyMismatch, fmt.Errorf("method 1 with %s", describeKey(pub)))
		}
		if rsa.VerifyPKCS1v15(rk, crypto.SHA1, digest(crypto.SHA1, octets), data) != nil {
			return fail(ReasonBadSignature, ErrBadSignature)
		}
		return nil
	}
	return fail(ReasonUnsupportedMethod, &UnsupportedMethodError{Method: method})
}

// checkPublicKey accepts ECDSA on P-256/P-384/P-521, Ed25519 and RSA with
// MinRSABits..MaxRSABits; anything else is *UnsupportedKeyError.
func checkPublicKey(pub crypto.PublicKey) error {
	switch pub := pub.(type) {
	case *ecdsa.PublicKey:
		if pub != nil && curveByteLen(pub.Curve) != 0 {
			return nil
		}
	case ed25519.PublicKey:
		if len(pub) == ed25519.PublicKeySize {
			return nil
		}
	case *rsa.PublicKey:
		if pub != nil && pub.N != nil && pub.N.BitLen() >= MinRSABits && pub.N.BitLen() <= MaxRSABits {
			return nil
		}
	}
	return &UnsupportedKeyError{Key: describeKey(pub)}
}

// describeKey names a public key for errors and logs.
func describeKey(pub crypto.PublicKey) string {
	switch pub := pub.(type) {
	case *ecdsa.PublicKey:
		if pub == nil || pub.Curve == nil {
			return "ECDSA (nil)"
		}
		return "ECDSA " + pub.Curve.Params().Name
	case ed25519.PublicKey:
		if len(pub) != ed25519.PublicKeySize {
			return fmt.Sprintf("Ed25519 (%d bytes)", len(pub))
		}
		return "Ed25519"
	case *rsa.PublicKey:
		if pub == nil || pub.N == nil {
			return "RSA (nil)"
		}
		return fmt.Sprintf("RSA %d bits", pub.N.BitLen())
	case nil:
		return "nil"
	}
	return fmt.Sprintf("%T", pub)
}

// curveHash is the hash RFC 4754 and RFC 5656 pair with the curve.
func curveHash(c elliptic.Curve) crypto.Hash {
	switch c {
	case elliptic.P384():
		return crypto.SHA384
	case elliptic.P521():
		return crypto.SHA512
	}
	return crypto.SHA256
}

// curveByteLen is the width of r and s for the supported curves, 0 for others.
func curveByteLen(c elliptic.Curve) int {
	switch c {
	case elliptic.P256():
		return 32
	case elliptic.P384():
		return 48
	case elliptic.P521():
		return 66
	}
	return 0
}

func legacyECDSAMethod(c elliptic.Curve) uint8 {
	switch c {
	case elliptic.P256():
		return MethodECDSA256
	case elliptic.P384():
		return MethodECDSA384
	case elliptic.P521():
		return MethodECDSA521
	}
	return 0
}

// hashID maps a hash to its SIGNATURE_HASH_ALGORITHMS number.
func hashID(h crypto.Hash) uint16 {
	switch h {
	case crypto.SHA256:
		return HashSHA256
	case crypto.SHA384:
		return HashSHA384
	case crypto.SHA512:
		return HashSHA512
	}
	return 0
}

// chooseHash returns preferred if the peer announced nothing or allows it,
// else the first of SHA-256, SHA-384, SHA-512 the peer allows.
func chooseHash(peer []uint16, preferred crypto.Hash) (crypto.Hash, bool) {
	if len(peer) == 0 || slices.Contains(peer, hashID(preferred)) {
		return preferred, true
	}
	for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA384, crypto.SHA512} {
		if slices.Contains(peer, hashID(h)) {
			return h, true
		}
	}
	return 0, false
}

func ecdsaAlgID(h crypto.Hash) []byte {
	switch h {
	case crypto.SHA384:
		return algIDECDSAWithSHA384
	case crypto.SHA512:
		return algIDECDSAWithSHA512
	}
	return algIDECDSAWithSHA256
}

func pssAlgID(h crypto.Hash) []byte {
	switch h {
	case crypto.SHA384:
		return algIDRSAPSSSHA384
	case crypto.SHA512:
		return algIDRSAPSSSHA512
	}
	return algIDRSAPSSSHA256
}

func digest(h crypto.Hash, msg []byte) []byte {
	switch h {
	case crypto.SHA1:
		d := sha1.Sum(msg)
		return d[:]
	case crypto.SHA256:
		d := sha256.Sum256(msg)
		return d[:]
	case crypto.SHA384:
		d := sha512.Sum384(msg)
		return d[:]
	case crypto.SHA512:
		d := sha512.Sum512(msg)
		return d[:]
	}
	panic("sig: digest with unexpected hash " + h.String())
}

// ecdsaDERToRaw converts an ASN.1 ECDSA signature to r||s of size bytes each.
func ecdsaDERToRaw(der []byte, size int) ([]byte, bool) {
	in := cryptobyte.String(der)
	var seq cryptobyte.String
	r, s := new(big.Int), new(big.Int)
	if !in.ReadASN1(&seq, cbasn1.SEQUENCE) || !in.Empty() ||
		!seq.ReadASN1Integer(r) || !seq.ReadASN1Integer(s) || !seq.Empty() ||
		r.Sign() <= 0 || s.Sign() <= 0 || r.BitLen() > 8*size || s.BitLen() > 8*size {
		return nil, false
	}
	raw := make([]byte, 2*size)
	r.FillBytes(raw[:size])
	s.FillBytes(raw[size:])
	return raw, true
}
