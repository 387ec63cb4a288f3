package ike

import (
	"net/netip"
	"testing"
	"time"
)

// live returns the CHILD SAs installed and not removed, per side, by
// inbound SPI.
func (w *wire) live() (ini, res map[uint32]*ChildSA) {
	ini, res = map[uint32]*ChildSA{}, map[uint32]*ChildSA{}
	for i, a := range w.order {
		side := res
		if w.sides[i] {
			side = ini
		}
		switch a := a.(type) {
		case InstallChild:
			side[a.Child.InSPI] = a.Child
		case RemoveChild:
			delete(side, a.Child.InSPI)
		}
	}
	return ini, res
}

// paired checks that each side has exactly n CHILD SAs and that they pair
// up by SPI and keys.
func (w *wire) paired(t *testing.T, n int) {
	t.Helper()
	ini, res := w.live()
	if len(ini) != n || len(res) != n {
		t.Fatalf("live CHILD SAs: initiator %d, responder %d, want %d each", len(ini), len(res), n)
	}
	for spi, c := range ini {
		r := res[c.OutSPI]
		if r == nil || r.OutSPI != spi || string(r.KeyIn().Encr) != string(c.KeyOut().Encr) || string(r.KeyOut().Encr) != string(c.KeyIn().Encr) {
			t.Fatalf("initiator CHILD %08x/%08x has no matching responder SA", c.InSPI, c.OutSPI)
		}
	}
}

func establish(t *testing.T, rcfg Config) (*wire, uint64) {
	t.Helper()
	w := newWire(t, rcfg)
	spi := w.establish(t, pskInitiation(t))
	return w, spi
}

func resSPI(w *wire) uint64 {
	for spi := range w.res.sas {
		return spi
	}
	return 0
}

func TestConcentratorRekeysChildOnSchedule(t *testing.T) {
	rcfg := responderConfig(t, 1)
	rcfg.ChildRekey = NewSmoothScheduler(50*time.Minute, 10*time.Minute, 0, newDetRand(5))
	w, _ := establish(t, rcfg)
	c := w.installs[0].Child
	at := c.RekeyAt()
	if at.Before(c.Created.Add(40*time.Minute)) || at.After(c.Created.Add(50*time.Minute+time.Second)) {
		t.Fatalf("rekey at %v after creation, want within [40m, 50m]", at.Sub(c.Created))
	}
	// Advance the clock past the rekey: the concentrator rekeys, deletes the old SA.
	for w.now.Before(at.Add(time.Second)) {
		w.now = w.now.Add(30 * time.Second)
		w.run(R(func(rd *Ready) { w.res.Tick(w.now, rd) }), false)
	}
	w.paired(t, 1)
	if w.res.Stats().ChildRekeys != 1 || w.count(EventChildRekeyed) != 2 {
		t.Fatalf("rekeys: %+v", w.res.Stats())
	}
	ini, _ := w.live()
	for spi := range ini {
		if spi == w.installs[1].Child.InSPI {
			t.Fatal("the initiator still uses the old CHILD SA")
		}
	}
	// Two cycles: it rekeys again.
	for i := 0; i < 200 && w.res.Stats().ChildRekeys < 2; i++ {
		w.now = w.now.Add(30 * time.Second)
		w.run(R(func(rd *Ready) { w.res.Tick(w.now, rd) }), false)
	}
	w.paired(t, 1)
	if w.res.Stats().ChildRekeys != 2 {
		t.Fatal("no second rekey")
	}
}

func TestGatewayRekeysChildWithPFS(t *testing.T) {
	w, spi := establish(t, responderConfig(t, 1))
	sa := w.ini.SA(spi)
	sa.ini.ESPProposals = mustProposals(t, true, "aes256gcm16-x25519")
	w.run(R(func(rd *Ready) { w.ini.RekeyChild(w.now, spi, sa.children[0].InSPI, rd) }), true)
	w.paired(t, 1)
	if w.res.Stats().ChildRekeys != 1 || w.ini.Stats().ChildRekeys != 1 {
		t.Fatalf("rekeys: responder %d initiator %d", w.res.Stats().ChildRekeys, w.ini.Stats().ChildRekeys)
	}
	ini, _ := w.live()
	for _, c := range ini {
		if c.Proposal.Group != 31 {
			t.Fatalf("rekeyed CHILD SA without PFS: %v", c.Proposal.String())
		}
	}
}

