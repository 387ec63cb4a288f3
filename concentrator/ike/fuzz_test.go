package ike

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/ikefleet/ikefleet/concentrator/ike/suite"
)

// FuzzDecode: no input panics the codec; what decodes re-encodes to a
// message that decodes to the same payloads.
func FuzzDecode(f *testing.F) {
	for _, g := range goldenSeeds(f) {
		f.Add(g)
	}
	f.Add((&Message{SPIi: 1, Exchange: IKE_AUTH, Payloads: allPayloads()}).Encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			return
		}
		if m.sk != nil || m.skf != nil {
			return
		}
		re := m.Encode()
		m2, err := Decode(re)
		if err != nil {
			t.Fatalf("re-encoded message does not decode: %v", err)
		}
		if len(m2.Payloads) != len(m.Payloads) {
			t.Fatal("payload count changed")
		}
	})
}

// FuzzDecryptParse: the decrypt-then-parse path of SK with a fixed key,
// on ciphertexts and plaintext chains chosen by the fuzzer.
func FuzzDecryptParse(f *testing.F) {
	k := testSKCipher(f, 20, 256, 0)
	f.Add([]byte{}, true)
	f.Add(appendChain(nil, allPayloads()), true)
	f.Add([]byte{0, 0, 0, 4}, false)
	f.Fuzz(func(t *testing.T, b []byte, sealPlaintext bool) {
		var msg []byte
		m := &Message{SPIi: 1, SPIr: 2, Exchange: IKE_AUTH, MessageID: 1, Payloads: []Payload{&Unknown{PType: PayloadNonce, Data: nil}}}
		if sealPlaintext {
			// Seal the fuzzer's bytes as the inner chain: parse must not panic.
			hdr := m.appendHeader(nil, PayloadSK)
			hdr = append(hdr, byte(PayloadNotify), 0, 0, 0)
			sl := k.Cipher().SealedLen(len(b))
			putLen16(hdr[headerLen+2:], genericHeaderLen+sl)
			hdr[24], hdr[25], hdr[26], hdr[27] = byte((len(hdr)+sl)>>24), byte((len(hdr)+sl)>>16), byte((len(hdr)+sl)>>8), byte(len(hdr)+sl)
			msg = k.Seal(hdr, make([]byte, 8), hdr, b)
		} else {
			hdr := m.appendHeader(nil, PayloadSK)
			hdr = append(hdr, byte(PayloadNotify), 0, 0, 0)
			putLen16(hdr[headerLen+2:], genericHeaderLen+len(b))
			msg = finish(append(hdr, b...))
		}
		dm, err := Decode(msg)
		if err != nil {
			return
		}
		_ = dm.Decrypt(k)
	})
}

// FuzzResponder: a responder engine fed arbitrary datagrams never panics
// and never keeps state for them beyond the half-open limit.
func FuzzResponder(f *testing.F) {
	for _, g := range goldenSeeds(f) {
		f.Add(g)
	}
	e, err := NewEngine(responderConfig(f, 1))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		pkt := Packet{Local: concAddr, Remote: netip.MustParseAddrPort("192.0.2.1:500"), Data: b}
		var rd Ready
		e.Handle(t0, pkt, &rd)
		e.Tick(t0.Add(DefaultHalfOpenTimeout*2), &rd)
	})
}

func goldenSeeds(f *testing.F) [][]byte {
	var out [][]byte
	for _, g := range loadGoldenF(f) {
		for _, m := range g.Messages {
			out = append(out, m.IKE)
		}
	}
	return out
}

