package ike

import (
	"bytes"
	"crypto/md5"
	"errors"
	"testing"

	"github.com/ikefleet/ikefleet/concentrator/ike/sig"
)

// md5Server is a backend running EAP-MD5 (RFC 3748 §5.4) for one
// password, standing in for a RADIUS server; with msk set it hands out
// that key on success, as a key-generating method would.
type md5Server struct {
	password  []byte
	msk       []byte
	challenge []byte
	starts    int
	identity  Identity
}

func (s *md5Server) answer(req EAPRequest) EAPAnswer {
	if req.Message == nil {
		s.starts++
		s.identity = req.Peer
		s.challenge = bytes.Repeat([]byte{0x5a}, 16)
		msg := append([]byte{EAPCodeRequest, 7, 0, byte(4 + 2 + 16), 4, 16}, s.challenge...)
		return EAPAnswer{Outcome: EAPContinue, Message: msg}
	}
	if len(req.Message) < 6+16 || req.Message[4] != 4 {
		return EAPAnswer{Outcome: EAPReject, Reason: "not EAP-MD5"}
	}
	want := md5.Sum(append(append([]byte{7}, s.password...), s.challenge...))
	if !bytes.Equal(req.Message[6:6+16], want[:]) {
		return EAPAnswer{Outcome: EAPReject, Message: []byte{EAPCodeFailure, 7, 0, 4}, Reason: "wrong password"}
	}
	return EAPAnswer{Outcome: EAPAccept, Message: []byte{EAPCodeSuccess, 7, 0, 4}, MSK: s.msk}
}

// md5Client is EAP-MD5's peer side.
type md5Client struct {
	password []byte
	msk      []byte
	requests int
}

func (c *md5Client) Respond(req []byte) ([]byte, error) {
	c.requests++
	if len(req) < 6+16 || req[4] != 4 {
		return nil, errors.New("not an EAP-MD5 challenge")
	}
	sum := md5.Sum(append(append([]byte{req[1]}, c.password...), req[6:6+16]...))
	return append([]byte{EAPCodeResponse, req[1], 0, byte(4 + 2 + 16), 4, 16}, sum[:]...), nil
}

func (c *md5Client) MSK() []byte { return c.msk }

// eapWire: a responder with a certificate and EAP, an initiator that
// authenticates with EAP-MD5 and checks the responder's certificate.
func eapWire(t *testing.T, srv *md5Server) (*wire, Initiation) {
	pki := newTestPKI(t)
	rcfg := responderConfig(t, 1)
	rcfg.PSKs = nil
	rcfg.Local = Credentials{ID: concID, Signer: pki.conc, Chain: [][]byte{pki.concDER}}
	rcfg.EAP = &EAPConfig{}
	w := newWire(t, rcfg)
	w.eap = srv.answer
	ini := pskInitiation(t)
	ini.PSK = nil
	ini.Verifier = &sig.Verifier{Roots: pki.roots}
	ini.RemoteID = Identity{Type: IDFQDN, Data: []byte("conc.example")}
	return w, ini
}

func TestEAPHandshake(t *testing.T) {
	for _, tc := range []struct {
		name string
		msk  []byte
	}{
		{"msk", bytes.Repeat([]byte{0x42}, 64)},
		{"no-msk", nil}, // AUTH keyed by SK_pi / SK_pr
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := &md5Server{password: []byte("device-secret-1"), msk: tc.msk}
			w, ini := eapWire(t, srv)
			cl := &md5Client{password: []byte("device-secret-1"), msk: tc.msk}
			ini.EAP = cl
			rd := &Ready{}
			spi, err := w.ini.Initiate(w.now, ini, rd)
			if err != nil {
				t.Fatal(err)
			}
			w.run(rd, true)
			if w.count(EventIKEEstablished) != 2 || len(w.installs) != 2 {
				t.Fatalf("EAP handshake: established %d, installs %d; events %+v", w.count(EventIKEEstablished), len(w.installs), w.events)
			}
			if srv.starts != 1 || cl.requests != 1 || len(w.eapReqs) != 2 {
				t.Fatalf("backend starts %d, client requests %d, backend requests %d", srv.starts, cl.requests, len(w.eapReqs))
			}
			if !srv.identity.Equal(gwID) || !w.installs[0].PeerID.Equal(gwID) {
				t.Fatalf("backend saw %v, responder's peer %v", srv.identity, w.installs[0].PeerID)
			}
			ic, rc := w.installs[1].Child, w.installs[0].Child
			if ic.InSPI != rc.OutSPI || !bytes.Equal(ic.KeyOut().Encr, rc.KeyIn().Encr) {
				t.Fatal("CHILD SAs do not pair")
			}
			if FormatSelectors(rc.RemoteTS) != "10.20.0.0/24" {
				t.Fatalf("CHILD SA of the first IKE_AUTH not kept: %s", FormatSelectors(rc.RemoteTS))
			}
			if w.res.Stats().HalfOpen != 0 || !w.ini.SA(spi).Established() {
				t.Fatal("not established on both sides")
			}
		})
	}
}

