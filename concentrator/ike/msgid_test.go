package ike

import (
	"testing"
	"time"
)

// restoreFresh snapshots the responder's SA, lets more happen, and
// restores the snapshot into a fresh engine that replaces the responder.
func restoreFresh(t *testing.T, w *wire, st SAState, rcfg Config) *IKESA {
	t.Helper()
	fresh, err := NewEngine(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	w.res = fresh
	rd := &Ready{}
	sa, err := fresh.Restore(w.now, st, rd)
	if err != nil {
		t.Fatal(err)
	}
	w.run(rd, false)
	return sa
}

// sentIDs decodes the message IDs of our requests in a batch.
func sentIDs(rd *Ready) []uint32 {
	var ids []uint32
	for _, s := range rd.Send {
		for _, m := range s.Messages {
			if h, err := DecodeHeader(m); err == nil && h.Flags&FlagResponse == 0 {
				ids = append(ids, h.MessageID)
			}
		}
	}
	return ids
}

// Our request IDs are reserved ahead: a request whose ID reaches the
// committed reservation goes out in a batch that writes a new one first.
func TestMessageIDReservation(t *testing.T) {
	rcfg := responderConfig(t, 1)
	rcfg.MessageIDBlock = 3
	w, _ := establish(t, rcfg)
	rsa := w.res.SA(resSPI(w))
	if p := w.persists[0]; p.State.NextOutReserved != 3 || p.State.NextOut != 0 {
		t.Fatalf("first write reserves %d from %d, want 3 from 0", p.State.NextOutReserved, p.State.NextOut)
	}
	committed := uint32(3)
	writes := 0
	for i := 0; i < 10; i++ {
		rd := R(func(rd *Ready) { rsa.request(w.now, w.res, INFORMATIONAL, nil, rd) })
		ids := sentIDs(rd)
		if len(ids) != 1 || ids[0] != uint32(i) {
			t.Fatalf("request %d went out with IDs %v", i, ids)
		}
		if len(rd.Persist) > 0 {
			writes++
			r := rd.Persist[len(rd.Persist)-1].State.NextOutReserved
			if r <= ids[0] || rd.Persist[0].Kind != PersistUpdated {
				t.Fatalf("request %d: the batch reserves %d", ids[0], r)
			}
			committed = r
		} else if ids[0] >= committed {
			t.Fatalf("request %d sent without a reservation above it (committed %d)", ids[0], committed)
		}
		w.run(rd, false)
	}
	if writes != 3 || w.res.Stats().MsgIDReservations != 3 {
		t.Fatalf("%d reservation writes for 10 requests with blocks of 3, want 3 (IDs 3, 6, 9)", writes)
	}
}

// A restored SA whose peer does not do RFC 6311 finds the peer's expected
// ID by probing when it first needs to send, and carries on.
func TestRestoreProbesWithoutSync(t *testing.T) {
	w, spi := establish(t, responderConfig(t, 1))
	rsa := w.res.SA(resSPI(w))
	st, _ := rsa.Snapshot()
	st.MsgIDSync = false
	for i := 0; i < 3; i++ { // unpersisted: our liveness checks (IDs 0-2) ...
		w.run(R(func(rd *Ready) { rsa.request(w.now, w.res, INFORMATIONAL, nil, rd) }), false)
	}
	isa := w.ini.SA(spi)
	for i := 0; i < 2; i++ { // ... and the gateway's
		w.run(R(func(rd *Ready) { isa.request(w.now, w.ini, INFORMATIONAL, nil, rd) }), true)
	}
	fsa := restoreFresh(t, w, st, responderConfig(t, 7))
	fresh := w.res
	if fresh.Stats().MsgIDSyncs != 0 || !fsa.idUnknown {
		t.Fatal("synchronised with a peer that did not announce RFC 6311")
	}
	// The gateway's next liveness check has a higher ID than the record
	// says: answered, and the window moves.
	w.run(R(func(rd *Ready) { isa.request(w.now, w.ini, INFORMATIONAL, nil, rd) }), true)
	if isa.req != nil || fsa.nextIn != isa.nextOut {
		t.Fatalf("gateway liveness check after the restore unanswered (next in %d, gateway %d)", fsa.nextIn, isa.nextOut)
	}
	// We rekey: first the probe (IDs 0..16 with a new reservation
	// written before), then the rekey.
	before := len(w.persists)
	rd := R(func(rd *Ready) { fresh.RekeyChild(w.now, fsa.SPIr, fsa.children[0].InSPI, rd) })
	ids := sentIDs(rd)
	if len(ids) != 17 || ids[0] != 0 || ids[16] != 16 {
		t.Fatalf("probe IDs %v, want 0..16", ids)
	}
	if len(rd.Persist) != 1 || rd.Persist[0].State.NextOutReserved <= 16 {
		t.Fatalf("the probe reaches the reservation: want a new one written first, got %+v", rd.Persist)
	}
	w.run(rd, false)
	if fsa.idUnknown || fresh.Stats().ChildRekeys != 1 || isa.nextIn != fsa.nextOut {
		t.Fatalf("after the probe: unknown %v, rekeys %d, our next %d, gateway expects %d",
			fsa.idUnknown, fresh.Stats().ChildRekeys, fsa.nextOut, isa.nextIn)
	}
	w.paired(t, 1)
	if len(w.persists) <= before {
		t.Fatal("nothing persisted")
	}
	// The gateway's exchanges go on too.
	w.run(R(func(rd *Ready) { w.ini.RekeyChild(w.now, spi, isa.children[len(isa.children)-1].InSPI, rd) }), true)
	if fresh.Stats().ChildRekeys != 2 {
		t.Fatalf("gateway rekey after the restore: %+v", fresh.Stats())
	}
	w.paired(t, 1)
}

// The probe is answered by a peer that drops the first candidates and
// ignores those after a lost one: we continue after the highest answer.
func TestProbeWithLoss(t *testing.T) {
	w, spi := establish(t, responderConfig(t, 1))
	rsa := w.res.SA(resSPI(w))
	st, _ := rsa.Snapshot()
	st.MsgIDSync = false
	isa := w.ini.SA(spi)
	fsa := restoreFresh(t, w, st, responderConfig(t, 7))
	// Lose candidate 5 on the way: the gateway (expecting 0) answers 0..4
	// and ignores 6..16.
	w.drop = func(toResponder bool, msg []byte) bool {
		h, _ := DecodeHeader(msg)
		return !toResponder && h.Flags&FlagResponse == 0 && h.MessageID == 5
	}
	w.run(R(func(rd *Ready) { w.res.RekeyChild(w.now, fsa.SPIr, fsa.children[0].InSPI, rd) }), false)
	if !fsa.idUnknown {
		t.Fatal("probe ended before its last candidate or the timeout")
	}
	w.drop = nil
	w.now = w.now.Add(DefaultRetransmitTimeout)
	w.run(R(func(rd *Ready) { w.res.Tick(w.now, rd) }), false)
	// Candidates 0-4 answered: the rekey went out with ID 5, then the
	// Delete of the old CHILD SA with 6.
	if fsa.idUnknown || fsa.nextOut != 7 || isa.nextIn != 7 || w.res.Stats().ChildRekeys != 1 {
		t.Fatalf("after the probe timed out: unknown %v, next %d, gateway expects %d, rekeys %d",
			fsa.idUnknown, fsa.nextOut, isa.nextIn, w.res.Stats().ChildRekeys)
	}
}

// After a restore, an old request of the peer replayed with a higher
// message ID than the record's is refused (before, the first higher ID was
// accepted once); only liveness checks, which change nothing, move the
// window.
func TestRestoreRefusesReplayedRequest(t *testing.T) {
	for _, sync := range []bool{false, true} {
		w, spi := establish(t, responderConfig(t, 1))
		st := *w.persists[len(w.persists)-1].State // the record: NextIn 2
		st.MsgIDSync = sync
		isa := w.ini.SA(spi)
		// Unpersisted requests of the gateway: a liveness check (ID 2)
		// and an INFORMATIONAL with a status notify (ID 3), captured.
		w.run(R(func(rd *Ready) { isa.request(w.now, w.ini, INFORMATIONAL, nil, rd) }), true)
		var captured []byte
		w.drop = func(toResponder bool, msg []byte) bool {
			if h, _ := DecodeHeader(msg); toResponder && h.MessageID == 3 && captured == nil {
				captured = append([]byte(nil), msg...)
			}
			return false
		}
		w.run(R(func(rd *Ready) {
			isa.request(w.now, w.ini, INFORMATIONAL, []Payload{&Notify{NotifyType: 40000}}, rd)
		}), true)
		w.drop = nil
		if captured == nil || isa.nextOut != 4 {
			t.Fatal("nothing captured")
		}
		fcfg := responderConfig(t, 7)
		fcfg.MsgIDSyncAEAD = true
		fsa := restoreFresh(t, w, st, fcfg)
		in := fsa.nextIn // 2 from the record, 4 after an RFC 6311 synchronisation
		rd := R(func(rd *Ready) {
			w.res.Handle(w.now, Packet{Local: concAddr, Remote: w.nat(gwAddr), Data: captured}, rd)
		})
		if len(rd.Send) != 0 || fsa.nextIn != in {
			t.Fatalf("sync=%v: replayed request answered (next in %d): %+v", sync, fsa.nextIn, rd.Send)
		}
		// The gateway's real next request goes through.
		w.run(R(func(rd *Ready) { isa.request(w.now, w.ini, INFORMATIONAL, nil, rd) }), true)
		if isa.req != nil || fsa.nextIn != 5 {
			t.Fatalf("sync=%v: the gateway's next request after the replay: next in %d", sync, fsa.nextIn)
		}
	}
}

// Over an AEAD IKE SA a restored SA probes unless told to use RFC 6311
// (strongSwan cannot answer it there); over AES-CBC it synchronises.
func TestMsgIDSyncPolicy(t *testing.T) {
	for _, tc := range []struct {
		ike        string
		syncAEAD   bool
		wantSyncs  uint64
		wantProbes uint64
	}{
		{"aes256gcm16-prfsha256-x25519", false, 0, 1},
		{"aes256gcm16-prfsha256-x25519", true, 1, 0},
		{"aes256-sha256-x25519", false, 1, 0},
	} {
		rcfg := responderConfig(t, 1)
		rcfg.IKEProposals = mustProposals(t, false, tc.ike)
		w := newWire(t, rcfg)
		ini := pskInitiation(t)
		ini.IKEProposals = rcfg.IKEProposals
		initiate(w, ini)
		st := *w.persists[len(w.persists)-1].State
		fcfg := rcfg
		fcfg.Rand = newDetRand(7)
		fcfg.MsgIDSyncAEAD = tc.syncAEAD
		fcfg.DPDDelay = 10 * time.Second
		fsa := restoreFresh(t, w, st, fcfg)
		w.now = w.now.Add(11 * time.Second) // our first liveness check after the restore
		w.run(R(func(rd *Ready) { w.res.Tick(w.now, rd) }), false)
		s := w.res.Stats()
		if s.MsgIDSyncs != tc.wantSyncs || s.MsgIDProbes != tc.wantProbes || fsa.idUnknown {
			t.Fatalf("%s (sync over AEAD %v): %d syncs, %d probes, unknown %v", tc.ike, tc.syncAEAD, s.MsgIDSyncs, s.MsgIDProbes, fsa.idUnknown)
		}
	}
}

// Both roles announce RFC 6311 in IKE_AUTH and remember the peer's.
func TestMsgIDSyncAnnounced(t *testing.T) {
	w, spi := establish(t, responderConfig(t, 1))
	if !w.ini.SA(spi).msgIDSync || !w.res.SA(resSPI(w)).msgIDSync {
		t.Fatal("IKEV2_MESSAGE_ID_SYNC_SUPPORTED not exchanged")
	}
	st, _ := w.res.SA(resSPI(w)).Snapshot()
	if !st.MsgIDSync {
		t.Fatal("not in the persisted state")
	}
	_ = time.Second
}
