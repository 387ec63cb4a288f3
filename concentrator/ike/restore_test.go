package ike

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// fleetState returns the k-th of a fleet of established responder SAs,
// made from one real SA's state with fresh SPIs and identities.
func fleetState(tmpl SAState, k int) SAState {
	st := tmpl
	st.SPIr = uint64(k+1) << 8
	st.SPIi = uint64(k+1)<<8 | 1
	var ip [4]byte
	binary.BigEndian.PutUint32(ip[:], uint32(0x0a000000+k))
	st.Remote = netip.AddrPortFrom(netip.AddrFrom4(ip), 4500)
	st.PeerID = Identity{Type: IDRFC822Addr, Data: []byte(fmt.Sprintf("gw%d@iot.example", k))}
	cs := st.Children[0]
	cs.InSPI, cs.OutSPI = uint32(k+256), uint32(k+256)
	st.Children = []ChildState{cs}
	return st
}

func template(t testing.TB) SAState {
	w, _ := establish(&testing.T{}, responderConfig(t, 1))
	st, err := w.res.SA(resSPI(w)).Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// Restored SAs claim their virtual IPs: new gateways never get one of them.
func TestRestoreClaimsVirtualIPs(t *testing.T) {
	rcfg := responderConfig(t, 1)
	rcfg.Pool = NewPool(netip.MustParsePrefix("10.99.0.0/24"))
	rcfg.RemoteTS = nil
	rcfg.PSKs = fleetPSK{}
	res, _ := NewEngine(rcfg)
	tmpl := template(t)
	seen := map[netip.Addr]string{}
	for k := 0; k < 10; k++ {
		st := fleetState(tmpl, k)
		st.VirtualIP = netip.AddrFrom4([4]byte{10, 99, 0, byte(1 + k)})
		if _, err := res.Restore(t0, st, &Ready{}); err != nil {
			t.Fatal(err)
		}
		seen[st.VirtualIP] = st.PeerID.String()
	}
	// The same address claimed by another peer's record is refused.
	dup := fleetState(tmpl, 99)
	dup.VirtualIP = netip.MustParseAddr("10.99.0.3")
	if _, err := res.Restore(t0, dup, &Ready{}); err == nil {
		t.Fatal("restored a second SA with an address already held")
	}
	w := &wire{t: t, ini: initiatorEngine(t, 2), res: res, now: t0}
	for k := 0; k < 10; k++ {
		ini := pskInitiation(t)
		ini.Creds.ID = Identity{Type: IDRFC822Addr, Data: []byte(fmt.Sprintf("new%d@iot.example", k))}
		ini.RequestVIP = true
		ini.TSi = []TrafficSelector{SelectorFromPrefix(netip.MustParsePrefix("0.0.0.0/0"))}
		initiate(w, ini)
	}
	for i, ic := range w.installs {
		if !w.sides[i] && ic.Child.VirtualIP.IsValid() { // the responder's
			if prev, ok := seen[ic.Child.VirtualIP]; ok && prev != ic.PeerID.String() {
				t.Fatalf("%v handed to %v, held by %v", ic.Child.VirtualIP, ic.PeerID, prev)
			}
			seen[ic.Child.VirtualIP] = ic.PeerID.String()
		}
	}
	if len(seen) != 20 || rcfg.Pool.(*Pool).InUse() != 20 {
		t.Fatalf("%d distinct addresses, pool has %d in use; want 20", len(seen), rcfg.Pool.(*Pool).InUse())
	}
}

// A restore rekeys nothing merely for being a restore: kept rekey times
// stay, passed ones are spread by the scheduler under its cap.
func TestRestoreKeepsRekeyTimes(t *testing.T) {
	rcfg := responderConfig(t, 1)
	sched := NewSmoothScheduler(50*time.Minute, 10*time.Minute, 5, newDetRand(5))
	rcfg.ChildRekey = sched
	res, _ := NewEngine(rcfg)
	tmpl := template(t)
	now := t0.Add(time.Hour)
	perSecond := map[int64]int{}
	sas := map[*IKESA]time.Time{}
	for k := 0; k < 200; k++ {
		st := fleetState(tmpl, k)
		st.MsgIDSync = false
		want := now.Add(time.Duration(k-100) * time.Second) // half of them passed
		st.Children[0].RekeyAt = want
		sa, err := res.Restore(now, st, &Ready{})
		if err != nil {
			t.Fatal(err)
		}
		sas[sa] = want
	}
	// The passed ones are placed at the first Tick, when the scheduler
	// knows the seconds every kept one loads; nothing is rekeyed then.
	rd := R(func(rd *Ready) { res.Tick(now, rd) })
	if len(rd.Send) != 0 || res.Stats().ChildRekeys != 0 {
		t.Fatalf("the first Tick after the restore sent %d messages", len(rd.Send))
	}
	for sa, want := range sas {
		got := sa.children[0].RekeyAt()
		if want.After(now) {
			if !got.Equal(want) {
				t.Fatalf("kept rekey time %v moved to %v", want, got)
			}
			perSecond[got.Unix()]++
			continue
		}
		if !got.After(now) || got.After(now.Add(10*time.Minute/4+time.Second)) {
			t.Fatalf("passed rekey time placed at %v after the restore", got.Sub(now))
		}
		perSecond[got.Unix()]++
	}
	for sec, n := range perSecond {
		if n > 5 {
			t.Fatalf("%d rekeys in second %d, cap 5", n, sec)
		}
	}
	// Nothing is rekeyed in the first second.
	rd = R(func(rd *Ready) { res.Tick(now.Add(500*time.Millisecond), rd) })
	if res.Stats().ChildRekeys != 0 || len(rd.Send) != 0 {
		t.Fatalf("rekeys right after the restore: %+v", rd.Send)
	}
}
