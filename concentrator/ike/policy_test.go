package ike

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
)

func mustPattern(t *testing.T, s string) IdentityPattern {
	t.Helper()
	p, err := ParseIdentityPattern(s)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func ts(s string) []TrafficSelector {
	return []TrafficSelector{SelectorFromPrefix(netip.MustParsePrefix(s))}
}

func rfc822(s string) Identity { return Identity{Type: IDRFC822Addr, Data: []byte(s)} }

func TestIdentityPatterns(t *testing.T) {
	dn, err := ParseIdentity("C=CH, O=Org, CN=gw7")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		pat  string
		id   Identity
		want bool
	}{
		{"gw1@iot.example", rfc822("gw1@iot.example"), true},
		{"gw1@iot.example", rfc822("gw11@iot.example"), false},
		{"*@iot.example", rfc822("gw11@iot.example"), true},
		{"*@iot.example", rfc822("gw11@iot.example.evil"), false},
		{"gw*@*.example", rfc822("gw3@a.b.example"), true},
		{"gw*@*.example", rfc822("xgw3@a.example"), false},
		{"%any", rfc822("anything@x"), true},
		{"C=CH, O=Org, CN=*", dn, true},
		{"C=CH, O=Other, CN=*", dn, false},
		{"C=CH, O=Org, CN=gw7", dn, true},
	} {
		if got := mustPattern(t, c.pat).Matches(c.id); got != c.want {
			t.Errorf("%q matches %v: %v, want %v", c.pat, c.id, got, c.want)
		}
	}
	if _, err := ParseIdentityPattern(""); err == nil {
		t.Error("empty pattern accepted")
	}
}

// policyWire is a responder with per-identity policies and any PSK.
func policyWire(t *testing.T, pols ...*PeerPolicy) *wire {
	rcfg := responderConfig(t, 1)
	rcfg.PSKs = fleetPSK{}
	rcfg.RemoteTS = nil
	rcfg.Policies = pols
	return newWire(t, rcfg)
}

// connect brings up an IKE SA for id proposing tsi and returns the
// notify of the responder's CHILD SA failure (0: installed).
func connect(t *testing.T, w *wire, id string, tsi []TrafficSelector) NotifyType {
	t.Helper()
	ini := pskInitiation(t)
	ini.Creds.ID = rfc822(id)
	ini.TSi = tsi
	before := len(w.events)
	initiate(w, ini)
	est := 0
	for _, e := range w.events[before:] {
		if e.Kind == EventIKEEstablished && !e.Initiator {
			est++
		}
		if e.Kind == EventChildFailed && e.Initiator {
			return e.Notify
		}
	}
	if est != 1 {
		t.Fatalf("%s: IKE SA not established: %+v", id, w.events[before:])
	}
	return 0
}

func installedFor(w *wire, id string) []TrafficSelector {
	var out []TrafficSelector
	for i, ic := range w.installs {
		if !w.sides[i] && ic.PeerID.String() == id {
			out = append(out, ic.Child.RemoteTS...)
		}
	}
	return out
}

// Each gateway may claim only its policy's selectors: gwA proposing gwB's
// subnet gets TS_UNACCEPTABLE and gwB keeps it.
func TestPolicyPerIdentitySelectors(t *testing.T) {
	w := policyWire(t,
		&PeerPolicy{Name: "a", ID: mustPattern(t, "gwa@iot.example"), RemoteTS: ts("10.1.0.0/24"), Exclusive: true},
		&PeerPolicy{Name: "b", ID: mustPattern(t, "gwb@iot.example"), RemoteTS: ts("10.2.0.0/24"), Exclusive: true},
	)
	if n := connect(t, w, "gwb@iot.example", ts("10.2.0.0/24")); n != 0 {
		t.Fatalf("gwB's own subnet refused: %v", n)
	}
	if n := connect(t, w, "gwa@iot.example", ts("10.2.0.0/24")); n != TS_UNACCEPTABLE {
		t.Fatalf("gwA proposing gwB's subnet: notify %v, want TS_UNACCEPTABLE", n)
	}
	if n := connect(t, w, "gwa@iot.example", ts("10.0.0.0/8")); n != 0 {
		t.Fatalf("gwA proposing a wider range: notify %v, want it narrowed to its own", n)
	}
	if got := FormatSelectors(installedFor(w, "gwa@iot.example")); got != "10.1.0.0/24" {
		t.Fatalf("gwA was given %s, want 10.1.0.0/24 only", got)
	}
	if got := FormatSelectors(installedFor(w, "gwb@iot.example")); got != "10.2.0.0/24" {
		t.Fatalf("gwB holds %s", got)
	}
	// An identity no policy matches may claim nothing.
	if n := connect(t, w, "stranger@iot.example", ts("10.1.0.0/24")); n != TS_UNACCEPTABLE {
		t.Fatalf("unmatched identity: notify %v, want TS_UNACCEPTABLE", n)
	}
}

