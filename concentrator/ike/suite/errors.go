package suite

import "errors"

// ErrIntegrity is returned by SKCipher.Open when the ICV does not verify. The
// engine drops such a message without answering (RFC 7296 §2.21.1).
var ErrIntegrity = errors.New("suite: integrity check failed")

// ErrUnsupported matches every *UnsupportedError under errors.Is.
var ErrUnsupported = errors.New("suite: unsupported transform")

// ErrMalformed matches every *MalformedError under errors.Is.
var ErrMalformed = errors.New("suite: malformed encrypted payload")

// UnsupportedError is a transform this package does not implement.
type UnsupportedError struct {
	Type uint8  // TypeENCR, TypePRF, TypeINTEG, TypeKE or TypeESN
	ID   uint16 // IANA transform ID
}

func (e *UnsupportedError) Error() string {
	return transformName(e.Type, e.ID) + " not supported"
}

// Is makes errors.Is(err, ErrUnsupported) true.
func (e *UnsupportedError) Is(target error) bool { return target == ErrUnsupported }

// WeakError is a transform refused by the crypto policy (see Weak).
type WeakError struct {
	Type uint8
	ID   uint16
}

func (e *WeakError) Error() string {
	return transformName(e.Type, e.ID) + " refused: weak algorithm; set ike.allow_weak to enable"
}

// KeyExchangeError is a peer's key exchange value that is invalid for its
// group: wrong length, out of range (MODP), not on the curve (ECP), or one
// that yields an all-zero shared secret (Curve25519).
type KeyExchangeError struct {
	Group  uint16
	Reason string
}

func (e *KeyExchangeError) Error() string {
	return "invalid " + GroupName(e.Group) + " key exchange value: " + e.Reason
}

// MalformedError is an encrypted payload whose integrity verified (or that
// is too short to carry an IV and ICV) but whose structure is wrong: a
// ciphertext that is not a whole number of blocks, or a pad length larger
// than the plaintext.
type MalformedError struct{ Reason string }

func (e *MalformedError) Error() string { return ErrMalformed.Error() + ": " + e.Reason }

// Is makes errors.Is(err, ErrMalformed) true.
func (e *MalformedError) Is(target error) bool { return target == ErrMalformed }

// Preallocated, never mutated: Open's failure paths do not allocate.
var (
	errShortBody  = &MalformedError{Reason: "shorter than IV, one pad-length octet and ICV"}
	errBlockAlign = &MalformedError{Reason: "ciphertext is not a whole number of cipher blocks"}
	errPadLength  = &MalformedError{Reason: "pad length exceeds the decrypted payload"}
)
