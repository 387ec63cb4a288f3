package ike

import "testing"

// An established SA keeps none of its handshake's state, on either side,
// through an IKE rekey too, and a restored one never had any.
func TestEstablishedSAsKeepNoHandshake(t *testing.T) {
	w, spi := establish(t, responderConfig(t, 1))
	noHandshake := func(what string) {
		t.Helper()
		for _, e := range []*Engine{w.ini, w.res} {
			e.Each(func(sa *IKESA) bool {
				if sa.hs != nil {
					t.Errorf("%s: %s SA %016x (%v) keeps its handshake", what, map[bool]string{true: "initiator's", false: "responder's"}[e == w.ini], sa.localSPI(), sa.state)
				}
				return true
			})
		}
	}
	noHandshake("established")

	w.run(R(func(rd *Ready) { w.ini.RekeyIKE(w.now, spi, rd) }), true)
	if w.ini.Stats().IKERekeys != 1 {
		t.Fatal("no IKE rekey")
	}
	noHandshake("IKE SA rekeyed")

	snap, err := w.res.SA(resSPI(w)).Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	e, err := NewEngine(responderConfig(t, 1))
	if err != nil {
		t.Fatal(err)
	}
	sa, err := e.Restore(w.now, snap, &Ready{})
	if err != nil {
		t.Fatal(err)
	}
	if sa.hs != nil {
		t.Fatal("the restored SA has a handshake")
	}
}
