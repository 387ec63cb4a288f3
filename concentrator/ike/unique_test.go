package ike

import (
	"testing"
)

func TestUniqueIDsPolicy(t *testing.T) {
	want := map[UniqueIDs][2]UniqueAction{ // without, with INITIAL_CONTACT
		UniqueNever:   {UniqueNone, UniqueNone},
		UniqueNo:      {UniqueIndexOnly, UniqueDeleteOlder},
		UniqueReplace: {UniqueDeleteOlder, UniqueDeleteOlder},
		UniqueKeep:    {UniqueRefuse, UniqueDeleteOlder},
	}
	for u, w := range want {
		if got := u.Action(false); got != w[0] {
			t.Errorf("%v without INITIAL_CONTACT: %v, want %v", u, got, w[0])
		}
		if got := u.Action(true); got != w[1] {
			t.Errorf("%v with INITIAL_CONTACT: %v, want %v", u, got, w[1])
		}
		if p, ok := ParseUniqueIDs(u.String()); !ok || p != u {
			t.Errorf("ParseUniqueIDs(%q) = %v, %v", u.String(), p, ok)
		}
	}
	if _, ok := ParseUniqueIDs("yes"); ok {
		t.Error("ParseUniqueIDs accepts yes")
	}
}

// The responder's Established write carries the policy's answer for the
// peer's first IKE_AUTH request, with or without INITIAL_CONTACT, and the
// peer identity; other writes ask for nothing.
func TestEstablishedCarriesUniqueAction(t *testing.T) {
	for _, u := range []UniqueIDs{UniqueNever, UniqueNo, UniqueReplace, UniqueKeep} {
		for _, ic := range []bool{false, true} {
			rcfg := responderConfig(t, 1)
			rcfg.UniqueIDs = u
			w := newWire(t, rcfg)
			ini := pskInitiation(t)
			ini.NoInitialContact = !ic
			rd := &Ready{}
			if _, err := w.ini.Initiate(w.now, ini, rd); err != nil {
				t.Fatal(err)
			}
			w.run(rd, true)
			var est *Persist
			for i := range w.persists {
				if w.persists[i].Kind == PersistEstablished {
					est = &w.persists[i]
				} else if w.persists[i].Unique != UniqueNone {
					t.Fatalf("%v: %v write asks %v", u, w.persists[i].Kind, w.persists[i].Unique)
				}
			}
			if est == nil {
				t.Fatalf("%v ic=%v: no Established write", u, ic)
			}
			if est.Unique != u.Action(ic) || !est.PeerID.Equal(gwID) {
				t.Fatalf("%v ic=%v: Unique %v PeerID %v, want %v %v", u, ic, est.Unique, est.PeerID, u.Action(ic), gwID)
			}
		}
	}
}

// Replace deletes an established SA at once: its record (a Deleted write),
// its CHILD SAs, and one INFORMATIONAL Delete to the peer, which deletes
// its side.
func TestReplaceDeletesAtOnce(t *testing.T) {
	rcfg := responderConfig(t, 1)
	rcfg.UniqueIDs = UniqueReplace
	w, ispi := establish(t, rcfg)
	spi := resSPI(w)
	w.paired(t, 1)
	before := len(w.persists)
	rd := &Ready{}
	if !w.res.Replace(w.now, spi, true, rd) {
		t.Fatal("Replace found no SA")
	}
	if w.res.SA(spi) != nil {
		t.Fatal("the replaced SA is still in the engine")
	}
	if len(rd.Send) != 1 {
		t.Fatalf("sends: %d, want one INFORMATIONAL Delete", len(rd.Send))
	}
	w.run(rd, false)
	deleted := false
	for _, p := range w.persists[before:] {
		if p.Kind == PersistDeleted && p.SPI == spi && p.PeerID.Equal(gwID) && len(p.Released) == 1 {
			deleted = true
		}
	}
	if !deleted {
		t.Fatalf("no Deleted write naming the identity and the CHILD SA: %+v", w.persists[before:])
	}
	_, res := w.live()
	if len(res) != 0 {
		t.Fatalf("responder CHILD SAs left: %d", len(res))
	}
	if w.ini.SA(ispi) != nil {
		t.Fatal("the peer did not delete its side on our Delete")
	}
	if w.res.Replace(w.now, spi, true, &Ready{}) {
		t.Fatal("Replace of a gone SA reports success")
	}
	// Without notify: nothing is sent.
	w2, _ := establish(t, rcfg)
	rd = &Ready{}
	if !w2.res.Replace(w2.now, resSPI(w2), false, rd) || len(rd.Send) != 0 {
		t.Fatalf("silent Replace: sends %d", len(rd.Send))
	}
}
