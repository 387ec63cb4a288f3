package suite

import "strconv"

// Transform types (RFC 7296 §3.3.2).
const (
	TypeENCR  uint8 = 1 // encryption algorithm
	TypePRF   uint8 = 2 // pseudo-random function
	TypeINTEG uint8 = 3 // integrity algorithm
	TypeKE    uint8 = 4 // key exchange method (D-H group)
	TypeESN   uint8 = 5 // extended sequence numbers (ESP/AH only)
)

// AttrKeyLength is the transform attribute carrying the key length in bits
// (RFC 7296 §3.3.5).
const AttrKeyLength uint16 = 14

// Encryption algorithm transform IDs (IANA "Transform Type 1").
const (
	EncrDES              uint16 = 2
	Encr3DES             uint16 = 3
	EncrNULL             uint16 = 11
	EncrAESCBC           uint16 = 12
	EncrAESCTR           uint16 = 13
	EncrAESGCM8          uint16 = 18 // AES-GCM with an 8-octet ICV (RFC 5282)
	EncrAESGCM12         uint16 = 19 // AES-GCM with a 12-octet ICV
	EncrAESGCM16         uint16 = 20 // AES-GCM with a 16-octet ICV
	EncrChaCha20Poly1305 uint16 = 28 // RFC 7634
)

// Pseudo-random function transform IDs (IANA "Transform Type 2").
const (
	PRFHMACMD5    uint16 = 1
	PRFHMACSHA1   uint16 = 2
	PRFAES128XCBC uint16 = 4
	PRFHMACSHA256 uint16 = 5
	PRFHMACSHA384 uint16 = 6
	PRFHMACSHA512 uint16 = 7
)

// Integrity algorithm transform IDs (IANA "Transform Type 3").
const (
	IntegNone          uint16 = 0
	IntegHMACMD596     uint16 = 1
	IntegHMACSHA196    uint16 = 2
	IntegAESXCBC96     uint16 = 5
	IntegHMACSHA256128 uint16 = 12 // RFC 4868
	IntegHMACSHA384192 uint16 = 13
	IntegHMACSHA512256 uint16 = 14
)

// Key exchange method transform IDs (IANA "Transform Type 4").
const (
	Group1  uint16 = 1  // 768-bit MODP (RFC 2409), weak
	Group2  uint16 = 2  // 1024-bit MODP (RFC 2409), weak
	Group5  uint16 = 5  // 1536-bit MODP (RFC 3526), weak
	Group14 uint16 = 14 // 2048-bit MODP (RFC 3526)
	Group15 uint16 = 15 // 3072-bit MODP (RFC 3526)
	Group16 uint16 = 16 // 4096-bit MODP (RFC 3526)
	Group19 uint16 = 19 // 256-bit random ECP group, NIST P-256 (RFC 5903)
	Group20 uint16 = 20 // 384-bit random ECP group, NIST P-384
	Group21 uint16 = 21 // 521-bit random ECP group, NIST P-521
	Group31 uint16 = 31 // Curve25519 (RFC 8031)

	// ML-KEM (FIPS 203), key encapsulation rather than Diffie-Hellman: the
	// initiator's KE data is its encapsulation key, the responder's the
	// ciphertext. Meant as an additional key exchange (RFC 9370) in
	// IKE_INTERMEDIATE (RFC 9242): its KE payloads (1,184 and 1,088 octets
	// for ML-KEM-768) are too large for an unfragmentable IKE_SA_INIT on
	// many paths.
	GroupMLKEM768  uint16 = 36
	GroupMLKEM1024 uint16 = 37
)

// Additional key exchange transform types ADDKE1..ADDKE7 (RFC 9370 §2.2):
// transform types 6 to 12 carry Key Exchange Method IDs.
const (
	TypeADDKE1 uint8 = 6
	TypeADDKE7 uint8 = 12
)

// Extended sequence numbers transform IDs (IANA "Transform Type 5").
const (
	ESNNo  uint16 = 0
	ESNYes uint16 = 1
)

// EncrName returns the name of an ENCR transform for logs and configuration
// ("AES_GCM_16", "CHACHA20_POLY1305", ...), or "ENCR(id)" for an unknown ID.
func EncrName(id uint16) string {
	switch id {
	case EncrDES:
		return "DES"
	case Encr3DES:
		return "3DES"
	case EncrNULL:
		return "NULL"
	case EncrAESCBC:
		return "AES_CBC"
	case EncrAESCTR:
		return "AES_CTR"
	case EncrAESGCM8:
		return "AES_GCM_8"
	case EncrAESGCM12:
		return "AES_GCM_12"
	case EncrAESGCM16:
		return "AES_GCM_16"
	case EncrChaCha20Poly1305:
		return "CHACHA20_POLY1305"
	}
	return "ENCR(" + strconv.Itoa(int(id)) + ")"
}

// PRFName returns the name of a PRF transform ("PRF_HMAC_SHA2_256", ...),
// or "PRF(id)" for an unknown ID.
func PRFName(id uint16) string {
	switch id {
	case PRFHMACMD5:
		return "PRF_HMAC_MD5"
	case PRFHMACSHA1:
		return "PRF_HMAC_SHA1"
	case PRFAES128XCBC:
		return "PRF_AES128_XCBC"
	case PRFHMACSHA256:
		return "PRF_HMAC_SHA2_256"
	case PRFHMACSHA384:
		return "PRF_HMAC_SHA2_384"
	case PRFHMACSHA512:
		return "PRF_HMAC_SHA2_512"
	}
	return "PRF(" + strconv.Itoa(int(id)) + ")"
}

