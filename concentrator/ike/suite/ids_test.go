package suite

import (
	"errors"
	"testing"
)

func TestNames(t *testing.T) {
	cases := []struct{ got, want string }{
		{EncrName(EncrAESGCM16), "AES_GCM_16"},
		{EncrName(EncrChaCha20Poly1305), "CHACHA20_POLY1305"},
		{EncrName(Encr3DES), "3DES"},
		{EncrName(77), "ENCR(77)"},
		{PRFName(PRFHMACSHA256), "PRF_HMAC_SHA2_256"},
		{PRFName(PRFAES128XCBC), "PRF_AES128_XCBC"},
		{PRFName(0), "PRF(0)"},
		{IntegName(IntegHMACSHA256128), "HMAC_SHA2_256_128"},
		{IntegName(IntegNone), "NONE"},
		{IntegName(300), "INTEG(300)"},
		{GroupName(Group31), "CURVE_25519"},
		{GroupName(Group14), "MODP_2048"},
		{GroupName(Group19), "ECP_256"},
		{GroupName(Group21), "ECP_521"},
		{GroupName(35), "GROUP(35)"},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}

func TestWeak(t *testing.T) {
	weak := map[uint8][]uint16{
		TypeENCR:  {EncrDES, Encr3DES},
		TypePRF:   {PRFHMACMD5, PRFHMACSHA1},
		TypeINTEG: {IntegHMACMD596, IntegHMACSHA196},
		TypeKE:    {Group1, Group2, Group5},
	}
	for typ := TypeADDKE1; typ <= TypeADDKE7; typ++ {
		weak[typ] = weak[TypeKE] // additional key exchanges (RFC 9370)
	}
	for typ := uint8(0); typ <= 13; typ++ {
		for id := uint16(0); id < 64; id++ {
			want := false
			for _, w := range weak[typ] {
				want = want || w == id
			}
			if Weak(typ, id) != want {
				t.Errorf("Weak(%d, %d) = %v", typ, id, !want)
			}
		}
	}
	if Weak(TypePRF, PRFAES128XCBC) || Weak(TypeINTEG, IntegAESXCBC96) {
		t.Error("AES-XCBC is not weak")
	}
}

func TestCheck(t *testing.T) {
	err := Check(TypeENCR, Encr3DES, false)
	var we *WeakError
	if !errors.As(err, &we) || we.Type != TypeENCR || we.ID != Encr3DES {
		t.Fatalf("Check(3DES) = %v", err)
	}
	if got, want := err.Error(), "3DES refused: weak algorithm; set ike.allow_weak to enable"; got != want {
		t.Errorf("message %q, want %q", got, want)
	}
	// Allowed but not implemented.
	if err := Check(TypeENCR, Encr3DES, true); !errors.Is(err, ErrUnsupported) {
		t.Errorf("Check(3DES, allow) = %v", err)
	}
	if err := Check(TypeINTEG, IntegAESXCBC96, false); !errors.Is(err, ErrUnsupported) {
		t.Errorf("Check(AES_XCBC_96) = %v", err)
	}
	if got := Check(TypePRF, PRFAES128XCBC, true).Error(); got != "PRF_AES128_XCBC not supported" {
		t.Errorf("message %q", got)
	}
	for _, ok := range []struct {
		typ uint8
		id  uint16
	}{{TypeESN, ESNNo}, {TypeESN, ESNYes}, {TypeINTEG, IntegNone}, {TypeKE, Group31}, {TypeENCR, EncrAESGCM16}} {
		if err := Check(ok.typ, ok.id, false); err != nil {
			t.Errorf("Check(%d, %d) = %v", ok.typ, ok.id, err)
		}
	}
	if err := Check(13, 1, true); !errors.Is(err, ErrUnsupported) { // 6..12 are ADDKE1..7 (RFC 9370)
		t.Errorf("unknown transform type: %v", err)
	}

	// Check(..., true) agrees with the constructors.
	for id := uint16(0); id < 64; id++ {
		_, perr := NewPRF(id)
		if (Check(TypePRF, id, true) == nil) != (perr == nil) {
			t.Errorf("PRF %d: Check and NewPRF disagree", id)
		}
		_, kerr := KeyExchangeLen(id)
		if (Check(TypeKE, id, true) == nil) != (kerr == nil) {
			t.Errorf("KE %d: Check and KeyExchangeLen disagree", id)
		}
		encrOK := false
		for _, bits := range []int{0, 128, 256} {
			for _, in := range []uint16{IntegNone, IntegHMACSHA256128} {
				if _, err := NewCipher(id, bits, in); err == nil {
					encrOK = true
				}
			}
		}
		if (Check(TypeENCR, id, true) == nil) != encrOK {
			t.Errorf("ENCR %d: Check and NewCipher disagree", id)
		}
		_, ierr := NewCipher(EncrAESCBC, 128, id)
		if id != IntegNone && (Check(TypeINTEG, id, true) == nil) != (ierr == nil) {
			t.Errorf("INTEG %d: Check and NewCipher disagree", id)
		}
	}
}

func TestErrorMessages(t *testing.T) {
	cases := []struct {
		err  error
		want string
	}{
		{&UnsupportedError{Type: TypeKE, ID: 24}, "GROUP(24) not supported"},
		{&WeakError{Type: TypePRF, ID: PRFHMACSHA1}, "PRF_HMAC_SHA1 refused: weak algorithm; set ike.allow_weak to enable"},
		{&KeyExchangeError{Group: Group19, Reason: "not a point on the curve"}, "invalid ECP_256 key exchange value: not a point on the curve"},
		{errPadLength, "suite: malformed encrypted payload: pad length exceeds the decrypted payload"},
	}
	for _, c := range cases {
		if got := c.err.Error(); got != c.want {
			t.Errorf("got %q, want %q", got, c.want)
		}
	}
}
