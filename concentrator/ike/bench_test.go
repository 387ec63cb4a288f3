package ike

import (
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike/sig"
	"github.com/ikefleet/ikefleet/concentrator/ike/suite"
)

// BenchmarkResponderHandshake measures what one complete IKE_SA_INIT +
// IKE_AUTH (with the first CHILD SA) costs the responder, driven in-process
// by our initiator, and reports it as handshakes per second per core (hs/s)
// beside the floor: the same cryptographic operations done directly, with
// no codec, state machine or allocation around them (floor-hs/s).
// ratio-to-floor = responder cost / floor cost (goal: <= 1.4).
func BenchmarkResponderHandshake(b *testing.B) {
	b.Run("x25519-aesgcm256-psk", func(b *testing.B) {
		rcfg := responderConfig(b, 1)
		rcfg.Rand = rand.Reader
		ini := pskInitiation(b)
		benchHandshake(b, rcfg, ini, func(n int) { floorPSK(b, n) })
	})
	b.Run("p256-aesgcm256-ecdsa", func(b *testing.B) {
		pki := newTestPKI(b)
		rcfg := responderConfig(b, 1)
		rcfg.Rand = rand.Reader
		rcfg.PSKs = nil
		rcfg.IKEProposals = mustProposals(b, false, "aes256gcm16-prfsha256-ecp256")
		rcfg.Local = Credentials{ID: concID, Signer: pki.conc, Chain: [][]byte{pki.concDER}}
		rcfg.Verifier = &sig.Verifier{Roots: pki.roots}
		ini := pskInitiation(b)
		ini.PSK = nil
		ini.IKEProposals = mustProposals(b, false, "aes256gcm16-prfsha256-ecp256")
		ini.Creds = Credentials{ID: Identity{Type: IDFQDN, Data: []byte("gw1.iot.example")}, Signer: pki.gw, Chain: [][]byte{pki.gwDER}}
		ini.Verifier = &sig.Verifier{Roots: pki.roots}
		benchHandshake(b, rcfg, ini, func(n int) { floorECDSA(b, pki, n) })
	})
}

func benchHandshake(b *testing.B, rcfg Config, ini Initiation, floor func(n int)) {
	res, err := NewEngine(rcfg)
	if err != nil {
		b.Fatal(err)
	}
	ie, err := NewEngine(Config{IKEProposals: ini.IKEProposals, Rand: rand.Reader})
	if err != nil {
		b.Fatal(err)
	}
	now := t0
	acts, racts := &Ready{}, &Ready{}
	deliver := func(to *Engine, from *Ready, toResponder bool) *Ready {
		out := &Ready{}
		for _, p := range from.Persist {
			if toResponder {
				ie.Committed(p.SPI, p.Version)
			} else {
				res.Committed(p.SPI, p.Version)
			}
		}
		for _, s := range from.Send {
			for _, m := range s.Messages {
				pkt := Packet{Local: s.Remote, Remote: s.Local, Data: m}
				if toResponder {
					b.StartTimer()
					to.Handle(now, pkt, out)
					b.StopTimer()
				} else {
					to.Handle(now, pkt, out)
				}
			}
		}
		return out
	}
	b.ReportAllocs()
	b.StopTimer()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var spi uint64
		acts.Reset()
		spi, _ = ie.Initiate(now, ini, acts)
		racts = deliver(res, acts, true) // IKE_SA_INIT request
		acts = deliver(ie, racts, false) // response -> IKE_AUTH request
		racts = deliver(res, acts, true) // IKE_AUTH request
		deliver(ie, racts, false)        // response
		if sa := ie.SA(spi); sa == nil || !sa.Established() {
			b.Fatal("handshake did not complete")
		}
		// Forget both sides' SAs so the tables do not grow with b.N.
		ie.remove(ie.SA(spi))
		for _, ev := range racts.Events {
			if ev.Kind == EventIKEEstablished {
				res.remove(res.SA(ev.SPIr))
			}
		}
	}
	elapsed := b.Elapsed()
	hs := float64(b.N) / elapsed.Seconds()
	// The floor, measured in the same run with as many iterations.
	start := time.Now()
	floor(b.N)
	fl := float64(b.N) / time.Since(start).Seconds()
	b.ReportMetric(hs, "hs/s")
	b.ReportMetric(fl, "floor-hs/s")
	b.ReportMetric(fl/hs, "ratio-to-floor")
}

// symmetricFloor is the responder's symmetric work in one handshake:
// SKEYSEED, the IKE and CHILD key derivation, opening IKE_AUTH and sealing
// its response.
func symmetricFloor(b *testing.B, shared []byte, authLen, respLen int) {
	prf, _ := suite.NewPRF(suite.PRFHMACSHA256)
	c, _ := suite.NewCipher(suite.EncrAESGCM16, 256, 0)
	ni, nr := make([]byte, 32), make([]byte, 32)
	rand.Read(nr)
	skeyseed := suite.SKEYSEED(prf, ni, nr, shared)
	k := suite.DeriveIKEKeys(prf, skeyseed, ni, nr, 1, 2, c)
	in, _ := c.Key(k.SKei, k.SKai)
	out, _ := c.Key(k.SKer, k.SKar)
	iv := make([]byte, 8)
	rand.Read(iv)
	assoc := make([]byte, 32)
	sealed := in.Seal(nil, iv, assoc, make([]byte, authLen))
	if _, err := in.Open(nil, assoc, sealed[:]); err != nil {
		b.Fatal(err)
	}
	out.Seal(nil, iv, assoc, make([]byte, respLen))
	suite.ChildKeys(prf, k.SKd, nil, ni, nr, 72)
}

