package ike

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike/sig"
)

// switchOnline is an online revocation source whose answer the test sets.
type switchOnline struct {
	res   sig.OnlineResult
	calls int
}

func (s *switchOnline) CheckOnline(cert, issuer *x509.Certificate, now time.Time) sig.OnlineResult {
	s.calls++
	return s.res
}

func certWire(t *testing.T, online sig.OnlineChecker) (*wire, Initiation) {
	pki := newTestPKI(t)
	rcfg := responderConfig(t, 1)
	rcfg.PSKs = nil
	rcfg.Local = Credentials{ID: concID, Signer: pki.conc, Chain: [][]byte{pki.concDER}}
	rcfg.Verifier = &sig.Verifier{Roots: pki.roots, Online: online}
	w := newWire(t, rcfg)
	ini := pskInitiation(t)
	ini.PSK = nil
	ini.Creds = Credentials{ID: Identity{Type: IDFQDN, Data: []byte("gw1.iot.example")}, Signer: pki.gw, Chain: [][]byte{pki.gwDER}}
	ini.Verifier = &sig.Verifier{Roots: pki.roots}
	return w, ini
}

// While the node fetches the revocation status the IKE_AUTH request stays
// unanswered; the initiator's retransmission is then processed afresh.
func TestRevocationPendingParksIKEAuth(t *testing.T) {
	online := &switchOnline{res: sig.OnlineResult{Status: sig.OnlinePending}}
	w, ini := certWire(t, online)
	acts := &Ready{}
	w.ini.Initiate(w.now, ini, acts)
	w.run(acts, true)
	if w.count(EventIKEEstablished) != 0 || w.count(EventIKEFailed) != 0 {
		t.Fatalf("parked exchange produced %+v", w.events)
	}
	if st := w.res.Stats(); st.RevocationParked != 1 || st.HalfOpen != 1 {
		t.Fatalf("responder stats %+v", st)
	}
	online.res = sig.OnlineResult{Status: sig.OnlineGood}
	w.now = w.now.Add(DefaultRetransmitTimeout)
	w.run(R(func(rd *Ready) { w.ini.Tick(w.now, rd) }), true)
	if w.count(EventIKEEstablished) != 2 || len(w.installs) != 2 {
		t.Fatalf("after the retransmission: %+v", w.events)
	}
	if online.calls != 2 {
		t.Errorf("online source asked %d times, want 2", online.calls)
	}
}

func TestRevocationOnlineRevokedOrUnavailableRefused(t *testing.T) {
	for _, res := range []sig.OnlineResult{
		{Status: sig.OnlineRevoked, Source: "ocsp"},
		{Status: sig.OnlineUnavailable},
	} {
		w, ini := certWire(t, &switchOnline{res: res})
		acts := &Ready{}
		w.ini.Initiate(w.now, ini, acts)
		w.run(acts, true)
		if w.count(EventIKEEstablished) != 0 {
			t.Fatalf("status %v: established", res.Status)
		}
		if n := w.res.Stats().Failed[AUTHENTICATION_FAILED]; n != 1 {
			t.Errorf("status %v: %d AUTHENTICATION_FAILED, want 1 (%+v)", res.Status, n, w.events)
		}
	}
}