// Under one wildcard policy, the selectors a gateway holds are its own:
// another identity overlapping them is refused until they are free.
func TestPolicyExclusiveSelectors(t *testing.T) {
	w := policyWire(t, &PeerPolicy{Name: "fleet", ID: mustPattern(t, "*@iot.example"), RemoteTS: ts("10.0.0.0/8"), Exclusive: true})
	if n := connect(t, w, "gwb@iot.example", ts("10.2.0.0/24")); n != 0 {
		t.Fatalf("gwB refused: %v", n)
	}
	for _, p := range []string{"10.2.0.0/24", "10.2.0.128/25", "10.0.0.0/8", "10.2.0.77/32"} {
		if n := connect(t, w, "gwa@iot.example", ts(p)); n != TS_UNACCEPTABLE {
			t.Fatalf("gwA proposing %s over gwB's 10.2.0.0/24: notify %v, want TS_UNACCEPTABLE", p, n)
		}
	}
	if n := connect(t, w, "gwa@iot.example", ts("10.1.0.0/24")); n != 0 {
		t.Fatalf("gwA's own subnet refused: %v", n)
	}
	// The same identity may come again with the same selectors (a
	// reauthentication before the old SA is gone).
	if n := connect(t, w, "gwb@iot.example", ts("10.2.0.0/24")); n != 0 {
		t.Fatalf("gwB again: %v", n)
	}
	if got := w.res.Stats().SelectorsRefused; got != 4 {
		t.Fatalf("SelectorsRefused = %d, want 4", got)
	}
	// gwB's SAs go: its subnet is free for another identity.
	for _, sa := range w.res.sas {
		if sa.PeerID.String() == "gwb@iot.example" {
			w.res.remove(sa)
		}
	}
	if n := connect(t, w, "gwc@iot.example", ts("10.2.0.0/24")); n != 0 {
		t.Fatalf("gwC after gwB left: %v", n)
	}
}

// Selectors held on another node of the cluster (SetRemote, from the
// state store) are refused to other identities like local ones; the
// identity itself may claim them again; an SA held here counts by its
// local entry; a claim that goes frees its ranges. Persist carries what
// an SA holds, for the other nodes.
func TestPolicyRemoteSelectors(t *testing.T) {
	w := policyWire(t, &PeerPolicy{Name: "fleet", ID: mustPattern(t, "*@iot.example"), RemoteTS: ts("10.0.0.0/8"), Exclusive: true})
	reg := w.res.cfg.Selectors
	reg.SetRemote(0xabc, "gwb@iot.example", []SelectorRange{{netip.MustParseAddr("10.2.0.0"), netip.MustParseAddr("10.2.0.255")}})
	if n := connect(t, w, "gwa@iot.example", ts("10.2.0.128/25")); n != TS_UNACCEPTABLE {
		t.Fatalf("gwA over gwB's range held elsewhere: notify %v, want TS_UNACCEPTABLE", n)
	}
	if n := connect(t, w, "gwb@iot.example", ts("10.2.0.0/24")); n != 0 {
		t.Fatalf("gwB's own range held elsewhere: %v", n)
	}
	// gwB's SA here: its Persist carries the range; its own remote entry
	// (the store's copy of the same SA) does not count against it.
	var spi uint64
	for _, sa := range w.res.sas {
		if sa.PeerID.String() == "gwb@iot.example" && sa.state == stateEstablished {
			spi = sa.localSPI()
		}
	}
	if got := reg.HeldBy(spi); len(got) != 1 || got[0].Start != netip.MustParseAddr("10.2.0.0") || got[0].End != netip.MustParseAddr("10.2.0.255") {
		t.Fatalf("HeldBy = %v", got)
	}
	var rd Ready
	w.res.sas[spi].persist(w.res, PersistUpdated, &rd)
	if p := rd.Persist[0]; !p.ExclusiveSelectors || len(p.Selectors) != 1 {
		t.Fatalf("Persist without the selectors: %+v", p)
	}
	reg.SetRemote(0xabc, "", nil)
	reg.SetRemote(spi, "gwb@iot.example", reg.HeldBy(spi))
	if reg.Remote() != 1 {
		t.Fatalf("Remote() = %d", reg.Remote())
	}
	for _, sa := range w.res.sas {
		if sa.PeerID.String() == "gwb@iot.example" {
			w.res.remove(sa)
		}
	}
	// gwB's SA is gone here, but the store still names it (until its
	// delete is seen): refused.
	if n := connect(t, w, "gwc@iot.example", ts("10.2.0.0/24")); n != TS_UNACCEPTABLE {
		t.Fatalf("gwC while the store names gwB's SA: %v", n)
	}
	reg.SetRemote(spi, "", nil)
	if n := connect(t, w, "gwc@iot.example", ts("10.2.0.0/24")); n != 0 {
		t.Fatalf("gwC after gwB's claim went: %v", n)
	}
}

