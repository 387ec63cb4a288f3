package suite

import (
	"crypto/ecdh"
	"crypto/mlkem"
	"errors"
	"fmt"
	"io"
	"math/big"
)

// KeyExchange is one side's ephemeral key for a D-H group. Public is the KE
// payload's key exchange data: for MODP groups g^x mod p, big-endian and
// left-padded with zeros to the length of the prime (RFC 7296 §3.4); for ECP
// groups x | y without the 0x04 point-format octet (RFC 5903 §7); for
// Curve25519 the 32-octet u-coordinate (RFC 8031 §2).
//
// SharedSecret validates the peer's value (its length; for MODP groups
// 1 < y < p-1; for ECP groups that the point is on the curve; for
// Curve25519 that the result is not all zeros) and returns g^ir in its IKE
// encoding: for MODP groups padded to the prime length like Public, for ECP
// groups the x-coordinate only (RFC 5903 §7), for Curve25519 the 32-octet
// output of X25519 (RFC 8031 §2). An invalid peer value is a
// *KeyExchangeError.
type KeyExchange interface {
	Group() uint16
	Public() []byte
	SharedSecret(peer []byte) ([]byte, error)
}

// maxKeyAttempts bounds rejection sampling. With a working source of
// randomness the chance of needing more than a few draws is negligible
// (at worst P-256: 2^-32 per draw); hitting the bound means the reader is
// broken (for instance, returns constant bytes).
const maxKeyAttempts = 64

// GenerateKeyExchange makes a new private key for group, reading its bytes
// from rand: for ECP groups a big-endian scalar of the group order's length
// (top bits masked for P-521), redrawn if it is zero or not below the order;
// for Curve25519 32 bytes, clamped as RFC 7748 requires; for MODP groups an
// exponent of twice the group's security strength in bits (at least 256),
// redrawn if below 2. A reader that replays published private keys therefore
// reproduces published public values. An unknown group is an
// *UnsupportedError; GenerateKeyExchange does not apply the crypto policy.
func GenerateKeyExchange(group uint16, rand io.Reader) (KeyExchange, error) {
	if rand == nil {
		return nil, errors.New("suite: GenerateKeyExchange needs a source of randomness")
	}
	if m := modpGroup(group); m != nil {
		return newMODP(m, rand)
	}
	if isKEM(group) {
		return newKEMInitiator(group, rand)
	}
	if group == Group31 && fastX25519() {
		return newX25519(rand)
	}
	curve, size, topMask := ecCurve(group)
	if curve == nil {
		return nil, &UnsupportedError{Type: TypeKE, ID: group}
	}
	buf := make([]byte, size)
	for range maxKeyAttempts {
		if _, err := io.ReadFull(rand, buf); err != nil {
			return nil, fmt.Errorf("suite: reading %s private key: %w", GroupName(group), err)
		}
		buf[0] &= topMask
		priv, err := curve.NewPrivateKey(buf)
		if err != nil {
			continue // zero or not below the order: draw again
		}
		pub := priv.PublicKey().Bytes()
		if group != Group31 {
			pub = pub[1:] // drop the uncompressed-point octet 0x04
		}
		clear(buf)
		return &ecKE{group: group, curve: curve, priv: priv, pub: pub}, nil
	}
	return nil, fmt.Errorf("suite: no valid %s private key in %d draws from the random source", GroupName(group), maxKeyAttempts)
}

// KeyExchangeLen returns the length of a group's public value in the KE
// payload, or an *UnsupportedError for an unknown group.
func KeyExchangeLen(group uint16) (int, error) {
	if m := modpGroup(group); m != nil {
		return m.size, nil
	}
	switch group {
	case Group19:
		return 64, nil
	case Group20:
		return 96, nil
	case Group21:
		return 132, nil
	case Group31:
		return 32, nil
	case GroupMLKEM768:
		return mlkem.EncapsulationKeySize768, nil
	case GroupMLKEM1024:
		return mlkem.EncapsulationKeySize1024, nil
	}
	return 0, &UnsupportedError{Type: TypeKE, ID: group}
}

// ResponseLen returns the length of the responder's KE data for group:
// the same as KeyExchangeLen for Diffie-Hellman groups, the ciphertext's
// length for ML-KEM.
func ResponseLen(group uint16) (int, error) {
	switch group {
	case GroupMLKEM768:
		return mlkem.CiphertextSize768, nil
	case GroupMLKEM1024:
		return mlkem.CiphertextSize1024, nil
	}
	return KeyExchangeLen(group)
}

// Respond is the responder's side of a key exchange: given the
// initiator's KE data it returns the responder's own (Public of the
// returned KeyExchange) and the shared secret. For Diffie-Hellman groups
// that is a fresh key and SharedSecret(peer); for ML-KEM it encapsulates
// to the initiator's encapsulation key. An invalid peer value is a
// *KeyExchangeError.
func Respond(group uint16, peer []byte, rand io.Reader) (KeyExchange, []byte, error) {
	if isKEM(group) {
		return kemRespond(group, peer, rand)
	}
	k, err := GenerateKeyExchange(group, rand)
	if err != nil {
		return nil, nil, err
	}
	secret, err := k.SharedSecret(peer)
	if err != nil {
		return nil, nil, err
	}
	return k, secret, nil
}

// ecCurve maps a group to its crypto/ecdh curve, the private key length and
// the mask for the key's first octet.
func ecCurve(group uint16) (ecdh.Curve, int, byte) {
	switch group {
	case Group19:
		return ecdh.P256(), 32, 0xff
	case Group20:
		return ecdh.P384(), 48, 0xff
	case Group21:
		return ecdh.P521(), 66, 0x01 // the order is a 521-bit number
	case Group31:
		return ecdh.X25519(), 32, 0xff
	}
	return nil, 0, 0
}

