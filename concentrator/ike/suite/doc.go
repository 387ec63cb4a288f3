// Package suite implements the IKEv2 cryptographic transforms the engine
// negotiates: pseudo-random functions and prf+, the IKE_SA key schedule,
// the ciphers that protect SK payloads (AEAD and ENCR+INTEG), and the
// key-exchange groups.
//
// Everything here is pure: randomness is passed in, nothing reads the clock,
// nothing keeps global mutable state. Transform IDs are the IANA "IKEv2
// Transform Type" values, so the codec's uint16 fields map one to one.
//
// Implemented transforms:
//
//	ENCR   AES-GCM with 8/12/16-octet ICV (128/192/256-bit keys, RFC 5282),
//	       ChaCha20-Poly1305 (RFC 7634), AES-CBC (128/192/256, RFC 3602)
//	PRF    HMAC-SHA2-256/384/512 (RFC 4868); HMAC-SHA1, HMAC-MD5 (weak)
//	INTEG  HMAC-SHA2-256-128/384-192/512-256 (RFC 4868);
//	       HMAC-SHA1-96, HMAC-MD5-96 (weak)
//	KE     MODP 14/15/16 (RFC 3526); MODP 1/2/5 (weak); ECP 19/20/21
//	       (RFC 5903); Curve25519 (RFC 8031)
//
// The constructors (NewPRF, NewCipher, GenerateKeyExchange) build any
// implemented transform; the crypto policy is separate: Weak says which
// transforms are refused unless the operator sets ike.allow_weak, and
// Check applies policy and support together, returning a *WeakError or an
// *UnsupportedError for the engine to log while it picks a proposal.
//
// Error values say what the engine does next: ErrIntegrity (drop the
// message silently), *MalformedError (authenticated but malformed:
// INVALID_SYNTAX), *KeyExchangeError (a bad KE payload), *UnsupportedError
// and *WeakError (the transform cannot be chosen).
package suite
