package suite_test

import (
	"bytes"
	"fmt"
	mrand "math/rand/v2"

	"github.com/ikefleet/ikefleet/concentrator/ike/suite"
)

// An IKE SA from IKE_SA_INIT to the first protected message, both sides in
// one function. Real code takes its randomness from crypto/rand.
func Example() {
	rand := mrand.NewChaCha8([32]byte{1})
	prf, _ := suite.NewPRF(suite.PRFHMACSHA256)
	ciph, _ := suite.NewCipher(suite.EncrAESGCM16, 256, suite.IntegNone)

	// IKE_SA_INIT: each side sends its KE payload and nonce.
	ini, _ := suite.GenerateKeyExchange(suite.Group31, rand)
	res, _ := suite.GenerateKeyExchange(suite.Group31, rand)
	ni, nr := make([]byte, 32), make([]byte, 32)
	rand.Read(ni)
	rand.Read(nr)
	const spii, spir = 0x1111111111111111, 0x2222222222222222

	// Each side computes g^ir and the keys.
	gir, err := res.SharedSecret(ini.Public())
	if err != nil {
		panic(err)
	}
	keys := suite.DeriveIKEKeys(prf, suite.SKEYSEED(prf, ni, nr, gir), ni, nr, spii, spir, ciph)
	girI, _ := ini.SharedSecret(res.Public())
	keysI := suite.DeriveIKEKeys(prf, suite.SKEYSEED(prf, ni, nr, girI), ni, nr, spii, spir, ciph)

	// IKE_AUTH: the initiator seals with SK_ei, the responder opens with
	// the same key. assoc is the IKE header plus the SK payload header.
	seal, _ := ciph.Key(keysI.SKei, keysI.SKai)
	open, _ := ciph.Key(keys.SKei, keys.SKai)
	header := make([]byte, 28+4) // filled in with ciph.SealedLen(len(payloads))
	payloads := []byte("IDi | AUTH | SA | TSi | TSr")
	iv := []byte{0, 0, 0, 0, 0, 0, 0, 1} // message counter: unique per key
	msg := seal.Seal(header, iv, header, payloads)

	got, err := open.Open(nil, msg[:32], msg[32:])
	fmt.Println(len(msg)-32 == ciph.SealedLen(len(payloads)), bytes.Equal(got, payloads), err)
	fmt.Println(len(keys.SKd), len(keys.SKei), len(keys.SKai), ciph)
	// Output:
	// true true <nil>
	// 32 36 0 AES_GCM_16_256
}
