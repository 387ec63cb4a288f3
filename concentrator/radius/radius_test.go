package radius

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/md5"
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

// testServer answers Access-Requests on loopback like a RADIUS server
// running one EAP round: challenge on the first message, accept (with
// MPPE keys) or reject on the second.
type testServer struct {
	t       *testing.T
	conn    net.PacketConn
	secret  []byte
	recv    [32]byte
	send    [32]byte
	reject  bool
	silent  bool // never answers
	sloppy  bool // answers requests whose Message-Authenticator is wrong
	mu      sync.Mutex
	answers int
	states  [][]byte
}

func (s *testServer) counts() (int, [][]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.answers, append([][]byte(nil), s.states...)
}

func startServer(t *testing.T, secret string, set ...func(*testServer)) *testServer {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{t: t, conn: c, secret: []byte(secret)}
	for i := range s.recv {
		s.recv[i], s.send[i] = byte(i), byte(0xa0+i)
	}
	for _, f := range set {
		f(s)
	}
	t.Cleanup(func() { c.Close() })
	go s.serve()
	return s
}

func (s *testServer) addr() string { return s.conn.LocalAddr().String() }

func (s *testServer) serve() {
	buf := make([]byte, 4096)
	for {
		n, from, err := s.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		if s.silent {
			continue
		}
		req, err := Parse(buf[:n])
		if err != nil || req.Code != CodeAccessRequest {
			continue
		}
		// Check the request's Message-Authenticator as a server does.
		c := append([]byte(nil), buf[:n]...)
		ma := req.Get(AttrMessageAuthenticator)
		off := bytes.Index(c, ma)
		clear(c[off : off+16])
		mac := hmac.New(md5.New, s.secret)
		mac.Write(c)
		if !hmac.Equal(mac.Sum(nil), ma) && !s.sloppy {
			continue
		}
		s.mu.Lock()
		s.states = append(s.states, req.Get(AttrState))
		s.mu.Unlock()
		resp := &Packet{Identifier: req.Identifier}
		eap := req.EAPMessage()
		switch {
		case eap[4] == 1: // EAP-Response/Identity
			resp.Code = CodeAccessChallenge
			resp.Add(AttrState, []byte("round-1"))
			resp.AddEAPMessage(append([]byte{1, 2, 0, 6, 4, 0}, bytes.Repeat([]byte{0xee}, 300)...)[:6])
		case s.reject:
			resp.Code = CodeAccessReject
			resp.AddEAPMessage([]byte{4, 2, 0, 4})
			resp.Add(AttrReplyMessage, []byte("no"))
		default:
			resp.Code = CodeAccessAccept
			resp.AddEAPMessage([]byte{3, 2, 0, 4})
			ms := func(typ byte, key []byte, salt byte) []byte {
				v := encryptMPPE(key, s.secret, req.Authenticator, [2]byte{salt, 1})
				return append([]byte{0, 0, 1, 55, typ, byte(2 + len(v))}, v...)
			}
			resp.Add(AttrVendorSpecific, ms(msMPPERecvKey, s.recv[:], 1))
			resp.Add(AttrVendorSpecific, ms(msMPPESendKey, s.send[:], 2))
		}
		s.mu.Lock()
		s.answers++
		s.mu.Unlock()
		b := s.sign(resp, req.Authenticator)
		s.conn.WriteTo(b, from)
	}
}

// sign sets the Message-Authenticator and the Response Authenticator.
func (s *testServer) sign(p *Packet, reqAuth [16]byte) []byte {
	p.Authenticator = reqAuth
	p.Add(AttrMessageAuthenticator, make([]byte, 16))
	b, _ := p.Encode()
	mac := hmac.New(md5.New, s.secret)
	mac.Write(b)
	copy(b[len(b)-16:], mac.Sum(nil))
	h := md5.New()
	h.Write(b)
	h.Write(s.secret)
	copy(b[4:20], h.Sum(nil))
	return b
}