func floorPSK(b *testing.B, n int) {
	// The key exchange as the suite does it (its X25519 is faster than
	// crypto/ecdh's: x25519.go), so that the floor is the fastest way we
	// know.
	peer, _ := suite.GenerateKeyExchange(suite.Group31, rand.Reader)
	prf, _ := suite.NewPRF(suite.PRFHMACSHA256)
	psk := testPSK
	octets := make([]byte, 300)
	for i := 0; i < n; i++ {
		priv, _ := suite.GenerateKeyExchange(suite.Group31, rand.Reader)
		_ = priv.Public()
		shared, _ := priv.SharedSecret(peer.Public())
		symmetricFloor(b, shared, 250, 250)
		// verify the peer's AUTH and compute ours: prf(prf(PSK, pad), octets) with prf(SK_p, ID) each.
		for j := 0; j < 2; j++ {
			prf.Sum(octets[:32], octets[:20])
			prf.Sum(prf.Sum(psk, keyPad), octets)
		}
	}
}

func floorECDSA(b *testing.B, pki *testPKI, n int) {
	peer, _ := ecdh.P256().GenerateKey(rand.Reader)
	gwCert, _ := x509.ParseCertificate(pki.gwDER)
	ca := caKey(b, pki)
	prf, _ := suite.NewPRF(suite.PRFHMACSHA256)
	octets := make([]byte, 300)
	digest := sha256.Sum256(octets)
	peerSig, _ := ecdsa.SignASN1(rand.Reader, pki.gw, digest[:])
	tbs := sha256.Sum256(gwCert.RawTBSCertificate)
	for i := 0; i < n; i++ {
		priv, _ := ecdh.P256().GenerateKey(rand.Reader)
		_ = priv.PublicKey().Bytes()
		shared, _ := priv.ECDH(peer.PublicKey())
		symmetricFloor(b, shared, 800, 800)
		prf.Sum(octets[:32], octets[:20])
		prf.Sum(octets[:32], octets[:20])
		// the chain: CA signature on the gateway's certificate; the gateway's AUTH; our AUTH.
		ecdsa.VerifyASN1(ca, tbs[:], gwCert.Signature)
		d := sha256.Sum256(octets)
		ecdsa.VerifyASN1(&pki.gw.PublicKey, d[:], peerSig)
		ecdsa.SignASN1(rand.Reader, pki.conc, d[:])
	}
}

func caKey(b *testing.B, pki *testPKI) *ecdsa.PublicKey {
	gw, _ := x509.ParseCertificate(pki.gwDER)
	chains, err := gw.Verify(x509.VerifyOptions{Roots: pki.roots, CurrentTime: t0, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	if err != nil {
		b.Fatal(err)
	}
	return chains[0][1].PublicKey.(*ecdsa.PublicKey)
}

// BenchmarkLivenessCheck measures a liveness check (RFC 7296 §2.4: an
// empty INFORMATIONAL request after DPDDelay without a message from the
// peer, and its answer) between two engines in-process: the responder's
// timer and its sealing the request and opening the answer, the
// gateway's opening the request and sealing the answer (both sides'
// work: the responder's is about half). A node holding 100,000 idle
// gateways makes about 1,700 checks a second at the default 60 s; their
// garbage (B/op) is what its collector marks a large heap for.
func BenchmarkLivenessCheck(b *testing.B) {
	rcfg := responderConfig(b, 1)
	rcfg.Rand = rand.Reader
	rcfg.DPDDelay = time.Minute
	res, err := NewEngine(rcfg)
	if err != nil {
		b.Fatal(err)
	}
	ini := pskInitiation(b)
	ie, err := NewEngine(Config{IKEProposals: ini.IKEProposals, Rand: rand.Reader})
	if err != nil {
		b.Fatal(err)
	}
	now := t0
	// deliver hands rd's messages from engine from to engine to, and
	// commits what from persisted (no store here).
	deliver := func(to, from *Engine, rd, out *Ready) *Ready {
		out.Reset()
		for _, p := range rd.Persist {
			from.Committed(p.SPI, p.Version)
		}
		for _, s := range rd.Send {
			for _, m := range s.Messages {
				to.Handle(now, Packet{Local: s.Remote, Remote: s.Local, Data: m}, out)
			}
		}
		return out
	}
	rd, out := &Ready{}, &Ready{}
	spi, err := ie.Initiate(now, ini, rd)
	if err != nil {
		b.Fatal(err)
	}
	for to, from := res, ie; len(rd.Send) > 0 || len(rd.Persist) > 0; to, from = from, to {
		rd, out = deliver(to, from, rd, out), rd
	}
	if sa := ie.SA(spi); sa == nil || !sa.Established() {
		b.Fatal("handshake did not complete")
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		now = now.Add(rcfg.DPDDelay + time.Second)
		rd.Reset()
		res.Tick(now, rd)
		if len(rd.Send) != 1 {
			b.Fatalf("%d sends at the liveness check's time, want its request", len(rd.Send))
		}
		answer := deliver(ie, res, rd, out)
		rd = deliver(res, ie, answer, rd)
		if len(rd.Send) != 0 {
			b.Fatal("the responder answered the check's answer")
		}
	}
	b.StopTimer()
	if sa := ie.SA(spi); sa == nil || !sa.Established() {
		b.Fatal("the gateway's SA did not survive the checks")
	}
}
