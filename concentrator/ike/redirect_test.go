package ike

import (
	"bytes"
	"net/netip"
	"testing"
)

func initRequest(supported bool) []byte {
	m := Message{SPIi: 0x0102030405060708, Exchange: IKE_SA_INIT, Flags: FlagInitiator,
		Payloads: []Payload{&Nonce{Data: bytes.Repeat([]byte{0xab}, 32)}}}
	if supported {
		m.Payloads = append(m.Payloads, &Notify{NotifyType: REDIRECT_SUPPORTED})
	}
	return m.Encode()
}

func TestRedirectInit(t *testing.T) {
	target := netip.MustParseAddr("192.0.2.7")
	resp, ok := RedirectInit(initRequest(true), target)
	if !ok {
		t.Fatal("no redirect for a request with REDIRECT_SUPPORTED")
	}
	m, err := Decode(resp)
	if err != nil {
		t.Fatal(err)
	}
	if m.SPIi != 0x0102030405060708 || m.SPIr != 0 || m.Exchange != IKE_SA_INIT || m.Flags != FlagResponse || m.MessageID != 0 {
		t.Fatalf("header %+v", m)
	}
	if len(m.Payloads) != 1 {
		t.Fatalf("payloads %v, want one notify", m.Payloads)
	}
	n, ok := m.Payloads[0].(*Notify)
	if !ok || n.NotifyType != REDIRECT {
		t.Fatalf("payload %#v, want N(REDIRECT)", m.Payloads[0])
	}
	r, err := ParseRedirect(n.Data)
	if err != nil {
		t.Fatal(err)
	}
	if r.Addr != target || !bytes.Equal(r.Nonce, bytes.Repeat([]byte{0xab}, 32)) {
		t.Fatalf("redirect %+v: want %s with the initiator's nonce", r, target)
	}

	if _, ok := RedirectInit(initRequest(false), target); ok {
		t.Fatal("redirected an initiator that did not announce REDIRECT_SUPPORTED")
	}
	if _, ok := RedirectInit(resp, target); ok {
		t.Fatal("redirected a response")
	}
	if _, ok := RedirectInit(initRequest(true), netip.Addr{}); ok {
		t.Fatal("redirected to no target")
	}
}

func TestRedirectEncodeParse(t *testing.T) {
	for _, r := range []Redirect{
		{Addr: netip.MustParseAddr("2001:db8::7"), Nonce: []byte{1, 2, 3}},
		{Addr: netip.MustParseAddr("192.0.2.9")},
		{FQDN: "n2.vpn.example", Nonce: []byte{9}},
	} {
		b, err := EncodeRedirect(r)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseRedirect(b)
		if err != nil {
			t.Fatal(err)
		}
		if got.Addr != r.Addr || got.FQDN != r.FQDN || !bytes.Equal(got.Nonce, r.Nonce) {
			t.Fatalf("%+v: parsed %+v", r, got)
		}
	}
	for _, b := range [][]byte{nil, {1}, {1, 4, 1, 2}, {2, 4, 1, 2, 3, 4}, {3, 0}, {9, 1, 1}} {
		if _, err := ParseRedirect(b); err == nil {
			t.Errorf("ParseRedirect(%x): no error", b)
		}
	}
}

// FuzzRedirect: arbitrary datagrams and notification data never panic.
func FuzzRedirect(f *testing.F) {
	f.Add(initRequest(true))
	f.Add(initRequest(false))
	f.Add([]byte{1, 4, 192, 0, 2, 1, 0xab})
	f.Fuzz(func(t *testing.T, b []byte) {
		if resp, ok := RedirectInit(b, netip.MustParseAddr("192.0.2.1")); ok {
			if _, err := Decode(resp); err != nil {
				t.Fatalf("our redirect does not decode: %v", err)
			}
		}
		_, _ = ParseRedirect(b)
	})
}
