package ike

import (
	"slices"
	"testing"
	"time"
)

// spiPools gives an engine's Config reserved SPI pools and records what
// the engine hands back.
type spiPools struct {
	retIKE      []uint64
	retESP      []uint32
	handedIKE   []uint64
	handedESP   []uint32
	empty       bool // the pools are dry: the engine falls back to random SPIs
	nextI, next uint64
}

func (p *spiPools) attach(cfg *Config) {
	cfg.IKESPIs = func() (uint64, bool) {
		if p.empty {
			return 0, false
		}
		p.nextI++
		spi := 0x5100000000000000 | p.nextI
		p.handedIKE = append(p.handedIKE, spi)
		return spi, true
	}
	cfg.ESPSPIs = func() (uint32, bool) {
		if p.empty {
			return 0, false
		}
		p.next++
		spi := uint32(0xc5000000 | p.next)
		p.handedESP = append(p.handedESP, spi)
		return spi, true
	}
	cfg.ReturnIKESPI = func(spi uint64) { p.retIKE = append(p.retIKE, spi) }
	cfg.ReturnESPSPI = func(spi uint32) { p.retESP = append(p.retESP, spi) }
}

// halfOpen is a wire whose responder, with pools p, holds one half-open
// SA: its IKE_AUTH request never arrives.
func halfOpen(t *testing.T, p *spiPools) *wire {
	cfg := responderConfig(t, 1)
	p.attach(&cfg)
	w := newWire(t, cfg)
	w.drop = func(toResponder bool, msg []byte) bool { return toResponder && msg[18] == byte(IKE_AUTH) }
	rd := &Ready{}
	w.ini.Initiate(w.now, pskInitiation(t), rd)
	w.run(rd, true)
	return w
}

// runTimers advances the wire's clock through the responder's deadlines
// up to d from now, delivering what the responder sends.
func (w *wire) runTimers(d time.Duration) {
	end := w.now.Add(d)
	for range 10000 {
		next := w.res.NextDeadline(w.now)
		if next.IsZero() || next.After(end) {
			break
		}
		w.now = next
		w.run(R(func(rd *Ready) { w.res.Tick(w.now, rd) }), false)
	}
	w.now = end
	w.run(R(func(rd *Ready) { w.res.Tick(w.now, rd) }), false)
}

