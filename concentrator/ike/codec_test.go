package ike

import (
	"bytes"
	"errors"
	"net/netip"
	"reflect"
	"testing"

	"github.com/ikefleet/ikefleet/concentrator/ike/suite"
)

// allPayloads has one of every payload type with non-trivial contents.
func allPayloads() []Payload {
	return []Payload{
		&SA{Proposals: []Proposal{
			{Num: 1, Protocol: ProtoIKE, Transforms: []Transform{
				{Type: suite.TypeENCR, ID: suite.EncrAESGCM16, KeyLen: 256},
				{Type: suite.TypePRF, ID: suite.PRFHMACSHA256},
				{Type: suite.TypeKE, ID: suite.Group31}}},
			{Num: 2, Protocol: ProtoESP, SPI: []byte{1, 2, 3, 4}, Transforms: []Transform{
				{Type: suite.TypeENCR, ID: suite.EncrAESCBC, KeyLen: 128},
				{Type: suite.TypeINTEG, ID: suite.IntegHMACSHA256128},
				{Type: suite.TypeESN, ID: 0}}},
		}},
		&KE{Group: 31, Data: bytes.Repeat([]byte{7}, 32)},
		&ID{IDType: IDFQDN, Data: []byte("gw1.iot.example")},
		&ID{Responder: true, IDType: IDIPv4Addr, Data: []byte{192, 0, 2, 1}},
		&Cert{Encoding: CertX509Signature, Data: []byte{0x30, 0x82, 0, 1}},
		&CertReq{Encoding: CertX509Signature, Data: bytes.Repeat([]byte{9}, 20)},
		&Auth{Method: 2, Data: bytes.Repeat([]byte{3}, 32)},
		&Nonce{Data: bytes.Repeat([]byte{5}, 32)},
		&Notify{NotifyType: NAT_DETECTION_SOURCE_IP, Data: bytes.Repeat([]byte{1}, 20)},
		&Notify{Protocol: ProtoESP, SPI: []byte{0, 0, 1, 0}, NotifyType: REKEY_SA},
		&Delete{Protocol: ProtoESP, SPISize: 4, SPIs: [][]byte{{1, 2, 3, 4}, {5, 6, 7, 8}}},
		&Delete{Protocol: ProtoIKE},
		&Vendor{Data: []byte("ikefleet")},
		&TS{Selectors: []TrafficSelector{SelectorFromPrefix(netip.MustParsePrefix("10.20.0.0/24")),
			{IPProto: 17, StartPort: 500, EndPort: 4500, Start: netip.MustParseAddr("2001:db8::1"), End: netip.MustParseAddr("2001:db8::ff")}}},
		&TS{Responder: true, Selectors: []TrafficSelector{SelectorFromPrefix(netip.MustParsePrefix("0.0.0.0/0"))}},
		&CP{CfgType: CFG_REPLY, Attrs: []CPAttr{{Type: INTERNAL_IP4_ADDRESS, Value: []byte{10, 99, 0, 1}}, {Type: INTERNAL_IP4_DNS, Value: []byte{10, 0, 0, 53}}}},
		&EAP{Message: []byte{1, 7, 0, 5, 1}},
	}
}

func TestRoundTripEveryPayload(t *testing.T) {
	m := &Message{SPIi: 0x0102030405060708, SPIr: 0x1112131415161718, Exchange: IKE_AUTH, Flags: FlagInitiator, MessageID: 1, Payloads: allPayloads()}
	b := m.Encode()
	got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(normalize(got.Payloads), normalize(m.Payloads)) {
		t.Fatalf("round trip differs:\n got %#v\nwant %#v", got.Payloads, m.Payloads)
	}
	if re := got.Encode(); !bytes.Equal(re, b) {
		t.Fatal("re-encoding differs")
	}
	// Every proper prefix is rejected with a typed error, never a panic.
	for n := 0; n < len(b); n++ {
		if _, err := Decode(b[:n]); err == nil {
			t.Fatalf("prefix of %d bytes accepted", n)
		}
	}
	// Trailing bytes are rejected even with a consistent length field.
	tb := append(bytes.Clone(b), 0)
	tb[27]++
	if _, err := Decode(tb); err == nil {
		t.Fatal("trailing byte accepted")
	}
}

// normalize replaces empty slices by nil so DeepEqual compares contents.
func normalize(ps []Payload) []Payload {
	for _, p := range ps {
		if n, ok := p.(*Notify); ok && len(n.SPI) == 0 {
			n.SPI = nil
		}
	}
	return ps
}

