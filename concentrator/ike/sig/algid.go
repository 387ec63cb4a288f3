package sig

import (
	"crypto"
	encasn1 "encoding/asn1"
	"errors"
	"fmt"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// AlgorithmIdentifier encodings emitted by Sign (RFC 7427 Appendix A,
// RFC 8420 for Ed25519). They are DER: parameters are absent for ECDSA and
// Ed25519; RSASSA-PSS carries hash, MGF1 hash and salt length and omits the
// default trailerField, as strongSwan does.
var (
	// ecdsa-with-SHA256 (1.2.840.10045.4.3.2)
	algIDECDSAWithSHA256 = []byte{0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02}
	// ecdsa-with-SHA384 (1.2.840.10045.4.3.3)
	algIDECDSAWithSHA384 = []byte{0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03}
	// ecdsa-with-SHA512 (1.2.840.10045.4.3.4)
	algIDECDSAWithSHA512 = []byte{0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04}
	// id-Ed25519 (1.3.101.112)
	algIDEd25519 = []byte{0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70}
	// id-RSASSA-PSS (1.2.840.113549.1.1.10) with SHA-256, MGF1-SHA-256, salt 32.
	algIDRSAPSSSHA256 = []byte{
		0x30, 0x41,
		0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a,
		0x30, 0x34,
		0xa0, 0x0f, // hashAlgorithm
		0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00,
		0xa1, 0x1c, // maskGenAlgorithm
		0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08,
		0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00,
		0xa2, 0x03, 0x02, 0x01, 0x20, // saltLength 32
	}
	// id-RSASSA-PSS with SHA-384, MGF1-SHA-384, salt 48.
	algIDRSAPSSSHA384 = []byte{
		0x30, 0x41,
		0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a,
		0x30, 0x34,
		0xa0, 0x0f,
		0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00,
		0xa1, 0x1c,
		0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08,
		0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00,
		0xa2, 0x03, 0x02, 0x01, 0x30,
	}
	// id-RSASSA-PSS with SHA-512, MGF1-SHA-512, salt 64.
	algIDRSAPSSSHA512 = []byte{
		0x30, 0x41,
		0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a,
		0x30, 0x34,
		0xa0, 0x0f,
		0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00,
		0xa1, 0x1c,
		0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08,
		0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00,
		0xa2, 0x03, 0x02, 0x01, 0x40,
	}
)

// Object identifiers understood by parseAlgorithmIdentifier.
var (
	oidECDSAWithSHA1     = encasn1.ObjectIdentifier{1, 2, 840, 10045, 4, 1}
	oidECDSAWithSHA256   = encasn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	oidECDSAWithSHA384   = encasn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 3}
	oidECDSAWithSHA512   = encasn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 4}
	oidEd25519           = encasn1.ObjectIdentifier{1, 3, 101, 112}
	oidSHA1WithRSA       = encasn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 5}
	oidSHA256WithRSA     = encasn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}
	oidSHA384WithRSA     = encasn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 12}
	oidSHA512WithRSA     = encasn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 13}
	oidRSASSAPSS         = encasn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 10}
	oidMGF1              = encasn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 8}
	oidSHA1              = encasn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}
	oidSHA256            = encasn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
	oidSHA384            = encasn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 2}
	oidSHA512            = encasn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 3}
	errAlgIDMalformed    = errors.New("malformed AlgorithmIdentifier")
	errAlgIDUnsupported  = errors.New("unsupported signature algorithm")
	errPSSParamsMismatch = errors.New("RSASSA-PSS with an MGF1 hash different from the message hash is not supported")
)

// The hash each ECDSA and PKCS#1 v1.5 signature OID names.
type oidHash struct {
	oid  encasn1.ObjectIdentifier
	hash crypto.Hash
}

var (
	ecdsaOIDs = []oidHash{{oidECDSAWithSHA1, crypto.SHA1}, {oidECDSAWithSHA256, crypto.SHA256},
		{oidECDSAWithSHA384, crypto.SHA384}, {oidECDSAWithSHA512, crypto.SHA512}}
	rsaPKCS1OIDs = []oidHash{{oidSHA1WithRSA, crypto.SHA1}, {oidSHA256WithRSA, crypto.SHA256},
		{oidSHA384WithRSA, crypto.SHA384}, {oidSHA512WithRSA, crypto.SHA512}}
)