func TestSimultaneousChildRekey(t *testing.T) {
	for seed := byte(0); seed < 8; seed++ {
		rcfg := responderConfig(t, 10+seed)
		w, spi := establish(t, rcfg)
		iSA := w.ini.SA(spi)
		rSA := w.res.SA(resSPI(w))
		a := R(func(rd *Ready) { w.ini.RekeyChild(w.now, spi, iSA.children[0].InSPI, rd) })
		b := R(func(rd *Ready) { w.res.RekeyChild(w.now, rSA.SPIr, rSA.children[0].InSPI, rd) })
		w.runHops(hop{a, true}, hop{b, false})
		w.paired(t, 1)
		if w.ini.Stats().RekeyCollisions != 1 || w.res.Stats().RekeyCollisions != 1 {
			t.Fatalf("seed %d: collisions initiator %d responder %d", seed, w.ini.Stats().RekeyCollisions, w.res.Stats().RekeyCollisions)
		}
	}
}

func TestIKERekeyBothWays(t *testing.T) {
	for _, byGateway := range []bool{true, false} {
		w, spi := establish(t, responderConfig(t, 1))
		if byGateway {
			w.run(R(func(rd *Ready) { w.ini.RekeyIKE(w.now, spi, rd) }), true)
		} else {
			w.run(R(func(rd *Ready) { w.res.RekeyIKE(w.now, resSPI(w), rd) }), false)
		}
		if w.ini.Len() != 1 || w.res.Len() != 1 {
			for _, e := range w.events {
				t.Logf("%v ini=%v %x/%x %s %v", e.Kind, e.Initiator, e.SPIi, e.SPIr, e.Reason, e.Notify)
			}
			t.Fatalf("byGateway=%v: SAs after IKE rekey: initiator %d responder %d", byGateway, w.ini.Len(), w.res.Len())
		}
		w.paired(t, 1)
		if w.ini.Stats().IKERekeys != 1 || w.res.Stats().IKERekeys != 1 {
			t.Fatal("IKE rekey not counted on both sides")
		}
		// The successor works: rekey a CHILD SA and delete everything over it.
		var ispi uint64
		for k := range w.ini.sas {
			ispi = k
		}
		isa := w.ini.SA(ispi)
		if isa == nil || !isa.Established() || len(isa.children) != 1 {
			t.Fatalf("successor on the gateway: %+v", isa)
		}
		w.run(R(func(rd *Ready) { w.ini.RekeyChild(w.now, ispi, isa.children[0].InSPI, rd) }), true)
		w.paired(t, 1)
		w.run(R(func(rd *Ready) { w.ini.Delete(w.now, ispi, rd) }), true)
		if w.ini.Len() != 0 || w.res.Len() != 0 {
			t.Fatalf("after delete: %d %d", w.ini.Len(), w.res.Len())
		}
		w.paired(t, 0)
	}
}

func TestDeleteChildBothWays(t *testing.T) {
	w, spi := establish(t, responderConfig(t, 1))
	w.run(R(func(rd *Ready) { w.ini.DeleteChild(w.now, spi, w.ini.SA(spi).children[0].InSPI, rd) }), true)
	w.paired(t, 0)
	if w.ini.Len() != 1 || w.res.Len() != 1 {
		t.Fatal("IKE SA should survive the CHILD delete")
	}
	w2, _ := establish(t, responderConfig(t, 1))
	rs := w2.res.SA(resSPI(w2))
	w2.run(R(func(rd *Ready) { w2.res.DeleteChild(w2.now, rs.SPIr, rs.children[0].InSPI, rd) }), false)
	w2.paired(t, 0)
}

