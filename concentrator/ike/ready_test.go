package ike

import (
	"testing"
	"time"
)

func lastPersist(w *wire) Persist { return w.persists[len(w.persists)-1] }

// A retransmitted IKE_AUTH is not answered from the response cache while
// the record of the SA it established is not committed; the original
// answer leaves on commit, and later retransmissions get the cached one.
func TestRetransmittedAuthWaitsForCommit(t *testing.T) {
	w := newWire(t, responderConfig(t, 1))
	w.hold = true
	spi := initiate(w, pskInitiation(t))
	if w.count(EventIKEEstablished) != 1 || len(w.held) != 1 || len(w.persists) != 1 {
		t.Fatalf("want the responder established with its answer held: events %d held %d persists %d",
			w.count(EventIKEEstablished), len(w.held), len(w.persists))
	}
	p := w.persists[0]
	if p.Kind != PersistEstablished || p.Version == 0 || p.State == nil {
		t.Fatalf("persist %+v", p)
	}
	// The gateway retransmits IKE_AUTH before the commit: no answer.
	w.now = w.now.Add(DefaultRetransmitTimeout)
	w.run(R(func(rd *Ready) { w.ini.Tick(w.now, rd) }), true)
	if w.ini.Stats().Retransmits != 1 {
		t.Fatalf("gateway retransmissions %d, want 1", w.ini.Stats().Retransmits)
	}
	if got := w.res.Stats(); got.HeldRetransmits != 1 || got.DuplicateRequests != 0 {
		t.Fatalf("answered a retransmission before its record was committed: %+v", got)
	}
	if w.ini.SA(spi).Established() {
		t.Fatal("the gateway is established before the responder's record is committed")
	}
	// The commit releases the original answer; lose it on the way.
	lost := false
	w.drop = func(toResponder bool, msg []byte) bool {
		h, _ := DecodeHeader(msg)
		if !toResponder && h.Exchange == IKE_AUTH && !lost {
			lost = true
			return true
		}
		return false
	}
	w.commit()
	if !lost {
		t.Fatal("the commit did not release the held IKE_AUTH response")
	}
	// Now a retransmission is answered from the cache.
	w.now = w.now.Add(2 * DefaultRetransmitTimeout)
	w.run(R(func(rd *Ready) { w.ini.Tick(w.now, rd) }), true)
	if w.res.Stats().DuplicateRequests != 1 || !w.ini.SA(spi).Established() {
		t.Fatalf("after the commit: responder %+v, gateway established %v", w.res.Stats(), w.ini.SA(spi).Established())
	}
}

func initiate(w *wire, ini Initiation) uint64 {
	acts := &Ready{}
	spi, err := w.ini.Initiate(w.now, ini, acts)
	if err != nil {
		w.t.Fatal(err)
	}
	w.run(acts, true)
	return spi
}

// A new SA whose record cannot be written is forgotten without a word.
func TestPersistFailedForgetsNewSA(t *testing.T) {
	w := newWire(t, responderConfig(t, 1))
	w.hold = true
	spi := initiate(w, pskInitiation(t))
	p := w.persists[0]
	rd := &Ready{}
	w.res.PersistFailed(p.SPI, p.Version, rd)
	if w.res.Len() != 0 || len(rd.Send) != 0 || len(rd.Events) != 1 || rd.Events[0].Kind != EventIKEFailed {
		t.Fatalf("after the failed write: %d SAs, batch %+v", w.res.Len(), rd)
	}
	w.held = nil
	w.hold = false
	w.now = w.now.Add(DefaultRetransmitTimeout)
	w.run(R(func(rd *Ready) { w.ini.Tick(w.now, rd) }), true)
	if w.ini.SA(spi).Established() || w.res.Stats().DuplicateRequests != 0 {
		t.Fatal("a forgotten SA answered")
	}
}

// An established SA whose write failed persists its full state again in
// its next step, and what that step sends waits for that write.
func TestPersistFailedMarksDirty(t *testing.T) {
	w, spi := establish(t, responderConfig(t, 1))
	before := len(w.persists)
	w.hold = true
	w.run(R(func(rd *Ready) { w.ini.RekeyChild(w.now, spi, w.ini.SA(spi).children[0].InSPI, rd) }), true)
	if len(w.persists) != before+1 || lastPersist(w).Kind != PersistChildRekeyed || len(w.held) != 1 {
		t.Fatalf("rekey: persists %d held %d", len(w.persists)-before, len(w.held))
	}
	p := lastPersist(w)
	w.res.PersistFailed(p.SPI, p.Version, &Ready{})
	w.held, w.hold = nil, false // the failed batch's answer is never sent
	if w.res.Stats().PersistFailures != 1 {
		t.Fatal("failure not counted")
	}
	// The gateway retransmits: the answer goes out behind a full write.
	w.now = w.now.Add(DefaultRetransmitTimeout)
	w.run(R(func(rd *Ready) { w.ini.Tick(w.now, rd) }), true)
	q := w.persists[before+1] // then the gateway deletes the old CHILD SA
	if q.Kind != PersistUpdated || q.Version <= p.Version || q.State == nil || len(q.State.Children) != 1 {
		t.Fatalf("after the failure the next step persisted %+v", q)
	}
	if w.res.Stats().DuplicateRequests != 1 {
		t.Fatalf("retransmission not answered: %+v", w.res.Stats())
	}
	w.paired(t, 1)
	// Nothing is dirty any more: a quiet tick writes nothing.
	n := len(w.persists)
	w.now = w.now.Add(time.Second)
	w.run(R(func(rd *Ready) { w.res.Tick(w.now, rd) }), false)
	if len(w.persists) != n {
		t.Fatal("persisted again without a change")
	}
}
