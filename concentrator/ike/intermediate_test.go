package ike

import (
	"bytes"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike/suite"
)

const pqProposal = "aes256gcm16-prfsha256-x25519-ke1_mlkem768"

// pqWire is a wire whose responder and initiator use proposals with
// additional key exchanges; it counts the IKE_INTERMEDIATE messages.
func pqWire(t *testing.T, resProps, iniProps []string) (*wire, Initiation, *int) {
	t.Helper()
	rcfg := responderConfig(t, 1)
	rcfg.IKEProposals = mustProposals(t, false, resProps...)
	w := newWire(t, rcfg)
	ini := pskInitiation(t)
	ini.IKEProposals = mustProposals(t, false, iniProps...)
	n := new(int)
	w.drop = func(_ bool, msg []byte) bool {
		if ExchangeType(msg[18]) == IKE_INTERMEDIATE {
			*n++
		}
		return false
	}
	return w, ini, n
}

func TestParseAddKEProposals(t *testing.T) {
	p, err := ParseProposal("aes256gcm16-prfsha256-x25519-ke1_mlkem768-ke1_none-ke2_mlkem1024", false, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.AddKEs[0]) != 2 || p.AddKEs[0][0] != suite.GroupMLKEM768 || p.AddKEs[0][1] != 0 ||
		len(p.AddKEs[1]) != 1 || p.AddKEs[1][0] != suite.GroupMLKEM1024 || !p.HasAddKE() {
		t.Fatalf("parsed %+v", p.AddKEs)
	}
	for _, bad := range []string{
		"aes256gcm16-prfsha256-x25519-ke8_mlkem768",   // no ADDKE8
		"aes256gcm16-prfsha256-x25519-ke1_mlkem512",   // unknown method
		"aes256gcm16-prfsha256-x25519-ke1_modp1024",   // weak
		"aes256gcm16-prfsha256-x25519-ke1_",           // empty
		"aes256gcm16-prfsha256-x25519-ke0_mlkem768",   // no ADDKE0
		"aes256gcm16-prfsha256-x25519-kex_mlkem768",   // not a number
		"aes256gcm16-prfsha256-x25519-ke1mlkem768",    // no separator
		"aes256gcm16-prfsha256-x25519-ke1_mlkem768xx", // trailing
	} {
		if _, err := ParseProposal(bad, false, false); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if _, err := ParseProposal("aes256gcm16-ke1_mlkem768", true, false); err == nil {
		t.Error("ESP proposal with an additional key exchange but no group accepted")
	}
	if esp, err := ParseProposal("aes256gcm16-x25519-ke1_mlkem768", true, false); err != nil || esp.AddKEs[0][0] != suite.GroupMLKEM768 {
		t.Errorf("ESP proposal with PFS and an additional key exchange: %+v, %v", esp.AddKEs, err)
	}
	// Rendered as transforms of types 6.., and back.
	prs := Proposals([]ProposalSpec{p}, ProtoIKE, nil, true)
	sel := SelectProposal([]ProposalSpec{p}, prs, ProtoIKE, true)
	if sel == nil || sel.AddKE[0] != suite.GroupMLKEM768 || sel.AddKE[1] != suite.GroupMLKEM1024 {
		t.Fatalf("selected %+v", sel)
	}
	if got := sel.String(); !bytes.Contains([]byte(got), []byte("/KE1_ML_KEM_768/KE2_ML_KEM_1024")) {
		t.Fatalf("String() = %q", got)
	}
}

// The hybrid handshake: X25519 in IKE_SA_INIT, ML-KEM-768 in one
// IKE_INTERMEDIATE exchange, both sides end up with the same keys.
func TestIntermediateMLKEMHandshake(t *testing.T) {
	w, ini, n := pqWire(t, []string{pqProposal}, []string{pqProposal})
	var frags int
	count := w.drop
	w.drop = func(toRes bool, msg []byte) bool {
		if PayloadType(msg[16]) == PayloadSKF {
			frags++
		}
		return count(toRes, msg)
	}
	spi := w.establish(t, ini)
	if *n < 2 {
		t.Fatalf("%d IKE_INTERMEDIATE messages, want a request and a response (or their fragments)", *n)
	}
	if frags == 0 {
		t.Fatal("the ML-KEM-768 KE payloads did not need fragmenting at 1248 octets")
	}
	isa, rsa := w.ini.SA(spi), w.res.SA(resSPI(w))
	for _, sa := range []*IKESA{isa, rsa} {
		if sa.Proposal().AddKE[0] != suite.GroupMLKEM768 {
			t.Fatalf("negotiated %v", sa.Proposal())
		}
	}
	iOut, _ := isa.skKeys(true)
	rIn, _ := rsa.skKeys(false)
	if !bytes.Equal(isa.skd(), rsa.skd()) || !bytes.Equal(iOut, rIn) {
		t.Fatal("keys differ after the additional key exchange")
	}
	w.paired(t, 1)
	if w.res.Stats().HalfOpen != 0 || w.res.Stats().HalfOpenBytes != 0 {
		t.Fatalf("half-open accounting left %d SAs, %d bytes", w.res.Stats().HalfOpen, w.res.Stats().HalfOpenBytes)
	}
	// The established SA works: rekey the CHILD SA, delete.
	w.run(R(func(rd *Ready) { w.ini.RekeyChild(w.now, spi, isa.children[0].InSPI, rd) }), true)
	w.paired(t, 1)
	w.run(R(func(rd *Ready) { w.ini.Delete(w.now, spi, rd) }), true)
	if w.ini.Len() != 0 || w.res.Len() != 0 {
		t.Fatal("not deleted")
	}
}

// Each additional key exchange changes the keys: the same handshake with
// the ML-KEM exchange's secret left out would not agree.
func TestIntermediateKeysDependOnEveryExchange(t *testing.T) {
	w, ini, n := pqWire(t, []string{"aes256gcm16-prfsha256-x25519-ke1_mlkem768-ke2_ecp256"},
		[]string{"aes256gcm16-prfsha256-x25519-ke1_mlkem768-ke2_ecp256"})
	acts := &Ready{}
	spi, _ := w.ini.Initiate(w.now, ini, acts)
	w.run(acts, true)
	if w.count(EventIKEEstablished) != 2 {
		t.Fatalf("not established: %+v", w.events)
	}
	if *n < 4 {
		t.Fatalf("%d IKE_INTERMEDIATE messages for two additional exchanges", *n)
	}
	isa := w.ini.SA(spi)
	if isa.inter.count != 2 || isa.Proposal().AddKE[1] != suite.Group19 {
		t.Fatalf("exchanges %d, proposal %v", isa.inter.count, isa.Proposal())
	}
	// A plain handshake with the same randomness derives other keys.
	w2, ini2, _ := pqWire(t, []string{"aes256gcm16-prfsha256-x25519"}, []string{"aes256gcm16-prfsha256-x25519"})
	acts = &Ready{}
	spi2, _ := w2.ini.Initiate(w2.now, ini2, acts)
	w2.run(acts, true)
	if bytes.Equal(w2.ini.SA(spi2).skd(), isa.skd()) {
		t.Fatal("SK_d unchanged by the additional key exchanges")
	}
}

// AUTH covers the IKE_INTERMEDIATE messages (IntAuth): a responder whose
// record of them differs refuses the initiator's AUTH.
func TestIntermediateAuthCoversExchanges(t *testing.T) {
	w, ini, _ := pqWire(t, []string{pqProposal}, []string{pqProposal})
	w.drop = func(toRes bool, msg []byte) bool {
		if toRes && ExchangeType(msg[18]) == IKE_AUTH {
			if sa := w.res.SA(resSPI(w)); sa != nil && sa.inter != nil {
				sa.inter.authI = append([]byte(nil), sa.inter.authI...)
				sa.inter.authI[0] ^= 1
			}
		}
		return false
	}
	acts := &Ready{}
	w.ini.Initiate(w.now, ini, acts)
	w.run(acts, true)
	if w.count(EventIKEEstablished) != 0 {
		t.Fatal("established although the IKE_INTERMEDIATE record differs")
	}
	if res, _ := failedWith(w, AUTHENTICATION_FAILED); !res {
		t.Fatalf("responder did not refuse the AUTH: %+v", w.events)
	}
}

// IntAuth does not depend on how the message travelled: fragmented or
// not, the receiver computes what the sender did.
func TestIntAuthDataFragmentedAndWhole(t *testing.T) {
	for _, prop := range []string{"aes256gcm16-prfsha256-x25519", "aes256-sha256-modp2048"} {
		sp := mustProposals(t, false, prop)
		sel := SelectProposal(sp, Proposals(sp, ProtoIKE, nil, true), ProtoIKE, true)
		c, err := suite.NewCipher(sel.Encr.ID, int(sel.Encr.KeyLen), sel.Integ)
		if err != nil {
			t.Fatal(err)
		}
		key, _ := c.Key(make([]byte, c.EncrKeyLen()), make([]byte, c.IntegKeyLen()))
		m := Message{SPIi: 1, SPIr: 2, Exchange: IKE_INTERMEDIATE, Flags: FlagInitiator, MessageID: 1,
			Payloads: []Payload{&KE{Group: suite.GroupMLKEM768, Data: bytes.Repeat([]byte{7}, 1184)}, &Notify{NotifyType: COOKIE2, Data: []byte{1, 2, 3}}}}
		want := intAuthOfMessage(&m)
		iv := func() []byte { return make([]byte, c.IVLen()) }
		whole, err := Decode(m.EncodeEncrypted(key, iv()))
		if err != nil {
			t.Fatal(err)
		}
		if err := whole.Decrypt(key); err != nil {
			t.Fatal(err)
		}
		if got := intAuthOfReceived(whole); !bytes.Equal(got, want) {
			t.Fatalf("%s: whole message: IntAuth data differs", prop)
		}
		sa := &IKESA{}
		var got []byte
		for _, f := range m.EncodeFragments(key, 500, iv) {
			fm, err := Decode(f)
			if err != nil {
				t.Fatal(err)
			}
			done, err := sa.reassemble(t0, nil, fm, key)
			if err != nil {
				t.Fatal(err)
			}
			if done {
				got = intAuthOfReceived(fm)
			}
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: fragmented message: IntAuth data differs", prop)
		}
	}
}

// Negotiation: a required additional exchange the peer does not offer is
// NO_PROPOSAL_CHOSEN; an optional one (ke1_none) falls back to a plain
// handshake without IKE_INTERMEDIATE, as with strongSwan 5.9.
func TestIntermediateNegotiation(t *testing.T) {
	cases := []struct {
		name       string
		res, ini   string
		ok         bool
		inter      bool
		wantAddKE0 uint16
	}{
		{"both", pqProposal, pqProposal, true, true, suite.GroupMLKEM768},
		{"responder requires, initiator plain", pqProposal, "aes256gcm16-prfsha256-x25519", false, false, 0},
		{"initiator requires, responder plain", "aes256gcm16-prfsha256-x25519", pqProposal, false, false, 0},
		{"responder optional, initiator plain", pqProposal + "-ke1_none", "aes256gcm16-prfsha256-x25519", true, false, 0},
		{"initiator optional, responder plain", "aes256gcm16-prfsha256-x25519", pqProposal + "-ke1_none", true, false, 0},
		{"both optional prefer ML-KEM", pqProposal + "-ke1_none", pqProposal + "-ke1_none", true, true, suite.GroupMLKEM768},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w, ini, n := pqWire(t, []string{tc.res}, []string{tc.ini})
			acts := &Ready{}
			spi, _ := w.ini.Initiate(w.now, ini, acts)
			w.run(acts, true)
			if got := w.count(EventIKEEstablished) == 2; got != tc.ok {
				t.Fatalf("established %v, want %v: %+v", got, tc.ok, w.events)
			}
			if (*n > 0) != tc.inter {
				t.Fatalf("%d IKE_INTERMEDIATE messages", *n)
			}
			if !tc.ok {
				if res, ini := failedWith(w, NO_PROPOSAL_CHOSEN); !res && !ini {
					t.Fatalf("no NO_PROPOSAL_CHOSEN: %+v", w.events)
				}
				return
			}
			if got := w.ini.SA(spi).Proposal().AddKE[0]; got != tc.wantAddKE0 {
				t.Fatalf("ADDKE1 = %d, want %d", got, tc.wantAddKE0)
			}
			w.paired(t, 1)
		})
	}
}

