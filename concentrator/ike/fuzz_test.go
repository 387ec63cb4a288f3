package ike

import (
	"net/netip"
	"testing"
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