// The claim follows an IKE rekey whoever starts it: started by the
// responder (it becomes the new SA's original initiator), the new SA's
// Persist still carries the ranges, and its deletion the claim's end.
func TestPolicySelectorsPersistAcrossOurIKERekey(t *testing.T) {
	w := policyWire(t, &PeerPolicy{Name: "fleet", ID: mustPattern(t, "*@iot.example"), RemoteTS: ts("10.0.0.0/8"), Exclusive: true})
	if n := connect(t, w, "gwb@iot.example", ts("10.2.0.0/24")); n != 0 {
		t.Fatal(n)
	}
	var resSPI uint64
	w.res.Each(func(sa *IKESA) bool { resSPI = sa.localSPI(); return false })
	// lastPersist runs f and returns the responder's last Persist of kind
	// it made.
	lastPersist := func(kind PersistKind, f func(rd *Ready)) *Persist {
		before := len(w.persists)
		w.run(R(f), false)
		var last *Persist
		for i := range w.persists[before:] {
			if p := &w.persists[before+i]; p.Kind == kind {
				last = p
			}
		}
		return last
	}
	rekeyed := lastPersist(PersistIKERekeyed, func(rd *Ready) { w.res.RekeyIKE(w.now, resSPI, rd) })
	if rekeyed == nil {
		t.Fatalf("no PersistIKERekeyed: %+v", w.persists)
	}
	if !rekeyed.ExclusiveSelectors || len(rekeyed.Selectors) != 1 || rekeyed.Selectors[0].Start != netip.MustParseAddr("10.2.0.0") {
		t.Fatalf("our IKE rekey's Persist: exclusive %v, selectors %v", rekeyed.ExclusiveSelectors, rekeyed.Selectors)
	}
	nsa := w.res.sas[rekeyed.SPI]
	if nsa == nil || !nsa.initiator {
		t.Fatalf("the new IKE SA: %+v (want ours as its original initiator)", nsa)
	}
	deleted := lastPersist(PersistDeleted, func(rd *Ready) { w.res.Delete(w.now, rekeyed.SPI, rd) })
	if deleted == nil || !deleted.ExclusiveSelectors {
		t.Fatalf("the deletion's Persist: %+v", deleted)
	}
}

// rekeyOurs has the responder rekey the IKE SA of gateway id and returns
// the new one.
func rekeyOurs(t *testing.T, w *wire, id string) *IKESA {
	t.Helper()
	var old *IKESA
	w.res.Each(func(sa *IKESA) bool {
		if sa.PeerID.String() == id && sa.state == stateEstablished {
			old = sa
		}
		return old == nil
	})
	if old == nil {
		t.Fatalf("no SA of %s", id)
	}
	w.run(R(func(rd *Ready) { w.res.RekeyIKE(w.now, old.localSPI(), rd) }), false)
	for _, sa := range w.res.sas {
		if sa.PeerID.String() == id && sa.state == stateEstablished && sa != old {
			if !sa.initiator {
				t.Fatal("the responder's IKE rekey: the new SA's original initiator is not us")
			}
			return sa
		}
	}
	t.Fatalf("%s: no new IKE SA after our IKE rekey: %+v", id, w.events)
	return nil
}

