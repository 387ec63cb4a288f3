package ike

import (
	"bytes"
	"net/netip"
	"testing"
	"time"
)

// A NAT rebinding between a request and its answer: the answer went to
// the old mapping, and the peer retransmits from the new one. The copy,
// once verified, is answered where it came from (RFC 7296 §2.11), and the
// peer's exchange completes; an altered copy from elsewhere gets nothing;
// a copy from the SA's own address is answered there, as before.
func TestRetransmissionFromNewMappingAnsweredThere(t *testing.T) {
	w := newWire(t, responderConfig(t, 1))
	spi := w.establish(t, pskInitiation(t))
	rd := &Ready{}
	if !w.ini.CheckLiveness(w.now, spi, rd) || len(rd.Send) != 1 {
		t.Fatalf("no liveness check started: %+v", rd.Send)
	}
	req := rd.Send[0]
	msg := req.Messages[0]
	local := req.Remote
	send := func(from netip.AddrPort, data []byte) *Ready {
		rd := &Ready{}
		w.res.Handle(w.now, Packet{Local: local, Remote: from, Data: bytes.Clone(data)}, rd)
		return rd
	}
	old := w.nat(req.Local)
	first := send(old, msg)
	if len(first.Send) != 1 || first.Send[0].Remote != old {
		t.Fatalf("the request answered with %+v, want one answer to %v", first.Send, old)
	}
	// The answer is lost with the old mapping; the gateway retransmits
	// from its new one.
	w.natShift++
	moved := w.nat(req.Local)
	again := send(moved, msg)
	if len(again.Send) != 1 || again.Send[0].Remote != moved || again.Send[0].Local != local ||
		!bytes.Equal(again.Send[0].Messages[0], first.Send[0].Messages[0]) {
		t.Fatalf("the retransmission from %v answered with %+v, want the same answer sent there", moved, again.Send)
	}
	dup := w.res.Stats().DuplicateRequests
	bad := bytes.Clone(msg)
	bad[len(bad)-1] ^= 1
	if rd := send(netip.MustParseAddrPort("203.0.113.9:4500"), bad); len(rd.Send) != 0 || w.res.Stats().DuplicateRequests != dup {
		t.Fatalf("an altered copy from elsewhere was answered: %+v", rd.Send)
	}
	if rd := send(old, msg); len(rd.Send) != 1 || rd.Send[0].Remote != old {
		t.Fatalf("a copy from the SA's address answered with %+v", rd.Send)
	}
	// A genuine copy replayed from forged addresses: answered at most
	// elsewhereRate times at once, then as the bucket refills.
	answered := 0
	for i := range 3 * elsewhereRate {
		if rd := send(netip.AddrPortFrom(netip.MustParseAddr("203.0.113.10"), uint16(1000+i)), msg); len(rd.Send) > 0 {
			answered++
		}
	}
	if answered >= elsewhereRate {
		t.Fatalf("%d copies from forged addresses answered at once, want fewer than %d (one went to the rebound gateway)", answered, elsewhereRate)
	}
	w.now = w.now.Add(time.Second)
	if rd := send(netip.MustParseAddrPort("203.0.113.11:1000"), msg); len(rd.Send) != 1 {
		t.Fatal("no answer elsewhere a second later")
	}
	// The gateway takes the answer at its new mapping: its check is done.
	rd = &Ready{}
	w.ini.Handle(w.now, Packet{Local: req.Local, Remote: req.Remote, Data: bytes.Clone(again.Send[0].Messages[0])}, rd)
	if !w.ini.CheckLiveness(w.now, spi, &Ready{}) {
		t.Fatal("the gateway's liveness check is still under way after its answer")
	}
}
