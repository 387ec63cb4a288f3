package sig

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// ParseRawPublicKey parses a raw public key (RFC 7670: the CERT payload of
// encoding 15 carries a DER SubjectPublicKeyInfo). The key must be one this
// package verifies with (ECDSA P-256/384/521, Ed25519, RSA of MinRSABits to
// MaxRSABits), else *UnsupportedKeyError.
func ParseRawPublicKey(der []byte) (crypto.PublicKey, error) {
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("sig: raw public key: %w", err)
	}
	if err := checkPublicKey(pub); err != nil {
		return nil, err
	}
	return pub, nil
}

// ParsePrivateKey parses a private key from PEM or DER: PKCS#8 ("PRIVATE
// KEY"), SEC 1 ("EC PRIVATE KEY") or PKCS#1 ("RSA PRIVATE KEY"). In PEM the
// first key block is used; other blocks (such as "EC PARAMETERS") are
// skipped. Encrypted keys are refused. The key must be one Sign supports,
// else *UnsupportedKeyError.
func ParsePrivateKey(pemOrDER []byte) (crypto.Signer, error) {
	if !isPEM(pemOrDER) {
		return checkSigner(parseDERPrivateKey(pemOrDER))
	}
	rest := pemOrDER
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, errors.New("sig: no private key PEM block")
		}
		if _, encrypted := block.Headers["Proc-Type"]; encrypted {
			return nil, errors.New("sig: encrypted PEM private keys are not supported")
		}
		var key any
		var err error
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			return nil, errors.New("sig: encrypted PKCS#8 private keys are not supported")
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("sig: %s: %w", block.Type, err)
		}
		return checkSigner(key, nil)
	}
}

func parseDERPrivateKey(der []byte) (any, error) {
	if key, err := x509.ParsePKCS8PrivateKey(der); err == nil {
		return key, nil
	}
	if key, err := x509.ParseECPrivateKey(der); err == nil {
		return key, nil
	}
	if key, err := x509.ParsePKCS1PrivateKey(der); err == nil {
		return key, nil
	}
	return nil, errors.New("sig: not a PKCS#8, SEC 1 or PKCS#1 private key")
}

func checkSigner(key any, err error) (crypto.Signer, error) {
	if err != nil {
		return nil, err
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, &UnsupportedKeyError{Key: fmt.Sprintf("%T", key)}
	}
	if err := checkPublicKey(signer.Public()); err != nil {
		return nil, err
	}
	return signer, nil
}

// ParseCertificates parses certificates from PEM ("CERTIFICATE" blocks;
// other blocks are skipped) or from DER (one or more concatenated). It fails
// if there is none.
func ParseCertificates(pemOrDER []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	if !isPEM(pemOrDER) {
		certs, err := x509.ParseCertificates(pemOrDER)
		if err != nil {
			return nil, fmt.Errorf("sig: %w", err)
		}
		if len(certs) == 0 {
			return nil, errors.New("sig: no certificate")
		}
		return certs, nil
	}
	for rest := pemOrDER; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("sig: certificate %d: %w", len(certs), err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("sig: no CERTIFICATE PEM block")
	}
	return certs, nil
}

// ParseCRLs parses certificate revocation lists from PEM ("X509 CRL" blocks;
// other blocks are skipped) or from DER (one or more concatenated). It fails
// if there is none. Signatures are checked later, by VerifyChain, against
// the issuing certificate.
func ParseCRLs(pemOrDER []byte) ([]*x509.RevocationList, error) {
	var ders [][]byte
	if isPEM(pemOrDER) {
		for rest := pemOrDER; ; {
			var block *pem.Block
			block, rest = pem.Decode(rest)
			if block == nil {
				break
			}
			if block.Type == "X509 CRL" {
				ders = append(ders, block.Bytes)
			}
		}
	} else {
		in := cryptobyte.String(pemOrDER)
		for !in.Empty() {
			var elem cryptobyte.String
			if !in.ReadASN1Element(&elem, cbasn1.SEQUENCE) {
				return nil, fmt.Errorf("sig: CRL %d: malformed DER", len(ders))
			}
			ders = append(ders, elem)
		}
	}
	if len(ders) == 0 {
		return nil, errors.New("sig: no CRL")
	}
	crls := make([]*x509.RevocationList, 0, len(ders))
	for i, der := range ders {
		crl, err := x509.ParseRevocationList(der)
		if err != nil {
			return nil, fmt.Errorf("sig: CRL %d: %w", i, err)
		}
		crls = append(crls, crl)
	}
	return crls, nil
}

// isPEM reports whether data looks like PEM text rather than DER: DER starts
// with a SEQUENCE tag, PEM contains an encapsulation boundary.
func isPEM(data []byte) bool {
	return (len(data) == 0 || data[0] != 0x30) && bytes.Contains(data, []byte("-----BEGIN "))
}