// An IKE rekey we start makes us the new SA's original initiator, but the
// peer stays a gateway we serve: its policy still applies to the CHILD SAs
// it creates afterwards, and a restore of the new SA holds its selectors
// as the first did.
func TestPolicyAppliesAfterOurIKERekey(t *testing.T) {
	w := policyWire(t, &PeerPolicy{Name: "fleet", ID: mustPattern(t, "*@iot.example"), RemoteTS: ts("10.0.0.0/8"), Exclusive: true})
	if n := connect(t, w, "gwa@iot.example", ts("10.3.0.0/24")); n != 0 {
		t.Fatal(n)
	}
	if n := connect(t, w, "gwb@iot.example", ts("10.2.0.0/24")); n != 0 {
		t.Fatal(n)
	}
	nsa := rekeyOurs(t, w, "gwb@iot.example")
	if got := nsa.PolicyName(); got != "fleet" {
		t.Fatalf("policy after our IKE rekey: %q", got)
	}
	// gwB now rekeys its CHILD SA proposing gwA's subnet as its side.
	var iniSA *IKESA
	w.ini.Each(func(sa *IKESA) bool {
		if sa.state == stateEstablished && sa.SPIr == nsa.SPIr {
			iniSA = sa
		}
		return iniSA == nil
	})
	if iniSA == nil || len(iniSA.children) != 1 {
		t.Fatalf("gwB's side of the new IKE SA: %+v", iniSA)
	}
	c := iniSA.children[0]
	c.LocalTS = ts("10.3.0.0/25")
	before := len(w.events)
	w.run(R(func(rd *Ready) { w.ini.RekeyChild(w.now, iniSA.localSPI(), c.InSPI, rd) }), true)
	refused := false
	for _, ev := range w.events[before:] {
		if ev.Kind == EventChildFailed && !ev.Initiator && ev.Notify == TS_UNACCEPTABLE {
			refused = true
		}
	}
	if !refused {
		t.Fatalf("gwB claimed gwA's subnet in a CHILD SA after our IKE rekey: %+v", w.events[before:])
	}
	// A restore of the new SA (a restart, a takeover) holds its range again.
	st, err := nsa.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if st.Origin != OriginPeer {
		t.Fatalf("snapshot origin %v", st.Origin)
	}
	w.run(R(func(rd *Ready) { w.res.Forget(nsa.localSPI(), rd) }), false)
	if got := w.res.cfg.Selectors.HeldBy(nsa.localSPI()); len(got) != 0 {
		t.Fatalf("forgotten SA still holds %v", got)
	}
	var rsa *IKESA
	w.run(R(func(rd *Ready) {
		if rsa, err = w.res.Restore(w.now, st, rd); err != nil {
			t.Fatal(err)
		}
	}), false)
	if got := w.res.cfg.Selectors.HeldBy(rsa.localSPI()); len(got) != 1 || got[0].Start != netip.MustParseAddr("10.2.0.0") {
		t.Fatalf("restored SA holds %v", got)
	}
	if got := rsa.PolicyName(); got != "fleet" {
		t.Fatalf("policy after the restore: %q", got)
	}
	// A record of an earlier release has no origin: Initiator decides.
	st.Origin = OriginUnknown
	w.run(R(func(rd *Ready) { w.res.Forget(rsa.localSPI(), rd) }), false)
	w.run(R(func(rd *Ready) {
		if rsa, err = w.res.Restore(w.now, st, rd); err != nil {
			t.Fatal(err)
		}
	}), false)
	if rsa.PolicyName() != "" {
		t.Fatalf("an old record with Initiator set read as a gateway we serve: %q", rsa.PolicyName())
	}
}

