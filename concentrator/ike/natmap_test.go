package ike

import (
	"net/netip"
	"testing"
	"time"
)

// The data plane reports ESP from a new NAT mapping: a liveness check goes
// there, and the answer moves the SA and its CHILD SAs.
func TestPeerMovedNATMapping(t *testing.T) {
	w, _ := establish(t, responderConfig(t, 1))
	rsa := w.res.SA(resSPI(w))
	if !rsa.natRemote {
		t.Fatal("the wire's NAT was not detected")
	}
	in := rsa.children[0].InSPI
	old := rsa.Remote
	w.natShift = 9 // the NAT re-maps the gateway
	moved := netip.AddrPortFrom(old.Addr(), old.Port()+9)

	// Not yet: a report for an unknown SPI or the same address does nothing.
	if w.res.PeerMoved(w.now, in+1, moved, &Ready{}) || w.res.PeerMoved(w.now, in, old, &Ready{}) {
		t.Fatal("check sent for an unknown SPI or the SA's own address")
	}
	rd := &Ready{}
	if !w.res.PeerMoved(w.now, in, moved, rd) {
		t.Fatal("no liveness check for the new mapping")
	}
	if len(rd.Send) != 1 || rd.Send[0].Remote != moved {
		t.Fatalf("check sent to %+v, want %v", rd.Send, moved)
	}
	if rsa.Remote != old {
		t.Fatal("SA moved before the peer answered")
	}
	// A second report within MappingCheckInterval is ignored.
	if w.res.PeerMoved(w.now, in, moved, &Ready{}) {
		t.Fatal("second check within the interval")
	}
	w.run(rd, false)
	if rsa.Remote != moved || rsa.children[0].Remote != moved {
		t.Fatalf("after the answer the SA sends to %v (CHILD %v), want %v", rsa.Remote, rsa.children[0].Remote, moved)
	}
	updates := 0
	for _, e := range w.events {
		if e.Kind == EventAddressChanged && !e.Initiator {
			updates++
		}
	}
	if updates != 1 || w.res.Stats().MappingChecks != 1 {
		t.Fatalf("%d address changes, %d checks", updates, w.res.Stats().MappingChecks)
	}
}

// A peer not behind a NAT never moves on a data plane report.
func TestPeerMovedNeedsNAT(t *testing.T) {
	w, _ := establish(t, responderConfig(t, 1))
	rsa := w.res.SA(resSPI(w))
	rsa.natRemote = false
	old := rsa.Remote
	if w.res.PeerMoved(w.now, rsa.children[0].InSPI, netip.AddrPortFrom(old.Addr(), old.Port()+1), &Ready{}) {
		t.Fatal("liveness check for a peer not behind a NAT")
	}
	if w.res.Stats().MovesRefused != 1 || rsa.Remote != old {
		t.Fatal("refusal not counted, or the SA moved")
	}
}

// A new mapping that never answers leaves the SA where it was, alive.
func TestPeerMovedNoAnswer(t *testing.T) {
	w, _ := establish(t, responderConfig(t, 1))
	rsa := w.res.SA(resSPI(w))
	old := rsa.Remote
	w.drop = func(toResponder bool, _ []byte) bool { return !toResponder }
	rd := &Ready{}
	if !w.res.PeerMoved(w.now, rsa.children[0].InSPI, netip.AddrPortFrom(old.Addr(), old.Port()+3), rd) {
		t.Fatal("no check")
	}
	w.run(rd, false)
	for i := 0; i < 10 && rsa.req != nil; i++ {
		w.now = w.now.Add(30 * time.Second)
		w.run(R(func(rd *Ready) { w.res.Tick(w.now, rd) }), false)
	}
	if rsa.req != nil || rsa.state != stateEstablished || rsa.Remote != old {
		t.Fatalf("after an unanswered check: req %v, state %v, remote %v", rsa.req != nil, rsa.state, rsa.Remote)
	}
}
