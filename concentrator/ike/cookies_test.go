package ike

import (
	"bytes"
	"net/netip"
	"testing"
	"time"
)

// Screen answers a cookieless IKE_SA_INIT under pressure with the cookie
// the engine itself would demand, passes one with a valid cookie as
// proven (the engine then admits it), answers a wrong or foreign cookie
// again, and leaves everything to the engine when it is not under
// pressure or has no secret yet.
func TestScreenCookies(t *testing.T) {
	rcfg := responderConfig(t, 1)
	rcfg.CookieThreshold = 0 // always
	e, err := NewEngine(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	c := e.Cookies()
	src := netip.MustParseAddrPort("198.51.100.7:500")
	req := attackerInit(1, nil, 0)
	if _, v := c.Screen(t0, req, src.Addr(), nil); v != ScreenQueue {
		t.Fatalf("before the engine made a secret: %v", v)
	}
	// The engine demands a cookie (and makes its secret).
	want := cookieOf(R(func(rd *Ready) { e.Handle(t0, Packet{Local: concAddr, Remote: src, Data: req}, rd) }))
	if want == nil {
		t.Fatal("the engine demanded no cookie")
	}
	reply, v := c.Screen(t0, req, src.Addr(), nil)
	if v != ScreenAnswered {
		t.Fatalf("cookieless request: %v", v)
	}
	m, err := Decode(reply)
	if err != nil {
		t.Fatal(err)
	}
	n := findNotify(m.Payloads, COOKIE)
	if m.SPIi != 1 || m.SPIr != 0 || m.Exchange != IKE_SA_INIT || m.Flags != FlagResponse || n == nil || !bytes.Equal(n.Data, want) {
		t.Fatalf("reply %+v, cookie %x, want %x", m, n, want)
	}
	if st := e.Stats(); st.CookiesSent != 2 {
		t.Fatalf("cookies sent %d, want 2 (engine 1, Screen 1)", st.CookiesSent)
	}

	proven := attackerInit(1, want, 0)
	if _, v := c.Screen(t0, proven, src.Addr(), nil); v != ScreenProven {
		t.Fatalf("request with a valid cookie: %v", v)
	}
	other := netip.MustParseAddrPort("198.51.100.8:500")
	if _, v := c.Screen(t0, proven, other.Addr(), nil); v != ScreenAnswered {
		t.Fatalf("cookie from another address: %v", v)
	}
	bad := bytes.Clone(want)
	bad[len(bad)-1] ^= 1
	if _, v := c.Screen(t0, attackerInit(1, bad, 0), src.Addr(), nil); v != ScreenAnswered {
		t.Fatalf("wrong cookie: %v", v)
	}
	e.Handle(t0, Packet{Local: concAddr, Remote: src, Data: proven}, &Ready{})
	if st := e.Stats(); st.HalfOpen != 1 {
		t.Fatalf("the proven request was not admitted: %+v", st)
	}
	// A secret past its lifetime is the engine's to renew.
	if _, v := c.Screen(t0.Add(cookieLifetime+time.Second), req, src.Addr(), nil); v != ScreenQueue {
		t.Fatalf("expired secret: %v", v)
	}
	// Not IKE_SA_INIT requests, and truncations: the engine's.
	resp := bytes.Clone(req)
	resp[19] = FlagResponse
	if _, v := c.Screen(t0, resp, src.Addr(), nil); v != ScreenQueue {
		t.Fatalf("a response: %v", v)
	}
	for i := range req {
		if _, v := c.Screen(t0, req[:i], src.Addr(), nil); v != ScreenQueue {
			t.Fatalf("request truncated to %d bytes: %v", i, v)
		}
	}

	// Below the threshold nothing is screened.
	rcfg.CookieThreshold = 10
	e2, err := NewEngine(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	e2.Handle(t0, Packet{Local: concAddr, Remote: src, Data: req}, &Ready{})
	if _, v := e2.Cookies().Screen(t0, attackerInit(2, nil, 0), src.Addr(), nil); v != ScreenQueue || e2.Cookies().UnderPressure(t0) {
		t.Fatalf("below the threshold: %v", v)
	}
	for i := 3; i < 12; i++ {
		e2.Handle(t0, Packet{Local: concAddr, Remote: src, Data: attackerInit(uint64(i), nil, 0)}, &Ready{})
	}
	if !e2.Cookies().UnderPressure(t0) {
		t.Fatalf("at the threshold: no pressure (%+v)", e2.Stats())
	}
	// A cookie demanded keeps the pressure on for a half-open timeout,
	// though the half-open SAs time out together.
	if cookieOf(R(func(rd *Ready) {
		e2.Handle(t0, Packet{Local: concAddr, Remote: src, Data: attackerInit(99, nil, 0)}, rd)
	})) == nil {
		t.Fatal("at the threshold: no cookie demanded")
	}
	later := t0.Add(DefaultHalfOpenTimeout + time.Second)
	e2.Tick(later, &Ready{})
	if st := e2.Stats(); st.HalfOpen != 0 || !e2.Cookies().UnderPressure(later.Add(-2*time.Second)) {
		t.Fatalf("half-open SAs expired right after a cookie demand: no pressure (%+v)", st)
	}
	if e2.Cookies().UnderPressure(t0.Add(2 * DefaultHalfOpenTimeout)) {
		t.Fatalf("a half-open timeout after the last demand: still under pressure (%+v)", e2.Stats())
	}
}

// Screen never panics and never proves a request it did not mint a
// cookie for.
func FuzzScreen(f *testing.F) {
	f.Add(attackerInit(1, nil, 0))
	f.Add(attackerInit(2, []byte{1, 2, 3}, 0))
	f.Add(attackerInit(3, nil, 100))
	rcfg := responderConfig(f, 1)
	rcfg.CookieThreshold = 0
	e, err := NewEngine(rcfg)
	if err != nil {
		f.Fatal(err)
	}
	src := netip.MustParseAddrPort("198.51.100.7:500")
	e.Handle(t0, Packet{Local: concAddr, Remote: src, Data: attackerInit(9, nil, 0)}, &Ready{})
	f.Fuzz(func(t *testing.T, b []byte) {
		reply, v := e.Cookies().Screen(t0, b, src.Addr(), nil)
		switch v {
		case ScreenAnswered:
			if _, err := Decode(reply); err != nil {
				t.Fatalf("undecodable reply: %v", err)
			}
		case ScreenProven:
			t.Fatalf("proven without a cookie we made: %x", b)
		}
	})
}

// With the secret made ahead (RenewCookieSecret) and cookies demanded by
// the caller (Demand: its queue of new requests backed up), Screen
// answers the very first request below the half-open threshold, and the
// engine demands a cookie too instead of computing a key exchange; once
// the demand's hold has passed, requests are admitted again. The secret
// is replaced before it expires and the previous one still opens.
func TestDemandBelowThreshold(t *testing.T) {
	rcfg := responderConfig(t, 1)
	rcfg.CookieThreshold = 1000
	rcfg.HalfOpenTimeout = 10 * time.Second
	e, err := NewEngine(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	c := e.Cookies()
	src := netip.MustParseAddrPort("198.51.100.7:500")
	e.RenewCookieSecret(t0)
	if _, v := c.Screen(t0, attackerInit(1, nil, 0), src.Addr(), nil); v != ScreenQueue {
		t.Fatalf("below the threshold, not demanded: %v", v)
	}
	c.Demand(t0)
	reply, v := c.Screen(t0, attackerInit(2, nil, 0), src.Addr(), nil)
	if v != ScreenAnswered {
		t.Fatalf("demanded below the threshold: %v", v)
	}
	m, err := Decode(reply)
	if err != nil {
		t.Fatal(err)
	}
	cookie := findNotify(m.Payloads, COOKIE)
	if cookie == nil {
		t.Fatal("no cookie in the answer")
	}
	// The engine demands one of a request queued before the demand.
	if cookieOf(R(func(rd *Ready) {
		e.Handle(t0, Packet{Local: concAddr, Remote: src, Data: attackerInit(3, nil, 0)}, rd)
	})) == nil {
		t.Fatal("the engine computed a key exchange while cookies were demanded")
	}
	if st := e.Stats(); st.HalfOpen != 0 || st.CookiesSent != 2 {
		t.Fatalf("half-open %d (want 0), cookies sent %d (want 2)", st.HalfOpen, st.CookiesSent)
	}
	// Renewed before it expires: the old cookie still opens.
	later := t0.Add(cookieLifetime - cookieRenewMargin + time.Second)
	e.RenewCookieSecret(later)
	c.Demand(later)
	if _, v := c.Screen(later, attackerInit(2, cookie.Data, 0), src.Addr(), nil); v != ScreenProven {
		t.Fatalf("cookie of the previous secret: %v", v)
	}
	c.Demand(later.Add(cookieRenewMargin))
	if _, v := c.Screen(later.Add(cookieRenewMargin), attackerInit(4, nil, 0), src.Addr(), nil); v != ScreenAnswered {
		t.Fatalf("after the old secret's expiry, renewed ahead: %v", v)
	}
	// The demand's hold over: admitted without a cookie.
	after := later.Add(cookieRenewMargin + rcfg.HalfOpenTimeout + time.Second)
	if _, v := c.Screen(after, attackerInit(5, nil, 0), src.Addr(), nil); v != ScreenQueue {
		t.Fatalf("hold over: %v", v)
	}
}

// BenchmarkScreen: the socket reader's cost for a cookieless IKE_SA_INIT
// under pressure (answered with a cookie) and for one carrying a valid
// cookie (proven), from many goroutines as the readers call it.
func BenchmarkScreen(b *testing.B) {
	rcfg := responderConfig(b, 1)
	rcfg.CookieThreshold = 0
	e, err := NewEngine(rcfg)
	if err != nil {
		b.Fatal(err)
	}
	e.RenewCookieSecret(t0)
	c := e.Cookies()
	c.Demand(t0)
	src := netip.MustParseAddr("198.51.100.7")
	req := attackerInit(1, nil, 0)
	reply, v := c.Screen(t0, req, src, nil)
	if v != ScreenAnswered {
		b.Fatalf("cookieless request: %v", v)
	}
	m, err := Decode(reply)
	if err != nil {
		b.Fatal(err)
	}
	proven := attackerInit(1, findNotify(m.Payloads, COOKIE).Data, 0)
	for _, bc := range []struct {
		name string
		req  []byte
		want Screening
	}{{"answered", req, ScreenAnswered}, {"proven", proven, ScreenProven}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				buf := make([]byte, 0, CookieReplyLen)
				for pb.Next() {
					if _, v := c.Screen(t0, bc.req, src, buf[:0]); v != bc.want {
						b.Fatalf("%v, want %v", v, bc.want)
					}
				}
			})
		})
	}
}