// A virtual IP survives an IKE rekey we start and goes back to the pool
// when the new SA is deleted.
func TestVirtualIPReleasedAfterOurIKERekey(t *testing.T) {
	pool := NewPool(netip.MustParsePrefix("10.99.0.0/24"))
	w := policyWire(t, &PeerPolicy{Name: "vpn", ID: mustPattern(t, "*@iot.example"), Pool: pool})
	ini := pskInitiation(t)
	ini.RequestVIP = true
	ini.TSi = ts("0.0.0.0/0")
	initiate(w, ini)
	if pool.InUse() != 1 {
		t.Fatalf("pool in use %d", pool.InUse())
	}
	nsa := rekeyOurs(t, w, ini.Creds.ID.String())
	if !nsa.vip.IsValid() {
		t.Fatal("no virtual IP on the new IKE SA")
	}
	w.run(R(func(rd *Ready) { w.res.Delete(w.now, nsa.localSPI(), rd) }), false)
	if pool.InUse() != 0 {
		t.Fatalf("pool in use %d after the SA went (its address leaked)", pool.InUse())
	}
}

// An IKE rekey hands the selectors to the new IKE SA: they stay held,
// and go when it goes.
func TestPolicySelectorsFollowIKERekey(t *testing.T) {
	w := policyWire(t, &PeerPolicy{Name: "fleet", ID: mustPattern(t, "*@iot.example"), RemoteTS: ts("10.0.0.0/8"), Exclusive: true})
	if n := connect(t, w, "gwb@iot.example", ts("10.2.0.0/24")); n != 0 {
		t.Fatal(n)
	}
	var iniSPI uint64
	w.ini.Each(func(sa *IKESA) bool { iniSPI = sa.localSPI(); return false })
	w.run(R(func(rd *Ready) { w.ini.RekeyIKE(w.now, iniSPI, rd) }), true)
	if w.res.Stats().IKERekeys != 1 {
		t.Fatalf("IKE SA not rekeyed: %+v", w.events)
	}
	if n := connect(t, w, "gwa@iot.example", ts("10.2.0.0/24")); n != TS_UNACCEPTABLE {
		t.Fatalf("after gwB's IKE rekey gwA took its subnet: %v", n)
	}
	for _, sa := range w.res.sas {
		if sa.PeerID.String() == "gwb@iot.example" && sa.state == stateEstablished {
			w.res.remove(sa)
		}
	}
	if w.res.cfg.Selectors.Held() != 0 {
		t.Fatalf("%d ranges still held after gwB's SAs went", w.res.cfg.Selectors.Held())
	}
}

// One virtual IP per identity: its second SA shares the address, which
// is free only when both are gone; a policy may allow more.
func TestPoolOneAddressPerIdentity(t *testing.T) {
	p := NewPool(netip.MustParsePrefix("10.99.0.0/24"))
	a1, _ := p.Acquire(rfc822("a@x"))
	a2, _ := p.Acquire(rfc822("a@x"))
	b, _ := p.Acquire(rfc822("b@x"))
	if a1 != a2 || a1 == b {
		t.Fatalf("a got %v and %v, b %v", a1, a2, b)
	}
	if p.Unref(a1) {
		t.Fatal("shared address freed while a second SA holds it")
	}
	if !p.Unref(a1) || p.InUse() != 1 {
		t.Fatalf("address not freed after its last SA (in use %d)", p.InUse())
	}
	if err := p.Claim(rfc822("c@x"), b); err != ErrAddressInUse {
		t.Fatalf("claim of b's address by c: %v", err)
	}
	p.SetMaxPerPeer(2)
	c1, _ := p.Acquire(rfc822("c@x"))
	c2, _ := p.Acquire(rfc822("c@x"))
	c3, _ := p.Acquire(rfc822("c@x"))
	if c1 == c2 || (c3 != c1 && c3 != c2) {
		t.Fatalf("max 2: c got %v %v %v", c1, c2, c3)
	}
}

