package suite

import (
	"crypto/mlkem"
	"crypto/mlkem/mlkemtest"
	"crypto/rand"
	"fmt"
	"io"
)

// ML-KEM as a key exchange method (FIPS 203; IKEv2 use: RFC 9370 additional
// key exchanges). The initiator's KeyExchange holds a decapsulation key and
// publishes the encapsulation key; SharedSecret decapsulates the
// responder's ciphertext. The responder's side is Respond: it encapsulates
// and publishes the ciphertext. Either way the shared secret is ML-KEM's
// 32-octet shared key.
//
// Randomness: key generation reads its 64-octet seed from the injected
// reader, so handshakes replay deterministically. Encapsulation uses the
// operating system's generator as FIPS 203 asks, except when the engine is
// given another reader (tests, simulations): then the 32 random octets of
// derandomised encapsulation come from that reader, so those replay too.

func isKEM(group uint16) bool { return group == GroupMLKEM768 || group == GroupMLKEM1024 }

type kemInitiator struct {
	group uint16
	dk768 *mlkem.DecapsulationKey768
	dk1k  *mlkem.DecapsulationKey1024
	pub   []byte
}

func newKEMInitiator(group uint16, r io.Reader) (KeyExchange, error) {
	seed := make([]byte, mlkem.SeedSize)
	defer clear(seed)
	if _, err := io.ReadFull(r, seed); err != nil {
		return nil, fmt.Errorf("suite: reading %s seed: %w", GroupName(group), err)
	}
	k := &kemInitiator{group: group}
	switch group {
	case GroupMLKEM768:
		dk, err := mlkem.NewDecapsulationKey768(seed)
		if err != nil {
			return nil, err
		}
		k.dk768, k.pub = dk, dk.EncapsulationKey().Bytes()
	default:
		dk, err := mlkem.NewDecapsulationKey1024(seed)
		if err != nil {
			return nil, err
		}
		k.dk1k, k.pub = dk, dk.EncapsulationKey().Bytes()
	}
	return k, nil
}

func (k *kemInitiator) Group() uint16  { return k.group }
func (k *kemInitiator) Public() []byte { return k.pub }

func (k *kemInitiator) SharedSecret(ct []byte) ([]byte, error) {
	want, _ := ResponseLen(k.group)
	if len(ct) != want {
		return nil, &KeyExchangeError{Group: k.group, Reason: fmt.Sprintf("ciphertext of %d octets, want %d", len(ct), want)}
	}
	var secret []byte
	var err error
	if k.dk768 != nil {
		secret, err = k.dk768.Decapsulate(ct)
	} else {
		secret, err = k.dk1k.Decapsulate(ct)
	}
	if err != nil {
		return nil, &KeyExchangeError{Group: k.group, Reason: "ciphertext refused: " + err.Error()}
	}
	return secret, nil
}

// kemResponder is the responder's side after encapsulating: Public is the
// ciphertext; it has nothing more to compute.
type kemResponder struct {
	group uint16
	ct    []byte
}

func (k *kemResponder) Group() uint16  { return k.group }
func (k *kemResponder) Public() []byte { return k.ct }
func (k *kemResponder) SharedSecret([]byte) ([]byte, error) {
	return nil, &KeyExchangeError{Group: k.group, Reason: "the responder's secret comes from Respond"}
}

func kemRespond(group uint16, ek []byte, r io.Reader) (KeyExchange, []byte, error) {
	want, _ := KeyExchangeLen(group)
	if len(ek) != want {
		return nil, nil, &KeyExchangeError{Group: group, Reason: fmt.Sprintf("encapsulation key of %d octets, want %d", len(ek), want)}
	}
	var m [32]byte
	derandomised := r != nil && r != rand.Reader
	if derandomised {
		if _, err := io.ReadFull(r, m[:]); err != nil {
			return nil, nil, fmt.Errorf("suite: reading %s encapsulation randomness: %w", GroupName(group), err)
		}
	}
	var secret, ct []byte
	var err error
	switch group {
	case GroupMLKEM768:
		var key *mlkem.EncapsulationKey768
		if key, err = mlkem.NewEncapsulationKey768(ek); err == nil {
			if derandomised {
				secret, ct, err = mlkemtest.Encapsulate768(key, m[:])
			} else {
				secret, ct = key.Encapsulate()
			}
		}
	default:
		var key *mlkem.EncapsulationKey1024
		if key, err = mlkem.NewEncapsulationKey1024(ek); err == nil {
			if derandomised {
				secret, ct, err = mlkemtest.Encapsulate1024(key, m[:])
			} else {
				secret, ct = key.Encapsulate()
			}
		}
	}
	if err != nil {
		return nil, nil, &KeyExchangeError{Group: group, Reason: "encapsulation key refused: " + err.Error()}
	}
	return &kemResponder{group: group, ct: ct}, secret, nil
}