func TestDPDDeadPeer(t *testing.T) {
	rcfg := responderConfig(t, 1)
	rcfg.DPDDelay = 30 * time.Second
	w, _ := establish(t, rcfg)
	// An active peer is never probed.
	w.now = w.now.Add(20 * time.Second)
	w.run(R(func(rd *Ready) { w.res.Tick(w.now, rd) }), false)
	if w.res.Stats().DPDSent != 0 {
		t.Fatal("probed a peer that was heard from recently")
	}
	// A silent but alive peer answers the probe.
	w.now = w.now.Add(15 * time.Second)
	w.run(R(func(rd *Ready) { w.res.Tick(w.now, rd) }), false)
	if w.res.Stats().DPDSent != 1 || w.res.Len() != 1 {
		t.Fatalf("DPD %+v", w.res.Stats())
	}
	// The gateway vanishes: probes go unanswered, the SA and its CHILD go.
	w.drop = func(bool, []byte) bool { return true }
	for i := 0; i < 400 && w.res.Len() > 0; i++ {
		w.now = w.now.Add(time.Second)
		w.run(R(func(rd *Ready) { w.res.Tick(w.now, rd) }), false)
	}
	if w.res.Len() != 0 || w.res.Stats().DPDDead != 1 {
		t.Fatalf("dead peer kept: %d SAs, stats %+v", w.res.Len(), w.res.Stats())
	}
	_, res := w.live()
	if len(res) != 0 {
		t.Fatal("CHILD SA of a dead peer left installed")
	}
	if len(w.checks) != 0 {
		t.Fatalf("%d questions about traffic without TrafficLiveness", len(w.checks))
	}
	_ = netip.Addr{}
}

// TestDPDTraffic: with TrafficLiveness a due liveness check first asks
// for the peer's inbound ESP; a count that moved is a sign of life and the
// check waits another DPDDelay, one that did not (or none known, or no
// answer within RetransmitTimeout) sends the check.
func TestDPDTraffic(t *testing.T) {
	rcfg := responderConfig(t, 1)
	rcfg.DPDDelay = 30 * time.Second
	rcfg.TrafficLiveness = true
	w, _ := establish(t, rcfg)
	rsa := w.res.SA(resSPI(w))
	in := rsa.children[0].InSPI
	tick := func(d time.Duration) {
		w.now = w.now.Add(d)
		w.run(R(func(rd *Ready) { w.res.Tick(w.now, rd) }), false)
	}
	answer := func(packets uint64) {
		c := w.checks[len(w.checks)-1]
		w.run(R(func(rd *Ready) { w.res.Traffic(w.now, c.SPI, c.InSPIs, []uint64{packets}, rd) }), false)
	}
	tick(31 * time.Second)
	if st := w.res.Stats(); st.DPDSent != 0 || len(w.checks) != 1 || w.checks[0].SPI != rsa.SPIr || len(w.checks[0].InSPIs) != 1 || w.checks[0].InSPIs[0] != in {
		t.Fatalf("due check: stats %+v, questions %+v; want one for %016x/%08x and nothing sent", st, w.checks, rsa.SPIr, in)
	}
	// Ten packets came: nothing is sent, the next question comes a
	// DPDDelay later.
	answer(10)
	tick(20 * time.Second)
	if st := w.res.Stats(); st.DPDSent != 0 || st.DPDTraffic != 1 || len(w.checks) != 1 {
		t.Fatalf("after traffic: stats %+v, %d questions", st, len(w.checks))
	}
	tick(11 * time.Second)
	if len(w.checks) != 2 {
		t.Fatalf("%d questions a DPDDelay after the traffic, want 2", len(w.checks))
	}
	// The same count: the check goes out, and the peer answers it.
	answer(10)
	if st := w.res.Stats(); st.DPDSent != 1 || st.DPDTraffic != 1 || w.res.Len() != 1 {
		t.Fatalf("no new traffic: stats %+v, %d SAs", w.res.Stats(), w.res.Len())
	}
	// A count the data plane does not know is no sign of life.
	tick(31 * time.Second)
	answer(TrafficUnknown)
	if st := w.res.Stats(); st.DPDSent != 2 || len(w.checks) != 3 {
		t.Fatalf("unknown count: stats %+v, %d questions", st, len(w.checks))
	}
	// A question nobody answers: the check goes out RetransmitTimeout
	// after it was due, and an answer after that changes nothing.
	tick(30 * time.Second)
	tick(w.res.cfg.RetransmitTimeout / 2)
	if st := w.res.Stats(); st.DPDSent != 2 || len(w.checks) != 4 {
		t.Fatalf("question pending: stats %+v, %d questions", st, len(w.checks))
	}
	tick(w.res.cfg.RetransmitTimeout)
	answer(99)
	if st := w.res.Stats(); st.DPDSent != 3 || st.DPDTraffic != 1 || len(w.checks) != 4 {
		t.Fatalf("unanswered question: stats %+v, %d questions; want the check sent", st, len(w.checks))
	}
	// A dead peer with ESP counted once: the checks after it find it dead.
	w.drop = func(bool, []byte) bool { return true }
	for i := 0; i < 400 && w.res.Len() > 0; i++ {
		tick(time.Second)
		if n := len(w.checks); n > 4 && w.res.SA(rsa.SPIr) != nil && w.res.SA(rsa.SPIr).trafficAsked {
			answer(99)
		}
	}
	if w.res.Len() != 0 || w.res.Stats().DPDDead != 1 {
		t.Fatalf("dead peer kept: %d SAs, stats %+v", w.res.Len(), w.res.Stats())
	}
}