func TestEAPWrongPassword(t *testing.T) {
	srv := &md5Server{password: []byte("device-secret-1")}
	w, ini := eapWire(t, srv)
	ini.EAP = &md5Client{password: []byte("not-the-secret")}
	rd := &Ready{}
	if _, err := w.ini.Initiate(w.now, ini, rd); err != nil {
		t.Fatal(err)
	}
	w.run(rd, true)
	if w.count(EventIKEEstablished) != 0 || w.count(EventIKEFailed) != 2 {
		t.Fatalf("wrong EAP password: %+v", w.events)
	}
	if w.res.Len() != 0 || w.ini.Len() != 0 || w.res.Stats().Failed[AUTHENTICATION_FAILED] != 1 {
		t.Fatalf("left behind: responder %d, initiator %d SAs", w.res.Len(), w.ini.Len())
	}
}

// While the backend works, retransmissions of the IKE_AUTH are dropped;
// an answer that comes after the SA timed out is ignored.
func TestEAPBackendPending(t *testing.T) {
	srv := &md5Server{password: []byte("device-secret-1")}
	w, ini := eapWire(t, srv)
	w.eap = nil // answers by hand
	ini.EAP = &md5Client{password: []byte("device-secret-1")}
	var authReq []byte
	w.drop = func(toResponder bool, msg []byte) bool {
		if toResponder && msg[18] == byte(IKE_AUTH) && authReq == nil {
			authReq = bytes.Clone(msg)
		}
		return false
	}
	rd := &Ready{}
	w.ini.Initiate(w.now, ini, rd)
	w.run(rd, true)
	if len(w.eapReqs) != 1 || authReq == nil {
		t.Fatalf("backend requests %d", len(w.eapReqs))
	}
	req := w.eapReqs[0]
	sa := w.res.SA(req.SPI)
	again := R(func(rd *Ready) {
		w.res.Handle(w.now, Packet{Local: sa.Local, Remote: sa.Remote, Data: authReq}, rd)
	})
	if len(again.Send) != 0 || len(again.EAP) != 0 {
		t.Fatalf("retransmission while pending: %d sends, %d backend requests", len(again.Send), len(again.EAP))
	}
	if w.res.EAPAnswer(w.now, req.SPI, req.Round+1, EAPAnswer{Outcome: EAPContinue}, &Ready{}) {
		t.Fatal("an answer for another round was taken")
	}
	w.now = w.now.Add(DefaultHalfOpenTimeout + 1)
	w.run(R(func(rd *Ready) { w.res.Tick(w.now, rd) }), false)
	if w.res.Len() != 0 {
		t.Fatal("half-open EAP SA outlived its timeout")
	}
	if w.res.EAPAnswer(w.now, req.SPI, req.Round, srv.answer(req), &Ready{}) {
		t.Fatal("answer for a timed-out SA was taken")
	}
}

func TestEAPNotConfigured(t *testing.T) {
	srv := &md5Server{password: []byte("device-secret-1")}
	w, ini := eapWire(t, srv)
	cfg := responderConfig(t, 1)
	res, err := NewEngine(cfg) // no EAP
	if err != nil {
		t.Fatal(err)
	}
	w.res = res
	ini.EAP = &md5Client{password: []byte("device-secret-1")}
	ini.Verifier, ini.PSK = nil, testPSK
	rd := &Ready{}
	w.ini.Initiate(w.now, ini, rd)
	w.run(rd, true)
	if w.count(EventIKEEstablished) != 0 || len(w.eapReqs) != 0 || res.Stats().Failed[AUTHENTICATION_FAILED] != 1 {
		t.Fatalf("EAP accepted without EAP configured: %+v", w.events)
	}
}