type ecKE struct {
	group uint16
	curve ecdh.Curve
	priv  *ecdh.PrivateKey
	pub   []byte
}

func (k *ecKE) Group() uint16  { return k.group }
func (k *ecKE) Public() []byte { return k.pub }

func (k *ecKE) SharedSecret(peer []byte) ([]byte, error) {
	if len(peer) != len(k.pub) {
		return nil, &KeyExchangeError{Group: k.group, Reason: fmt.Sprintf("%d octets, want %d", len(peer), len(k.pub))}
	}
	enc := peer
	if k.group != Group31 {
		enc = make([]byte, 1+len(peer))
		enc[0] = 4
		copy(enc[1:], peer)
	}
	pub, err := k.curve.NewPublicKey(enc)
	if err != nil {
		return nil, &KeyExchangeError{Group: k.group, Reason: "not a point on the curve"}
	}
	secret, err := k.priv.ECDH(pub)
	if err != nil {
		// crypto/ecdh refuses X25519 inputs of low order, whose output
		// would be all zeros (RFC 8031 §2).
		return nil, &KeyExchangeError{Group: k.group, Reason: "low-order point (all-zero shared secret)"}
	}
	return secret, nil
}

// ---- MODP groups (RFC 2409 §6, RFC 3526) ----

type modp struct {
	group   uint16
	p       *big.Int
	pMinus1 *big.Int
	size    int // octets of p
	expLen  int // octets of the private exponent
}

// The primes, generator 2, as published (RFC 2409 §6.1, §6.2; RFC 3526 §2-§5).
const (
	modp768 = "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A63A3620FFFFFFFFFFFFFFFF"

	modp1024 = "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE65381FFFFFFFFFFFFFFFF"

	modp1536 = "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA237327FFFFFFFFFFFFFFFF"

	modp2048 = "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF"

	modp3072 = "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E208E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF"

	modp4096 = "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA051015728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864D87602733EC86A64521F2B18177B200CBBE117577A615D6C770988C0BAD946E208E24FA074E5AB3143DB5BFCE0FD108E4B82D120A92108011A723C12A787E6D788719A10BDBA5B2699C327186AF4E23C1A946834B6150BDA2583E9CA2AD44CE8DBBBC2DB04DE8EF92E8EFC141FBECAA6287C59474E6BC05D99B2964FA090C3A2233BA186515BE7ED1F612970CEE2D7AFB81BDD762170481CD0069127D5B05AA993B4EA988D8FDDC186FFB7DC90A6C08F4DF435C934063199FFFFFFFFFFFFFFFF"
)

// Parsed once; never mutated afterwards.
var (
	modpGroups = [...]*modp{
		newModpParams(Group1, modp768, 256),
		newModpParams(Group2, modp1024, 256),
		newModpParams(Group5, modp1536, 256),
		newModpParams(Group14, modp2048, 256), // 112-bit strength; 256-bit floor
		newModpParams(Group15, modp3072, 256), // 128-bit strength
		newModpParams(Group16, modp4096, 304), // 152-bit strength (SP 800-56B)
	}
	bigTwo = big.NewInt(2)
)

func newModpParams(group uint16, hex string, expBits int) *modp {
	p, ok := new(big.Int).SetString(hex, 16)
	if !ok {
		panic("suite: bad MODP prime for group " + GroupName(group))
	}
	return &modp{
		group:   group,
		p:       p,
		pMinus1: new(big.Int).Sub(p, big.NewInt(1)),
		size:    (p.BitLen() + 7) / 8,
		expLen:  expBits / 8,
	}
}

func modpGroup(group uint16) *modp {
	for _, m := range modpGroups {
		if m.group == group {
			return m
		}
	}
	return nil
}

type modpKE struct {
	m   *modp
	x   *big.Int
	pub []byte
}

func newMODP(m *modp, rand io.Reader) (*modpKE, error) {
	buf := make([]byte, m.expLen)
	defer clear(buf)
	for range maxKeyAttempts {
		if _, err := io.ReadFull(rand, buf); err != nil {
			return nil, fmt.Errorf("suite: reading %s private exponent: %w", GroupName(m.group), err)
		}
		x := new(big.Int).SetBytes(buf)
		if x.Cmp(bigTwo) < 0 {
			continue
		}
		y := new(big.Int).Exp(bigTwo, x, m.p)
		return &modpKE{m: m, x: x, pub: y.FillBytes(make([]byte, m.size))}, nil
	}
	return nil, fmt.Errorf("suite: no valid %s private exponent in %d draws from the random source", GroupName(m.group), maxKeyAttempts)
}

func (k *modpKE) Group() uint16  { return k.m.group }
func (k *modpKE) Public() []byte { return k.pub }

// SharedSecret computes y^x mod p. math/big is not constant-time; the
// exponent is ephemeral (one per exchange), which limits what timing can
// reveal. Prefer the ECP groups and Curve25519.
func (k *modpKE) SharedSecret(peer []byte) ([]byte, error) {
	m := k.m
	if len(peer) != m.size {
		return nil, &KeyExchangeError{Group: m.group, Reason: fmt.Sprintf("%d octets, want %d", len(peer), m.size)}
	}
	y := new(big.Int).SetBytes(peer)
	// 1 < y < p-1 excludes the elements of order 1 and 2 (RFC 6989 §2.1).
	if y.Cmp(bigTwo) < 0 || y.Cmp(m.pMinus1) >= 0 {
		return nil, &KeyExchangeError{Group: m.group, Reason: "value out of range (must be 1 < y < p-1)"}
	}
	z := new(big.Int).Exp(y, k.x, m.p)
	return z.FillBytes(make([]byte, m.size)), nil
}