func TestRekeyOverlapUntilTraffic(t *testing.T) {
	rcfg := responderConfig(t, 1)
	rcfg.ChildRekey = NewSmoothScheduler(50*time.Minute, 10*time.Minute, 0, newDetRand(5))
	rcfg.RekeyOverlap = 30 * time.Second
	w, _ := establish(t, rcfg)
	rsa := w.res.SA(resSPI(w))
	old := rsa.children[0]
	for old.replacedBy == nil {
		w.now = w.now.Add(10 * time.Second)
		w.run(R(func(rd *Ready) { w.res.Tick(w.now, rd) }), false)
	}
	_, res := w.live()
	if len(res) != 2 {
		t.Fatalf("responder has %d CHILD SAs during the overlap, want old and new", len(res))
	}
	var repl InstallChild
	for _, a := range w.installs {
		if a.Replaces == old.InSPI {
			repl = a
		}
	}
	if repl.Child == nil {
		t.Fatal("the rekeyed CHILD SA's install does not name the SA it replaces")
	}
	// Traffic on the new SA: the old one is deleted at the next tick.
	w.res.ChildActive(w.now, repl.Child.InSPI)
	w.now = w.now.Add(200 * time.Millisecond)
	w.run(R(func(rd *Ready) { w.res.Tick(w.now, rd) }), false)
	w.paired(t, 1)

	// Without traffic the overlap runs out.
	for i := 0; i < 400 && w.res.Stats().ChildRekeys < 2; i++ {
		w.now = w.now.Add(10 * time.Second)
		w.run(R(func(rd *Ready) { w.res.Tick(w.now, rd) }), false)
	}
	if _, res := w.live(); len(res) != 2 {
		t.Fatalf("second rekey: %d CHILD SAs during the overlap", len(res))
	}
	w.now = w.now.Add(31 * time.Second)
	w.run(R(func(rd *Ready) { w.res.Tick(w.now, rd) }), false)
	w.paired(t, 1)
}

func TestKeepalivesOnlyBehindNAT(t *testing.T) {
	for _, behind := range []bool{false, true} {
		rcfg := responderConfig(t, 1)
		rcfg.KeepaliveInterval = 20 * time.Second
		res, _ := NewEngine(rcfg)
		w := &wire{t: t, ini: initiatorEngine(t, 2), res: res, now: t0, resNAT: behind}
		acts := &Ready{}
		w.ini.Initiate(w.now, pskInitiation(t), acts)
		w.run(acts, true)
		if w.count(EventIKEEstablished) != 2 {
			t.Fatalf("behind=%v: not established: %+v", behind, w.events)
		}
		for i := 0; i < 12; i++ {
			w.now = w.now.Add(10 * time.Second)
			w.run(R(func(rd *Ready) { w.res.Tick(w.now, rd) }), false)
		}
		if behind && (w.keepalives < 5 || w.keepalives > 7) {
			t.Fatalf("behind a NAT: %d keepalives in 2 minutes, want 6", w.keepalives)
		}
		if !behind && w.keepalives != 0 {
			t.Fatalf("not behind a NAT (encapsulation only forced): %d keepalives", w.keepalives)
		}
	}
}