// A lost IKE_INTERMEDIATE response is retransmitted from the responder's
// cache (protected with the keys before the exchange).
func TestIntermediateRetransmission(t *testing.T) {
	w, ini, _ := pqWire(t, []string{pqProposal}, []string{pqProposal})
	dropped := false
	w.drop = func(toRes bool, msg []byte) bool {
		if !toRes && ExchangeType(msg[18]) == IKE_INTERMEDIATE && !dropped {
			dropped = true
			return true
		}
		return false
	}
	acts := &Ready{}
	w.ini.Initiate(w.now, ini, acts)
	w.run(acts, true)
	if w.count(EventIKEEstablished) != 0 || !dropped {
		t.Fatal("established despite the lost response")
	}
	w.drop = nil
	w.now = w.now.Add(3 * time.Second)
	w.run(R(func(rd *Ready) { w.ini.Tick(w.now, rd) }), true)
	if w.count(EventIKEEstablished) != 2 {
		t.Fatalf("not established after the retransmission: %+v", w.events)
	}
	if w.res.Stats().DuplicateRequests == 0 {
		t.Fatal("the responder did not answer from its cache")
	}
	w.paired(t, 1)
}

// The persisted state of a hybrid SA restores on another engine, keeps the
// negotiated transforms and carries on with the peer.
func TestIntermediateSnapshotRestore(t *testing.T) {
	w, ini, _ := pqWire(t, []string{pqProposal}, []string{pqProposal})
	acts := &Ready{}
	spi, _ := w.ini.Initiate(w.now, ini, acts)
	w.run(acts, true)
	if w.count(EventIKEEstablished) != 2 {
		t.Fatal("not established")
	}
	st, err := w.res.SA(resSPI(w)).Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if st.Proposal.AddKE[0] != suite.GroupMLKEM768 {
		t.Fatalf("snapshot proposal %v", st.Proposal.String())
	}
	rcfg := responderConfig(t, 9)
	rcfg.IKEProposals = mustProposals(t, false, pqProposal)
	res2, _ := NewEngine(rcfg)
	if _, err := res2.Restore(w.now, st, &Ready{}); err != nil {
		t.Fatal(err)
	}
	w.res = res2
	w.installs, w.removes, w.order, w.sides = nil, nil, nil, nil
	isa := w.ini.SA(spi)
	w.run(R(func(rd *Ready) { w.ini.RekeyChild(w.now, spi, isa.children[0].InSPI, rd) }), true)
	if w.res.Stats().ChildRekeys != 1 || w.ini.Stats().ChildRekeys != 1 {
		t.Fatalf("CHILD rekey over the restored SA: %+v", w.events)
	}
	if got := w.res.SA(resSPI(w)).Proposal().String(); !bytes.Contains([]byte(got), []byte("KE1_ML_KEM_768")) {
		t.Fatalf("restored proposal %q", got)
	}
}

