package ike

import (
	"bytes"
	"slices"
	"strings"
	"testing"
	"time"
)

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

	if _, sa, _ := restoreInto(t, w.res.SA(resSPI(w)), responderConfig(t, 1), w.now); sa.hs != nil {
		t.Fatal("the restored SA has a handshake")
	}
}

// CHILD SAs narrowed to the engine's own selectors share one slice of
// them, established or restored; the engine's copy is its own, and
// capped so that an append to one SA's selectors copies.
func TestChildSAsShareOurSelectors(t *testing.T) {
	rcfg := responderConfig(t, 1)
	rcfg.PSKs = fleetPSK{}
	configured := rcfg.LocalTS
	w := newWire(t, rcfg)
	for _, id := range []string{"gw-a@fleet.example", "gw-b@fleet.example"} {
		if n := connect(t, w, id, lanTS); n != 0 {
			t.Fatalf("%s: CHILD SA refused: %v", id, n)
		}
	}
	var locals [][]TrafficSelector
	w.res.Each(func(sa *IKESA) bool {
		for _, c := range sa.children {
			locals = append(locals, c.LocalTS)
		}
		return true
	})
	own := w.res.cfg.LocalTS
	if len(locals) != 2 || len(configured) == 0 || &own[0] == &configured[0] || cap(own) != len(own) {
		t.Fatalf("%d CHILD SAs; the engine's selectors are the configuration's, or not capped (cap %d, len %d)", len(locals), cap(own), len(own))
	}
	for i, l := range locals {
		if len(l) == 0 || &l[0] != &own[0] {
			t.Fatalf("CHILD SA %d keeps a copy of the engine's selectors %v", i, l)
		}
	}

	e, restored, _ := restoreInto(t, w.res.SA(resSPI(w)), rcfg, w.now)
	if l := restored.children[0].LocalTS; !slices.Equal(l, own) || &l[0] != &e.cfg.LocalTS[0] || &l[0] == &own[0] {
		t.Fatalf("restored: %v does not share its engine's selectors", l)
	}
}

// IKE SAs of one suite share one copy of their proposal, without an SPI,
// established, rekeyed or restored; a CHILD SA keeps no copy of the
// peer's SPI (its OutSPI). An SA keeps its keys in one array, restored
// too.
func TestSAsShareTheirProposal(t *testing.T) {
	rcfg := responderConfig(t, 1)
	rcfg.PSKs = fleetPSK{}
	w := newWire(t, rcfg)
	for _, id := range []string{"gw-a@fleet.example", "gw-b@fleet.example"} {
		if n := connect(t, w, id, lanTS); n != 0 {
			t.Fatalf("%s: CHILD SA refused: %v", id, n)
		}
	}
	var props []*Selected
	before := map[*IKESA]bool{}
	w.res.Each(func(sa *IKESA) bool {
		props, before[sa] = append(props, sa.prop), true
		for _, c := range sa.children {
			if c.Proposal.SPI != nil {
				t.Errorf("CHILD SA %08x keeps the peer's SPI %x", c.InSPI, c.Proposal.SPI)
			}
		}
		if d := sa.skd(); &d[0] != &sa.km[0] || len(sa.km) != 32+2*36 {
			t.Errorf("SA %016x: keys not in one array of their own", sa.localSPI())
		}
		return true
	})
	if len(props) != 2 || props[0] != props[1] || props[0].SPI != nil {
		t.Fatalf("the SAs' proposals %p and %p are not one, or keep an SPI", props[0], props[1])
	}

	var spi uint64
	w.ini.Each(func(sa *IKESA) bool { spi = sa.localSPI(); return false })
	w.run(R(func(rd *Ready) { w.ini.RekeyIKE(w.now, spi, rd) }), true)
	if w.ini.Stats().IKERekeys != 1 {
		t.Fatal("no IKE rekey")
	}
	var rekeyed *IKESA
	w.res.Each(func(s *IKESA) bool {
		if s.Established() && !before[s] {
			rekeyed = s
		}
		return true
	})
	if rekeyed == nil || rekeyed.prop != props[0] {
		t.Fatalf("the rekeyed SA does not share the proposal (%v)", rekeyed)
	}

	e, restored, snap := restoreInto(t, rekeyed, rcfg, w.now)
	other := snap
	other.SPIr, other.SPIi = snap.SPIr+1, snap.SPIi+1
	other.Children = nil
	again, err := e.Restore(w.now, other, &Ready{})
	if err != nil {
		t.Fatal(err)
	}
	if restored.prop != again.prop || restored.prop == props[0] || restored.prop.String() != props[0].String() || restored.prop.SPI != nil {
		t.Fatalf("restored SAs do not share their engine's proposal")
	}
	if !bytes.Equal(restored.skd(), snap.SKd) || len(restored.km) != len(rekeyed.km) {
		t.Fatal("restored keys differ")
	}
	for i, c := range rekeyed.children {
		rc := restored.children[i]
		if !bytes.Equal(rc.KeyIn().Encr, c.KeyIn().Encr) || !bytes.Equal(rc.KeyOut().Encr, c.KeyOut().Encr) ||
			bytes.Equal(c.KeyIn().Encr, c.KeyOut().Encr) || len(rc.keys) != 2*36 {
			t.Fatalf("restored CHILD SA %08x: keys differ, or are not in one array", c.InSPI)
		}
	}
	for _, out := range []bool{true, false} {
		e1, a1 := restored.skKeys(out)
		e2, a2 := rekeyed.skKeys(out)
		if !bytes.Equal(e1, e2) || !bytes.Equal(a1, a2) {
			t.Fatalf("restored SK_e/SK_a (out %v) differ", out)
		}
	}
}

// restoreInto restores sa's snapshot into a new engine of cfg.
func restoreInto(t *testing.T, sa *IKESA, cfg Config, now time.Time) (*Engine, *IKESA, SAState) {
	t.Helper()
	snap, err := sa.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	e, err := NewEngine(cfg)
	if err != nil {
		t.Fatal(err)
	}
	restored, err := e.Restore(now, snap, &Ready{})
	if err != nil {
		t.Fatal(err)
	}
	return e, restored, snap
}

// A stored CHILD SA whose two directions' keys differ in length is
// refused whole: no SA, no SPI, nothing claimed.
func TestRestoreRefusesUnevenChildKeys(t *testing.T) {
	w, _ := establish(t, responderConfig(t, 1))
	snap, err := w.res.SA(resSPI(w)).Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	cs := &snap.Children[0]
	cs.KeyOut.Encr = cs.KeyOut.Encr[:len(cs.KeyOut.Encr)-1]
	e, err := NewEngine(responderConfig(t, 1))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.Restore(w.now, snap, &Ready{}); err == nil || !strings.Contains(err.Error(), "key lengths") {
		t.Fatalf("Restore = %v, want an error naming the key lengths", err)
	}
	if e.Len() != 0 || len(e.inSPIs) != 0 {
		t.Fatalf("a refused restore left %d SAs and %d ESP SPIs", e.Len(), len(e.inSPIs))
	}
}