// minBody is the shortest valid body of each payload type.
var minBody = map[PayloadType]int{PayloadSA: 8, PayloadKE: 5, PayloadIDi: 5, PayloadIDr: 5, PayloadCERT: 2,
	PayloadCERTREQ: 1, PayloadAUTH: 5, PayloadNonce: 16, PayloadNotify: 4, PayloadDelete: 4, PayloadTSi: 4 + 16,
	PayloadTSr: 4 + 16, PayloadCP: 4, PayloadEAP: 4}

func TestEachPayloadTruncated(t *testing.T) {
	for _, p := range allPayloads() {
		body := p.appendBody(nil)
		for n := 0; n < len(body); n++ {
			m := &Message{SPIi: 1, Exchange: IKE_SA_INIT, Payloads: []Payload{&Unknown{PType: p.Type(), Data: body[:n]}}}
			_, err := Decode(m.Encode())
			var pe *ParseError
			if err != nil && !errors.As(err, &pe) {
				t.Fatalf("%v truncated to %d: untyped error %v", p.Type(), n, err)
			}
			// Some bodies are valid when shorter (lists, opaque data); the
			// fixed parts must never be.
			if n < minBody[p.Type()] && err == nil {
				t.Fatalf("%v truncated to %d bytes accepted", p.Type(), n)
			}
		}
	}
}

func TestUnknownPayloads(t *testing.T) {
	crit := (&Message{SPIi: 1, Exchange: IKE_SA_INIT, Payloads: []Payload{&Unknown{PType: 200, Data: []byte{1}}}}).Encode()
	if _, err := Decode(crit); err != nil {
		t.Fatalf("non-critical unknown payload: %v", err)
	}
	crit[28+1] |= 0x80
	_, err := Decode(crit)
	var uc *UnsupportedCriticalError
	if !errors.As(err, &uc) || NotifyFor(err) != UNSUPPORTED_CRITICAL_PAYLOAD {
		t.Fatalf("critical unknown payload: %v", err)
	}
}

func TestHeaderErrors(t *testing.T) {
	b := (&Message{SPIi: 1, Exchange: IKE_SA_INIT}).Encode()
	b[17] = 0x30
	if _, err := DecodeHeader(b); NotifyFor(err) != INVALID_MAJOR_VERSION {
		t.Fatalf("major version 3: %v", err)
	}
	b[17] = 0x10
	if _, err := DecodeHeader(b); err != ErrNotIKEv2 {
		t.Fatalf("IKEv1: %v", err)
	}
	b[17] = 0x20
	b[27]++
	if _, err := DecodeHeader(b); err == nil {
		t.Fatal("length mismatch accepted")
	}
}

func testSKCipher(t testing.TB, encr uint16, bits int, integ uint16) *suite.SKCipher {
	c, err := suite.NewCipher(encr, bits, integ)
	if err != nil {
		t.Fatal(err)
	}
	k, err := c.Key(bytes.Repeat([]byte{1}, c.EncrKeyLen()), bytes.Repeat([]byte{2}, c.IntegKeyLen()))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestEncryptedRoundTripAndFragments(t *testing.T) {
	for _, tc := range []struct {
		name  string
		encr  uint16
		bits  int
		integ uint16
	}{
		{"gcm", suite.EncrAESGCM16, 256, suite.IntegNone},
		{"chacha", suite.EncrChaCha20Poly1305, 0, suite.IntegNone},
		{"cbc", suite.EncrAESCBC, 256, suite.IntegHMACSHA256128},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := testSKCipher(t, tc.encr, tc.bits, tc.integ)
			iv := make([]byte, k.Cipher().IVLen())
			ps := allPayloads()
			ps = append(ps, &Cert{Encoding: CertX509Signature, Data: bytes.Repeat([]byte{0xab}, 3000)})
			m := &Message{SPIi: 1, SPIr: 2, Exchange: IKE_AUTH, Flags: FlagInitiator, MessageID: 1, Payloads: ps}
			b := m.EncodeEncrypted(k, iv)
			got, err := Decode(b)
			if err != nil {
				t.Fatal(err)
			}
			if err := got.Decrypt(k); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(appendChain(nil, got.Payloads), appendChain(nil, ps)) {
				t.Fatal("decrypted payloads differ")
			}
			frags := m.EncodeFragments(k, 1000, func() []byte { return iv })
			if len(frags) < 4 {
				t.Fatalf("%d fragments for a 3 kB message", len(frags))
			}
			var all []byte
			var first PayloadType
			for i, f := range frags {
				if len(f) > 1000 {
					t.Fatalf("fragment %d is %d bytes", i, len(f))
				}
				fm, err := Decode(f)
				if err != nil {
					t.Fatal(err)
				}
				if fm.skf.Number != uint16(i+1) || fm.skf.Total != uint16(len(frags)) {
					t.Fatalf("fragment numbering %d/%d", fm.skf.Number, fm.skf.Total)
				}
				if i == 0 {
					first = fm.skf.Inner
				}
				pt, err := fm.DecryptFragment(k)
				if err != nil {
					t.Fatal(err)
				}
				all = append(all, pt...)
			}
			re := &Message{}
			if err := re.ParseInner(first, all); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(appendChain(nil, re.Payloads), appendChain(nil, ps)) {
				t.Fatal("reassembled payloads differ")
			}
		})
	}
}

