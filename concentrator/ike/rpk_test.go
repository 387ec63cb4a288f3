package ike

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/x509"
	"io"
	"testing"

	"github.com/ikefleet/ikefleet/concentrator/ike/sig"
)

// rawKeyWire watches the IKE_AUTH messages of a wire: it decrypts them with
// the receiving side's keys and records the CERT payloads each direction
// carried.
type rawKeyWire struct {
	*wire
	toRes, toIni []*Cert
	authMethods  []uint8 // AUTH methods seen, in order
}

func newRawKeyWire(t *testing.T, rcfg Config) *rawKeyWire {
	rw := &rawKeyWire{wire: newWire(t, rcfg)}
	rw.drop = func(toResponder bool, msg []byte) bool {
		h, err := DecodeHeader(msg)
		if err != nil || h.Exchange != IKE_AUTH {
			return false
		}
		var sa *IKESA
		if toResponder {
			sa = rw.res.SA(h.SPIr)
		} else {
			sa = rw.ini.SA(h.SPIi)
		}
		if sa == nil || sa.cipher == nil {
			t.Fatalf("no keys to read IKE_AUTH toResponder=%v", toResponder)
		}
		in, err := sa.cipher.Key(sa.skKeys(false))
		if err != nil {
			t.Fatal(err)
		}
		m, err := Decode(msg)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Decrypt(in); err != nil {
			t.Fatal(err)
		}
		for _, p := range m.Payloads {
			switch p := p.(type) {
			case *Cert:
				if toResponder {
					rw.toRes = append(rw.toRes, p)
				} else {
					rw.toIni = append(rw.toIni, p)
				}
			case *Auth:
				rw.authMethods = append(rw.authMethods, p.Method)
			}
		}
		return false
	}
	return rw
}

