package ike

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike/suite"
)

const pqESP = "aes256gcm16-x25519-ke1_mlkem768"

// followupWire is a wire whose both sides use hybrid IKE and ESP
// proposals (ESP with PFS and ML-KEM-768), established; it counts the
// IKE_FOLLOWUP_KE messages each way.
func followupWire(t *testing.T, esp string) (*wire, uint64, *[2]int) {
	t.Helper()
	w, ini, _ := pqWire(t, []string{pqProposal}, []string{pqProposal})
	w.res.cfg.ESPProposals = mustProposals(t, true, esp)
	ini.ESPProposals = mustProposals(t, true, esp)
	spi := w.establish(t, ini)
	n := new([2]int) // [0]: requests, [1]: responses
	w.drop = func(toRes bool, msg []byte) bool {
		if ExchangeType(msg[18]) == IKE_FOLLOWUP_KE && (PayloadType(msg[16]) == PayloadSK || isFirstFragment(msg)) {
			if toRes {
				n[0]++
			} else {
				n[1]++
			}
		}
		return false
	}
	return w, spi, n
}

// exchangeCapture records, from the initiator of a rekey, what the key
// derivation takes: SK(0), the nonces and the additional exchange's
// secret, recomputed from its decapsulation key and the responder's
// ciphertext in the IKE_FOLLOWUP_KE response.
type exchangeCapture struct {
	sk0, ni, nr, sk1 []byte
	frag             IKESA
	done             bool
}

func (c *exchangeCapture) hook(t *testing.T, w *wire, spi uint64, next func(bool, []byte) bool) func(bool, []byte) bool {
	return func(toRes bool, msg []byte) bool {
		sa := w.ini.SA(spi)
		if !toRes && ExchangeType(msg[18]) == IKE_FOLLOWUP_KE && !c.done && sa != nil && sa.req != nil && sa.req.rekey != nil {
			rk := sa.req.rekey
			m, err := Decode(msg)
			if err != nil {
				t.Fatal(err)
			}
			key, _ := sa.cipher.Key(sa.skKeys(false))
			if m.skf != nil {
				done, err := c.frag.reassemble(w.now, nil, m, key)
				if err != nil {
					t.Fatal(err)
				}
				if !done {
					return next(toRes, msg)
				}
			} else if err := m.Decrypt(key); err != nil {
				t.Fatal(err)
			}
			ke := collectExchange(m.Payloads).ke
			if ke == nil {
				t.Fatalf("IKE_FOLLOWUP_KE response without KE: %v", m.Payloads)
			}
			sk1, err := rk.addKX.SharedSecret(ke.Data)
			if err != nil {
				t.Fatal(err)
			}
			c.sk0, c.ni, c.nr, c.sk1 = bytes.Clone(rk.secrets[0]), bytes.Clone(rk.ni), bytes.Clone(rk.nr), sk1
			c.done = true
		}
		return next(toRes, msg)
	}
}

// The RFC 9370 §2.2.4 formulas, written out with crypto/hmac: the
// additional secrets follow the nonces.
func TestFollowupKeyDerivationKnownAnswer(t *testing.T) {
	p, _ := suite.NewPRF(suite.PRFHMACSHA256)
	skd := bytes.Repeat([]byte{0x11}, 32)
	sk0, sk1, sk2 := bytes.Repeat([]byte{0x22}, 32), bytes.Repeat([]byte{0x33}, 32), bytes.Repeat([]byte{0x44}, 32)
	ni, nr := bytes.Repeat([]byte{0x55}, 32), bytes.Repeat([]byte{0x66}, 32)
	hm := func(key []byte, parts ...[]byte) []byte {
		m := hmac.New(sha256.New, key)
		for _, x := range parts {
			m.Write(x)
		}
		return m.Sum(nil)
	}
	want := hm(skd, sk0, ni, nr, sk1, sk2)
	if got := suite.RekeySKEYSEED(p, skd, sk0, ni, nr, sk1, sk2); !bytes.Equal(got, want) {
		t.Fatalf("SKEYSEED = %x, want prf(SK_d, SK(0) | Ni | Nr | SK(1) | SK(2)) = %x", got, want)
	}
	if bytes.Equal(suite.RekeySKEYSEED(p, skd, sk0, ni, nr), want) {
		t.Fatal("SKEYSEED does not depend on the additional secrets")
	}
	// prf+ over the same seed: T1 = prf(K, S | 1), T2 = prf(K, T1 | S | 2).
	seed := bytes.Join([][]byte{sk0, ni, nr, sk1, sk2}, nil)
	t1 := hm(skd, seed, []byte{1})
	t2 := hm(skd, t1, seed, []byte{2})
	if got := suite.ChildKeys(p, skd, sk0, ni, nr, 64, sk1, sk2); !bytes.Equal(got, append(t1, t2...)) {
		t.Fatalf("KEYMAT = %x, want prf+(SK_d, SK(0) | Ni | Nr | SK(1) | SK(2))", got)
	}
}

