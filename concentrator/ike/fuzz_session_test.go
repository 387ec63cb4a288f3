package ike

import (
	"net/netip"
	"testing"
	"time"
)

// session is two engines, a gateway (initiator) and a concentrator
// (responder), with an established IKE SA, and a bounded message pump
// between them: what one sends the other handles, persists are committed
// at once. Unlike wire it never fails the test: a fuzzed exchange may well
// loop, and the pump just stops.
type session struct {
	ini, res *Engine
	now      time.Time
	// dropFollowup loses IKE_FOLLOWUP_KE messages: an exchange stays open
	// (or is retransmitted later).
	dropFollowup bool
}

func (s *session) pump(rd *Ready, fromIni bool) {
	type hop struct {
		rd  *Ready
		ini bool
	}
	queue := []hop{{rd, fromIni}}
	for steps := 0; len(queue) > 0 && steps < 64; steps++ {
		h := queue[0]
		queue = queue[1:]
		from, to := s.res, s.ini
		if h.ini {
			from, to = s.ini, s.res
		}
		for _, p := range h.rd.Persist {
			from.Committed(p.SPI, p.Version)
		}
		for _, snd := range h.rd.Send {
			for _, m := range snd.Messages {
				if s.dropFollowup && len(m) > 18 && ExchangeType(m[18]) == IKE_FOLLOWUP_KE {
					continue
				}
				out := &Ready{}
				to.Handle(s.now, Packet{Local: snd.Remote, Remote: snd.Local, Data: append([]byte(nil), m...)}, out)
				queue = append(queue, hop{out, !h.ini})
			}
		}
	}
}

// anySA returns an established SA of e, or nil.
func anySA(e *Engine) *IKESA {
	var found *IKESA
	e.Each(func(sa *IKESA) bool {
		if sa.state == stateEstablished {
			found = sa
			return false
		}
		return true
	})
	return found
}

// script reads the fuzzer's bytes.
type script struct{ b []byte }

func (s *script) byte() byte {
	if len(s.b) == 0 {
		return 0
	}
	c := s.b[0]
	s.b = s.b[1:]
	return c
}

func (s *script) bytes(n int) []byte {
	n = min(n, len(s.b))
	out := s.b[:n]
	s.b = s.b[n:]
	return out
}

// fuzzPayloadTypes are what a fuzzed message's payloads are made of.
var fuzzPayloadTypes = []PayloadType{PayloadSA, PayloadKE, PayloadNonce, PayloadNotify, PayloadDelete,
	PayloadTSi, PayloadTSr, PayloadCP, PayloadIDi, PayloadAUTH, PayloadVendor, PayloadCERT, PayloadEAP}

