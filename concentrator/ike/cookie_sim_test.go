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
		// push commits the step's state at once (no store) and queues its
		// messages.
		push := func(e *Engine, rd *Ready, toRes bool) {
			for _, p := range rd.Persist {
				e.Committed(p.SPI, p.Version)
			}
			for _, s := range rd.Send {
				if s.Keepalive {
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
		count := func(rd *Ready) {
			for _, ev := range rd.Events {
				if ev.Kind == EventIKEFailed {
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
			rd := &Ready{}
			if _, err := ini.Initiate(now, in, rd); err != nil {
				t.Fatal(err)
			}
			push(ini, rd, true)
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
				rd := &Ready{}
				if m.toRes {
					res.Handle(now, Packet{Local: concAddr, Remote: m.local, Data: m.data}, rd)
					count(rd)
					push(res, rd, false)
				} else {
					ini.Handle(now, Packet{Local: m.local, Remote: concAddr, Data: m.data}, rd)
					count(rd)
					push(ini, rd, true)
				}
			}
			rd := &Ready{}
			ini.Tick(now, rd)
			push(ini, rd, true)
			rd = &Ready{}
			res.Tick(now, rd)
			push(res, rd, false)
			now = now.Add(100 * time.Millisecond)
		}
		if st := ini.Stats(); st.Established != n || failed > 0 {
			t.Errorf("seed %d: %d of %d established, %d failures, %d cookies", seed, st.Established, n, failed, res.Stats().CookiesSent)
		}
	}
}