// hashOf returns the hash table names for oid, or 0.
func hashOf(oid encasn1.ObjectIdentifier, table []oidHash) crypto.Hash {
	for _, e := range table {
		if oid.Equal(e.oid) {
			return e.hash
		}
	}
	return 0
}

// scheme is a signature scheme independent of its hash.
type scheme uint8

const (
	schemeECDSA scheme = iota + 1
	schemeEd25519
	schemeRSAPKCS1v15
	schemeRSAPSS
)

func (s scheme) String() string {
	switch s {
	case schemeECDSA:
		return "ECDSA"
	case schemeEd25519:
		return "Ed25519"
	case schemeRSAPKCS1v15:
		return "RSA PKCS#1 v1.5"
	case schemeRSAPSS:
		return "RSASSA-PSS"
	}
	return fmt.Sprintf("scheme(%d)", uint8(s))
}

// algorithm is a parsed signature AlgorithmIdentifier.
type algorithm struct {
	scheme scheme
	hash   crypto.Hash // 0 for Ed25519 (the octets are signed directly)
	// saltLength is the RSASSA-PSS salt length in bytes (PSS only).
	saltLength int
}

func (a algorithm) String() string {
	if a.hash == 0 {
		return a.scheme.String()
	}
	if a.scheme == schemeRSAPSS {
		return fmt.Sprintf("%v %v salt %d", a.scheme, a.hash, a.saltLength)
	}
	return fmt.Sprintf("%v %v", a.scheme, a.hash)
}

// maxPSSSaltLength bounds the salt length accepted from a peer; no RSA key
// we accept (MaxRSABits) has room for more.
const maxPSSSaltLength = MaxRSABits / 8

// parseAlgorithmIdentifier parses the DER AlgorithmIdentifier of RFC 7427
// AUTH data strictly: one SEQUENCE with nothing after it, the OID, and
// parameters exactly as the algorithm defines them (absent for ECDSA and
// Ed25519, NULL or absent for PKCS#1 v1.5, RSASSA-PSS-params for PSS).
func parseAlgorithmIdentifier(der []byte) (algorithm, error) {
	in := cryptobyte.String(der)
	var seq cryptobyte.String
	var oid encasn1.ObjectIdentifier
	if !in.ReadASN1(&seq, cbasn1.SEQUENCE) || !in.Empty() || !seq.ReadASN1ObjectIdentifier(&oid) {
		return algorithm{}, errAlgIDMalformed
	}
	var params cryptobyte.String
	var paramsTag cbasn1.Tag
	hasParams := !seq.Empty()
	if hasParams && (!seq.ReadAnyASN1Element(&params, &paramsTag) || !seq.Empty()) {
		return algorithm{}, errAlgIDMalformed
	}
	isNULL := hasParams && paramsTag == cbasn1.NULL && len(params) == 2

	switch {
	case hashOf(oid, ecdsaOIDs) != 0:
		if hasParams { // RFC 5758 §3.2: MUST be absent
			return algorithm{}, errAlgIDMalformed
		}
		return algorithm{scheme: schemeECDSA, hash: hashOf(oid, ecdsaOIDs)}, nil
	case oid.Equal(oidEd25519):
		if hasParams { // RFC 8410 §3: MUST be absent
			return algorithm{}, errAlgIDMalformed
		}
		return algorithm{scheme: schemeEd25519}, nil
	case hashOf(oid, rsaPKCS1OIDs) != 0:
		if hasParams && !isNULL { // RFC 4055 §5: NULL, absent tolerated
			return algorithm{}, errAlgIDMalformed
		}
		return algorithm{scheme: schemeRSAPKCS1v15, hash: hashOf(oid, rsaPKCS1OIDs)}, nil
	case oid.Equal(oidRSASSAPSS):
		if !hasParams || paramsTag != cbasn1.SEQUENCE {
			// Parameters absent or NULL would mean "taken from the key"
			// (RFC 4055 §3.1), which an rsaEncryption key cannot supply.
			return algorithm{}, errAlgIDMalformed
		}
		return parsePSSParams(params)
	}
	return algorithm{}, errAlgIDUnsupported
}

