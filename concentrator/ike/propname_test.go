package ike

import (
	"testing"

	"github.com/ikefleet/ikefleet/concentrator/ike/suite"
)

// The names logs, the event feed and the admin API show for a proposal.
func TestSelectedString(t *testing.T) {
	for _, tc := range []struct {
		s    Selected
		want string
	}{
		{Selected{Protocol: ProtoIKE, Encr: EncrAlg{ID: suite.EncrAESGCM16, KeyLen: 256}, PRF: suite.PRFHMACSHA256, Group: suite.Group31},
			"AES_GCM_16-256/PRF_HMAC_SHA2_256/CURVE_25519"},
		{Selected{Protocol: ProtoIKE, Encr: EncrAlg{ID: suite.EncrAESCBC, KeyLen: 128}, Integ: suite.IntegHMACSHA256128, PRF: suite.PRFHMACSHA256,
			Group: suite.Group14, AddKE: [NumAddKE]uint16{suite.GroupMLKEM768}}, "AES_CBC-128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048/KE1_ML_KEM_768"},
		{Selected{Protocol: ProtoESP, Encr: EncrAlg{ID: suite.EncrChaCha20Poly1305}, ESN: suite.ESNYes}, "CHACHA20_POLY1305/ESN"},
		{Selected{Protocol: ProtoIKE, Encr: EncrAlg{ID: suite.EncrChaCha20Poly1305}, ESN: suite.ESNYes}, "CHACHA20_POLY1305"},
	} {
		if got := tc.s.String(); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.s, got, tc.want)
		}
	}
}