// FuzzEstablished: authenticated messages with any message ID, exchange
// and inner payload chain reach a restored SA (which has an RFC 6311
// synchronisation outstanding): the engine never panics, and never sends a
// request whose message ID is not reserved by a committed or batched write.
func FuzzEstablished(f *testing.F) {
	w, _ := establish(&testing.T{}, responderConfig(f, 1))
	st, err := w.res.SA(resSPI(w)).Snapshot()
	if err != nil {
		f.Fatal(err)
	}
	c, err := suite.NewCipher(st.Proposal.Encr.ID, int(st.Proposal.Encr.KeyLen), st.Proposal.Integ)
	if err != nil {
		f.Fatal(err)
	}
	k, err := c.Key(st.SKei, st.SKai) // the gateway's direction
	if err != nil {
		f.Fatal(err)
	}
	sync := binary.BigEndian.AppendUint32([]byte{1, 2, 3, 4}, 40)
	sync = binary.BigEndian.AppendUint32(sync, 7)
	for _, s := range []struct {
		id       uint32
		ex       ExchangeType
		response bool
		ps       []Payload
	}{
		{0, INFORMATIONAL, false, []Payload{&Notify{NotifyType: IKEV2_MESSAGE_ID_SYNC, Data: sync},
			&Notify{NotifyType: IPSEC_REPLAY_COUNTER_SYNC, Data: binary.BigEndian.AppendUint64(nil, 4096)}}},
		{0, INFORMATIONAL, true, []Payload{&Notify{NotifyType: IKEV2_MESSAGE_ID_SYNC, Data: sync}}},
		{9, INFORMATIONAL, false, nil},
		{st.NextIn, INFORMATIONAL, false, []Payload{&Delete{Protocol: ProtoESP, SPISize: 4, SPIs: [][]byte{{0, 0, 1, 0}}}}},
		{st.NextIn, CREATE_CHILD_SA, false, allPayloads()},
	} {
		chain := appendChain(nil, s.ps)
		next := byte(0)
		if len(s.ps) > 0 {
			next = byte(s.ps[0].Type())
		}
		f.Add(s.id, byte(s.ex), s.response, next, chain)
	}
	f.Fuzz(func(t *testing.T, id uint32, ex byte, response bool, next byte, chain []byte) {
		cfg := responderConfig(t, 3)
		cfg.DPDDelay = 30 * time.Second
		cfg.MsgIDSyncAEAD = true
		e, err := NewEngine(cfg)
		if err != nil {
			t.Fatal(err)
		}
		var rd Ready
		if _, err := e.Restore(t0, st, &rd); err != nil {
			t.Fatal(err)
		}
		m := &Message{SPIi: st.SPIi, SPIr: st.SPIr, Exchange: ExchangeType(ex), MessageID: id, Flags: FlagInitiator}
		if response {
			m.Flags |= FlagResponse
		}
		hdr := m.appendHeader(nil, PayloadSK)
		hdr = append(hdr, next, 0, 0, 0)
		sl := k.Cipher().SealedLen(len(chain))
		putLen16(hdr[headerLen+2:], genericHeaderLen+sl)
		binary.BigEndian.PutUint32(hdr[24:], uint32(len(hdr)+sl))
		msg := k.Seal(hdr, make([]byte, k.Cipher().IVLen()), hdr, chain)
		sa := e.SA(st.SPIr)
		e.Committed(st.SPIr, sa.version)
		// Our requests: an ID at or above the committed reservation only
		// in a batch that writes a higher one.
		check := func(rd *Ready) {
			durable := sa.outDurable
			for _, snd := range rd.Send {
				for _, b := range snd.Messages {
					h, err := DecodeHeader(b)
					if err != nil || h.Flags&FlagResponse != 0 || h.Flags&FlagInitiator != 0 {
						continue
					}
					ok := h.MessageID < durable
					for _, p := range rd.Persist {
						ok = ok || p.State != nil && p.State.NextOutReserved > h.MessageID
					}
					if !ok {
						t.Fatalf("request %d sent with %d reserved and no new reservation written", h.MessageID, durable)
					}
				}
			}
			for _, p := range rd.Persist {
				e.Committed(p.SPI, p.Version)
			}
		}
		rd.Reset()
		e.Handle(t0, Packet{Local: st.Local, Remote: st.Remote, Data: msg}, &rd)
		check(&rd)
		for i := 1; i <= 3; i++ {
			rd.Reset()
			e.Tick(t0.Add(time.Duration(i)*time.Minute), &rd)
			check(&rd)
		}
	})
}