// An IKE SA negotiated with ML-KEM rekeys (either side starting) with a
// fresh ML-KEM exchange in IKE_FOLLOWUP_KE: both sides derive the same
// keys, and they are those of RFC 9370's formula, which the ML-KEM secret
// changes.
func TestFollowupIKERekey(t *testing.T) {
	for _, byGateway := range []bool{true, false} {
		w, spi, n := followupWire(t, "aes256gcm16")
		oldIni, oldRes := w.ini.SA(spi), w.res.SA(resSPI(w))
		oldSKd := bytes.Clone(oldIni.skd())
		var cap exchangeCapture
		if byGateway {
			w.drop = cap.hook(t, w, spi, w.drop)
			w.run(R(func(rd *Ready) { w.ini.RekeyIKE(w.now, spi, rd) }), true)
		} else {
			// The concentrator initiates: capture on its side.
			w.ini, w.res = w.res, w.ini // the capture reads the rekey's initiator
			w.drop = cap.hook(t, w, oldRes.localSPI(), func(toRes bool, msg []byte) bool { return false })
			w.ini, w.res = w.res, w.ini
			inner := w.drop
			w.drop = func(toRes bool, msg []byte) bool {
				if ExchangeType(msg[18]) == IKE_FOLLOWUP_KE && (PayloadType(msg[16]) == PayloadSK || isFirstFragment(msg)) {
					n[0]++
				}
				// The hook's directions are from the rekey initiator's view.
				w.ini, w.res = w.res, w.ini
				defer func() { w.ini, w.res = w.res, w.ini }()
				return inner(!toRes, msg)
			}
			w.run(R(func(rd *Ready) { w.res.RekeyIKE(w.now, resSPI(w), rd) }), false)
		}
		if w.ini.Stats().IKERekeys != 1 || w.res.Stats().IKERekeys != 1 || w.ini.Len() != 1 || w.res.Len() != 1 {
			t.Fatalf("byGateway=%v: IKE rekey failed: %+v", byGateway, w.events)
		}
		if n[0] == 0 || !cap.done {
			t.Fatalf("byGateway=%v: no IKE_FOLLOWUP_KE exchange (%d messages)", byGateway, n[0])
		}
		var nini, nres *IKESA
		w.ini.Each(func(sa *IKESA) bool { nini = sa; return false })
		w.res.Each(func(sa *IKESA) bool { nres = sa; return false })
		if nini == oldIni || nres == oldRes || nini.Proposal().AddKE[0] != suite.GroupMLKEM768 {
			t.Fatalf("byGateway=%v: rekeyed SA %v", byGateway, nini.Proposal())
		}
		iOut, _ := nini.skKeys(true)
		iIn, _ := nini.skKeys(false)
		rOut, _ := nres.skKeys(true)
		rIn, _ := nres.skKeys(false)
		if !bytes.Equal(nini.skd(), nres.skd()) || !bytes.Equal(iOut, rIn) || !bytes.Equal(iIn, rOut) {
			t.Fatalf("byGateway=%v: the two sides derived different keys", byGateway)
		}
		// The RFC's formula with the captured inputs.
		prf, _ := suite.NewPRF(suite.PRFHMACSHA256)
		ciph, _ := suite.NewCipher(nini.prop.Encr.ID, int(nini.prop.Encr.KeyLen), nini.prop.Integ)
		want := suite.DeriveIKEKeys(prf, suite.RekeySKEYSEED(prf, oldSKd, cap.sk0, cap.ni, cap.nr, cap.sk1), cap.ni, cap.nr, nini.SPIi, nini.SPIr, ciph)
		if !bytes.Equal(nini.skd(), want.SKd) {
			t.Fatalf("byGateway=%v: SK_d is not prf+(prf(SK_d, SK(0) | Ni | Nr | SK(1)), ...)", byGateway)
		}
		without := suite.DeriveIKEKeys(prf, suite.RekeySKEYSEED(prf, oldSKd, cap.sk0, cap.ni, cap.nr), cap.ni, cap.nr, nini.SPIi, nini.SPIr, ciph)
		if bytes.Equal(nini.skd(), without.SKd) {
			t.Fatalf("byGateway=%v: the ML-KEM secret did not go into the keys", byGateway)
		}
		w.paired(t, 1)
		// The successor works: CHILD rekeys over it, each side starting
		// one (the gateway's follows its Initiation's proposals whoever
		// rekeyed the IKE SA).
		w.drop = nil
		w.run(R(func(rd *Ready) { w.ini.RekeyChild(w.now, nini.localSPI(), nini.children[0].InSPI, rd) }), true)
		w.paired(t, 1)
		ini, _ := w.live()
		for in := range ini {
			w.run(R(func(rd *Ready) { w.res.RekeyChild(w.now, nres.localSPI(), w.ini.inSPIs[in].childByIn(in).OutSPI, rd) }), false)
		}
		if w.ini.Stats().ChildRekeys != 2 {
			t.Fatalf("byGateway=%v: CHILD rekey over the successor: %+v", byGateway, w.events)
		}
		w.paired(t, 1)
	}
}

