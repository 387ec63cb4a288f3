package ike

import (
	"crypto"
	"crypto/subtle"
	"crypto/x509"

	"github.com/ikefleet/ikefleet/concentrator/ike/sig"
)

// Raw public keys (RFC 7670): a peer identified by its key rather than by a
// certificate. The key is configured per identity; the peer may send it in a
// CERT payload of encoding 15 (DER SubjectPublicKeyInfo), which must then be
// the configured key, and authenticates with a signature (RFC 7427 method 14
// or the classic ECDSA/RSA methods) that verifies with the configured key.
// A key received in CERT(15) is never trusted by itself.

// PublicKeyStore finds the raw public key a peer identity authenticates
// with. Implementations must be safe for concurrent use: every engine shard
// calls it.
type PublicKeyStore interface {
	PublicKey(peer Identity) (crypto.PublicKey, bool)
}

// PublicKeyMap is an in-memory PublicKeyStore keyed by identity string.
type PublicKeyMap map[string]crypto.PublicKey

func (m PublicKeyMap) PublicKey(peer Identity) (crypto.PublicKey, bool) {
	k, ok := m[peer.String()]
	return k, ok
}

// peerRawKey returns the configured raw public key of the peer: for our
// initiations Initiation.PeerKey if set, else Config.PublicKeys.
func (sa *IKESA) peerRawKey(e *Engine) crypto.PublicKey {
	if sa.initiator && sa.ini != nil && sa.ini.PeerKey != nil {
		return sa.ini.PeerKey
	}
	if e.cfg.PublicKeys == nil {
		return nil
	}
	k, _ := e.cfg.PublicKeys.PublicKey(sa.PeerID)
	return k
}

// verifyRawKey authenticates the peer by raw public key if that applies: a
// key is configured for its identity, or it sent CERT(15). handled reports
// whether it applied; err is then the outcome.
func (sa *IKESA) verifyRawKey(e *Engine, a authPayloads, octets []byte) (handled bool, err error) {
	key := sa.peerRawKey(e)
	if key == nil {
		if a.rawKey != nil {
			return true, errorf(AUTHENTICATION_FAILED, "%v sent a raw public key but none is configured for it", sa.PeerID)
		}
		return false, nil
	}
	if a.rawKey != nil {
		want, err := x509.MarshalPKIXPublicKey(key)
		if err != nil {
			return true, &Error{Notify: AUTHENTICATION_FAILED, Reason: "configured raw public key of " + sa.PeerID.String(), Err: err}
		}
		if subtle.ConstantTimeCompare(want, a.rawKey) != 1 {
			return true, errorf(AUTHENTICATION_FAILED, "raw public key sent by %v is not the configured one", sa.PeerID)
		}
	}
	if err := sig.Verify(key, a.auth.Method, a.auth.Data, octets, e.cfg.AllowSHA1Sigs); err != nil {
		return true, &Error{Notify: AUTHENTICATION_FAILED, Reason: "raw-key signature of " + sa.PeerID.String(), Err: err}
	}
	sa.peerByRawKey = true
	return true, nil
}

// rawKeyCert returns our CERT(15) payload when we authenticate by raw key:
// as initiator when the initiation says so, as responder when the peer
// authenticated by raw key; in both cases only when we have a key but no
// certificate. nil otherwise.
func (sa *IKESA) rawKeyCert(creds *Credentials) (*Cert, error) {
	if creds.Signer == nil || len(creds.Chain) > 0 {
		return nil, nil
	}
	if sa.initiator && (sa.ini == nil || !sa.ini.RawKey) || !sa.initiator && !sa.peerByRawKey {
		return nil, nil
	}
	der, err := x509.MarshalPKIXPublicKey(creds.Signer.Public())
	if err != nil {
		return nil, &Error{Notify: AUTHENTICATION_FAILED, Reason: "our raw public key", Err: err}
	}
	return &Cert{Encoding: CertRawPublicKey, Data: der}, nil
}