// A mark (MarkKey) holds addresses without becoming an identity that
// returns to them: marking many costs no list that grows with each one.
func TestPoolMarkIsNotRemembered(t *testing.T) {
	p := NewPool(netip.MustParsePrefix("10.99.0.0/24"))
	mark := Identity{Type: 255, Data: []byte("elsewhere")}
	for i := 1; i <= 10; i++ {
		a := netip.AddrFrom4([4]byte{10, 99, 0, byte(i)})
		if err := p.MarkKey(mark.String(), a); err != nil {
			t.Fatal(err)
		}
		if err := p.Claim(rfc822("a@x"), a); err != ErrAddressInUse {
			t.Fatalf("claim of a marked address: %v", err)
		}
	}
	if l := p.byPeer[mark.String()]; l.len() != 0 || p.InUse() != 10 {
		t.Fatalf("mark remembered %d addresses, %d in use", l.len(), p.InUse())
	}
	if a, _ := p.Acquire(rfc822("b@x")); a != netip.MustParseAddr("10.99.0.11") {
		t.Fatalf("acquire after ten marks: %v", a)
	}
}

// The engine side: two SAs of one identity get one address and the
// selector of that address.
func TestVirtualIPSharedByIdentity(t *testing.T) {
	pool := NewPool(netip.MustParsePrefix("10.99.0.0/24"))
	w := policyWire(t, &PeerPolicy{Name: "vpn", ID: mustPattern(t, "*@iot.example"), Pool: pool, Exclusive: true})
	for i := 0; i < 2; i++ {
		ini := pskInitiation(t)
		ini.RequestVIP = true
		ini.TSi = ts("0.0.0.0/0")
		initiate(w, ini)
	}
	ini := pskInitiation(t)
	ini.Creds.ID = rfc822("other@iot.example")
	ini.RequestVIP = true
	ini.TSi = ts("0.0.0.0/0")
	initiate(w, ini)
	var vips []netip.Addr
	for i, ic := range w.installs {
		if !w.sides[i] {
			vips = append(vips, ic.Child.VirtualIP)
		}
	}
	if len(vips) != 3 || vips[0] != vips[1] || vips[2] == vips[0] || pool.InUse() != 2 {
		t.Fatalf("virtual IPs %v, pool in use %d", vips, pool.InUse())
	}
	for _, sa := range w.res.sas {
		w.res.remove(sa)
	}
	if pool.InUse() != 0 {
		t.Fatalf("pool in use %d after every SA went", pool.InUse())
	}
}

// An authenticated message from another address moves the SA only if the
// peer is behind a NAT (or with MOBIKE's UPDATE_SA_ADDRESSES).
func TestAddressMoveNeedsNAT(t *testing.T) {
	for _, nat := range []bool{true, false} {
		w, spi := establish(t, responderConfig(t, 1))
		rsa := w.res.SA(resSPI(w))
		rsa.natRemote = nat // the wire's NAT is seen or not
		old := rsa.Remote
		w.natShift = 5 // the gateway's packets now come from another port
		in := w.ini.SA(spi).children[0].InSPI
		w.run(R(func(rd *Ready) { w.ini.RekeyChild(w.now, spi, in, rd) }), true)
		if w.res.Stats().ChildRekeys != 1 {
			t.Fatalf("nat=%v: the rekey did not complete: %+v", nat, w.events)
		}
		moved := rsa.Remote != old
		if moved != nat {
			t.Fatalf("nat=%v: SA moved %v (from %v to %v)", nat, moved, old, rsa.Remote)
		}
		if !nat && w.res.Stats().MovesRefused == 0 {
			t.Fatal("refused move not counted")
		}
		for _, c := range rsa.children {
			if c.Remote != rsa.Remote {
				t.Fatalf("nat=%v: CHILD SA at %v, IKE SA at %v", nat, c.Remote, rsa.Remote)
			}
		}
	}
}

// What the pool keeps of an identity and its address lives in its maps:
// no object of its own per SA for the collector to mark (there were two,
// and a third for the identity's key rendered again).
func TestPoolKeepsNoObjectPerAddress(t *testing.T) {
	p := NewPool(netip.MustParsePrefix("10.96.0.0/12"))
	const n = 5000
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("gw%d@iot.example", i)
	}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for _, k := range keys {
		if _, err := p.AcquireKey(k); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if per := float64(after.HeapObjects-before.HeapObjects) / n; per > 0.5 {
		t.Errorf("%.2f heap objects per address handed out, want none but the maps' share", per)
	}
	runtime.KeepAlive(p)
}
