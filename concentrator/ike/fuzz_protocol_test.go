package ike

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike/suite"
)

// FuzzIntermediate: IKE_INTERMEDIATE (and any other) requests with any
// message ID and inner payload chain, sealed with the keys of a responder
// SA that negotiated ML-KEM-768 as an additional key exchange and waits
// for it: the engine never panics, and the half-open accounting stays
// balanced once the SA goes.
func FuzzIntermediate(f *testing.F) {
	// A real handshake up to the IKE_INTERMEDIATE request, which is kept.
	w, ini, _ := pqWire(&testing.T{}, []string{pqProposal}, []string{pqProposal})
	var req [][]byte
	w.drop = func(toRes bool, msg []byte) bool {
		if toRes && ExchangeType(msg[18]) == IKE_INTERMEDIATE {
			req = append(req, msg)
			return true
		}
		return false
	}
	acts := &Ready{}
	w.ini.Initiate(w.now, ini, acts)
	w.run(acts, true)
	var init []byte // the initiator's IKE_SA_INIT, replayed into a fresh responder
	w2, _, _ := pqWire(&testing.T{}, []string{pqProposal}, []string{pqProposal})
	w2.drop = func(toRes bool, msg []byte) bool {
		if toRes && ExchangeType(msg[18]) == IKE_SA_INIT && init == nil {
			init = msg
		}
		return toRes && ExchangeType(msg[18]) != IKE_SA_INIT
	}
	acts = &Ready{}
	w2.ini.Initiate(w2.now, ini, acts)
	w2.run(acts, true)
	if len(req) == 0 || init == nil {
		f.Fatal("no IKE_INTERMEDIATE request to start from")
	}
	isa := w.ini.SA(resSPIOf(w.ini))
	ke := &KE{Group: suite.GroupMLKEM768, Data: isa.inter.kx.Public()}
	for _, s := range []struct {
		id uint32
		ex ExchangeType
		ps []Payload
	}{
		{1, IKE_INTERMEDIATE, []Payload{ke}},
		{1, IKE_INTERMEDIATE, nil},
		{1, IKE_INTERMEDIATE, []Payload{&KE{Group: suite.GroupMLKEM1024, Data: ke.Data}}},
		{1, IKE_INTERMEDIATE, []Payload{&KE{Group: suite.GroupMLKEM768, Data: ke.Data[:100]}}},
		{1, IKE_AUTH, allPayloads()},
		{2, IKE_INTERMEDIATE, []Payload{ke, ke}},
	} {
		next := byte(0)
		if len(s.ps) > 0 {
			next = byte(s.ps[0].Type())
		}
		f.Add(s.id, byte(s.ex), next, appendChain(nil, s.ps))
	}
	f.Fuzz(func(t *testing.T, id uint32, ex byte, next byte, chain []byte) {
		res, err := NewEngine(w.res.cfg)
		if err != nil {
			t.Fatal(err)
		}
		var rd Ready
		res.Handle(t0, Packet{Local: concAddr, Remote: w.nat(gwAddr), Data: init}, &rd)
		var sa *IKESA
		res.Each(func(s *IKESA) bool { sa = s; return false })
		if sa == nil || sa.inter == nil {
			t.Fatal("no half-open SA waiting for IKE_INTERMEDIATE")
		}
		k, err := sa.cipher.Key(sa.skKeys(false))
		if err != nil {
			t.Fatal(err)
		}
		m := &Message{SPIi: sa.SPIi, SPIr: sa.SPIr, Exchange: ExchangeType(ex), MessageID: id, Flags: FlagInitiator}
		hdr := m.appendHeader(nil, PayloadSK)
		hdr = append(hdr, next, 0, 0, 0)
		sl := k.Cipher().SealedLen(len(chain))
		putLen16(hdr[headerLen+2:], genericHeaderLen+sl)
		binary.BigEndian.PutUint32(hdr[24:], uint32(len(hdr)+sl))
		msg := k.Seal(hdr, make([]byte, k.Cipher().IVLen()), hdr, chain)
		for range 2 { // and its retransmission
			rd.Reset()
			res.Handle(t0, Packet{Local: concAddr, Remote: w.nat(gwAddr), Data: msg}, &rd)
		}
		rd.Reset()
		res.Tick(t0.Add(2*DefaultHalfOpenTimeout), &rd)
		if st := res.Stats(); res.Len() == 0 && (st.HalfOpen != 0 || st.HalfOpenBytes != 0) {
			t.Fatalf("half-open accounting left %d SAs, %d bytes", st.HalfOpen, st.HalfOpenBytes)
		}
	})
}

// FuzzSessionResume: IKE_SESSION_RESUME datagrams (seeded with a real
// one carrying a valid ticket) never panic a responder with a ticket ring.
func FuzzSessionResume(f *testing.F) {
	ring := testTicketRing(f, 1)
	rcfg := responderConfig(f, 1)
	rcfg.Tickets = ring
	res, err := NewEngine(rcfg)
	if err != nil {
		f.Fatal(err)
	}
	ini := initiatorEngine(f, 2)
	var rd Ready
	spi := ini.newSPI()
	sa := &IKESA{initiator: true, SPIi: spi, Local: gwAddr, Remote: concAddr, hs: &handshake{ni: make([]byte, 32)}}
	p := SelectProposal(rcfg.IKEProposals, Proposals(rcfg.IKEProposals[:1], ProtoIKE, nil, true), ProtoIKE, true)
	st := &ticketState{expires: t0.Add(time.Hour), proposal: *p, skd: make([]byte, 32), peer: gwID}
	opaque, err := res.sealTicket(st)
	if err != nil {
		f.Fatal(err)
	}
	sa.ini = &Initiation{Resume: &Ticket{Opaque: opaque, SKd: st.skd, Proposal: *p}}
	ini.sas[spi] = sa
	sa.sendResume(t0, ini, &rd)
	f.Add(rd.Send[0].Messages[0])
	f.Add(append([]byte(nil), rd.Send[0].Messages[0][:40]...))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := NewEngine(rcfg)
		if err != nil {
			t.Fatal(err)
		}
		var rd Ready
		pkt := Packet{Local: concAddr, Remote: netip.MustParseAddrPort("192.0.2.1:500"), Data: b}
		e.Handle(t0, pkt, &rd)
		e.Handle(t0, pkt, &rd)
		e.Tick(t0.Add(DefaultHalfOpenTimeout*2), &rd)
		if st := e.Stats(); st.HalfOpen != 0 || st.HalfOpenBytes != 0 {
			t.Fatalf("half-open accounting left %d SAs, %d bytes", st.HalfOpen, st.HalfOpenBytes)
		}
	})
}

// FuzzTicketState: an opened ticket's content never panics the parser,
// and what parses marshals back to the same octets.
func FuzzTicketState(f *testing.F) {
	st := ticketState{expires: time.Unix(1_800_000_000, 0), skd: make([]byte, 32), peer: gwID,
		proposal: Selected{Protocol: ProtoIKE, Num: 1, Encr: EncrAlg{ID: 20, KeyLen: 256}, PRF: 5, Group: 31}}
	f.Add(st.marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := parseTicketState(b)
		if err != nil {
			return
		}
		if string(got.marshal()) != string(b) {
			t.Fatal("ticket state does not round-trip")
		}
	})
}