// parsePSSParams parses the RSASSA-PSS-params SEQUENCE element (RFC 4055
// §3.1), applying the defaults SHA-1, MGF1-SHA-1, salt 20, trailer 1 to
// absent fields. Explicit default values are tolerated (BER senders).
func parsePSSParams(elem cryptobyte.String) (algorithm, error) {
	var p cryptobyte.String
	if !elem.ReadASN1(&p, cbasn1.SEQUENCE) || !elem.Empty() {
		return algorithm{}, errAlgIDMalformed
	}
	hash, mgfHash := crypto.SHA1, crypto.SHA1
	salt, trailer := int64(20), int64(1)
	var field cryptobyte.String
	var present bool

	if !p.ReadOptionalASN1(&field, &present, cbasn1.Tag(0).Constructed().ContextSpecific()) {
		return algorithm{}, errAlgIDMalformed
	}
	if present {
		h, err := parseHashAlgorithm(field)
		if err != nil {
			return algorithm{}, err
		}
		hash = h
	}

	if !p.ReadOptionalASN1(&field, &present, cbasn1.Tag(1).Constructed().ContextSpecific()) {
		return algorithm{}, errAlgIDMalformed
	}
	if present {
		var mgf, hashAlg cryptobyte.String
		var oid encasn1.ObjectIdentifier
		if !field.ReadASN1(&mgf, cbasn1.SEQUENCE) || !field.Empty() ||
			!mgf.ReadASN1ObjectIdentifier(&oid) || !mgf.ReadASN1Element(&hashAlg, cbasn1.SEQUENCE) || !mgf.Empty() {
			return algorithm{}, errAlgIDMalformed
		}
		if !oid.Equal(oidMGF1) {
			return algorithm{}, errAlgIDUnsupported
		}
		h, err := parseHashAlgorithm(hashAlg)
		if err != nil {
			return algorithm{}, err
		}
		mgfHash = h
	}

	if !p.ReadOptionalASN1(&field, &present, cbasn1.Tag(2).Constructed().ContextSpecific()) {
		return algorithm{}, errAlgIDMalformed
	}
	if present {
		if !field.ReadASN1Integer(&salt) || !field.Empty() || salt < 0 || salt > maxPSSSaltLength {
			return algorithm{}, errAlgIDMalformed
		}
	}

	if !p.ReadOptionalASN1(&field, &present, cbasn1.Tag(3).Constructed().ContextSpecific()) {
		return algorithm{}, errAlgIDMalformed
	}
	if present {
		if !field.ReadASN1Integer(&trailer) || !field.Empty() {
			return algorithm{}, errAlgIDMalformed
		}
	}
	if !p.Empty() || trailer != 1 {
		return algorithm{}, errAlgIDMalformed
	}
	if hash != mgfHash {
		return algorithm{}, errPSSParamsMismatch
	}
	return algorithm{scheme: schemeRSAPSS, hash: hash, saltLength: int(salt)}, nil
}

// parseHashAlgorithm parses exactly one hash AlgorithmIdentifier with NULL or
// absent parameters (RFC 4055 §2.1 requires accepting both).
func parseHashAlgorithm(in cryptobyte.String) (crypto.Hash, error) {
	var seq cryptobyte.String
	var oid encasn1.ObjectIdentifier
	if !in.ReadASN1(&seq, cbasn1.SEQUENCE) || !in.Empty() || !seq.ReadASN1ObjectIdentifier(&oid) {
		return 0, errAlgIDMalformed
	}
	if !seq.Empty() {
		var null cryptobyte.String
		if !seq.ReadASN1(&null, cbasn1.NULL) || !null.Empty() || !seq.Empty() {
			return 0, errAlgIDMalformed
		}
	}
	switch {
	case oid.Equal(oidSHA1):
		return crypto.SHA1, nil
	case oid.Equal(oidSHA256):
		return crypto.SHA256, nil
	case oid.Equal(oidSHA384):
		return crypto.SHA384, nil
	case oid.Equal(oidSHA512):
		return crypto.SHA512, nil
	}
	return 0, errAlgIDUnsupported
}
