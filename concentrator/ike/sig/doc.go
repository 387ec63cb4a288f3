// Package sig implements IKEv2 authentication by signature: the AUTH payload
// of RFC 7296 §2.15 for the classic methods (RFC 7296, RFC 4754), RFC 7427
// Digital Signature authentication (method 14) with ECDSA, Ed25519 (RFC 8420)
// and RSA (PSS and PKCS#1 v1.5), raw public keys (RFC 7670), X.509 chain and
// CRL checking, and the binding of IKE identities to certificates.
//
// The package is pure: it performs no I/O, keeps no state beyond constant
// tables, never reads the clock (the caller passes the time) and takes its
// randomness from the caller (crypto/rand only when the caller passes nil).
//
// Errors are typed so that the IKE engine can map them to the Notify it
// answers with (AUTHENTICATION_FAILED for all of them) and to bounded metric
// labels: Verify returns *VerifyError, VerifyChain returns *ChainError,
// MatchIdentity returns *IdentityError; Sign and SignLegacy return
// *UnsupportedKeyError, *NoCommonHashError or the signer's wrapped error.
package sig