// CHILD SAs with an ESP proposal "x25519-ke1_mlkem768" rekey with a
// CREATE_CHILD_SA and one IKE_FOLLOWUP_KE, either side starting; the keys
// follow RFC 9370's KEYMAT formula.
func TestFollowupChildRekey(t *testing.T) {
	for _, byGateway := range []bool{true, false} {
		w, spi, n := followupWire(t, pqESP)
		isa := w.ini.SA(spi)
		var cap exchangeCapture
		if byGateway {
			w.drop = cap.hook(t, w, spi, w.drop)
			w.run(R(func(rd *Ready) { w.ini.RekeyChild(w.now, spi, isa.children[0].InSPI, rd) }), true)
		} else {
			rsa := w.res.SA(resSPI(w))
			w.run(R(func(rd *Ready) { w.res.RekeyChild(w.now, resSPI(w), rsa.children[0].InSPI, rd) }), false)
		}
		if w.ini.Stats().ChildRekeys != 1 || w.res.Stats().ChildRekeys != 1 {
			t.Fatalf("byGateway=%v: CHILD rekey failed: %+v", byGateway, w.events)
		}
		if n[0] != 1 || n[1] != 1 {
			t.Fatalf("byGateway=%v: %d IKE_FOLLOWUP_KE requests, %d responses, want 1 each", byGateway, n[0], n[1])
		}
		w.paired(t, 1)
		ini, _ := w.live()
		var c *ChildSA
		for _, x := range ini {
			c = x
		}
		if c.Proposal.AddKE[0] != suite.GroupMLKEM768 {
			t.Fatalf("byGateway=%v: CHILD proposal %v", byGateway, c.Proposal.String())
		}
		if byGateway {
			prf, _ := suite.NewPRF(suite.PRFHMACSHA256)
			km := suite.ChildKeys(prf, isa.skd(), cap.sk0, cap.ni, cap.nr, 2*36, cap.sk1)
			if !bytes.Equal(c.KeyOut().Encr, km[:36]) || !bytes.Equal(c.KeyIn().Encr, km[36:]) {
				t.Fatal("CHILD keys are not KEYMAT = prf+(SK_d, SK(0) | Ni | Nr | SK(1))")
			}
			km = suite.ChildKeys(prf, isa.skd(), cap.sk0, cap.ni, cap.nr, 2*36)
			if bytes.Equal(c.KeyOut().Encr, km[:36]) {
				t.Fatal("the ML-KEM secret did not go into the CHILD keys")
			}
		}
		// Message IDs: both sides agree on what comes next.
		rsa := w.res.SA(resSPI(w))
		if isa.nextOut != rsa.nextIn || rsa.nextOut != isa.nextIn {
			t.Fatalf("message IDs: initiator out %d in %d, responder in %d out %d", isa.nextOut, isa.nextIn, rsa.nextIn, rsa.nextOut)
		}
		// The rekey events are the usual ones (metrics tell who started a
		// rekey by their reason); their CHILD SA names the ML-KEM exchange.
		found := 0
		for _, ev := range w.events {
			if ev.Kind == EventChildRekeyed && (ev.Reason == "rekeyed by us" || ev.Reason == "rekeyed by peer") &&
				bytes.Contains([]byte(ev.Child.Proposal.String()), []byte("KE1_ML_KEM_768")) {
				found++
			}
		}
		if found != 2 {
			t.Fatalf("%d rekey events with the CHILD SA's ML-KEM exchange, want 2: %+v", found, w.events)
		}
	}
}