// An SPI of the reserved pools that goes out of use before any Persist
// named it is handed back: the half-open SA that never authenticated, the
// failed IKE_AUTH, the CHILD SA rekey whose IKE SA died unanswered. SPIs
// that a Persist named are the store's to release, and an SPI the engine
// made up when the pool was dry was never reserved: neither comes back.
func TestReservedSPIsHandedBack(t *testing.T) {
	t.Run("half-open SA expires", func(t *testing.T) {
		var p spiPools
		w := halfOpen(t, &p)
		if len(p.handedIKE) != 1 || w.res.Len() != 1 {
			t.Fatalf("handed out %x, %d SAs: want one half-open", p.handedIKE, w.res.Len())
		}
		w.runTimers(2 * DefaultHalfOpenTimeout)
		if w.res.Len() != 0 || !slices.Equal(p.retIKE, p.handedIKE) || len(p.retESP) != 0 || w.res.Stats().ReturnedSPIs != 1 {
			t.Fatalf("%d SAs left; handed back IKE %x ESP %x (handed out %x), stats %d", w.res.Len(), p.retIKE, p.retESP, p.handedIKE, w.res.Stats().ReturnedSPIs)
		}
	})
	t.Run("IKE_AUTH fails", func(t *testing.T) {
		var p spiPools
		cfg := responderConfig(t, 1)
		p.attach(&cfg)
		w := newWire(t, cfg)
		ini := pskInitiation(t)
		ini.PSK = []byte("not the right key")
		rd := &Ready{}
		w.ini.Initiate(w.now, ini, rd)
		w.run(rd, true)
		if w.count(EventIKEEstablished) != 0 || w.res.Len() != 0 {
			t.Fatalf("established with a wrong PSK, or SAs left: %d", w.res.Len())
		}
		if !slices.Equal(p.retIKE, p.handedIKE) || len(p.handedIKE) != 1 || !slices.Equal(p.retESP, p.handedESP) {
			t.Fatalf("handed back IKE %x ESP %x; handed out IKE %x ESP %x", p.retIKE, p.retESP, p.handedIKE, p.handedESP)
		}
	})
	t.Run("persisted SA deleted", func(t *testing.T) {
		var p spiPools
		cfg := responderConfig(t, 1)
		p.attach(&cfg)
		w := newWire(t, cfg)
		spi := w.establish(t, pskInitiation(t))
		if len(w.persists) == 0 || len(p.handedIKE) != 1 || len(p.handedESP) != 1 {
			t.Fatalf("persists %d, handed out IKE %x ESP %x", len(w.persists), p.handedIKE, p.handedESP)
		}
		w.run(R(func(rd *Ready) { w.ini.Delete(w.now, spi, rd) }), true)
		if w.res.Len() != 0 || len(p.retIKE)+len(p.retESP) != 0 {
			t.Fatalf("%d SAs left; handed back IKE %x ESP %x of a persisted SA", w.res.Len(), p.retIKE, p.retESP)
		}
	})
	t.Run("CHILD SA rekey never answered", func(t *testing.T) {
		var p spiPools
		cfg := responderConfig(t, 1)
		p.attach(&cfg)
		w := newWire(t, cfg)
		w.establish(t, pskInitiation(t))
		var sa *IKESA
		w.res.Each(func(s *IKESA) bool { sa = s; return false })
		child := sa.children[0].InSPI
		w.drop = func(toResponder bool, msg []byte) bool { return !toResponder } // the gateway is gone
		w.run(R(func(rd *Ready) { w.res.RekeyChild(w.now, sa.localSPI(), child, rd) }), false)
		if len(p.handedESP) != 2 {
			t.Fatalf("handed out ESP %x: want the CHILD SA's and its rekey's", p.handedESP)
		}
		w.runTimers(time.Hour)
		if w.res.Len() != 0 {
			t.Fatalf("the unanswered SA is still there")
		}
		if len(p.retIKE) != 0 || !slices.Equal(p.retESP, p.handedESP[1:]) {
			t.Fatalf("handed back IKE %x ESP %x; want only the rekey's ESP SPI %x", p.retIKE, p.retESP, p.handedESP[1])
		}
	})
	// The Established write held: refused unwritten, its SPIs come back;
	// failed with an unknown outcome, or still under way when the SA
	// goes, they do not (the write may land).
	for _, end := range []string{"refused", "failed", "deleted meanwhile"} {
		t.Run("write "+end, func(t *testing.T) {
			var p spiPools
			cfg := responderConfig(t, 1)
			p.attach(&cfg)
			w := newWire(t, cfg)
			w.hold = true
			rd := &Ready{}
			w.ini.Initiate(w.now, pskInitiation(t), rd)
			w.run(rd, true)
			if len(w.persists) != 1 || w.persists[0].Kind != PersistEstablished || len(p.handedESP) != 1 {
				t.Fatalf("persists %+v, ESP SPIs handed out %x", w.persists, p.handedESP)
			}
			pe := w.persists[0]
			rd = &Ready{}
			switch end {
			case "refused":
				w.res.PersistRefused(pe.SPI, pe.Version, rd)
			case "failed":
				w.res.PersistFailed(pe.SPI, pe.Version, rd)
			default:
				w.res.Discard(pe.SPI, "test", rd)
				w.res.Committed(pe.SPI, pe.Version)
			}
			if w.res.Len() != 0 {
				t.Fatalf("%d SAs left", w.res.Len())
			}
			want := end == "refused"
			if got := len(p.retIKE) == 1 && p.retIKE[0] == pe.SPI && slices.Equal(p.retESP, p.handedESP); got != want || !want && len(p.retIKE)+len(p.retESP) != 0 {
				t.Fatalf("handed back IKE %x ESP %x (handed out %x %x), want them back: %v", p.retIKE, p.retESP, p.handedIKE, p.handedESP, want)
			}
		})
	}
	t.Run("pool dry", func(t *testing.T) {
		p := spiPools{empty: true}
		w := halfOpen(t, &p)
		w.runTimers(2 * DefaultHalfOpenTimeout)
		if w.res.Stats().UnreservedSPIs == 0 || len(p.retIKE)+len(p.retESP) != 0 {
			t.Fatalf("unreserved %d; handed back IKE %x ESP %x never reserved", w.res.Stats().UnreservedSPIs, p.retIKE, p.retESP)
		}
	})
	t.Run("forgotten reservations", func(t *testing.T) {
		var p spiPools
		w := halfOpen(t, &p)
		w.res.ForgetReservations() // the registration they were made on ended
		w.runTimers(2 * DefaultHalfOpenTimeout)
		if w.res.Len() != 0 || len(p.retIKE) != 0 {
			t.Fatalf("%d SAs; handed back %x of an ended registration", w.res.Len(), p.retIKE)
		}
	})
}