// The socket reader's hand-made cookie demand is the message the encoder
// makes of it, with the engine's cookie.
func TestCookieReplyEncoding(t *testing.T) {
	cs := cookieSecret{version: 7, key: [32]byte{1, 2, 3}}
	cs.macs = macPool(cs.key)
	ni, peer := bytes.Repeat([]byte{9}, 32), netip.MustParseAddr("2001:db8::1")
	for range 3 { // pooled MACs are reset between uses
		want := (&Message{SPIi: 0x1122334455667788, Exchange: IKE_SA_INIT, Flags: FlagResponse,
			Payloads: []Payload{&Notify{NotifyType: COOKIE, Data: (&cookieSecret{version: 7, key: cs.key}).sum(ni, peer, 0x1122334455667788)}}}).Encode()
		if got := appendCookieReply(nil, 0x1122334455667788, &cs, ni, peer); !bytes.Equal(got, want) {
			t.Fatalf("cookie reply\n%x\nwant\n%x", got, want)
		}
		// Appended after what dst holds (a NAT-T socket's non-ESP marker).
		marker := []byte{0, 0, 0, 0}
		if got := appendCookieReply(marker, 0x1122334455667788, &cs, ni, peer); !bytes.Equal(got, append(marker, want...)) || len(want) != CookieReplyLen {
			t.Fatalf("cookie reply after a marker\n%x\nwant the marker and\n%x", got, want)
		}
	}
}