func TestExpireChild(t *testing.T) {
	w, _ := establish(t, responderConfig(t, 1))
	rsa := w.res.SA(resSPI(w))
	in := rsa.children[0].InSPI
	// Soft: rekeyed at the next tick, though no scheduler is configured.
	w.run(R(func(rd *Ready) { w.res.ExpireChild(w.now, in, false, rd) }), false)
	w.now = w.now.Add(200 * time.Millisecond)
	w.run(R(func(rd *Ready) { w.res.Tick(w.now, rd) }), false)
	w.paired(t, 1)
	if w.res.Stats().ChildRekeys != 1 {
		t.Fatalf("soft expiry did not rekey: %+v", w.res.Stats())
	}
	// Hard: the CHILD SA is deleted (on both sides).
	w.run(R(func(rd *Ready) { w.res.ExpireChild(w.now, rsa.children[0].InSPI, true, rd) }), false)
	w.paired(t, 0)
	if w.res.Len() != 1 {
		t.Fatal("the IKE SA went with its CHILD SA")
	}
}

// A Delete asked while an exchange is under way waits for it, then goes
// to the peer (instead of dropping the SA without a word).
func TestDeleteWaitsForExchange(t *testing.T) {
	w, spi := establish(t, responderConfig(t, 1))
	acts := R(func(rd *Ready) { w.ini.RekeyChild(w.now, spi, w.ini.SA(spi).children[0].InSPI, rd) })
	w.ini.Delete(w.now, spi, acts)
	if w.ini.Len() != 1 {
		t.Fatal("deleted at once while a rekey was under way")
	}
	w.run(acts, true)
	if w.ini.Len() != 0 || w.res.Len() != 0 {
		t.Fatalf("after the rekey and the delete: initiator %d SAs, responder %d", w.ini.Len(), w.res.Len())
	}
	w.paired(t, 0)
}

func TestCheckLiveness(t *testing.T) {
	w, spi := establish(t, responderConfig(t, 1))
	sa := w.ini.SA(spi)
	next := sa.nextOut
	var started bool
	w.run(R(func(rd *Ready) { started = w.ini.CheckLiveness(w.now, spi, rd) }), true)
	if !started || w.ini.Stats().DPDSent != 1 || sa.nextOut != next+1 || sa.req != nil {
		t.Fatalf("liveness check: started %v, stats %+v, message IDs %d -> %d, outstanding %v", started, w.ini.Stats(), next, sa.nextOut, sa.req != nil)
	}
	// Nothing to check: no such SA, or one whose check is unanswered yet.
	var rd Ready
	if w.ini.CheckLiveness(w.now, spi+1, &rd) || len(rd.Send) != 0 {
		t.Fatal("liveness check on an unknown SA")
	}
	w.drop = func(bool, []byte) bool { return true }
	rd.Reset()
	if !w.ini.CheckLiveness(w.now, spi, &rd) || len(rd.Send) != 1 {
		t.Fatalf("second check: %d sends", len(rd.Send))
	}
	rd.Reset()
	if w.ini.CheckLiveness(w.now, spi, &rd) || len(rd.Send) != 0 {
		t.Fatal("a check started while one is outstanding")
	}
	// Unanswered, it ends the SA as DPD does.
	for i := 0; i < 400 && w.ini.Len() > 0; i++ {
		w.now = w.now.Add(time.Second)
		w.run(R(func(rd *Ready) { w.ini.Tick(w.now, rd) }), false)
	}
	if w.ini.Len() != 0 || w.ini.Stats().DPDDead != 1 {
		t.Fatalf("dead peer kept: %d SAs, stats %+v", w.ini.Len(), w.ini.Stats())
	}
}
