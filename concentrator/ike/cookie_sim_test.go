package ike

import (
	"math/rand/v2"
	"net/netip"
	"strconv"
	"testing"
	"time"
)

// A mass reconnect under cookies: 300 gateways (forcing encapsulation) at once against a
// responder demanding cookies above 20 half-open SAs, over a network that
// delays (up to 12 s), duplicates, loses and reorders messages, with retransmissions. Every
// gateway must end up established (none refused for a message 1 the two
// sides disagree on).
func TestCookieStormAllEstablish(t *testing.T) {
	for seed := uint64(1); seed <= 3; seed++ {
		rcfg := responderConfig(t, byte(seed))
		rcfg.CookieThreshold = 20
		psks := PSKMap{}
		const n = 300
		for i := 0; i < n; i++ {
			psks[Identity{Type: IDRFC822Addr, Data: []byte("gw" + strconv.Itoa(i) + "@iot.example")}.String()] = testPSK
		}
		rcfg.PSKs = psks
		res, err := NewEngine(rcfg)
		if err != nil {
			t.Fatal(err)
		}
		ini, err := NewEngine(Config{IKEProposals: mustProposals(t, false, "aes256gcm16-prfsha256-x25519"), Rand: newDetRand(byte(seed + 100)), ForceEncap: true})
		if err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(seed, 7))
		type msg struct {
			at    time.Time
			toRes bool
			local netip.AddrPort
			data  []byte
		}
		var q []msg
		now := t0
		push := func(acts []Action, toRes bool) {
			for _, a := range acts {
				s, ok := a.(Send)
				if !ok {
					continue
				}
				for _, m := range s.Messages {
					copies := 1
					if rng.IntN(10) == 0 {
						copies = 2
					}
					for c := 0; c < copies; c++ {
						if rng.IntN(20) == 0 {
							continue // lost
						}
						q = append(q, msg{at: now.Add(time.Duration(rng.IntN(12000)) * time.Millisecond), toRes: toRes, local: s.Local, data: m})
					}
				}
			}
		}
		failed := 0
		count := func(acts []Action) {
			for _, a := range acts {
				if ev, ok := a.(Event); ok && ev.Kind == EventIKEFailed {
					failed++
					t.Logf("seed %d: %s: %s", seed, ev.Notify, ev.Reason)
				}
			}
		}
		for i := 0; i < n; i++ {
			in := pskInitiation(t)
			in.RemoteID = Identity{}
			in.Creds.ID = Identity{Type: IDRFC822Addr, Data: []byte("gw" + strconv.Itoa(i) + "@iot.example")}
			in.Local = netip.AddrPortFrom(gwAddr.Addr(), uint16(20000+i))
			_, acts, err := ini.Initiate(now, in, nil)
			if err != nil {
				t.Fatal(err)
			}
			push(acts, true)
		}
		end := t0.Add(120 * time.Second)
		for now.Before(end) {
			// deliver everything due, in random order
			var due, later []msg
			for _, m := range q {
				if !m.at.After(now) {
					due = append(due, m)
				} else {
					later = append(later, m)
				}
			}
			q = later
			rng.Shuffle(len(due), func(i, j int) { due[i], due[j] = due[j], due[i] })
			for _, m := range due {
				if m.toRes {
					acts := res.Handle(now, Packet{Local: concAddr, Remote: m.local, Data: m.data}, nil)
					count(acts)
					push(acts, false)
				} else {
					acts := ini.Handle(now, Packet{Local: m.local, Remote: concAddr, Data: m.data}, nil)
					count(acts)
					push(acts, true)
				}
			}
			push(ini.Tick(now, nil), true)
			push(res.Tick(now, nil), false)
			now = now.Add(100 * time.Millisecond)
		}
		if st := ini.Stats(); st.Established != n || failed > 0 {
			t.Errorf("seed %d: %d of %d established, %d failures, %d cookies", seed, st.Established, n, failed, res.Stats().CookiesSent)
		}
	}
}
