package ike

import (
	"bytes"
	"testing"
	"time"
)

func testTicketRing(t testing.TB, ids ...uint32) *TicketRing {
	r := NewTicketRing()
	for _, id := range ids {
		if err := r.Add(id, bytes.Repeat([]byte{byte(id)}, TicketKeyLen)); err != nil {
			t.Fatal(err)
		}
	}
	if len(ids) > 0 {
		if err := r.SetCurrent(ids[len(ids)-1]); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// ticketWire establishes an SA whose gateway asked for a ticket; the
// responder issues it from ring.
func ticketWire(t *testing.T, ring TicketKeys) (*wire, *Ticket) {
	t.Helper()
	rcfg := responderConfig(t, 1)
	rcfg.Tickets = ring
	rcfg.TicketLifetime = time.Hour
	w := newWire(t, rcfg)
	ini := pskInitiation(t)
	ini.RequestTicket = true
	spi := w.establish(t, ini)
	tk := w.ini.SA(spi).Ticket()
	if ring == nil {
		return w, tk
	}
	if tk == nil || len(tk.Opaque) == 0 || !tk.Expires.Equal(w.now.Add(time.Hour)) || !tk.Responder.Equal(concID) {
		t.Fatalf("ticket %+v", tk)
	}
	if bytes.Contains(tk.Opaque, tk.SKd) || bytes.Contains(tk.Opaque, gwID.Data) {
		t.Fatal("the ticket carries SK_d or the identity in the clear")
	}
	// The gateway goes away without a trace on the responder (a node
	// restart, a power cut of the gateway...).
	w.run(R(func(rd *Ready) { w.ini.Delete(w.now, spi, rd) }), true)
	if w.ini.Len() != 0 || w.res.Len() != 0 {
		t.Fatal("SAs left")
	}
	return w, tk
}

// resume resumes with tk from a fresh initiator against res and reports
// whether both sides established.
func resume(t *testing.T, w *wire, res *Engine, tk *Ticket, mod func(*Initiation)) (*wire, uint64) {
	t.Helper()
	w2 := &wire{t: t, ini: initiatorEngine(t, 7), res: res, now: w.now}
	ini := pskInitiation(t)
	ini.PSK = nil // no credentials: the ticket and its SK_d are the proof
	ini.Resume = tk
	ini.RequestTicket = true
	if mod != nil {
		mod(&ini)
	}
	acts := &Ready{}
	spi, err := w2.ini.Initiate(w2.now, ini, acts)
	if err != nil {
		t.Fatal(err)
	}
	w2.run(acts, true)
	return w2, spi
}

func TestSessionResumption(t *testing.T) {
	ring := testTicketRing(t, 1)
	w, tk := ticketWire(t, ring)
	if w.res.Stats().TicketsIssued != 1 {
		t.Fatal("ticket not counted")
	}
	// Node B: another engine with the same cluster ring, none of the SA.
	rcfg := responderConfig(t, 3)
	rcfg.Tickets = ring
	rcfg.PSKs = PSKMap{} // the gateway's PSK is not even known here
	nodeB, _ := NewEngine(rcfg)
	w2, spi := resume(t, w, nodeB, tk, nil)
	if w2.count(EventIKEEstablished) != 2 {
		t.Fatalf("resumption failed: %+v", w2.events)
	}
	isa := w2.ini.SA(spi)
	if !isa.Resumed() || nodeB.Stats().Resumed != 1 {
		t.Fatal("not counted as resumed")
	}
	var rsa *IKESA
	nodeB.Each(func(sa *IKESA) bool { rsa = sa; return false })
	if !rsa.PeerID.Equal(gwID) || !rsa.Resumed() || rsa.Proposal().String() != isa.Proposal().String() {
		t.Fatalf("resumed SA on node B: %v %v", rsa.PeerID, rsa.Proposal())
	}
	if bytes.Equal(rsa.skd(), tk.SKd) {
		t.Fatal("the resumed SA kept the old SK_d")
	}
	w2.paired(t, 1)
	// A fresh ticket comes with the resumed SA (asked for again).
	if nt := isa.Ticket(); nt == nil || bytes.Equal(nt.Opaque, tk.Opaque) || !bytes.Equal(nt.SKd, isa.skd()) {
		t.Fatalf("no fresh ticket after resumption: %+v", nt)
	}
	// The resumed SA is persisted like any other and works.
	st, err := rsa.Snapshot()
	if err != nil || !st.PeerID.Equal(gwID) {
		t.Fatalf("snapshot: %v", err)
	}
	w2.run(R(func(rd *Ready) { w2.ini.RekeyChild(w2.now, spi, isa.children[0].InSPI, rd) }), true)
	w2.paired(t, 1)
}

// Single use: a ticket redeemed once is refused a second time within its
// lifetime, on the same node.
func TestSessionResumptionSingleUse(t *testing.T) {
	ring := testTicketRing(t, 1)
	w, tk := ticketWire(t, ring)
	w2, _ := resume(t, w, w.res, tk, nil)
	if w2.count(EventIKEEstablished) != 2 {
		t.Fatal("first resumption failed")
	}
	w3, _ := resume(t, w, w.res, tk, nil)
	if w3.count(EventIKEEstablished) != 0 {
		t.Fatal("the ticket resumed twice")
	}
	if res, ini := failedWith(w3, AUTHENTICATION_FAILED); !res || !ini {
		t.Fatalf("replay not refused at IKE_AUTH: %+v", w3.events)
	}
	if w.res.Stats().ResumesRefused != 1 {
		t.Fatalf("refusals %d", w.res.Stats().ResumesRefused)
	}
}

// Someone who saw the ticket (it travels in the clear) but does not know
// its SK_d cannot resume, and does not use the ticket up either.
func TestSessionResumptionNeedsSKd(t *testing.T) {
	ring := testTicketRing(t, 1)
	w, tk := ticketWire(t, ring)
	stolen := *tk
	stolen.SKd = bytes.Repeat([]byte{0xaa}, len(tk.SKd))
	w2, _ := resume(t, w, w.res, &stolen, nil)
	if w2.count(EventIKEEstablished) != 0 {
		t.Fatal("resumed without SK_d")
	}
	// Its keys differ from the responder's: IKE_AUTH does not even decrypt.
	if w2.count(EventDropped) == 0 || w.res.Stats().Resumed != 0 {
		t.Fatalf("responder did not drop the IKE_AUTH: %+v", w2.events)
	}
	// Another identity with the right ticket is refused too.
	w3, _ := resume(t, w, w.res, tk, func(ini *Initiation) {
		ini.Creds.ID = Identity{Type: IDRFC822Addr, Data: []byte("gw2@iot.example")}
	})
	if w3.count(EventIKEEstablished) != 0 {
		t.Fatal("resumed under another identity")
	}
	w4, _ := resume(t, w, w.res, tk, nil)
	if w4.count(EventIKEEstablished) != 2 {
		t.Fatalf("the rightful gateway could not resume after the failed attempts: %+v", w4.events)
	}
}

// Tickets are refused once expired, once their key left the ring, when
// tampered with, and by a responder without resumption.
func TestSessionResumptionRefused(t *testing.T) {
	nack := func(t *testing.T, w *wire) {
		t.Helper()
		if w.count(EventIKEEstablished) != 0 {
			t.Fatal("resumed")
		}
		if res, ini := failedWith(w, TICKET_NACK); !res || !ini {
			t.Fatalf("no TICKET_NACK on both sides: %+v", w.events)
		}
	}
	t.Run("expired", func(t *testing.T) {
		ring := testTicketRing(t, 1)
		w, tk := ticketWire(t, ring)
		copyTk := *tk
		copyTk.Expires = time.Time{} // the gateway does not know better
		w.now = w.now.Add(time.Hour + time.Second)
		w2, _ := resume(t, w, w.res, &copyTk, nil)
		nack(t, w2)
	})
	t.Run("key rotated out", func(t *testing.T) {
		ring := testTicketRing(t, 1)
		w, tk := ticketWire(t, ring)
		// Rotation keeps the old key: still fine.
		ring.Add(2, bytes.Repeat([]byte{2}, TicketKeyLen))
		ring.SetCurrent(2)
		w2, _ := resume(t, w, w.res, tk, nil)
		if w2.count(EventIKEEstablished) != 2 {
			t.Fatal("a ticket of the previous key was refused")
		}
		nt := *w2.ini.SA(resSPIOf(w2.ini)).Ticket()
		ring.Remove(1)
		ring.Remove(2)
		w3, _ := resume(t, w, w.res, &nt, nil)
		nack(t, w3)
	})
	t.Run("tampered", func(t *testing.T) {
		ring := testTicketRing(t, 1)
		w, tk := ticketWire(t, ring)
		bad := *tk
		bad.Opaque = bytes.Clone(tk.Opaque)
		bad.Opaque[len(bad.Opaque)/2] ^= 1
		w2, _ := resume(t, w, w.res, &bad, nil)
		nack(t, w2)
	})
	t.Run("not enabled", func(t *testing.T) {
		ring := testTicketRing(t, 1)
		_, tk := ticketWire(t, ring)
		w, none := ticketWire(t, nil) // a responder without tickets
		if none != nil {
			t.Fatal("ticket issued without a key ring")
		}
		w2, _ := resume(t, w, w.res, tk, nil)
		nack(t, w2)
	})
	t.Run("algorithms no longer configured", func(t *testing.T) {
		ring := testTicketRing(t, 1)
		w, tk := ticketWire(t, ring)
		rcfg := responderConfig(t, 4)
		rcfg.Tickets = ring
		rcfg.IKEProposals = mustProposals(t, false, "aes128gcm16-prfsha256-ecp256")
		strict, _ := NewEngine(rcfg)
		w2, _ := resume(t, w, strict, tk, nil)
		nack(t, w2)
	})
}

func resSPIOf(e *Engine) uint64 {
	var spi uint64
	e.Each(func(sa *IKESA) bool { spi = sa.localSPI(); return false })
	return spi
}

// A lost IKE_SESSION_RESUME response: the retransmitted request is
// answered from the cache, the SA comes up once.
func TestSessionResumptionRetransmission(t *testing.T) {
	ring := testTicketRing(t, 1)
	w, tk := ticketWire(t, ring)
	w2 := &wire{t: t, ini: initiatorEngine(t, 7), res: w.res, now: w.now}
	dropped := false
	w2.drop = func(toRes bool, msg []byte) bool {
		if !toRes && ExchangeType(msg[18]) == IKE_SESSION_RESUME && !dropped {
			dropped = true
			return true
		}
		return false
	}
	ini := pskInitiation(t)
	ini.PSK, ini.Resume = nil, tk
	acts := &Ready{}
	w2.ini.Initiate(w2.now, ini, acts)
	w2.run(acts, true)
	w2.now = w2.now.Add(3 * time.Second)
	w2.run(R(func(rd *Ready) { w2.ini.Tick(w2.now, rd) }), true)
	if w2.count(EventIKEEstablished) != 2 || w.res.Stats().DuplicateRequests == 0 {
		t.Fatalf("after the retransmission: %+v", w2.events)
	}
}

func TestTicketStateRoundTrip(t *testing.T) {
	st := ticketState{expires: time.Unix(1_800_000_000, 0), skd: bytes.Repeat([]byte{9}, 32), peer: gwID,
		proposal: Selected{Protocol: ProtoIKE, Num: 1, Encr: EncrAlg{ID: 20, KeyLen: 256}, PRF: 5, Group: 31}}
	st.proposal.AddKE[0] = 36
	st.id[3] = 7
	got, err := parseTicketState(st.marshal())
	if err != nil {
		t.Fatal(err)
	}
	if got.id != st.id || !got.expires.Equal(st.expires) || !bytes.Equal(got.skd, st.skd) || !got.peer.Equal(st.peer) ||
		got.proposal.String() != st.proposal.String() || got.proposal.AddKE != st.proposal.AddKE {
		t.Fatalf("round trip: %+v", got)
	}
	b := st.marshal()
	for i := range b {
		if _, err := parseTicketState(b[:i]); err == nil {
			t.Fatalf("truncated to %d parsed", i)
		}
	}
}