// FuzzSession: a gateway and a concentrator with an established IKE SA
// (MOBIKE, fragmentation, small fragments), driven by a script: messages
// with any exchange, flags, message ID and payload chain sealed with the
// real keys of either side (so they pass integrity and reach the
// handlers: CREATE_CHILD_SA, INFORMATIONAL, MOBIKE updates, fragmented
// when large, fragments dropped or reordered), interleaved with real
// operations (CHILD and IKE rekeys, deletes, MOBIKE moves, NAT mapping
// reports, time passing). With the first byte's top bit set, both sides
// use hybrid proposals (X25519 and ML-KEM-768 for the IKE SA and, with
// PFS, the CHILD SAs): rekeys run IKE_FOLLOWUP_KE exchanges, which the
// script can leave open (their messages lost) and then attack with fuzzed
// IKE_FOLLOWUP_KE requests that carry the open exchange's link. Nothing
// panics, the engines stay small, and two hours of timers afterwards run
// clean.
func FuzzSession(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, byte(CREATE_CHILD_SA), 0, 3, 0, 20, 1, 2, 3, 2, 32, 4, 5, 5, 4, 0})
	f.Add([]byte{1, byte(INFORMATIONAL), 0, 1, 4, 8, 0, 0, 0x40, 0x11, 0, 0, 0, 1})
	f.Add([]byte{2, 0, 3, 0, 6, 30, 4, 1, 5, 7, 9, 6, 200})
	f.Add([]byte{0, byte(INFORMATIONAL), 0x18, 2, 3, 250, 0xaa, 0xbb, 4, 8, 0, 0, 0x40, 0x0d, 0, 0, 0, 0})
	// Hybrid: a CHILD rekey whose IKE_FOLLOWUP_KE is lost, a fuzzed
	// IKE_FOLLOWUP_KE with its link and a KE, time passing, an IKE rekey.
	f.Add([]byte{0x80 | 2, 2, 0, byte(IKE_FOLLOWUP_KE), 64, 1, 1, 40, 6, 1, 3, 0})
	f.Add([]byte{0x80 | 3, 2, 6, 3, 0, byte(IKE_FOLLOWUP_KE), 64, 0, 2, 3, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		hybrid := len(b) > 0 && b[0]&0x80 != 0
		rcfg := responderConfig(t, 1)
		rcfg.MOBIKE = true
		rcfg.FragmentSize = 576
		rcfg.DPDDelay = time.Minute
		rcfg.ChildRekey = NewSmoothScheduler(50*time.Minute, 10*time.Minute, 0, newDetRand(5))
		var w *wire
		if hybrid {
			rcfg.IKEProposals = mustProposals(t, false, pqProposal)
			rcfg.ESPProposals = mustProposals(t, true, pqESP)
			w = newWire(t, rcfg)
			ini := pskInitiation(t)
			ini.IKEProposals, ini.ESPProposals = rcfg.IKEProposals, rcfg.ESPProposals
			acts := &Ready{}
			if _, err := w.ini.Initiate(w.now, ini, acts); err != nil {
				t.Fatal(err)
			}
			w.run(acts, true)
			if w.count(EventIKEEstablished) != 2 {
				t.Fatal("hybrid SA not established")
			}
		} else {
			w, _ = establish(t, rcfg)
		}
		w.ini.cfg.MOBIKE = true
		w.ini.cfg.FragmentSize = 576
		s := &session{ini: w.ini, res: w.res, now: w.now}
		sc := &script{b: b}
		for steps := 0; len(sc.b) > 0 && steps < 32; steps++ {
			op := sc.byte()
			isa, rsa := anySA(s.ini), anySA(s.res)
			if isa == nil || rsa == nil {
				break
			}
			switch op % 8 {
			case 0, 1: // a fuzzed message from one side to the other
				fromIni := op%8 == 0
				se, sender, receiver := s.ini, isa, rsa
				if !fromIni {
					se, sender, receiver = s.res, rsa, isa
				}
				ex := ExchangeType(sc.byte())
				flags := sc.byte()
				m := &Message{SPIi: sender.SPIi, SPIr: sender.SPIr, Exchange: ex}
				if flags&64 != 0 {
					// An open IKE_FOLLOWUP_KE exchange's link (or none),
					// and a KE of the method it waits for.
					link := []byte{1, 2, 3, 4, 5, 6, 7, 8}
					group := uint16(31)
					if len(receiver.followups) > 0 {
						link, group = receiver.followups[0].link, receiver.followups[0].pending[0]
					} else if sender.req != nil && sender.req.rekey != nil && sender.req.rekey.link != nil {
						link = sender.req.rekey.link
					}
					m.Payloads = append(m.Payloads, &KE{Group: group, Data: append([]byte(nil), sc.bytes(int(sc.byte())*8)...)},
						&Notify{NotifyType: ADDITIONAL_KEY_EXCHANGE, Data: link})
				}
				if sender.initiator {
					m.Flags |= FlagInitiator
				}
				if flags&1 != 0 {
					m.Flags |= FlagResponse
					if receiver.req != nil {
						m.MessageID = receiver.req.msgID
					}
				} else {
					m.MessageID = receiver.nextIn
				}
				switch {
				case flags&2 != 0:
					m.MessageID++
				case flags&4 != 0:
					m.MessageID--
				}
				n := int(sc.byte() % 5)
				for i := 0; i < n; i++ {
					pt := fuzzPayloadTypes[int(sc.byte())%len(fuzzPayloadTypes)]
					size := int(sc.byte())
					if flags&32 != 0 {
						size *= 8 // large: fragmented
					}
					m.Payloads = append(m.Payloads, &Unknown{PType: pt, Data: append([]byte(nil), sc.bytes(size)...)})
				}
				pkts := sender.seal(se, m)
				if flags&8 != 0 && len(pkts) > 1 {
					pkts = pkts[1:] // the first fragment lost
				}
				if flags&16 != 0 {
					for i, j := 0, len(pkts)-1; i < j; i, j = i+1, j-1 {
						pkts[i], pkts[j] = pkts[j], pkts[i]
					}
				}
				rd := &Ready{}
				rd.Send = append(rd.Send, Send{Local: sender.Local, Remote: sender.Remote, Messages: pkts})
				s.pump(rd, fromIni)
			case 2: // CHILD rekey by either side, perhaps its IKE_FOLLOWUP_KE lost
				e, sa := s.ini, isa
				c := sc.byte()
				if c&1 != 0 {
					e, sa = s.res, rsa
				}
				if len(sa.children) > 0 {
					rd := &Ready{}
					e.RekeyChild(s.now, sa.localSPI(), sa.children[0].InSPI, rd)
					s.dropFollowup = c&2 != 0
					s.pump(rd, e == s.ini)
					s.dropFollowup = false
				}
			case 3: // IKE rekey by either side, perhaps its IKE_FOLLOWUP_KE lost
				e, sa := s.ini, isa
				c := sc.byte()
				if c&1 != 0 {
					e, sa = s.res, rsa
				}
				rd := &Ready{}
				e.RekeyIKE(s.now, sa.localSPI(), rd)
				s.dropFollowup = c&2 != 0
				s.pump(rd, e == s.ini)
				s.dropFollowup = false
			case 4: // a CHILD SA deleted by either side
				e, sa := s.ini, isa
				if sc.byte()&1 != 0 {
					e, sa = s.res, rsa
				}
				if len(sa.children) > 0 {
					rd := &Ready{}
					e.DeleteChild(s.now, sa.localSPI(), sa.children[0].InSPI, rd)
					s.pump(rd, e == s.ini)
				}
			case 5: // the gateway moves (MOBIKE)
				rd := &Ready{}
				local := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 10, 1, sc.byte()}), 4500)
				s.ini.UpdateAddresses(s.now, isa.localSPI(), local, rd)
				s.pump(rd, true)
			case 6: // time passes
				s.now = s.now.Add(time.Duration(sc.byte()) * 10 * time.Second)
				for _, e := range []*Engine{s.ini, s.res} {
					rd := &Ready{}
					e.Tick(s.now, rd)
					s.pump(rd, e == s.ini)
				}
			case 7: // the data plane reports a NAT mapping change
				if len(rsa.children) > 0 {
					rd := &Ready{}
					port := uint16(sc.byte())<<8 | uint16(sc.byte())
					s.res.PeerMoved(s.now, rsa.children[0].InSPI, netip.AddrPortFrom(rsa.Remote.Addr(), port), rd)
					s.pump(rd, false)
				}
			}
			if s.ini.Len() > 16 || s.res.Len() > 16 {
				t.Fatalf("engines grew: %d and %d IKE SAs", s.ini.Len(), s.res.Len())
			}
		}
		for i := 0; i < 12; i++ {
			s.now = s.now.Add(10 * time.Minute)
			for _, e := range []*Engine{s.ini, s.res} {
				rd := &Ready{}
				e.Tick(s.now, rd)
				s.pump(rd, e == s.ini)
			}
		}
	})
}