// A responder with a plain ESP proposal answers a CHILD rekey that offers
// ML-KEM optionally without IKE_FOLLOWUP_KE; an initiator offering only a
// plain proposal to a hybrid responder whose IKE SA used ML-KEM gets no
// additional exchange either.
func TestFollowupChildRekeyNegotiation(t *testing.T) {
	w, spi, n := followupWire(t, pqESP+"-ke1_none")
	w.res.cfg.ESPProposals = mustProposals(t, true, "aes256gcm16-x25519")
	isa := w.ini.SA(spi)
	w.run(R(func(rd *Ready) { w.ini.RekeyChild(w.now, spi, isa.children[0].InSPI, rd) }), true)
	if w.ini.Stats().ChildRekeys != 1 || n[0] != 0 {
		t.Fatalf("rekey %d, %d IKE_FOLLOWUP_KE", w.ini.Stats().ChildRekeys, n[0])
	}
	w.paired(t, 1)
	// pfsSpecs: a responder whose ESP proposal has no group takes the IKE
	// SA's group and, optionally, its ML-KEM.
	w.res.cfg.ESPProposals = mustProposals(t, true, "aes256gcm16")
	ini, _ := w.live()
	for in := range ini {
		w.run(R(func(rd *Ready) { w.ini.RekeyChild(w.now, spi, in, rd) }), true)
	}
	if w.ini.Stats().ChildRekeys != 2 || n[0] != 1 {
		t.Fatalf("rekey %d, %d IKE_FOLLOWUP_KE", w.ini.Stats().ChildRekeys, n[0])
	}
	w.paired(t, 1)
}

// A lost IKE_FOLLOWUP_KE response: the retransmitted request is answered
// from the responder's cache and the rekey completes once.
func TestFollowupRetransmission(t *testing.T) {
	w, spi, _ := followupWire(t, pqESP)
	isa := w.ini.SA(spi)
	dropped := false
	w.drop = func(toRes bool, msg []byte) bool {
		if !toRes && ExchangeType(msg[18]) == IKE_FOLLOWUP_KE && !dropped {
			dropped = true
			return true
		}
		return false
	}
	w.run(R(func(rd *Ready) { w.ini.RekeyChild(w.now, spi, isa.children[0].InSPI, rd) }), true)
	if !dropped || w.ini.Stats().ChildRekeys != 0 || w.res.Stats().ChildRekeys != 1 {
		t.Fatalf("rekeys: initiator %d, responder %d", w.ini.Stats().ChildRekeys, w.res.Stats().ChildRekeys)
	}
	w.now = w.now.Add(3 * time.Second)
	w.run(R(func(rd *Ready) { w.ini.Tick(w.now, rd) }), true)
	if w.ini.Stats().ChildRekeys != 1 || w.res.Stats().ChildRekeys != 1 {
		t.Fatalf("after the retransmission: initiator %d, responder %d: %+v", w.ini.Stats().ChildRekeys, w.res.Stats().ChildRekeys, w.events)
	}
	if w.res.Stats().DuplicateRequests == 0 || w.ini.Stats().Retransmits == 0 {
		t.Fatal("the responder did not answer the retransmission from its cache")
	}
	w.paired(t, 1)
}