func TestEAPConversation(t *testing.T) {
	srv := startServer(t, "radius-secret")
	c, err := New(Config{Servers: []Server{{Address: srv.addr(), Secret: []byte("radius-secret")}}, NASIdentifier: "node-a"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := &Session{User: "gw1@iot.example", CallingStationID: "192.0.2.1[4500]"}
	ctx := context.Background()
	r, err := c.EAP(ctx, s, IdentityResponse([]byte("gw1@iot.example")))
	if err != nil || r.Code != CodeAccessChallenge || len(r.EAP) != 6 {
		t.Fatalf("first round: %+v %v", r, err)
	}
	r, err = c.EAP(ctx, s, []byte{2, 2, 0, 6, 4, 0})
	if err != nil || r.Code != CodeAccessAccept {
		t.Fatalf("second round: %+v %v", r, err)
	}
	if _, states := srv.counts(); string(states[1]) != "round-1" {
		t.Fatalf("State not echoed: %q", states[1])
	}
	want := append(srv.recv[:], srv.send[:]...)
	if !bytes.Equal(r.MSK, want) {
		t.Fatalf("MSK %x, want %x", r.MSK, want)
	}
}

func TestReject(t *testing.T) {
	srv := startServer(t, "radius-secret", func(s *testServer) { s.reject = true })
	c, _ := New(Config{Servers: []Server{{Address: srv.addr(), Secret: []byte("radius-secret")}}})
	defer c.Close()
	s := &Session{User: "gw1"}
	c.EAP(context.Background(), s, IdentityResponse([]byte("gw1")))
	r, err := c.EAP(context.Background(), s, []byte{2, 2, 0, 6, 4, 0})
	if err != nil || r.Code != CodeAccessReject || r.Reason != "no" || r.MSK != nil {
		t.Fatalf("reject: %+v %v", r, err)
	}
}

// A server that does not answer is retried, then the next one is used and
// stays preferred; a response under the wrong secret is not believed.
func TestFailoverAndWrongSecret(t *testing.T) {
	dead := startServer(t, "radius-secret", func(s *testServer) { s.silent = true })
	live := startServer(t, "radius-secret")
	c, _ := New(Config{Timeout: 50 * time.Millisecond, Retries: 2, Servers: []Server{
		{Address: dead.addr(), Secret: []byte("radius-secret")},
		{Address: live.addr(), Secret: []byte("radius-secret")},
	}})
	defer c.Close()
	if _, err := c.EAP(context.Background(), &Session{User: "gw1"}, IdentityResponse([]byte("gw1"))); err != nil {
		t.Fatal(err)
	}
	if c.Timeouts.Load() != 2 || c.Retransmitted.Load() != 1 || c.active.Load() != 1 {
		t.Fatalf("timeouts %d retransmitted %d active %d", c.Timeouts.Load(), c.Retransmitted.Load(), c.active.Load())
	}
	if _, err := c.EAP(context.Background(), &Session{User: "gw1"}, IdentityResponse([]byte("gw1"))); err != nil || c.Timeouts.Load() != 2 {
		t.Fatalf("second request went to the dead server first: %v", err)
	}

	wrong := startServer(t, "another-secret", func(s *testServer) { s.sloppy = true })
	c2, _ := New(Config{Timeout: 50 * time.Millisecond, Retries: 1, Servers: []Server{{Address: wrong.addr(), Secret: []byte("radius-secret")}}})
	defer c2.Close()
	_, err := c2.EAP(context.Background(), &Session{User: "gw1"}, IdentityResponse([]byte("gw1")))
	if answers, _ := wrong.counts(); err == nil || c2.BadResponses.Load() == 0 || answers == 0 {
		t.Fatalf("answer under another secret accepted: %v", err)
	}
	if errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}

func TestMPPERoundTrip(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	var ra [16]byte
	ra[3] = 9
	v := encryptMPPE(key, []byte("s"), ra, [2]byte{0x12, 0x34})
	if len(v) != 2+48 || v[0]&0x80 == 0 {
		t.Fatalf("encrypted %d bytes", len(v))
	}
	got, err := decryptMPPE(v, []byte("s"), ra)
	if err != nil || !bytes.Equal(got, key) {
		t.Fatalf("%x %v", got, err)
	}
	if got, _ := decryptMPPE(v, []byte("t"), ra); bytes.Equal(got, key) {
		t.Fatal("decrypted under the wrong secret")
	}
}

func FuzzParse(f *testing.F) {
	p := &Packet{Code: CodeAccessChallenge, Identifier: 3}
	p.AddEAPMessage([]byte{1, 2, 0, 6, 4, 0})
	p.Add(AttrVendorSpecific, append([]byte{0, 0, 1, 55, msMPPERecvKey, 20}, make([]byte, 18)...))
	b, _ := p.Encode()
	f.Add(b)
	f.Add([]byte{2, 0, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		var ra [16]byte
		_ = VerifyResponse(b, ra, []byte("s"))
		p, err := Parse(b)
		if err != nil {
			return
		}
		p.EAPMessage()
		p.MSK([]byte("s"), ra)
		if _, err := p.Encode(); err != nil {
			t.Fatalf("a parsed packet does not encode: %v", err)
		}
	})
}