// An IKE SA negotiated with additional key exchanges rekeys (either side
// starting) with them, in IKE_FOLLOWUP_KE (followup_test.go has more).
func TestIntermediateIKERekey(t *testing.T) {
	for _, byGateway := range []bool{true, false} {
		w, ini, _ := pqWire(t, []string{pqProposal}, []string{pqProposal})
		acts := &Ready{}
		spi, _ := w.ini.Initiate(w.now, ini, acts)
		w.run(acts, true)
		old := w.ini.SA(spi).skd()
		if byGateway {
			w.run(R(func(rd *Ready) { w.ini.RekeyIKE(w.now, spi, rd) }), true)
		} else {
			w.run(R(func(rd *Ready) { w.res.RekeyIKE(w.now, resSPI(w), rd) }), false)
		}
		if w.ini.Stats().IKERekeys != 1 || w.res.Stats().IKERekeys != 1 || w.ini.Len() != 1 || w.res.Len() != 1 {
			t.Fatalf("byGateway=%v: IKE rekey failed: %+v", byGateway, w.events)
		}
		var nsa *IKESA
		w.ini.Each(func(sa *IKESA) bool { nsa = sa; return false })
		if nsa.Proposal().AddKE[0] != suite.GroupMLKEM768 || bytes.Equal(nsa.skd(), old) {
			t.Fatalf("rekeyed SA: %v", nsa.Proposal())
		}
		w.paired(t, 1)
	}
}