func TestParseProposal(t *testing.T) {
	p, err := ParseProposal("aes256gcm16-aes128gcm16-prfsha384-prfsha256-x25519-ecp256", false, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Encrs) != 2 || len(p.PRFs) != 2 || len(p.Groups) != 2 || !p.AEAD() {
		t.Fatalf("%+v", p)
	}
	p, err = ParseProposal("aes256-sha256-modp2048", false, false)
	if err != nil || len(p.PRFs) != 1 || p.PRFs[0] != suite.PRFHMACSHA256 {
		t.Fatalf("PRF derived from integrity: %+v %v", p, err)
	}
	for _, bad := range []string{"", "aes256gcm16-x25519", "aes256-x25519", "aes256gcm16-sha256-prfsha256-x25519",
		"aes256-sha256", "rot13-sha256-x25519", "aes256gcm16-prfsha256-modp1024", "3des-sha256-modp2048", "aes256-sha1-modp2048"} {
		if _, err := ParseProposal(bad, false, false); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if _, err := ParseProposal("3des-sha1-modp1024", false, true); err != nil {
		t.Errorf("weak proposal refused with allow_weak: %v", err)
	}
	var pe *ProposalError
	_, err = ParseProposal("3des-sha256-modp2048", false, false)
	if !errors.As(err, &pe) || !bytes.Contains([]byte(err.Error()), []byte("3DES")) {
		t.Errorf("weak algorithm error does not name it: %v", err)
	}
}

func TestNarrow(t *testing.T) {
	p := func(s string) TrafficSelector { return SelectorFromPrefix(netip.MustParsePrefix(s)) }
	got := Narrow([]TrafficSelector{p("0.0.0.0/0")}, []TrafficSelector{p("10.20.0.0/16"), p("10.40.0.0/24")})
	if FormatSelectors(got) != "10.20.0.0/16,10.40.0.0/24" {
		t.Fatalf("narrowed to %s", FormatSelectors(got))
	}
	if got := Narrow([]TrafficSelector{p("10.20.1.0/24")}, []TrafficSelector{p("10.20.0.0/16")}); FormatSelectors(got) != "10.20.1.0/24" {
		t.Fatalf("narrowed to %s", FormatSelectors(got))
	}
	if got := Narrow([]TrafficSelector{p("172.16.0.0/12")}, []TrafficSelector{p("10.20.0.0/16")}); len(got) != 0 {
		t.Fatalf("disjoint narrowed to %s", FormatSelectors(got))
	}
	v6 := Narrow([]TrafficSelector{p("::/0")}, []TrafficSelector{p("10.0.0.0/8")})
	if len(v6) != 0 {
		t.Fatal("IPv6 intersected with IPv4")
	}
	udp := TrafficSelector{IPProto: 17, StartPort: 1000, EndPort: 2000, Start: netip.MustParseAddr("10.20.0.1"), End: netip.MustParseAddr("10.20.0.1")}
	if got := Narrow([]TrafficSelector{udp}, []TrafficSelector{p("10.20.0.0/16")}); len(got) != 1 || got[0] != udp {
		t.Fatalf("protocol/port selector narrowed to %v", got)
	}
}

// An IKE_SA_INIT request with no payloads at all is answered, not a panic.
func TestEmptyInitRequest(t *testing.T) {
	e, err := NewEngine(responderConfig(t, 1))
	if err != nil {
		t.Fatal(err)
	}
	b := (&Message{SPIi: 1, Exchange: IKE_SA_INIT, Flags: FlagInitiator}).Encode()
	acts := R(func(rd *Ready) { e.Handle(t0, Packet{Local: concAddr, Remote: gwAddr, Data: b}, rd) })
	if acts.Empty() || e.Len() != 0 {
		t.Fatalf("actions %v, SAs %d", acts, e.Len())
	}
}