// IntegName returns the name of an INTEG transform ("HMAC_SHA2_256_128",
// ...), or "INTEG(id)" for an unknown ID.
func IntegName(id uint16) string {
	switch id {
	case IntegNone:
		return "NONE"
	case IntegHMACMD596:
		return "HMAC_MD5_96"
	case IntegHMACSHA196:
		return "HMAC_SHA1_96"
	case IntegAESXCBC96:
		return "AES_XCBC_96"
	case IntegHMACSHA256128:
		return "HMAC_SHA2_256_128"
	case IntegHMACSHA384192:
		return "HMAC_SHA2_384_192"
	case IntegHMACSHA512256:
		return "HMAC_SHA2_512_256"
	}
	return "INTEG(" + strconv.Itoa(int(id)) + ")"
}

// GroupName returns the name of a key exchange method ("MODP_2048",
// "ECP_256", "CURVE_25519", ...), or "GROUP(id)" for an unknown ID.
func GroupName(id uint16) string {
	switch id {
	case Group1:
		return "MODP_768"
	case Group2:
		return "MODP_1024"
	case Group5:
		return "MODP_1536"
	case Group14:
		return "MODP_2048"
	case Group15:
		return "MODP_3072"
	case Group16:
		return "MODP_4096"
	case Group19:
		return "ECP_256"
	case Group20:
		return "ECP_384"
	case Group21:
		return "ECP_521"
	case Group31:
		return "CURVE_25519"
	case GroupMLKEM768:
		return "ML_KEM_768"
	case GroupMLKEM1024:
		return "ML_KEM_1024"
	}
	return "GROUP(" + strconv.Itoa(int(id)) + ")"
}

// transformName names any transform for error messages.
func transformName(typ uint8, id uint16) string {
	switch typ {
	case TypeENCR:
		return EncrName(id)
	case TypePRF:
		return PRFName(id)
	case TypeINTEG:
		return IntegName(id)
	case TypeKE:
		return GroupName(id)
	case TypeADDKE1, TypeADDKE1 + 1, TypeADDKE1 + 2, TypeADDKE1 + 3, TypeADDKE1 + 4, TypeADDKE1 + 5, TypeADDKE7:
		return GroupName(id)
	case TypeESN:
		switch id {
		case ESNNo:
			return "NO_ESN"
		case ESNYes:
			return "ESN"
		}
		return "ESN(" + strconv.Itoa(int(id)) + ")"
	}
	return "TRANSFORM(" + strconv.Itoa(int(typ)) + "," + strconv.Itoa(int(id)) + ")"
}

// Weak reports whether the crypto policy treats a transform as weak: DES and
// 3DES, HMAC-MD5 and HMAC-SHA1 (as PRF or integrity algorithm) and the MODP
// groups 1, 2 and 5. Weak transforms are refused unless the operator enables
// ike.allow_weak. AES-XCBC is not weak (it is merely unimplemented).
func Weak(typ uint8, id uint16) bool {
	switch typ {
	case TypeENCR:
		return id == EncrDES || id == Encr3DES
	case TypePRF:
		return id == PRFHMACMD5 || id == PRFHMACSHA1
	case TypeINTEG:
		return id == IntegHMACMD596 || id == IntegHMACSHA196
	case TypeKE:
		return id == Group1 || id == Group2 || id == Group5
	}
	if typ >= TypeADDKE1 && typ <= TypeADDKE7 {
		return id == Group1 || id == Group2 || id == Group5
	}
	return false
}

// supported reports whether this package implements a transform.
func supported(typ uint8, id uint16) bool {
	switch typ {
	case TypeENCR:
		switch id {
		case EncrAESCBC, EncrAESGCM8, EncrAESGCM12, EncrAESGCM16, EncrChaCha20Poly1305:
			return true
		}
	case TypePRF:
		_, _, ok := prfHash(id)
		return ok
	case TypeINTEG:
		if id == IntegNone {
			return true
		}
		_, ok := integAlg(id)
		return ok
	case TypeKE:
		_, err := KeyExchangeLen(id)
		return err == nil
	case TypeESN:
		return id == ESNNo || id == ESNYes
	}
	if typ >= TypeADDKE1 && typ <= TypeADDKE7 {
		// RFC 9370 §2.2: NONE (0) means "no additional key exchange".
		if id == 0 {
			return true
		}
		_, err := KeyExchangeLen(id)
		return err == nil
	}
	return false
}

// Check applies the crypto policy to one transform: it returns a *WeakError
// for a weak transform when allowWeak is false, an *UnsupportedError for a
// transform this package does not implement, and nil otherwise. Key lengths
// are checked by NewCipher, not here.
func Check(typ uint8, id uint16, allowWeak bool) error {
	if !allowWeak && Weak(typ, id) {
		return &WeakError{Type: typ, ID: id}
	}
	if !supported(typ, id) {
		return &UnsupportedError{Type: typ, ID: id}
	}
	return nil
}
