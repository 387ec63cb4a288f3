package esp

import (
	"bytes"
	"testing"
)

// FuzzOpen: the receive path (classify, parse, replay check, decrypt,
// trailer) never panics on any input, for every suite. Inputs are the
// fuzzer's bytes as a packet, and the same bytes sealed as a payload so
// that the trailer parser sees authentic but arbitrary plaintext; the
// latter must round-trip.
func FuzzOpen(f *testing.F) {
	for _, v := range loadVectors(f) {
		for _, p := range v.ESP {
			f.Add(uint8(0), []byte(p.UDPPayload))
		}
	}
	f.Add(uint8(1), []byte{0xc0, 0xff, 0xee, 0x01, 0, 0, 0, 1})
	f.Add(uint8(3), bytes.Repeat([]byte{0x45}, 100))
	f.Fuzz(func(t *testing.T, sel uint8, b []byte) {
		sc := suites[int(sel)%len(suites)]
		esn := sel&0x80 != 0
		o, in := pair(t, sc.config(esn))
		_ = ClassifyUDP(b)
		if h, err := ParseHeader(b); err == nil && h.SPI == 0 {
			t.Fatal("SPI 0 parsed")
		}
		// Raw bytes as an ESP packet: rejected without panicking
		// (forging a tag is not something a fuzzer does).
		raw := bytes.Clone(b)
		if len(raw) >= 4 {
			raw[0], raw[1], raw[2], raw[3] = 0xc0, 0xff, 0xee, 0x01
		}
		if _, _, _, err := in.Open(raw); err == nil {
			t.Fatal("unauthenticated packet accepted")
		}
		// The bytes as a payload: round trip.
		pkt, err := o.AppendSeal(nil, b, NextHeaderIPv4)
		if err != nil {
			t.Fatal(err)
		}
		got, nh, _, err := in.Open(pkt)
		if err != nil || nh != NextHeaderIPv4 || !bytes.Equal(got, b) {
			t.Fatalf("round trip: %v", err)
		}
	})
}
