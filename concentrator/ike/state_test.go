package ike

import (
	"fmt"
	"testing"
	"time"
)

// A node restarts: the responder's SA is restored from its snapshot into a
// fresh engine and the gateway carries on with the same SPIs — liveness
// checks (never persisted) moved the message IDs meanwhile.
func TestSnapshotRestoreContinues(t *testing.T) {
	w, spi := establish(t, responderConfig(t, 1))
	rsa := w.res.SA(resSPI(w))
	st, err := rsa.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	// Unpersisted exchanges after the snapshot: two liveness checks by
	// the gateway, three by the responder.
	for i := 0; i < 2; i++ {
		isa := w.ini.SA(spi)
		w.run(R(func(rd *Ready) { isa.request(w.now, w.ini, INFORMATIONAL, nil, rd) }), true)
	}
	for i := 0; i < 3; i++ {
		w.run(R(func(rd *Ready) { rsa.request(w.now, w.res, INFORMATIONAL, nil, rd) }), false)
	}
	fcfg := responderConfig(t, 7)
	fcfg.MsgIDSyncAEAD = true // our gateway answers RFC 6311 over AES-GCM
	fresh, err := NewEngine(fcfg)
	if err != nil {
		t.Fatal(err)
	}
	w.res = fresh
	acts := &Ready{}
	_, err = fresh.Restore(w.now, st, acts)
	if err != nil {
		t.Fatal(err)
	}
	if len(acts.DataPlane) != 2 {
		t.Fatalf("restore data-plane actions %d, want InstallChild and SetSeqLimit", len(acts.DataPlane))
	}
	// Both sides announced RFC 6311: the restored SA synchronises at once,
	// and asks the gateway to skip a block of outbound sequence numbers.
	gc := w.ini.SA(spi).children[0]
	resv := gc.seq.outResv
	w.run(acts, false)
	if gc.seq.outResv != resv+SeqBlockStart || gc.OutSeqReserved != resv+SeqBlockStart {
		t.Fatalf("gateway reservation %d after IPSEC_REPLAY_COUNTER_SYNC, want %d", gc.seq.outResv, resv+SeqBlockStart)
	}
	if len(w.skips) != 1 || w.skips[0] != (SkipSeq{InSPI: gc.InSPI, Delta: SeqBlockStart}) {
		t.Fatalf("gateway data plane skips %+v", w.skips)
	}
	if fresh.Stats().MsgIDSyncs != 1 || w.ini.Stats().MsgIDSyncsAnswered != 1 {
		t.Fatalf("RFC 6311 synchronisation: ours %+v, gateway %+v", fresh.Stats(), w.ini.Stats())
	}
	fsa := fresh.SA(st.SPIr)
	if fsa.nextIn != w.ini.SA(spi).nextOut || fsa.nextOut != st.NextOutReserved || fsa.idUnknown {
		t.Fatalf("after the synchronisation: next in %d out %d (reserved %d), unknown %v", fsa.nextIn, fsa.nextOut, st.NextOutReserved, fsa.idUnknown)
	}
	if _, err := fresh.Restore(w.now, st, &Ready{}); err == nil {
		t.Fatal("restoring the same SA twice succeeded")
	}
	// The gateway rekeys its CHILD SA and then deletes everything: both work.
	w.run(R(func(rd *Ready) { w.ini.RekeyChild(w.now, spi, w.ini.SA(spi).children[0].InSPI, rd) }), true)
	if fresh.Stats().ChildRekeys != 1 {
		t.Fatalf("CHILD rekey after restore: %+v", fresh.Stats())
	}
	// The restored side's own requests are answered too.
	w.run(R(func(rd *Ready) { fresh.RekeyChild(w.now, st.SPIr, fsa.children[len(fsa.children)-1].InSPI, rd) }), false)
	if fresh.Stats().ChildRekeys != 2 || w.ini.Stats().ChildRekeys != 2 {
		t.Fatalf("our CHILD rekey after restore: %+v / %+v", fresh.Stats(), w.ini.Stats())
	}
	w.paired(t, 1)
	w.run(R(func(rd *Ready) { w.ini.Delete(w.now, spi, rd) }), true)
	if fresh.Len() != 0 || w.ini.Len() != 0 {
		t.Fatalf("delete after restore: %d %d", fresh.Len(), w.ini.Len())
	}
	_ = time.Second
}

func TestResponseCacheExpires(t *testing.T) {
	w, _ := establish(t, responderConfig(t, 1))
	rsa := w.res.SA(resSPI(w))
	if rsa.lastResp == nil {
		t.Fatal("no cached IKE_AUTH response right after establishment")
	}
	w.now = w.now.Add(ResponseCacheTTL + time.Second)
	w.run(R(func(rd *Ready) { w.res.Tick(w.now, rd) }), false)
	if rsa.lastResp != nil {
		t.Fatal("IKE_AUTH response still cached after ResponseCacheTTL")
	}
}

// Every state change of an established SA is persisted once, liveness
// checks never.
func TestPersistedChanges(t *testing.T) {
	rcfg := responderConfig(t, 1)
	rcfg.DPDDelay = 10 * time.Second
	w, spi := establish(t, rcfg)
	kinds := func() []PersistKind {
		var k []PersistKind
		for _, p := range w.persists {
			k = append(k, p.Kind)
		}
		return k
	}
	if got := kinds(); len(got) != 1 || got[0] != PersistEstablished || len(w.persists[0].State.Children) != 1 {
		t.Fatalf("after IKE_AUTH: %v", got)
	}
	for i := 0; i < 5; i++ { // liveness checks: nothing persisted
		w.now = w.now.Add(11 * time.Second)
		w.run(R(func(rd *Ready) { w.res.Tick(w.now, rd) }), false)
	}
	if w.res.Stats().DPDSent == 0 || len(w.persists) != 1 {
		t.Fatalf("DPD sent %d, persisted %v", w.res.Stats().DPDSent, kinds())
	}
	w.run(R(func(rd *Ready) { w.ini.RekeyChild(w.now, spi, w.ini.SA(spi).children[0].InSPI, rd) }), true)
	w.run(R(func(rd *Ready) { w.ini.RekeyIKE(w.now, spi, rd) }), true)
	var ispi uint64
	for k := range w.ini.sas {
		ispi = k
	}
	w.run(R(func(rd *Ready) { w.ini.Delete(w.now, ispi, rd) }), true)
	want := []PersistKind{PersistEstablished, PersistChildRekeyed, PersistChildDeleted, PersistIKERekeyed, PersistDeleted}
	got := kinds()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("persisted %v, want %v", got, want)
	}
	if w.persists[2].Released[0] == 0 || w.persists[3].OldSPI == 0 || w.persists[3].State == nil {
		t.Fatalf("details: %+v", w.persists)
	}
}