// The peer does not continue in time: the responder forgets the exchange
// (and the inbound SPI it allotted); the late IKE_FOLLOWUP_KE is answered
// STATE_NOT_FOUND, the initiator keeps the old CHILD SA and its next
// attempt succeeds. The IKE SA is unharmed.
func TestFollowupTimeoutStateNotFound(t *testing.T) {
	w, spi, _ := followupWire(t, pqESP)
	isa := w.ini.SA(spi)
	hold := true
	w.drop = func(toRes bool, msg []byte) bool {
		return hold && toRes && ExchangeType(msg[18]) == IKE_FOLLOWUP_KE
	}
	w.run(R(func(rd *Ready) { w.ini.RekeyChild(w.now, spi, isa.children[0].InSPI, rd) }), true)
	rsa := w.res.SA(resSPI(w))
	if len(rsa.followups) != 1 || len(w.res.inSPIs) != 2 {
		t.Fatalf("responder: %d open exchanges, %d inbound SPIs", len(rsa.followups), len(w.res.inSPIs))
	}
	w.now = w.now.Add(followupTimeout)
	w.run(R(func(rd *Ready) { w.res.Tick(w.now, rd) }), false)
	if len(rsa.followups) != 0 || len(w.res.inSPIs) != 1 {
		t.Fatalf("responder kept the exchange: %d open, %d inbound SPIs", len(rsa.followups), len(w.res.inSPIs))
	}
	hold = false
	w.run(R(func(rd *Ready) { w.ini.Tick(w.now, rd) }), true) // the retransmission
	var refused bool
	for _, ev := range w.events {
		refused = refused || ev.Kind == EventChildFailed && ev.Initiator && ev.Notify == STATE_NOT_FOUND
	}
	if !refused || w.ini.Stats().ChildRekeys != 0 || w.res.Stats().ChildRekeys != 0 {
		t.Fatalf("no STATE_NOT_FOUND failure: %+v", w.events)
	}
	if len(w.ini.inSPIs) != 1 || !isa.Established() || !rsa.Established() {
		t.Fatalf("after the failure: %d inbound SPIs on the initiator, SAs %v/%v", len(w.ini.inSPIs), isa.State(), rsa.State())
	}
	w.paired(t, 1)
	// Tried again later, and this time it goes through.
	w.now = w.now.Add(e2eRetry(w))
	w.run(R(func(rd *Ready) { w.ini.Tick(w.now, rd) }), true)
	if w.ini.Stats().ChildRekeys != 1 || w.res.Stats().ChildRekeys != 1 {
		t.Fatalf("the retried rekey: %+v", w.events)
	}
	w.paired(t, 1)
}

func e2eRetry(w *wire) time.Duration { return w.ini.cfg.RetransmitTimeout*16 + time.Second }

