package ike

import (
	"net/netip"
	"testing"
)

func TestMOBIKEUpdateAddresses(t *testing.T) {
	rcfg := responderConfig(t, 1)
	rcfg.MOBIKE = true
	w := newWire(t, rcfg)
	w.ini.cfg.MOBIKE = true
	acts := &Ready{}
	spi, _ := w.ini.Initiate(w.now, pskInitiation(t), acts)
	w.run(acts, true)
	rsa := w.res.SA(resSPI(w))
	if !rsa.mobike || !w.ini.SA(spi).mobike {
		t.Fatal("MOBIKE not negotiated")
	}
	before := rsa.children[0]
	inSPI, outSPI := before.InSPI, before.OutSPI
	// The gateway moves to another address and its NAT maps a new port.
	w.natShift = 7
	newLocal := netip.AddrPortFrom(netip.MustParseAddr("10.10.1.3"), 4500)
	w.run(R(func(rd *Ready) { w.ini.UpdateAddresses(w.now, spi, newLocal, rd) }), true)
	if rsa.Remote.Port() != 4500+10000+7 {
		t.Fatalf("responder still sends to %v", rsa.Remote)
	}
	c := rsa.children[0]
	if c.InSPI != inSPI || c.OutSPI != outSPI || c.Remote != rsa.Remote {
		t.Fatalf("CHILD SA after the move: %08x/%08x to %v", c.InSPI, c.OutSPI, c.Remote)
	}
	if w.count(EventAddressChanged) == 0 {
		t.Fatal("no address change reported")
	}
	// Both the gateway's check and our return-routability check completed.
	if w.ini.SA(spi).req != nil || rsa.req != nil {
		t.Fatal("a COOKIE2 check is still outstanding")
	}
	if w.res.Len() != 1 || w.ini.Len() != 1 {
		t.Fatal("SA lost in the move")
	}
}