func spki(t *testing.T, pub crypto.PublicKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func onlyRawKey(t *testing.T, what string, certs []*Cert, pub crypto.PublicKey) {
	t.Helper()
	if len(certs) != 1 || certs[0].Encoding != CertRawPublicKey || !bytes.Equal(certs[0].Data, spki(t, pub)) {
		t.Fatalf("%s: want one CERT(15) with the SPKI, got %+v", what, certs)
	}
}

func rawKeyPair(t *testing.T, kind string, seed byte) crypto.Signer {
	t.Helper()
	switch kind {
	case "ecdsa-p256":
		k, err := ecdsa.GenerateKey(elliptic.P256(), newDetRand(seed))
		if err != nil {
			t.Fatal(err)
		}
		return k
	case "ed25519":
		_, k, err := ed25519.GenerateKey(newDetRand(seed))
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	t.Fatalf("key kind %s", kind)
	return nil
}

// rawKeySetup is a responder (the concentrator) and a gateway initiator
// that know each other's raw public keys.
func rawKeySetup(t *testing.T, kind string) (rcfg Config, ini Initiation, conc, gw crypto.Signer) {
	conc, gw = rawKeyPair(t, kind, 20), rawKeyPair(t, kind, 21)
	rcfg = responderConfig(t, 1)
	rcfg.PSKs = nil
	rcfg.Local = Credentials{ID: concID, Signer: conc}
	rcfg.PublicKeys = PublicKeyMap{gwID.String(): gw.Public()}
	ini = pskInitiation(t)
	ini.PSK = nil
	ini.Creds = Credentials{ID: gwID, Signer: gw}
	ini.RawKey = true
	ini.PeerKey = conc.Public()
	return
}

func failedWith(w *wire, n NotifyType) (res, ini bool) {
	for _, e := range w.events {
		if e.Kind == EventIKEFailed && e.Notify == n {
			if e.Initiator {
				ini = true
			} else {
				res = true
			}
		}
	}
	return
}

func TestRawPublicKeyHandshake(t *testing.T) {
	for _, kind := range []string{"ecdsa-p256", "ed25519"} {
		t.Run(kind, func(t *testing.T) {
			rcfg, ini, conc, gw := rawKeySetup(t, kind)
			w := newRawKeyWire(t, rcfg)
			w.run(R(func(rd *Ready) {
				if _, err := w.ini.Initiate(w.now, ini, rd); err != nil {
					t.Fatal(err)
				}
			}), true)
			if w.count(EventIKEEstablished) != 2 || len(w.installs) != 2 {
				t.Fatalf("raw-key handshake: %+v", w.events)
			}
			if !w.installs[0].PeerID.Equal(gwID) {
				t.Fatalf("responder peer id %v", w.installs[0].PeerID)
			}
			onlyRawKey(t, "initiator", w.toRes, gw.Public())
			onlyRawKey(t, "responder", w.toIni, conc.Public())
			for _, m := range w.authMethods {
				if m != sig.MethodDigitalSignature {
					t.Fatalf("AUTH methods %v, want RFC 7427 digital signatures", w.authMethods)
				}
			}
		})
	}
}

// The initiator knows the responder's key from Config.PublicKeys (by the
// responder's identity) rather than from the initiation, and the responder
// has a key for a peer that sends no CERT(15): the configured key is used.
func TestRawPublicKeyWithoutCert(t *testing.T) {
	rcfg, ini, conc, gw := rawKeySetup(t, "ecdsa-p256")
	ini.PeerKey = nil
	ini.RawKey = false // a signature without CERT(15)
	w := newRawKeyWire(t, rcfg)
	ie, err := NewEngine(Config{IKEProposals: ini.IKEProposals, Rand: newDetRand(3),
		PublicKeys: PublicKeyMap{concID.String(): conc.Public()}})
	if err != nil {
		t.Fatal(err)
	}
	w.ini = ie
	w.run(R(func(rd *Ready) { w.ini.Initiate(w.now, ini, rd) }), true)
	if w.count(EventIKEEstablished) != 2 {
		t.Fatalf("raw-key handshake without CERT(15): %+v", w.events)
	}
	if len(w.toRes) != 0 {
		t.Fatalf("initiator sent CERT payloads %+v", w.toRes)
	}
	// The responder still answers with its raw key: the peer authenticated
	// by one.
	onlyRawKey(t, "responder", w.toIni, conc.Public())
	_ = gw
}

func TestRawPublicKeyWrongKey(t *testing.T) {
	for _, kind := range []string{"ecdsa-p256", "ed25519"} {
		t.Run(kind+"/responder", func(t *testing.T) {
			// The gateway signs with another key than the configured one.
			rcfg, ini, _, _ := rawKeySetup(t, kind)
			ini.Creds.Signer = rawKeyPair(t, kind, 30)
			w := newRawKeyWire(t, rcfg)
			w.run(R(func(rd *Ready) { w.ini.Initiate(w.now, ini, rd) }), true)
			res, in := failedWith(w.wire, AUTHENTICATION_FAILED)
			if w.count(EventIKEEstablished) != 0 || !res || !in {
				t.Fatalf("want AUTHENTICATION_FAILED on both sides: %+v", w.events)
			}
			if w.res.Len() != 0 || w.ini.Len() != 0 {
				t.Fatal("failed SAs left in the tables")
			}
		})
		t.Run(kind+"/initiator", func(t *testing.T) {
			// The concentrator answers with another key than the gateway
			// expects.
			rcfg, ini, _, _ := rawKeySetup(t, kind)
			ini.PeerKey = rawKeyPair(t, kind, 31).Public()
			w := newRawKeyWire(t, rcfg)
			w.run(R(func(rd *Ready) { w.ini.Initiate(w.now, ini, rd) }), true)
			_, in := failedWith(w.wire, AUTHENTICATION_FAILED)
			if w.count(EventIKEEstablished) != 1 || !in || w.ini.Len() != 0 {
				t.Fatalf("want the initiator to refuse the responder: %+v", w.events)
			}
		})
	}
}

// mismatchedSigner signs with one key and claims another: its CERT(15)
// carries a key that is not the configured one although the AUTH
// signature verifies with the configured key.
type mismatchedSigner struct {
	crypto.Signer
	claim crypto.PublicKey
}

func (m mismatchedSigner) Public() crypto.PublicKey { return m.claim }

func TestRawPublicKeyCertMismatch(t *testing.T) {
	rcfg, ini, _, gw := rawKeySetup(t, "ecdsa-p256")
	ini.Creds.Signer = mismatchedSigner{Signer: gw, claim: rawKeyPair(t, "ecdsa-p256", 40).Public()}
	w := newRawKeyWire(t, rcfg)
	w.run(R(func(rd *Ready) { w.ini.Initiate(w.now, ini, rd) }), true)
	res, _ := failedWith(w.wire, AUTHENTICATION_FAILED)
	if w.count(EventIKEEstablished) != 0 || !res {
		t.Fatalf("CERT(15) of another key accepted: %+v", w.events)
	}
	if len(w.toRes) != 1 || w.toRes[0].Encoding != CertRawPublicKey {
		t.Fatalf("the gateway sent no CERT(15): %+v", w.toRes)
	}
}

// A raw key nobody configured is refused, whatever it signs.
func TestRawPublicKeyUnknownPeer(t *testing.T) {
	rcfg, ini, _, _ := rawKeySetup(t, "ed25519")
	rcfg.PublicKeys = PublicKeyMap{}
	w := newRawKeyWire(t, rcfg)
	w.run(R(func(rd *Ready) { w.ini.Initiate(w.now, ini, rd) }), true)
	res, _ := failedWith(w.wire, AUTHENTICATION_FAILED)
	if w.count(EventIKEEstablished) != 0 || !res {
		t.Fatalf("unknown raw key accepted: %+v", w.events)
	}
}

func TestVerifyRawKeyDirect(t *testing.T) {
	e := initiatorEngine(t, 5)
	gw := rawKeyPair(t, "ecdsa-p256", 50)
	other := rawKeyPair(t, "ecdsa-p256", 51)
	e.cfg.PublicKeys = PublicKeyMap{gwID.String(): gw.Public()}
	octets := []byte("signed octets")
	method, data, err := sig.SignLegacy(gw, octets, io.Reader(newDetRand(1)))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		rawKey []byte
		ok     bool
	}{
		{"no CERT(15)", nil, true},
		{"matching CERT(15)", spki(t, gw.Public()), true},
		{"other key in CERT(15)", spki(t, other.Public()), false},
		{"garbage CERT(15)", []byte{0x30, 0x00}, false},
	} {
		sa := &IKESA{PeerID: gwID}
		a := authPayloads{auth: &Auth{Method: method, Data: data}, rawKey: tc.rawKey}
		handled, err := sa.verifyRawKey(e, a, octets)
		if !handled || (err == nil) != tc.ok || sa.peerByRawKey != tc.ok {
			t.Errorf("%s: handled %v err %v", tc.name, handled, err)
		}
		if err != nil && NotifyFor(err) != AUTHENTICATION_FAILED {
			t.Errorf("%s: notify %v", tc.name, NotifyFor(err))
		}
	}
	if method != sig.MethodECDSA256 {
		t.Fatalf("legacy method %d", method)
	}
	// No key configured: not ours to handle, unless a CERT(15) came.
	sa := &IKESA{PeerID: concID}
	if h, _ := sa.verifyRawKey(e, authPayloads{auth: &Auth{Method: method, Data: data}}, octets); h {
		t.Fatal("handled a peer without a configured key")
	}
	if h, err := sa.verifyRawKey(e, authPayloads{auth: &Auth{Method: method, Data: data}, rawKey: spki(t, gw.Public())}, octets); !h || err == nil {
		t.Fatal("accepted an unconfigured raw key")
	}
}