// The responder restarts (or the SA moves to another node) between the
// CREATE_CHILD_SA and the IKE_FOLLOWUP_KE: the restored SA takes the
// request with the message ID it expects (the answer persisted it) and
// answers STATE_NOT_FOUND; the IKE SA lives on and the next rekey works.
func TestFollowupResponderRestored(t *testing.T) {
	for _, ikeRekey := range []bool{false, true} {
		w, spi, _ := followupWire(t, pqESP)
		isa := w.ini.SA(spi)
		hold := true
		w.drop = func(toRes bool, msg []byte) bool {
			return hold && toRes && ExchangeType(msg[18]) == IKE_FOLLOWUP_KE
		}
		w.persists = nil
		if ikeRekey {
			w.run(R(func(rd *Ready) { w.ini.RekeyIKE(w.now, spi, rd) }), true)
		} else {
			w.run(R(func(rd *Ready) { w.ini.RekeyChild(w.now, spi, isa.children[0].InSPI, rd) }), true)
		}
		if len(w.persists) == 0 || w.persists[len(w.persists)-1].Kind != PersistReserved {
			t.Fatalf("ikeRekey=%v: the answer persisted nothing: %+v", ikeRekey, w.persists)
		}
		st := *w.persists[len(w.persists)-1].State
		if st.NextIn != isa.nextOut-1 {
			t.Fatalf("ikeRekey=%v: persisted next ID %d, the IKE_FOLLOWUP_KE has %d", ikeRekey, st.NextIn, isa.nextOut-1)
		}
		rcfg := w.res.cfg
		rcfg.Rand = newDetRand(77)
		res2, err := NewEngine(rcfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := res2.Restore(w.now, st, &Ready{}); err != nil {
			t.Fatal(err)
		}
		w.res = res2
		w.installs, w.removes, w.order, w.sides = nil, nil, nil, nil
		hold = false
		w.now = w.now.Add(3 * time.Second)
		w.run(R(func(rd *Ready) { w.ini.Tick(w.now, rd) }), true)
		var refused bool
		for _, ev := range w.events {
			refused = refused || (ev.Kind == EventChildFailed || ev.Kind == EventIKEFailed) && ev.Initiator && ev.Notify == STATE_NOT_FOUND
		}
		if !refused || !isa.Established() {
			t.Fatalf("ikeRekey=%v: no STATE_NOT_FOUND, or the IKE SA is gone (%v): %+v", ikeRekey, isa.State(), w.events)
		}
		// The next attempt over the restored SA.
		if ikeRekey {
			w.run(R(func(rd *Ready) { w.ini.RekeyIKE(w.now, spi, rd) }), true)
			if w.ini.Stats().IKERekeys != 1 || res2.Stats().IKERekeys != 1 {
				t.Fatalf("IKE rekey after the restore: %+v", w.events)
			}
			continue
		}
		w.run(R(func(rd *Ready) { w.ini.RekeyChild(w.now, spi, isa.children[0].InSPI, rd) }), true)
		if w.ini.Stats().ChildRekeys != 1 || res2.Stats().ChildRekeys != 1 {
			t.Fatalf("CHILD rekey after the restore: %+v", w.events)
		}
	}
}

// Both sides rekey the same CHILD SA at once, each exchange with
// IKE_FOLLOWUP_KE: the responder refuses the one that collides with its
// own (TEMPORARY_FAILURE); one rekey completes, the CHILD SAs stay
// paired, and the refused side's later attempt (of the new SA) succeeds.
func TestFollowupSimultaneousChildRekey(t *testing.T) {
	w, spi, _ := followupWire(t, pqESP)
	isa, rsa := w.ini.SA(spi), w.res.SA(resSPI(w))
	w.runHops(
		hop{R(func(rd *Ready) { w.ini.RekeyChild(w.now, spi, isa.children[0].InSPI, rd) }), true},
		hop{R(func(rd *Ready) { w.res.RekeyChild(w.now, resSPI(w), rsa.children[0].InSPI, rd) }), false},
	)
	var refused int
	for _, ev := range w.events {
		if ev.Kind == EventChildFailed && ev.Notify == TEMPORARY_FAILURE {
			refused++
		}
	}
	if refused == 0 {
		t.Fatalf("no TEMPORARY_FAILURE: %+v", w.events)
	}
	// Each side retries after a random delay; the first retry goes
	// through (the other side's rekey of the new SA is not due).
	for i := 0; i < 32 && w.ini.Stats().ChildRekeys == 0; i++ {
		w.now = w.now.Add(w.ini.cfg.RetransmitTimeout)
		w.runHops(hop{R(func(rd *Ready) { w.ini.Tick(w.now, rd) }), true}, hop{R(func(rd *Ready) { w.res.Tick(w.now, rd) }), false})
	}
	if w.ini.Stats().ChildRekeys != 1 || w.res.Stats().ChildRekeys != 1 {
		t.Fatalf("rekeys %d/%d: %+v", w.ini.Stats().ChildRekeys, w.res.Stats().ChildRekeys, w.events)
	}
	w.paired(t, 1)
}

// A responder that cannot link an IKE_FOLLOWUP_KE answers STATE_NOT_FOUND;
// one without the notify, INVALID_SYNTAX; neither harms the IKE SA.
func TestFollowupUnlinkedRequest(t *testing.T) {
	w, spi, _ := followupWire(t, pqESP)
	isa := w.ini.SA(spi)
	for _, tc := range []struct {
		payloads []Payload
		want     NotifyType
	}{
		{[]Payload{&KE{Group: suite.GroupMLKEM768, Data: make([]byte, 1184)}, &Notify{NotifyType: ADDITIONAL_KEY_EXCHANGE, Data: []byte("nolink")}}, STATE_NOT_FOUND},
		{[]Payload{&KE{Group: suite.GroupMLKEM768, Data: make([]byte, 1184)}}, INVALID_SYNTAX},
	} {
		var got NotifyType
		w.drop = func(toRes bool, msg []byte) bool {
			if !toRes && ExchangeType(msg[18]) == IKE_FOLLOWUP_KE {
				m, _ := Decode(msg)
				key, _ := isa.cipher.Key(isa.skKeys(false))
				if m != nil && m.Decrypt(key) == nil {
					if n := firstError(m.Payloads); n != nil {
						got = n.NotifyType
					}
				}
			}
			return false
		}
		w.run(R(func(rd *Ready) {
			w.ini.begin(w.now)
			isa.request(w.now, w.ini, IKE_FOLLOWUP_KE, tc.payloads, rd)
		}), true)
		if got != tc.want {
			t.Fatalf("answered %v, want %v", got, tc.want)
		}
		if !w.res.SA(resSPI(w)).Established() || w.ini.SA(spi) == nil {
			t.Fatal("the IKE SA did not survive")
		}
	}
}
